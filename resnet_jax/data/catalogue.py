"""The dataset catalogue: names, splits, normalisation, preparation; and `get_info`."""

import dataclasses
import importlib.util
import os
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from resnet_jax.data import digits  # noqa: F401  (registers the "digits" builder with tfds)
from resnet_jax.data import folder as folder_lib
from resnet_jax.data.transforms import eval_transform

IMAGENET_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
IMAGENET_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)
STATS_SAMPLE = 1000  # images used to estimate mean/std where none are published


@dataclasses.dataclass(frozen=True)
class Spec:
  """How to find and read one catalogued dataset."""

  tfds_name: str
  train_split: str = "train"
  eval_split: str = "test"
  mean: tuple[float, ...] | None = None  # None: estimated from the training split
  std: tuple[float, ...] | None = None
  needs_tensorflow_to_prepare: bool = True
  manual_files: tuple[str, ...] = ()


DATASETS: dict[str, Spec] = {
    "digits": Spec("digits", needs_tensorflow_to_prepare=False),
    "mnist": Spec("mnist", mean=(0.1307 * 255,), std=(0.3081 * 255,)),
    "fashion_mnist": Spec("fashion_mnist", mean=(0.2860 * 255,), std=(0.3530 * 255,)),
    "cifar10": Spec("cifar10", mean=(0.4914 * 255, 0.4822 * 255, 0.4465 * 255),
                    std=(0.2470 * 255, 0.2435 * 255, 0.2616 * 255)),
    "cifar100": Spec("cifar100", mean=(0.5071 * 255, 0.4865 * 255, 0.4409 * 255),
                     std=(0.2673 * 255, 0.2564 * 255, 0.2762 * 255)),
    "imagenet2012": Spec("imagenet2012", eval_split="validation", mean=IMAGENET_MEAN,
                         std=IMAGENET_STD,
                         manual_files=("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar")),
    "imagenette": Spec("imagenette", eval_split="validation", mean=IMAGENET_MEAN, std=IMAGENET_STD,
                       needs_tensorflow_to_prepare=False),
}
FOLDER_PREFIX = "folder:"


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What the model and the steps need to know about a dataset."""

  name: str
  num_classes: int
  class_names: tuple[str, ...]
  image_shape: tuple[int, int, int]  # (height, width, channels) as fed to the model
  num_train: int
  num_eval: int
  mean: tuple[float, ...]  # per channel, in 0..255 units
  std: tuple[float, ...]


def valid_names() -> str:
  return ", ".join(sorted(DATASETS)) + ", imagenette/<config>, folder:DIR"


def spec_for(name: str) -> Spec:
  """The catalogue entry for `name` (`imagenette/320px-v2` style configs included)."""
  base = name.split("/", 1)[0]
  if base not in DATASETS:
    raise ValueError(f"Unknown dataset {name!r}. Valid names: {valid_names()}.")
  return dataclasses.replace(DATASETS[base], tfds_name=name)


def _prepare(spec: Spec, data_dir: str) -> Any:
  """The tfds builder, downloaded and prepared as array_record if it is not yet."""
  builder = tfds.builder(spec.tfds_name, data_dir=data_dir or None,
                         file_format="array_record")
  if builder.is_prepared():
    return builder
  if spec.manual_files:
    manual_dir = os.path.join(os.fspath(builder.data_dir_root), "downloads", "manual")
    missing = [f for f in spec.manual_files if not os.path.exists(os.path.join(manual_dir, f))]
    if missing:
      raise FileNotFoundError(
          f"{spec.tfds_name} needs a manual download: get {', '.join(spec.manual_files)} from "
          f"https://image-net.org (after accepting its terms) and put them in {manual_dir} "
          f"(missing: {', '.join(missing)}). Then run the same command again; preparing it once "
          'needs TensorFlow: pip install -e ".[prepare]".')
  if spec.needs_tensorflow_to_prepare and importlib.util.find_spec("tensorflow") is None and \
      not _mocked():
    raise ImportError(
        f"Preparing {spec.tfds_name} (once, into {builder.data_dir_root}) needs TensorFlow, which "
        'is not installed: pip install -e ".[prepare]". Reading it afterwards does not.')
  builder.download_and_prepare(file_format="array_record")
  return builder


def _mocked() -> bool:
  # Under tfds.testing.mock_data, preparing is a no-op and sources are synthetic.
  return getattr(tfds.core.DatasetBuilder.download_and_prepare, "__name__", "") == \
      "mock_download_and_prepare"


def open_splits(data_config: Any) -> tuple[Any, Any, tuple[str, ...], Spec | None]:
  """(train source, eval source, class names, catalogue spec or None for folders)."""
  name = data_config.name
  if name.startswith(FOLDER_PREFIX):
    root = os.path.expanduser(name[len(FOLDER_PREFIX):])
    if not os.path.isdir(root):
      raise ValueError(f"Image folder {root!r} does not exist (from data.name={name!r}).")
    classes = folder_lib.find_classes(root)
    return (folder_lib.FolderSource(root, "train", classes),
            folder_lib.FolderSource(root, folder_lib.eval_folder(root), classes),
            tuple(classes), None)
  spec = spec_for(name)
  builder = _prepare(spec, data_config.data_dir)
  try:
    train = builder.as_data_source(spec.train_split)
    evaluation = builder.as_data_source(spec.eval_split)
  except Exception as e:  # noqa: BLE001 - tfds raises several types for the same cause
    raise RuntimeError(
        f"Cannot read {spec.tfds_name} from {builder.data_dir}: {e}. It must be prepared in the "
        "array_record format; delete that folder to have it prepared again.") from e
  label = builder.info.features["label"]
  return train, evaluation, tuple(label.names), spec


def _native_shape(source: Any, spec: Spec | None, data_config: Any) -> tuple[int, int, int]:
  if spec is None:  # a folder: look at every header
    modes, sizes = source.scan()
    channels = 1 if modes <= {"L", "1"} else 3
    if len(sizes) > 1 and not data_config.image_size:
      raise ValueError(f"Images in {source.root}/{source.split} have {len(sizes)} different sizes; "
                       "set --config.data.image_size=N to resize them to NxN.")
    w, h = next(iter(sizes))
    return h, w, channels
  shape = source[0]["image"].shape
  return shape[0], shape[1], shape[-1] if len(shape) == 3 else 1


def sample_indices(n: int, limit: int = STATS_SAMPLE) -> np.ndarray:
  """A fixed, spread-out subset of range(n) (all of it when n <= limit)."""
  return np.arange(n) if n <= limit else np.sort(np.random.RandomState(0).choice(n, limit, False))


def get_info(data_config: Any) -> DatasetInfo:
  """Describes (and if needed prepares) the dataset named by `data_config.name`.

  Args:
    data_config: the config's data section (name, data_dir, image_size, eval_crop_ratio,
      normalization).

  Returns:
    A `DatasetInfo`.

  Raises:
    ValueError / FileNotFoundError / ImportError: unknown names, missing manual downloads,
      preparation that needs TensorFlow, empty or unreadable image folders.
  """
  train, evaluation, classes, spec = open_splits(data_config)
  h, w, channels = _native_shape(train, spec, data_config)
  size = data_config.image_size
  shape = (size, size, channels) if size else (h, w, channels)
  if data_config.normalization == "imagenet":
    mean = IMAGENET_MEAN if channels == 3 else (float(np.mean(IMAGENET_MEAN)),)
    std = IMAGENET_STD if channels == 3 else (float(np.mean(IMAGENET_STD)),)
  elif data_config.normalization != "dataset":
    raise ValueError(f"Unknown data.normalization {data_config.normalization!r}; use dataset or "
                     "imagenet.")
  elif spec is not None and spec.mean is not None:
    mean, std = spec.mean, spec.std
  else:
    images = np.stack([eval_transform(train[int(i)]["image"], image_size=shape[0] if size else 0,
                                      channels=channels, crop_ratio=data_config.eval_crop_ratio)
                       for i in sample_indices(len(train))]).astype(np.float64)
    mean = tuple(float(m) for m in images.mean(axis=(0, 1, 2)))
    std = tuple(float(max(s, 1.0)) for s in images.std(axis=(0, 1, 2)))
  return DatasetInfo(name=data_config.name, num_classes=len(classes), class_names=classes,
                     image_shape=shape, num_train=len(train), num_eval=len(evaluation),
                     mean=tuple(map(float, mean)), std=tuple(map(float, std)))
