"""Dataset sources by name, one registry: tfds's datasets (prepared once as array_record, read
without TensorFlow), the embedded digits, `folder:DIR`, and any a fork registers; and `open`,
which opens one once for the whole run.

A source opens a dataset's two splits as random-access sequences of {"image": HWC uint8,
"label": int} records. A fork adds one from its own file:

    @register_source("stripes", usage="stripes (synthetic)")
    def stripes(data_config):
      return Splits(train=..., eval=..., class_names=("h", "v"), native_shape=lambda: (8, 8, 1))

and trains on it with --config.data.name=stripes.
"""

import dataclasses
import functools
import hashlib
import importlib.util
import logging
import os
import shutil
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from resnet_jax import files, hosts
from resnet_jax.data import digits  # noqa: F401  (registers the "digits" builder with tfds)
from resnet_jax.data import folder as folder_lib
from resnet_jax.data.transforms import IMAGENET_MEAN, IMAGENET_STD, Preprocessing, eval_transform
from resnet_jax.errors import InputNotFoundError, InvalidInputError, MissingDependencyError
from resnet_jax.registry import Registry

STATS_SAMPLE = 1000  # images used to estimate mean/std where none are published
DAY_S = 24 * 3600  # data.prepare_timeout_s's default: converting ImageNet takes hours
NORMALIZATIONS = ("dataset", "imagenet")
_IMAGENET_INSTRUCTIONS = (
    "imagenet2012 needs a manual download. Get ILSVRC2012_img_train.tar and "
    "ILSVRC2012_img_val.tar from https://image-net.org/download-images.php (after accepting its "
    "terms) and put both files in {manual_dir}/ (missing now: {missing}). Preparing them once "
    "needs TensorFlow: pip install -e \".[prepare]\"; then run the same command again, e.g. "
    "python -m experiments.train --config=imagenet_resnet50 "
    "--config.data.data_dir={data_dir} (the first run converts the archives to array_record, "
    "which takes hours; later runs read them without TensorFlow).")


@dataclasses.dataclass(frozen=True)
class Spec:
  """How to find, prepare and normalise one of tfds's datasets."""

  tfds_name: str
  train_split: str = "train"
  eval_split: str = "test"
  mean: tuple[float, ...] | None = None  # None: estimated from the training split
  std: tuple[float, ...] | None = None
  needs_tensorflow_to_prepare: bool = True  # tfds's own builders encode numpy images with TF
  manual_files: tuple[str, ...] = ()  # files the user must place in <data_dir>/downloads/manual
  manual_instructions: str = ""  # formatted with manual_dir, missing, data_dir
  configs: bool = False  # tfds builder configs, named as <name>/<config>


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
  # What the dataset is, saved with a run's checkpoints: name (a folder's absolute path), classes,
  # split sizes, and what the source adds (a tfds version).
  identity: dict[str, Any] = dataclasses.field(default_factory=dict)

  def preprocessing(self, crop_ratio: float, image_size: int = 0) -> Preprocessing:
    """How this dataset's images are prepared for evaluation (and so for predict), at
    `image_size` (0: the training size)."""
    return Preprocessing(image_size=image_size or self.image_shape[0],
                         channels=self.image_shape[2], crop_ratio=crop_ratio, mean=self.mean,
                         std=self.std)


@dataclasses.dataclass(frozen=True)
class Splits:
  """An opened dataset.

  Attributes:
    train, eval: random access (len, [i]) to {"image": HWC uint8, "label": int} records;
      picklable, for worker processes.
    class_names: one per label.
    native_shape: () -> (height, width, channels) of the stored images, height/width None
      where they vary; called once, by `open` (a folder checks its files then).
    mean, std: published per-channel statistics (0..255 units), or None to estimate them.
    identity: what, beyond its classes and split sizes, identifies this data (a folder's absolute
      path as "name", a tfds version); saved with a run's checkpoints.
  """

  train: Any
  eval: Any
  class_names: tuple[str, ...]
  native_shape: Callable[[], tuple[int | None, int | None, int]]
  mean: tuple[float, ...] | None = None
  std: tuple[float, ...] | None = None
  identity: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Source:
  """A registered dataset source: `open_splits(data_config) -> Splits`, how to name it, and for
  one of tfds's datasets its `Spec`.

  A `located` source's argument says where the data lies (folder:DIR), not what it is: a run on it
  is identified by the dataset's identity (its classes), so that a moved folder can be named again.
  """

  open_splits: Callable[[Any], Splits]
  usage: str
  located: bool = False
  spec: Spec | None = None  # a tfds dataset's (see register_tfds)


