"""`--config=experiments/configs/imagenet_resnet50_tv2.py`: the config `resnet_jax.configs.imagenet_resnet50_tv2` (`--config=imagenet_resnet50_tv2`)."""

from resnet_jax.configs.imagenet_resnet50_tv2 import get_config  # noqa: F401
