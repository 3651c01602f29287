"""Batches for training and exact evaluation: device-resident arrays, or a grain host pipeline.

The order is a pure function of (seed, epoch): step s of the run reads the same examples however
often the run was interrupted, and each process reads only its own rows of every global batch.
`EpochSteps` maps a run's steps onto its epochs; a run resumed with another batch size
(train.elastic) continues the interrupted epoch from the example it stopped at.
Host augmentation draws from (seed, global example position), so it does not depend on the
number of worker processes either. `train_feed`/`eval_feed` place what the compiled steps read, and
`device_batches` gives the device functions that turn it into the steps' batches.
"""

import collections
import dataclasses
import itertools
import logging
import signal
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import grain
import numpy as np

from resnet_jax.data import augment
from resnet_jax.data.device import DeviceBatches
from resnet_jax.data.erasing import Erasing
from resnet_jax.data.mixing import Mixing
from resnet_jax.data.sources import Dataset, eval_geometry
from resnet_jax.data.transforms import eval_transform
from resnet_jax.errors import InvalidInputError, MissingSetupError, check_divisible

DEVICE_RESIDENT = ("auto", "yes", "no")
# Tags the augmentation's random streams so that they never coincide with the epoch orders'
# (default_rng([seed, epoch])) for any position.
AUGMENT_STREAM = 1
LOAD_CHUNK = 1024  # examples per task when loading a whole split for device residency
# Starting worker processes takes seconds (spawn, imports): more than decoding a few thousand
# small images in this process, so small splits are loaded without them.
MIN_WORKER_LOAD = 16 * LOAD_CHUNK
MAX_STEP = 2**62  # "endless" for grain's range dataset


def epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
  """The training order of epoch `epoch`: a permutation of range(n)."""
  return np.random.default_rng([seed, epoch]).permutation(n)


