"""`--config=experiments/configs/imagenet_resnet50.py`: the config `resnet_jax.configs.imagenet_resnet50` (`--config=imagenet_resnet50`)."""

from resnet_jax.configs.imagenet_resnet50 import get_config  # noqa: F401
