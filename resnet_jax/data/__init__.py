"""Datasets by name (tfds, the embedded digits, image folders), input pipelines, augmentation."""

from resnet_jax.data import digits  # noqa: F401  (registers the "digits" tfds builder)
from resnet_jax.data.augment import augment_on_device, normalize
from resnet_jax.data.catalogue import DATASETS, DatasetInfo, get_info
from resnet_jax.data.pipeline import Pipeline, create_pipeline
from resnet_jax.data.transforms import eval_transform

__all__ = ["DATASETS", "DatasetInfo", "Pipeline", "augment_on_device", "create_pipeline",
           "eval_transform", "get_info", "normalize"]
