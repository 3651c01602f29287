"""ResNets in Flax linen and their training system; the public face of the package."""

from resnet_jax.models import ResNet, create_model, list_models

__all__ = ["ResNet", "create_model", "list_models"]
