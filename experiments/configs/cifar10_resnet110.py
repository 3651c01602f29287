"""`--config=experiments/configs/cifar10_resnet110.py`: the config `resnet_jax.configs.cifar10_resnet110` (`--config=cifar10_resnet110`)."""

from resnet_jax.configs.cifar10_resnet110 import get_config  # noqa: F401
