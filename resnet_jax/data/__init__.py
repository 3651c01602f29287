"""Datasets by name (tfds, the embedded digits, image folders, registered sources), input
pipelines, augmentation. Names are imported on first use, so that a light submodule (the decoder,
the transforms) does not pull in tensorflow-datasets or grain."""

import importlib

_EXPORTS = {
    "DatasetInfo": "sources", "Dataset": "sources", "open": "sources",
    "Splits": "sources", "register_source": "sources", "register_tfds": "sources",
    "check_same_classes": "sources", "identity_name": "sources",
    "Pipeline": "pipeline", "EpochPosition": "pipeline", "EpochSteps": "pipeline",
    "DeviceBatches": "device",
    "eval_transform": "transforms",
    "normalize": "augment", "register_augmentation": "augment",
    "device_augmentation": "augment", "host_augmentation": "augment",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
  if name not in _EXPORTS:
    raise AttributeError(f"module 'resnet_jax.data' has no attribute {name!r}")
  return getattr(importlib.import_module(f"resnet_jax.data.{_EXPORTS[name]}"), name)
