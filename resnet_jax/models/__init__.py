"""The generic ResNet, its blocks and the registry of named variants (flax only)."""

from resnet_jax.models.resnet import (MODELS, TORCHVISION_MODELS, ResNet, create_model,
                                      list_models, part_of)

__all__ = ["MODELS", "TORCHVISION_MODELS", "ResNet", "create_model", "list_models", "part_of"]
