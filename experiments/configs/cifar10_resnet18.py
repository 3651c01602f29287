"""`--config=experiments/configs/cifar10_resnet18.py`: the config `resnet_jax.configs.cifar10_resnet18` (`--config=cifar10_resnet18`)."""

from resnet_jax.configs.cifar10_resnet18 import get_config  # noqa: F401
