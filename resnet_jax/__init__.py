"""ResNets in Flax linen and their training system; the public face of the package."""

import importlib

from resnet_jax.models import ResNet, create_model, list_models, register_block, register_model

__all__ = ["ResNet", "convert", "create_model", "list_models", "register_block", "register_model"]


def __getattr__(name: str):
  # `from resnet_jax import convert` (the weight converter) without importing it with the models.
  if name == "convert":
    return importlib.import_module("resnet_jax.interop.convert")
  raise AttributeError(f"module 'resnet_jax' has no attribute {name!r}")