def repeated_sequence(permutation: np.ndarray, repeats: int, replicas: int,
                      global_batch_size: int) -> np.ndarray:
  """Repeated augmentation (timm's RepeatAugSampler, torchvision's RASampler): each example of
  `permutation` `repeats` times in a row, padded from its start to a multiple of `replicas`, dealt
  to the replicas in turn (replica r reads items r, r + replicas, ...), so that an example's copies
  land on different replicas; laid out by global batch (replica r's rows of batch b are its items
  b x rows ... (b + 1) x rows). Of the same length as `permutation`: an epoch keeps its length and
  reads about 1 / repeats of the examples."""
  n = len(permutation)
  items = np.repeat(permutation, repeats)
  total = -(-n * repeats // replicas) * replicas
  items = np.concatenate([items, items[:total - len(items)]])
  rows = global_batch_size // replicas
  position = np.arange(n)
  batch, rest = np.divmod(position, global_batch_size)
  replica, row = np.divmod(rest, rows)
  return items[((batch * rows + row) * replicas + replica) % len(items)]


@dataclasses.dataclass(frozen=True)
class EpochPosition:
  """How far a run has read its training data: the first `examples` of epoch `epoch`'s order."""

  epoch: int = 0
  examples: int = 0


@dataclasses.dataclass(frozen=True)
class EpochSteps:
  """Which examples each step of a run reads, at one global batch size.

  Each epoch reads whole batches of its order and drops the examples that do not fill one. A run
  that never changed its batch size reads batch s % steps_per_epoch of epoch s // steps_per_epoch
  at step s. A run resumed with another batch size (`resume`) finishes the interrupted epoch from
  the example it stopped at, with the remaining full batches of the new size (the last examples
  that do not fill one are dropped, as every epoch's remainder is), and numbers them so that the
  epoch ends where an uninterrupted run at the new size ends it: from there on, its schedule step
  (`step + step_offset`) is that run's step, and every later epoch is that run's epoch.

  Attributes:
    num_train, global_batch_size: the training split and the batch size.
    step_offset: schedule step - step (0 unless the batch size changed on a resume).
    resumed_epoch, shift: epoch `resumed_epoch`'s batch i starts at example
      i * global_batch_size + shift of its order (shift 0 in the other epochs).
    repeats, replicas: each epoch's order repeats its examples across the replicas
      (`data.repeated_augmentations`), laid out for this batch size.
  """

  num_train: int
  global_batch_size: int
  step_offset: int = 0
  resumed_epoch: int = 0
  shift: int = 0
  repeats: int = 1  # repeated augmentation (`repeated_sequence`) over `replicas`
  replicas: int = 1

  @property
  def steps_per_epoch(self) -> int:
    return self.num_train // self.global_batch_size

  @classmethod
  def resume(cls, position: EpochPosition, step: int, *, num_train: int,
             global_batch_size: int, repeats: int = 1, replicas: int = 1) -> "EpochSteps":
    """The steps of a run that continues at `position`, as step `step`, with this batch size."""
    steps = cls(num_train, global_batch_size, repeats=repeats, replicas=replicas)
    remaining = (num_train - position.examples) // global_batch_size  # full batches left
    schedule_step = (position.epoch + 1) * steps.steps_per_epoch - remaining
    return dataclasses.replace(
        steps, step_offset=schedule_step - step, resumed_epoch=position.epoch,
        shift=position.examples - (steps.steps_per_epoch - remaining) * global_batch_size)

  def schedule_step(self, step: int) -> int:
    """The step of an uninterrupted run at this batch size that stands where step `step` does."""
    return step + self.step_offset

  def epoch(self, step: int) -> int:
    return self.schedule_step(step) // self.steps_per_epoch

  def position(self, step: int) -> EpochPosition:
    """Where the run stands after its steps before `step`."""
    epoch, batch = divmod(self.schedule_step(step), self.steps_per_epoch)
    shift = self.shift if epoch == self.resumed_epoch else 0
    return EpochPosition(epoch, batch * self.global_batch_size + shift)

  def order(self, seed: int, epoch: int) -> np.ndarray:
    """Epoch `epoch`'s examples laid out by step: step s of the epoch reads
    [(s % steps_per_epoch) * global_batch_size, ... + global_batch_size), on the host and on the
    devices alike (`DeviceBatches`), whatever the offset of the run's steps."""
    batch, steps_per_epoch = self.global_batch_size, self.steps_per_epoch
    slot = np.arange(steps_per_epoch * batch)
    # The schedule's batch that the steps at this slot read, then its examples; a slot of a step
    # before the resumed point reads anything (it is never run), hence the modulo.
    source = (slot // batch + self.step_offset) % steps_per_epoch * batch + slot % batch
    shift = self.shift if epoch == self.resumed_epoch else 0
    sequence = epoch_permutation(seed, epoch, self.num_train)
    if self.repeats > 1:
      sequence = repeated_sequence(sequence, self.repeats, self.replicas, self.global_batch_size)
    return sequence[(source + shift) % self.num_train]


class _Reader:
  """Decodes and preprocesses a split's records into batches; picklable for grain's workers."""

  def __init__(self, records: Any, *, image_size: int, channels: int, crop_ratio: float,
               size: tuple[int, int], host_stage: augment.Stage = (), seed: int = 0):
    self.records, self.image_size, self.channels = records, image_size, channels
    self.crop_ratio, self.size, self.host_stage, self.seed = crop_ratio, size, host_stage, seed

  def _resize(self, image: np.ndarray) -> np.ndarray:
    return eval_transform(image, image_size=self.image_size, channels=self.channels,
                          crop_ratio=self.crop_ratio)

  def batch(self, indices: np.ndarray, positions: np.ndarray | None = None) -> dict:
    """{"image", "label"} for `indices`; the host augmentations when given the examples'
    positions in the run (each example's randomness comes from its position)."""
    # One record at a time: as fast as tfds's __getitems__ here, and tfds's mock_data breaks that.
    records = [self.records[int(i)] for i in indices]
    if positions is not None and self.host_stage:
      images = [augment.apply_on_host(
          r["image"], self.host_stage, np.random.default_rng([self.seed, AUGMENT_STREAM, int(p)]),
          size=self.size, channels=self.channels, resize=self._resize)
                for r, p in zip(records, positions)]
    else:
      images = [self._resize(r["image"]) for r in records]
    return {"image": np.stack(images), "label": np.asarray([r["label"] for r in records],
                                                             np.int32)}


class _TrainIndices:
  """step -> this process's example indices and their positions in the run; picklable."""

  def __init__(self, *, seed: int, steps: EpochSteps, process_index: int, process_count: int):
    self.seed, self.steps = seed, steps
    local = steps.global_batch_size // process_count
    self.rows = np.arange(process_index * local, (process_index + 1) * local)
    self._cache: tuple[int, np.ndarray] | None = None

  def __call__(self, step: int) -> tuple[np.ndarray, np.ndarray]:
    epoch, batch = self.steps.epoch(int(step)), self.steps.global_batch_size
    if self._cache is None or self._cache[0] != epoch:
      self._cache = (epoch, self.steps.order(self.seed, epoch))
    indices = self._cache[1][int(step) % self.steps.steps_per_epoch * batch + self.rows]
    return indices, int(step) * batch + self.rows


class _TrainBatch:
  """grain map function: step -> this process's decoded training batch."""

  def __init__(self, indices: _TrainIndices, reader: _Reader):
    self.indices, self.reader = indices, reader

  def __call__(self, step: int) -> dict:
    indices, positions = self.indices(step)
    return self.reader.batch(indices, positions)


class _EvalBatch:
  """grain map function: global eval batch number -> this process's rows, padding masked."""

  def __init__(self, *, num_eval: int, eval_batch_size: int, process_index: int,
               process_count: int, reader: _Reader | None):
    self.num_eval, self.eval_batch_size, self.reader = num_eval, eval_batch_size, reader
    self.local = eval_batch_size // process_count
    self.offset = process_index * self.local

  def __call__(self, batch: int) -> dict:
    start = int(batch) * self.eval_batch_size + self.offset
    positions = np.arange(start, start + self.local)
    mask = positions < self.num_eval
    indices = np.where(mask, positions, 0)  # padding repeats example 0; the mask drops it
    if self.reader is None:
      return {"index": indices.astype(np.int32), "mask": mask}
    return {**self.reader.batch(indices), "mask": mask}


class _LoadChunk:
  """grain map function: chunk number -> preprocessed examples of a whole split."""

  def __init__(self, reader: _Reader, n: int):
    self.reader, self.n = reader, n

  def __call__(self, chunk: int) -> dict:
    return self.reader.batch(np.arange(chunk * LOAD_CHUNK, min((chunk + 1) * LOAD_CHUNK, self.n)))


def _explain_unparsed_flags(iterator: Iterator[dict]) -> Iterator[dict]:
  """`iterator`, whose first element grain's worker start-up computes; it reads grain's absl
  flags and refuses them unparsed (outside an absl app), so say what to do."""
  try:
    first = next(iterator)
  except StopIteration:
    return
  except Exception as e:  # noqa: BLE001 - matched by name: this module does not use absl
    if type(e).__name__ != "UnparsedFlagAccessError":
      raise
    raise MissingSetupError("data.num_workers > 0 starts grain worker processes, which read absl "
                            "flags that no one has parsed: run inside absl.app.run (as "
                            "the commands do), call absl.flags.FLAGS.mark_as_parsed() first, or "
                            "set data.num_workers=0.") from e
  yield first
  yield from iterator


def _closing(iterator: Any) -> Iterator[dict]:
  """A grain worker iterator's elements; closed once exhausted or dropped, so that its workers
  stop when the loop ends rather than at the interpreter's exit."""
  try:
    yield from _explain_unparsed_flags(iterator)
  finally:
    iterator.close()


def _leave_stops_to_the_trainer(worker_index: int, worker_count: int) -> None:
  """grain worker start-up: ignore the stop signals that reach a whole process group (Ctrl-C from
  a terminal, SIGTERM from a scheduler).

  The trainer alone answers them: it finishes its step, checkpoints, then closes the pipeline,
  which stops the workers (grain kills one that does not stop). A worker stopped first would
  print a KeyboardInterrupt traceback, or starve the trainer before it could save.
  """
  del worker_index, worker_count
  for signum in (signal.SIGINT, signal.SIGTERM):
    signal.signal(signum, signal.SIG_IGN)


# Elements (batches) each worker process, or the one decoding thread, computes ahead.
BATCHES_AHEAD = 2


def _stream(fn: Callable[[int], dict], start: int, stop: int, num_workers: int) -> Iterator[dict]:
  """fn(start), fn(start + 1), ... fn(stop - 1) in order, computed ahead by grain.

  Args:
    fn: a picklable function of the element number.
    start, stop: the element numbers.
    num_workers: worker processes (each computes whole elements); 0: one background thread.

  Returns:
    An iterator over the elements.
  """
  if num_workers > 0:
    # The workers are the parallelism; threads inside them would only multiply the memory held
    # in flight (grain's default is 16 threads and 500 buffered elements per process).
    dataset = grain.MapDataset.range(start, stop).map(fn).to_iter_dataset(
        grain.ReadOptions(num_threads=0, prefetch_buffer_size=0))
    dataset = dataset.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=num_workers, per_worker_buffer_size=BATCHES_AHEAD),
        worker_init_fn=_leave_stops_to_the_trainer)
    return _closing(iter(dataset))
  # One thread decodes the next batches while the device runs (Pillow and OpenCV release the GIL).
  dataset = grain.MapDataset.range(start, stop).map(fn).to_iter_dataset(
      grain.ReadOptions(num_threads=1, prefetch_buffer_size=BATCHES_AHEAD))
  return iter(dataset)


