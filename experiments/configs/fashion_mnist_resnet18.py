"""`--config=experiments/configs/fashion_mnist_resnet18.py`: the config `resnet_jax.configs.fashion_mnist_resnet18` (`--config=fashion_mnist_resnet18`)."""

from resnet_jax.configs.fashion_mnist_resnet18 import get_config  # noqa: F401