SOURCES: Registry[Source] = Registry("dataset source", "data.name")


def register_source(name: str, *, usage: str = "", located: bool = False) -> Callable:
  """Decorator: registers `open_splits(data_config) -> Splits` as the dataset source `name` (a
  data.name of `name` or, for sources taking an argument, `name:ARGUMENT`; `located`: the
  argument is where the data lies, see `Source`)."""
  def add(open_fn):
    SOURCES.register(name, Source(open_fn, usage or name, located))
    return open_fn
  return add


def valid_names() -> str:
  """The accepted data.name values, for error messages."""
  return ", ".join(source.usage for _, source in SOURCES.items())


def source_name(name: str) -> str:
  """The registered source a data.name belongs to: "folder:DIR" -> folder,
  "imagenette/320px-v2" -> imagenette, "cifar10:3.0.2" -> cifar10."""
  return name.split(":", 1)[0].split("/", 1)[0]


def identity_name(name: str) -> str:
  """The part of a data.name that a resumed run must share: a located source's name alone."""
  source = SOURCES.get(source_name(name))
  return source_name(name) if source is not None and source.located else name


def check_same_classes(saved: dict[str, Any] | None, info: DatasetInfo, *, action: str,
                       where: str, trained: str, remedy: str) -> None:
  """Refuses a dataset whose classes differ from those a checkpoint was trained on; warns about
  any other change of the dataset's identity (its place, version, or split sizes).

  Args:
    saved: the dataset identity saved with the checkpoint (None: an older version saved none).
    info: the dataset now.
    action, where, trained, remedy: the message's parts: "resume", the run folder, "its
      checkpoint 4", "use a new --workdir".

  Raises:
    InvalidInputError: naming the classes removed, added or reordered.
  """
  if not saved:
    return
  before, now = list(saved.get("classes", info.class_names)), list(info.class_names)
  if before != now:
    removed, added = [c for c in before if c not in now], [c for c in now if c not in before]
    changes = "; ".join([f"removed {', '.join(removed)}"] * bool(removed) +
                        [f"added {', '.join(added)}"] * bool(added)) or "the same names reordered"
    count = (f"now has {len(now)} classes, but {trained} was trained on {len(before)}"
             if len(now) != len(before) else f"has other classes than {trained} was trained on")
    raise InvalidInputError(f"Cannot {action} {where}: {info.name} {count} ({changes}); restore "
                            f"the dataset's classes, or {remedy}.")
  for key, value in info.identity.items():
    if key in saved and saved[key] != value:
      logging.warning("%s: the dataset's %s was %r when %s was saved, now %r.", where, key,
                      saved[key], trained, value)


def _open_splits(data_config: Any) -> Splits:
  """Opens (preparing it first if needed) the dataset named by `data_config.name`.

  Raises:
    InvalidInputError: an unknown name, listing the valid ones.
  """
  name = data_config.name
  if source_name(name) not in SOURCES:
    raise InvalidInputError(f"Unknown dataset {name!r} (data.name). Valid names: "
                            f"{valid_names()}.")
  return SOURCES[source_name(name)].open_splits(data_config)


def _mocked() -> bool:
  # Under tfds.testing.mock_data preparing is a no-op and the sources are synthetic.
  return getattr(tfds.core.DatasetBuilder.download_and_prepare, "__name__", "") == \
      "mock_download_and_prepare"


