"""`--config=experiments/configs/imagenet_resnet50_rsb_a2.py`: the config `resnet_jax.configs.imagenet_resnet50_rsb_a2` (`--config=imagenet_resnet50_rsb_a2`)."""

from resnet_jax.configs.imagenet_resnet50_rsb_a2 import get_config  # noqa: F401