class Placement(Protocol):
  """Where batches go: the parallel runner (`resnet_jax.train.parallel`)."""

  def shard_batch(self, batch: dict[str, np.ndarray]) -> Any: ...

  def replicate(self, tree: Any) -> Any: ...


def _ahead(iterator: Iterator[dict], placement: Placement, depth: int = 2) -> Iterator[Any]:
  """Moves batches to the devices `depth` steps ahead of their use."""
  queue = collections.deque()
  for batch in iterator:
    queue.append(placement.shard_batch(batch))
    if len(queue) > depth:
      yield queue.popleft()
  yield from queue


class Pipeline:
  """Training batches from any step, and padded, masked evaluation batches.

  Attributes:
    device_resident: the whole dataset lives on the devices; training sends only each epoch's
      order, evaluation only indices.
    arrays: when device-resident, {"train", "eval"} -> {"image": uint8 [N, H, W, C],
      "label": int32 [N]} numpy arrays, preprocessed by `eval_transform`; else None.
    steps_per_epoch: full global batches per epoch (training drops the last partial one).
    num_train, num_eval: examples in the splits.
    num_eval_batches: global eval batches (the last one padded).
  """

  def __init__(self, data_config: Any, dataset: Dataset, *, global_batch_size: int,
               eval_batch_size: int, seed: int, process_index: int = 0, process_count: int = 1,
               replicas: int = 1):
    """Reads `dataset`'s splits for one process.

    Args:
      data_config: the config's data section (image_size, eval_crop_ratio, the augmentations,
        device_resident, max_device_bytes, num_workers).
      dataset: `data.open(data_config)`.
      global_batch_size: training examples per step over all processes.
      eval_batch_size: evaluation examples per batch over all processes.
      seed: decides the epoch orders and the host augmentation.
      process_index, process_count: this process and how many share each batch.
      replicas: the devices that share each batch, over all processes (for repeated
        augmentation's layout).
    """
    # Each process reads an equal share of every batch.
    check_divisible(global_batch_size, process_count, "train.batch_size", "process count")
    check_divisible(eval_batch_size, process_count, "train.eval_batch_size", "process count")
    if not 0 <= process_index < process_count:
      raise InvalidInputError(f"process_index={process_index} is not in [0, {process_count}).")
    mode = data_config.device_resident
    if mode not in DEVICE_RESIDENT:
      raise InvalidInputError(f"data.device_resident must be one of {DEVICE_RESIDENT}, got "
                              f"{mode!r}.")
    self.augmentations = augment.plan(augment.requested(data_config))
    self.erasing = Erasing.from_config(data_config)
    self.mixing = Mixing.from_config(data_config)
    on_host = ", ".join(aug.name for aug, _ in self.augmentations.host)
    if mode == "yes" and on_host:
      raise InvalidInputError(f"Augmentation {on_host} runs on the host, on every read; set "
                              "data.device_resident to auto or no (or turn it off).")
    info = dataset.info
    self.info, self.seed = info, seed
    self.global_batch_size, self.eval_batch_size = global_batch_size, eval_batch_size
    self.process_index, self.process_count = process_index, process_count
    self.num_workers = data_config.num_workers
    self.repeats, self.replicas = int(data_config.get("repeated_augmentations", 1)), replicas
    if self.repeats > 1:
      check_divisible(global_batch_size, replicas, "train.batch_size", "device count")
    self.num_train, self.num_eval = info.num_train, info.num_eval
    self.steps_per_epoch = info.num_train // global_batch_size
    self.num_eval_batches = -(-info.num_eval // eval_batch_size)

    train, evaluation = dataset.splits.train, dataset.splits.eval
    h, w, channels = info.image_shape
    self._train_reader = _Reader(train, size=(h, w), host_stage=self.augmentations.host,
                                 seed=seed, image_size=data_config.image_size, channels=channels,
                                 crop_ratio=data_config.eval_crop_ratio)
    eval_size, eval_ratio = eval_geometry(data_config)
    self._eval_reader = _Reader(evaluation, size=(eval_size, eval_size) if eval_size else (h, w),
                                image_size=eval_size, channels=channels, crop_ratio=eval_ratio)

    nbytes = (info.num_train + info.num_eval) * h * w * channels
    self.device_resident = mode == "yes" or (
        mode == "auto" and not on_host and nbytes <= data_config.max_device_bytes)
    self.arrays = None
    self._placed: dict[str, Any] = {}  # the resident splits on the devices
    if self.device_resident:
      logging.info("Loading %s into device memory (%.1f MB).", info.name, nbytes / 1e6)
      self.arrays = {"train": self._load(self._train_reader, info.num_train),
                     "eval": self._load(self._eval_reader, info.num_eval)}

  def _load(self, reader: _Reader, n: int) -> dict[str, np.ndarray]:
    workers = self.num_workers if n >= MIN_WORKER_LOAD else 0
    chunks = list(_stream(_LoadChunk(reader, n), 0, -(-n // LOAD_CHUNK), workers))
    return {k: np.concatenate([c[k] for c in chunks]) for k in ("image", "label")}

  def device_batches(self, axis_name: str) -> DeviceBatches:
    """The device functions that turn what this pipeline feeds into the steps' batches."""
    return DeviceBatches(mean=tuple(self.info.mean), std=tuple(self.info.std),
                         augmentations=self.augmentations.device, erasing=self.erasing,
                         mixing=self.mixing,
                         axis_name=axis_name, resident=self.device_resident,
                         global_batch_size=self.global_batch_size,
                         steps_per_epoch=max(1, self.steps_per_epoch))

  def _resident(self, split: str, placement: Placement) -> dict:
    if split not in self._placed:
      self._placed[split] = placement.replicate(self.arrays[split])
    return self._placed[split]

  def epoch_steps(self) -> EpochSteps:
    """The steps of a run that never changed its batch size (`EpochSteps.resume` for others)."""
    return EpochSteps(self.num_train, self.global_batch_size, repeats=self.repeats,
                      replicas=self.replicas)

  def train_feed(self, start_step: int, placement: Placement,
                 steps: EpochSteps | None = None) -> Iterator[tuple[Any, Any]]:
    """(inputs, arrays) for the compiled train step at each step from `start_step` (endless).

    Host-fed: this process's rows, moved to the devices a few steps ahead (the copies overlap
    the running step). Device-resident: the images stay on the devices, and only each epoch's
    order is sent, at the epoch's first step. `steps`: which examples each step reads (default:
    `epoch_steps()`).
    """
    if not self.device_resident:
      for batch in _ahead(self.train_batches(start_step, steps), placement):
        yield batch, None
      return
    self.check_steps()
    steps = steps or self.epoch_steps()
    empty = placement.shard_batch({})
    arrays, epoch = self._resident("train", placement), None
    for step in itertools.count(start_step):
      if steps.epoch(step) != epoch:
        epoch = steps.epoch(step)
        arrays = {**arrays, "order": placement.replicate(self.epoch_order(epoch, steps))}
      yield empty, arrays

  def eval_feed(self, placement: Placement) -> Iterator[tuple[Any, Any]]:
    """(inputs, arrays) for the compiled eval step, one per global evaluation batch."""
    arrays = self._resident("eval", placement) if self.device_resident else None
    for batch in _ahead(self.eval_batches(), placement, depth=1):
      yield batch, arrays

  def epoch_order(self, epoch: int, steps: EpochSteps | None = None) -> np.ndarray:
    """The global training order of `epoch` (int32) laid out by step (`EpochSteps.order`);
    resident runs slice it on the devices."""
    return (steps or self.epoch_steps()).order(self.seed, epoch).astype(np.int32)

  def check_steps(self) -> None:
    """Refuses a global batch larger than the training split (an epoch of no steps)."""
    if self.steps_per_epoch < 1:
      raise InvalidInputError(f"train.batch_size={self.global_batch_size} exceeds the "
                              f"{self.num_train} training examples; lower it.")

  def train_batches(self, start_step: int = 0,
                    steps: EpochSteps | None = None) -> Iterator[dict[str, np.ndarray]]:
    """This process's batches for steps start_step, start_step + 1, ... (endless).

    Args:
      start_step: the first step; the batches equal those of an iterator started at 0.
      steps: which examples each step reads (default: `epoch_steps()`).

    Returns:
      An iterator of {"image": uint8 [B_local, H, W, C], "label": int32 [B_local]}.

    Raises:
      ValueError: the dataset is device-resident: its batches are sliced on the devices
        (`DeviceBatches`), and `train_feed` sends only each epoch's order.
    """
    self.check_steps()
    if self.device_resident:
      raise ValueError(f"{self.info.name} is device-resident: its training batches are built on "
                       "the devices (train_feed); read them on the host with "
                       "data.device_resident=no.")
    indices = _TrainIndices(seed=self.seed, steps=steps or self.epoch_steps(),
                            process_index=self.process_index, process_count=self.process_count)
    return _stream(_TrainBatch(indices, self._train_reader), start_step, MAX_STEP,
                   self.num_workers)

  def eval_batches(self) -> Iterator[dict[str, np.ndarray]]:
    """Every eval example exactly once, in order; the last global batch is padded and masked.

    Returns:
      An iterator of this process's rows of each global batch: {"index", "mask"} when
      device-resident, else {"image", "label", "mask"}; mask is False on padding.
    """
    fn = _EvalBatch(num_eval=self.num_eval, eval_batch_size=self.eval_batch_size,
                    process_index=self.process_index, process_count=self.process_count,
                    reader=None if self.device_resident else self._eval_reader)
    if self.device_resident:
      return (fn(b) for b in range(self.num_eval_batches))
    return _stream(fn, 0, self.num_eval_batches, self.num_workers)

