"""ResNets in Flax linen and their training system; the public face of the package.

The names below are imported on first use, so that a layer of the package (the data side, say)
can be imported without the others.
"""

import importlib

_EXPORTS = {
    "ResNet": "resnet_jax.models", "create_model": "resnet_jax.hub",
    "list_models": "resnet_jax.models", "register_block": "resnet_jax.models",
    "register_model": "resnet_jax.models", "list_weights": "resnet_jax.hub",
    "register_weights": "resnet_jax.hub",
}

__all__ = ["ResNet", "convert", "create_model", "list_models", "list_weights", "register_block",
           "register_model", "register_weights"]


def __getattr__(name: str):
  if name == "convert":  # `from resnet_jax import convert`: the weight converter module
    return importlib.import_module("resnet_jax.interop.convert")
  if name in _EXPORTS:
    return getattr(importlib.import_module(_EXPORTS[name]), name)
  raise AttributeError(f"module 'resnet_jax' has no attribute {name!r}")