def _prepare(spec: Spec, data_dir: str, timeout_s: int, mirror_dir: str = "") -> Any:
  """The tfds builder, downloaded and prepared as array_record if it is not yet: by process 0
  alone in a multi-process run, the others waiting for it (at most `timeout_s`) and then reading
  what it wrote, so that no two processes prepare the same folder at once.

  A `data_dir` in a bucket holds the prepared dataset; array_record's reader opens local files
  only, so each host reads a copy in `mirror_dir` (see `_mirrored`)."""
  if data_dir and files.is_remote(data_dir):
    return _mirrored(spec, files.resolve(data_dir), timeout_s, mirror_dir)
  data_dir = files.resolve(data_dir) if data_dir else None
  open_builder = lambda: tfds.builder(spec.tfds_name, data_dir=data_dir,
                                      file_format="array_record")
  builder = open_builder()
  if _mocked():
    return builder
  root = os.fspath(builder.data_dir_root)
  barrier = f"prepare {spec.tfds_name}"  # the same on every host, wherever its data_dir lies
  if jax.process_index() != 0:
    hosts.wait_for_all(barrier, f"process 0 to prepare {spec.tfds_name}", timeout_s)
    builder = open_builder()  # what process 0 wrote
    if not builder.is_prepared():
      raise InputNotFoundError(
          f"Process 0 prepared {spec.tfds_name} in {root}, which process {jax.process_index()} "
          "does not see: put data.data_dir on storage that every host reaches.")
    return builder
  _prepare_here(spec, builder, root)
  hosts.wait_for_all(barrier, f"the other processes to reach {spec.tfds_name}", timeout_s)
  return builder


# Written last into a prepared dataset's folder (tfds writes it last too): a copy holding it is
# complete.
_COMPLETE = "dataset_info.json"


def _mirrored(spec: Spec, url: str, timeout_s: int, mirror_dir: str) -> Any:
  """The builder of a dataset kept prepared in the bucket folder `url`, read from this host's
  copy in `mirror_dir` (default ~/.cache/resnet_jax/tfds/<hash of url>).

  Process 0 prepares it, when the bucket lacks it, in the local copy and uploads it (its
  dataset_info.json last); then every host downloads what it lacks (into a temporary folder
  renamed when complete, so processes sharing a host never read a partial copy).
  """
  local = files.resolve(mirror_dir) if mirror_dir else os.path.join(
      os.path.expanduser("~"), ".cache", "resnet_jax", "tfds",
      hashlib.sha1(url.encode()).hexdigest()[:16])
  open_builder = lambda: tfds.builder(spec.tfds_name, data_dir=local, file_format="array_record")
  builder = open_builder()
  if _mocked():
    return builder
  folder = os.path.relpath(os.fspath(builder.data_dir), local)  # name[/config]/version
  remote, copy = f"{url}/{folder}", os.path.join(local, folder)
  barrier = f"prepare {spec.tfds_name}"
  if jax.process_index() == 0 and not epath.Path(remote, _COMPLETE).exists():
    _prepare_here(spec, builder, local)
    logging.info("Uploading %s to %s.", copy, remote)
    _copy_tree(copy, remote)
  hosts.wait_for_all(barrier, f"process 0 to prepare {spec.tfds_name} in {url}", timeout_s)
  if not os.path.exists(os.path.join(copy, _COMPLETE)):
    if not epath.Path(remote, _COMPLETE).exists():
      raise InputNotFoundError(f"{remote} holds no prepared {spec.tfds_name} (no {_COMPLETE}); "
                               "see process 0's log, or delete that folder to prepare it again.")
    logging.info("Copying %s to %s.", remote, copy)
    partial = f"{copy}.tmp-{os.getpid()}"
    _copy_tree(remote, partial)
    try:
      os.rename(partial, copy)
    except OSError:  # another process of this host completed it first
      shutil.rmtree(partial, ignore_errors=True)
  return open_builder()


