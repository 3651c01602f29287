"""Batches for training and exact evaluation: device-resident arrays, or a grain host pipeline.

The order is a pure function of (seed, epoch): step s of the run reads the same examples however
often the run was interrupted, and each process reads only its own rows of every global batch.
"""

import logging
from collections.abc import Iterator
from typing import Any

import grain
from absl import flags
import numpy as np

from resnet_jax.data import catalogue
from resnet_jax.data.catalogue import DatasetInfo
from resnet_jax.data.transforms import eval_transform, random_resized_crop

DEVICE_RESIDENT = ("auto", "yes", "no")


def epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
  """The training order of epoch `epoch`."""
  return np.random.default_rng([seed, epoch]).permutation(n)


class _Loader:
  """Decodes and transforms rows of a source into a batch; picklable for grain's workers."""

  def __init__(self, source: Any, *, image_size: int, channels: int, crop_ratio: float,
               random_crop: bool, seed: int):
    self.source, self.image_size, self.channels = source, image_size, channels
    self.crop_ratio, self.random_crop, self.seed = crop_ratio, random_crop, seed

  def image(self, index: int, position: int | None = None) -> tuple[np.ndarray, int]:
    record = self.source[int(index)]
    if self.random_crop and position is not None:
      rng = np.random.default_rng([self.seed, position])  # independent of worker count
      return random_resized_crop(record["image"], rng, image_size=self.image_size,
                                 channels=self.channels), record["label"]
    return eval_transform(record["image"], image_size=self.image_size, channels=self.channels,
                          crop_ratio=self.crop_ratio), record["label"]

  def batch(self, indices: np.ndarray, positions: np.ndarray | None = None) -> dict:
    pairs = [self.image(i, None if positions is None else p)
             for i, p in zip(indices, positions if positions is not None else indices)]
    return {"image": np.stack([p[0] for p in pairs]),
            "label": np.asarray([p[1] for p in pairs], np.int32)}


class _TrainBatch:
  """grain map function: step number -> this process's training batch."""

  def __init__(self, pipeline: "Pipeline"):
    self.indices = pipeline.train_indices
    self.loader = pipeline._train_loader
    self.global_batch = pipeline.global_batch_size

  def __call__(self, step: int) -> dict:
    indices, rows = self.indices(step)
    positions = step * self.global_batch + rows
    return self.loader.batch(indices, positions)


