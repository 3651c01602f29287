"""The generic ResNet, its blocks and the registry of named networks (flax only)."""

from resnet_jax.models.blocks import BLOCKS, register_block
from resnet_jax.models.registry import (ARCHITECTURE_OPTIONS, MODELS, TORCHVISION_MODELS,
                                        create_model, describe_architecture, list_models,
                                        register_model)
from resnet_jax.models.resnet import ResNet

__all__ = ["ARCHITECTURE_OPTIONS", "BLOCKS", "MODELS", "TORCHVISION_MODELS", "ResNet",
           "create_model", "describe_architecture", "list_models", "register_block",
           "register_model"]
