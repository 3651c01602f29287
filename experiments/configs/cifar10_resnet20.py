"""`--config=experiments/configs/cifar10_resnet20.py`: the config `resnet_jax.configs.cifar10_resnet20` (`--config=cifar10_resnet20`)."""

from resnet_jax.configs.cifar10_resnet20 import get_config  # noqa: F401
