"""`--config=experiments/configs/cifar10_resnet56.py`: the config `resnet_jax.configs.cifar10_resnet56` (`--config=cifar10_resnet56`)."""

from resnet_jax.configs.cifar10_resnet56 import get_config  # noqa: F401