class Pipeline:
  """Training batches from any step, and padded, masked evaluation batches.

  Attributes:
    device_resident: the whole dataset lives on the devices; batches carry only indices.
    arrays: when device-resident, {"train", "eval"} -> {"image", "label"} numpy arrays.
    steps_per_epoch: full global batches per epoch (training drops the last partial one).
    num_eval: examples in the eval split; num_eval_batches: global eval batches.
  """

  def __init__(self, data_config: Any, info: DatasetInfo, *, global_batch_size: int,
               eval_batch_size: int, seed: int, process_index: int = 0, process_count: int = 1):
    for what, size in (("train.batch_size", global_batch_size),
                       ("train.eval_batch_size", eval_batch_size)):
      if size <= 0 or size % process_count:
        raise ValueError(f"{what}={size} must be a positive multiple of the process count "
                         f"({process_count}).")
    mode = data_config.device_resident
    if mode not in DEVICE_RESIDENT:
      raise ValueError(f"data.device_resident must be one of {DEVICE_RESIDENT}, got {mode!r}.")
    self.info, self.seed = info, seed
    self.global_batch_size, self.eval_batch_size = global_batch_size, eval_batch_size
    self.process_index, self.process_count = process_index, process_count
    self.num_workers = data_config.num_workers
    self.num_train, self.num_eval = info.num_train, info.num_eval
    self.steps_per_epoch = info.num_train // global_batch_size
    self.num_eval_batches = -(-info.num_eval // eval_batch_size)
    train, evaluation, _, _ = catalogue.open_splits(data_config)
    h, _, channels = info.image_shape
    size = h if data_config.image_size else 0
    common = dict(image_size=size, channels=channels, crop_ratio=data_config.eval_crop_ratio,
                  seed=seed)
    self._train_loader = _Loader(train, random_crop=data_config.random_resized_crop, **common)
    self._eval_loader = _Loader(evaluation, random_crop=False, **common)
    nbytes = (info.num_train + info.num_eval) * int(np.prod(info.image_shape))
    self.device_resident = mode == "yes" or (
        mode == "auto" and not data_config.random_resized_crop and
        nbytes <= data_config.max_device_bytes)
    if self.device_resident and data_config.random_resized_crop:
      raise ValueError("data.random_resized_crop runs on the host; set data.device_resident to "
                       "auto or no.")
    self.arrays = None
    if self.device_resident:
      logging.info("Loading %s into device memory (%.1f MB).", info.name, nbytes / 1e6)
      self.arrays = {"train": self._train_loader.batch(np.arange(info.num_train)),
                     "eval": self._eval_loader.batch(np.arange(info.num_eval))}
    self._perm_cache: tuple[int, np.ndarray] | None = None

  def train_indices(self, step: int) -> tuple[np.ndarray, np.ndarray]:
    """(example indices, their rows in the global batch) of this process at `step`."""
    epoch, i = divmod(step, self.steps_per_epoch)
    if self._perm_cache is None or self._perm_cache[0] != epoch:
      self._perm_cache = (epoch, epoch_permutation(self.seed, epoch, self.num_train))
    local = self.global_batch_size // self.process_count
    rows = np.arange(self.process_index * local, (self.process_index + 1) * local)
    return self._perm_cache[1][i * self.global_batch_size + rows], rows

  def epoch_order(self, epoch: int) -> np.ndarray:
    """The whole training order of `epoch`; device-resident runs slice it on the device."""
    return epoch_permutation(self.seed, epoch, self.num_train).astype(np.int32)

  def train_batches(self, start_step: int = 0) -> Iterator[dict[str, np.ndarray]]:
    """This process's batches for steps start_step, start_step + 1, ... (endless).

    Device-resident: empty batches; the step takes its rows of `epoch_order` on the device.
    """
    if self.device_resident:
      while True:
        yield {}
    dataset = grain.MapDataset.range(start_step, 2**62).map(_TrainBatch(self)).to_iter_dataset()
    if self.num_workers > 0:
      # grain's workers read grain's absl flags; outside an absl app nobody parsed them, so
      # accept their defaults rather than failing in the workers.
      if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()
      dataset = dataset.mp_prefetch(grain.MultiprocessingOptions(num_workers=self.num_workers))
    yield from dataset

  def eval_indices(self, batch: int) -> tuple[np.ndarray, np.ndarray]:
    """(example indices, mask) of this process for global eval batch `batch`, padding masked."""
    local = self.eval_batch_size // self.process_count
    start = batch * self.eval_batch_size + self.process_index * local
    positions = np.arange(start, start + local)
    mask = positions < self.num_eval
    return np.where(mask, positions, 0), mask

  def eval_batches(self) -> Iterator[dict[str, np.ndarray]]:
    """Every eval example exactly once, in order; the last batch is padded and masked."""
    for b in range(self.num_eval_batches):
      indices, mask = self.eval_indices(b)
      if self.device_resident:
        yield {"index": indices.astype(np.int32), "mask": mask}
      else:
        yield {**self._eval_loader.batch(indices), "mask": mask}


def create_pipeline(data_config: Any, info: DatasetInfo, *, global_batch_size: int,
                    eval_batch_size: int, seed: int, process_index: int = 0,
                    process_count: int = 1) -> Pipeline:
  """The input pipeline of a run (see `Pipeline`)."""
  return Pipeline(data_config, info, global_batch_size=global_batch_size,
                  eval_batch_size=eval_batch_size, seed=seed, process_index=process_index,
                  process_count=process_count)
