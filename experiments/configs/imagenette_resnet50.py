"""`--config=experiments/configs/imagenette_resnet50.py`: the config `resnet_jax.configs.imagenette_resnet50` (`--config=imagenette_resnet50`)."""

from resnet_jax.configs.imagenette_resnet50 import get_config  # noqa: F401