def _copy_tree(source: str, target: str) -> None:
  """Copies the files under `source` to `target` (local paths or bucket URLs), _COMPLETE last."""
  # A bucket's walk gives its folders without the scheme: paths are taken relative to `source`'s.
  base = source.split("://", 1)[-1]
  names = [os.path.relpath(os.path.join(os.fspath(root).split("://", 1)[-1], name), base)
           for root, _, names in epath.Path(source).walk() for name in names]
  for name in sorted(names, key=lambda n: os.path.basename(n) == _COMPLETE):
    destination = epath.Path(target, name)
    destination.parent.mkdir(parents=True, exist_ok=True)
    with epath.Path(source, name).open("rb") as reader, destination.open("wb") as writer:
      shutil.copyfileobj(reader, writer, 16 * 2**20)


def _prepare_here(spec: Spec, builder: Any, root: str) -> None:
  """Prepares `builder`'s dataset as array_record in `root` unless it is already there (the work
  of process 0 alone)."""
  if not builder.is_prepared():
    _check_preparable(spec, root)
    logging.info("Preparing %s in %s (once, for every process).", spec.tfds_name, root)
    builder.download_and_prepare(file_format="array_record")


def _check_preparable(spec: Spec, root: str) -> None:
  """Refuses a preparation that cannot succeed here: a missing manual download, or TensorFlow."""
  if spec.manual_files:
    manual_dir = os.path.join(root, "downloads", "manual")
    missing = [f for f in spec.manual_files if not epath.Path(manual_dir, f).exists()]
    if missing:
      raise InputNotFoundError(spec.manual_instructions.format(
          manual_dir=manual_dir, missing=", ".join(missing), data_dir=root))
  if spec.needs_tensorflow_to_prepare and importlib.util.find_spec("tensorflow") is None:
    raise MissingDependencyError(
        f"Preparing {spec.tfds_name} (once, into {root}) needs TensorFlow, which is not "
        'installed: pip install -e ".[prepare]". Reading it afterwards does not; or set '
        "--config.data.data_dir to a folder where it is already prepared as array_record.")


def _tfds_source(builder: Any, split: str) -> Any:
  plain = not any(ch in split for ch in "[+")  # split expressions are left to tfds to check
  if plain and not _mocked() and split not in builder.info.splits:
    raise InvalidInputError(f"{builder.name} has no split {split!r}; it has "
                            f"{', '.join(sorted(builder.info.splits))} (data.eval_split).")
  try:
    return builder.as_data_source(split)
  except Exception as e:  # noqa: BLE001 - tfds raises several types for the same cause
    raise InvalidInputError(
        f"Cannot read {builder.name} from {builder.data_dir}: {e}. It must be prepared in the "
        "array_record format; delete that folder to have it prepared again.") from e


def _open_tfds(spec: Spec, data_config: Any) -> Splits:
  """A tfds dataset, prepared as array_record the first time."""
  name = data_config.name
  if "/" in name and not spec.configs:
    raise InvalidInputError(f"Unknown dataset {name!r} (data.name): {spec.tfds_name} has no "
                            f"configs. Valid names: {valid_names()}.")
  spec = dataclasses.replace(spec, tfds_name=name)
  builder = _prepare(spec, data_config.data_dir, data_config.get("prepare_timeout_s", DAY_S),
                     data_config.get("mirror_dir", ""))
  train = _tfds_source(builder, spec.train_split)
  evaluation = _tfds_source(builder, data_config.get("eval_split", "") or spec.eval_split)

  def native_shape():
    h, w, c = train.dataset_info.features["image"].shape
    if (h is None or w is None) and not data_config.image_size:
      raise InvalidInputError(f"{spec.tfds_name}'s images differ in size; set "
                              "--config.data.image_size=N to resize them to NxN.")
    return h, w, c

  return Splits(train, evaluation, tuple(builder.info.features["label"].names), native_shape,
                spec.mean, spec.std, identity={"version": str(builder.info.version)})


