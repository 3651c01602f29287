"""`--config=experiments/configs/cifar10_resnet18_modern.py`: the config `resnet_jax.configs.cifar10_resnet18_modern` (`--config=cifar10_resnet18_modern`)."""

from resnet_jax.configs.cifar10_resnet18_modern import get_config  # noqa: F401