def register_tfds(name: str, *, usage: str = "", **spec_fields: Any) -> Source:
  """Registers one of tfds's datasets as the dataset source `name`.

  Args:
    name: its tfds name, and the data.name that selects it.
    usage: how error messages list it (default: `name`).
    **spec_fields: the rest of its `Spec` (splits, published mean/std, manual files, ...).

  Returns:
    The registered source; its `spec` is the dataset's `Spec`.
  """
  spec = Spec(name, **spec_fields)
  return SOURCES.register(name, Source(functools.partial(_open_tfds, spec), usage or name,
                                       spec=spec))


register_tfds("digits", needs_tensorflow_to_prepare=False)
register_tfds("mnist", mean=(0.1307 * 255,), std=(0.3081 * 255,))
register_tfds("fashion_mnist", mean=(0.2860 * 255,), std=(0.3530 * 255,))
register_tfds("cifar10", mean=(0.4914 * 255, 0.4822 * 255, 0.4465 * 255),
              std=(0.2470 * 255, 0.2435 * 255, 0.2616 * 255))
register_tfds("cifar100", mean=(0.5071 * 255, 0.4865 * 255, 0.4409 * 255),
              std=(0.2673 * 255, 0.2564 * 255, 0.2762 * 255))
register_tfds("imagenet2012", eval_split="validation", mean=IMAGENET_MEAN, std=IMAGENET_STD,
              manual_files=("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar"),
              manual_instructions=_IMAGENET_INSTRUCTIONS)
# tfds's imagenette builder lists its files with tf.io.gfile, so preparing it needs TF too.
register_tfds("imagenette", usage="imagenette (also imagenette/<config>, e.g. imagenette/320px-v2)",
              eval_split="validation", mean=IMAGENET_MEAN, std=IMAGENET_STD, configs=True)


@register_source("folder", usage="folder:DIR for images in DIR/train/<class>/ and "
                 "DIR/test/<class>/", located=True)
def _open_folder(data_config: Any) -> Splits:
  """Image files in class folders (see `folder`)."""
  path = data_config.name.partition(":")[2]
  if not path:
    raise InvalidInputError("data.name=folder:DIR needs the folder, e.g. folder:~/images.")
  # Absolute: worker processes need not share this process's working directory.
  root = files.resolve(path)
  train, evaluation, classes = folder_lib.open_folder(root, data_config.get("eval_split", ""))
  return Splits(train, evaluation, tuple(classes), lambda: folder_lib.native_shape(
      [train, evaluation], data_config.image_size, data_config.get("verify_images", "auto")),
      identity={"name": f"folder:{root}"})


def _check_config(data_config: Any) -> None:
  if data_config.normalization not in NORMALIZATIONS:
    raise InvalidInputError(f"data.normalization={data_config.normalization!r}; use one of "
                            f"{NORMALIZATIONS}.")
  if data_config.image_size < 0:
    raise InvalidInputError(f"data.image_size={data_config.image_size}; use N > 0 to resize to "
                            "NxN, or 0 for the native size.")
  if not 0.0 < data_config.eval_crop_ratio <= 1.0:
    raise InvalidInputError(f"data.eval_crop_ratio={data_config.eval_crop_ratio} must be in "
                            "(0, 1] (1: resize the whole image; 0.875: ImageNet's 256 -> 224 "
                            "central crop).")


def eval_geometry(data_config: Any) -> tuple[int, float]:
  """(evaluation crop side, crop ratio): `data.eval_crop` (0: `data.image_size`) out of a shorter
  side resized to `data.eval_resize` (0: crop / `data.eval_crop_ratio`); torchvision's recipes
  train at 176 and evaluate a 224 crop of 232 (`eval_crop=224, eval_resize=232`).

  Raises:
    InvalidInputError: a crop larger than the resize, or a negative size.
  """
  crop = int(data_config.get("eval_crop", 0)) or data_config.image_size
  resize = int(data_config.get("eval_resize", 0))
  if min(crop, resize) < 0 or (resize and not crop):
    raise InvalidInputError(f"data.eval_crop={data_config.get('eval_crop', 0)} and "
                            f"data.eval_resize={resize} must be >= 0, with a crop (or "
                            "data.image_size) when eval_resize is set.")
  if resize and resize < crop:
    raise InvalidInputError(f"data.eval_resize={resize} is smaller than the evaluation crop "
                            f"({crop}); resize to at least the crop.")
  return crop, crop / resize if resize else data_config.eval_crop_ratio


def sample_indices(n: int, limit: int = STATS_SAMPLE) -> np.ndarray:
  """A fixed, spread-out subset of range(n) (all of it when n <= limit)."""
  return np.arange(n) if n <= limit else np.sort(np.random.RandomState(0).choice(n, limit, False))


def estimate_mean_std(records: Any, *, image_size: int, channels: int,
                      crop_ratio: float) -> tuple[tuple[float, ...], tuple[float, ...]]:
  """Per-channel mean and std (0..255 units) of a fixed sample of `records`, as preprocessed.

  Args:
    records: random access to records {"image", "label"}.
    image_size, channels, crop_ratio: `eval_transform`'s arguments.

  Returns:
    (mean, std), `channels` floats each; std at least 1 so that constant data stays finite.
  """
  total = np.zeros(channels)
  total_sq = np.zeros(channels)
  count = 0
  for i in sample_indices(len(records)):
    image = eval_transform(records[int(i)]["image"], image_size=image_size, channels=channels,
                           crop_ratio=crop_ratio).reshape(-1, channels).astype(np.float64)
    total += image.sum(0)
    total_sq += np.square(image).sum(0)
    count += image.shape[0]
  mean = total / count
  std = np.sqrt(np.maximum(total_sq / count - np.square(mean), 0.0))
  return tuple(float(m) for m in mean), tuple(float(max(s, 1.0)) for s in std)


@dataclasses.dataclass(frozen=True)
class Dataset:
  """An opened dataset: what the model and the steps need to know of it, and its records."""

  info: DatasetInfo
  splits: Splits | None  # None: a stand-in without records (the benchmark's synthetic data)


def open(data_config: Any) -> Dataset:  # noqa: A001 - data.open, as the builtin is for files
  """Opens (and if needed prepares) the dataset named by `data_config.name`, and describes it.

  Every problem with the data is raised here, before anything is compiled; the pipeline reads the
  splits opened here.

  Args:
    data_config: the config's data section (name, data_dir, eval_split if present, image_size,
      eval_crop_ratio, normalization).

  Returns:
    A `Dataset`.

  Raises:
    InvalidInputError: an unknown name or split, an image folder without classes or images,
      images of different sizes without data.image_size, a bad normalization or crop ratio.
    FileNotFoundError: a manual download (imagenet2012) is missing; the message says what to put
      where.
    ImportError: preparing the dataset needs TensorFlow, which is not installed.
    decode.ImageReadError (an InvalidInputError): a file in an image folder is not an image.
  """
  _check_config(data_config)
  splits = _open_splits(data_config)
  h, w, channels = splits.native_shape()
  size = data_config.image_size
  shape = (size, size, channels) if size else (h, w, channels)
  if data_config.normalization == "imagenet":
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    if channels == 1:  # grey images: one channel with ImageNet's average statistics
      mean, std = (float(np.mean(mean)),), (float(np.mean(std)),)
  elif splits.mean is not None:
    mean, std = splits.mean, splits.std
  else:
    mean, std = estimate_mean_std(splits.train, image_size=size, channels=channels,
                                  crop_ratio=data_config.eval_crop_ratio)
  identity = {"name": data_config.name, **splits.identity,
              "classes": list(splits.class_names), "num_train": len(splits.train),
              "num_eval": len(splits.eval)}
  info = DatasetInfo(name=data_config.name, num_classes=len(splits.class_names),
                     class_names=tuple(splits.class_names), image_shape=shape,
                     num_train=len(splits.train), num_eval=len(splits.eval),
                     mean=tuple(map(float, mean)), std=tuple(map(float, std)), identity=identity)
  return Dataset(info, splits)
