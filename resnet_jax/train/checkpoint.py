"""Orbax checkpoints: atomic asynchronous saves, latest-K plus best, verified exact resume.

A checkpoint is moved aside only when it cannot be read or fails its checksums (a read error, never
a stop signal), and a move never deletes anything. A checkpoint that reads fine but holds another
run's state (another model, or a train state of another structure) is refused, never moved. Every
reader (resume, evaluate, predict, fine-tuning, export) verifies the same checksums.
"""

import dataclasses
import logging
import os
import shutil
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils
from orbax.checkpoint import checkpoint_managers as policies

from resnet_jax import files
from resnet_jax.errors import InvalidInputError, StorageError
from resnet_jax.saved import (META, READ_ERRORS, STATE, checksums, damaged_leaves, local_copy,
                              named_leaves, read_error, short, summarize)
from resnet_jax.train.workdir import CORRUPT_SUFFIX, identity_differences

# Room a save needs beyond the state's own bytes (orbax's metadata, the JSON item).
SAVE_HEADROOM_BYTES = 16 * 2**20


class CheckpointMismatchError(InvalidInputError):
  """A checkpoint belongs to a different model or config than the run that tries to resume it."""


class StateStructureError(InvalidInputError):
  """A readable checkpoint whose train state has other leaves, shapes or dtypes than the run's."""

  def __init__(self, step: int, directory: str, differences: list[str], *,
               meta: dict[str, Any], saved_structure: Any):
    self.step, self.directory, self.differences = step, directory, differences
    self.meta, self.saved_structure = meta, saved_structure
    super().__init__(f"Checkpoint {step} in {directory} holds a train state of another structure "
                     f"({summarize(differences)}).")


class CheckpointSaveError(StorageError):
  """A checkpoint could not be written (disk full, read-only, ...)."""


def structure_differences(saved: Any, target: Any) -> list[str]:
  """The leaves that differ between two trees of arrays or array metadata (shape and dtype)."""
  saved, target = named_leaves(saved), named_leaves(target)
  describe = lambda leaf: f"{np.dtype(leaf.dtype).name}{list(leaf.shape)}"
  diffs = [f"{name} only in the checkpoint" for name in saved if name not in target]
  diffs += [f"{name} only in this run" for name in target if name not in saved]
  diffs += [f"{name}: checkpoint {describe(saved[name])}, this run {describe(target[name])}"
            for name in saved if name in target
            and describe(saved[name]) != describe(target[name])]
  return diffs


def _item_handlers() -> dict[str, Any]:
  # Named handlers let the manager read an item's metadata before anything was restored.
  return {STATE: ocp.StandardCheckpointHandler(), META: ocp.JsonCheckpointHandler()}


@dataclasses.dataclass
class _BestEvaluated:
  """Preservation policy: the checkpoint with the best evaluation accuracy recorded so far.

  Saves come before their evaluation (so that a failing evaluation loses no training), so the
  accuracy is recorded afterwards (`Checkpointer.record_evaluation`), not passed with the save.
  """

  accuracy: dict[int, float]

  def should_preserve(self, checkpoints: Any, *, context: Any) -> list[bool]:
    del context
    steps = [info.step for info in checkpoints if info.step in self.accuracy]
    best = max(steps, key=lambda s: (self.accuracy[s], s), default=None)
    return [info.step == best for info in checkpoints]


class Checkpointer:
  """Saves and restores {train state, run metadata}; one instance per run directory.

  Each save is written to a temporary folder and renamed when complete, so a kill during a save
  leaves the previous checkpoints intact; its metadata holds a checksum of every array. Restoring
  walks from the newest checkpoint back and uses the first that reads completely and matches its
  checksums, reporting the ones that do not (moved aside as N.corrupt, never deleted).
  """

  def __init__(self, directory: str, *, identity: dict[str, Any], keep: int = 2,
               keep_best: bool = True, async_save: bool = True, elastic: bool = False):
    """Opens (and creates) `directory`.

    Args:
      directory: where checkpoints live (WORKDIR/checkpoints).
      identity: the config values a resumed run must share with the saved one (model, data,
        optimizer, batch size, seed, ...); compared on restore.
      keep: how many of the latest checkpoints to keep.
      keep_best: also keep the checkpoint with the best recorded evaluation accuracy.
      async_save: write in a background thread while training continues.
      elastic: a checkpoint of another batch size is restored too (train.elastic).
    """
    self.directory = files.resolve(directory)
    self.identity, self.elastic = identity, elastic
    folder = epath.Path(self.directory)
    unfinished = [e.name for e in folder.iterdir() if ".orbax-checkpoint-tmp" in e.name] if \
        folder.is_dir() else []
    for name in unfinished:
      logging.warning("Ignoring an unfinished checkpoint save (killed while writing?): %s",
                      os.path.join(self.directory, name))
    self.accuracy: dict[int, float] = {}
    policy = policies.LatestN(keep)
    if keep_best:
      policy = policies.AnyPreservationPolicy([policy, _BestEvaluated(self.accuracy)])
    options = ocp.CheckpointManagerOptions(
        preservation_policy=policy, enable_async_checkpointing=async_save,
        cleanup_tmp_directories=True, create=True)
    self.manager = ocp.CheckpointManager(self.directory, options=options,
                                         item_handlers=_item_handlers())

  def record_evaluation(self, step: int, accuracy: float) -> None:
    """Notes the evaluation accuracy of the checkpoint at `step` (for keep_best)."""
    self.accuracy[int(step)] = float(accuracy)

  def save(self, step: int, state: Any, meta: dict[str, Any]) -> None:
    """Starts saving `state` at `step`; returns before it is written.

    Args:
      step: the train step it is the state after.
      state: the train state as jax.Arrays replicated over every device of every process
        (`parallel.Runner.global_state`): through orbax's multi-host protocol, each process
        writes a part of each array, and nothing is gathered to one host; or numpy arrays.
      meta: the run's metadata (JSON), written by process 0 with each array's checksum, which
        process 0 computes from its own copy of the state.

    Raises:
      CheckpointSaveError: an earlier save failed, or the disk has no room for this one.
    """
    self.check_for_errors()
    needed = sum(leaf.nbytes for leaf in jax.tree.leaves(state)) + SAVE_HEADROOM_BYTES
    # A bucket has no free space to read; a failed upload is reported as any failed save.
    free = float("inf") if files.is_remote(self.directory) else \
        shutil.disk_usage(self.directory).free
    if free < needed:
      raise CheckpointSaveError(
          f"No room to save checkpoint {step} in {self.directory}: it needs about "
          f"{needed / 2**20:.0f} MiB, {free / 2**20:.0f} MiB are free. Free some space and run "
          "the same command again; it resumes from the last complete checkpoint.")
    meta = {**meta, "step": int(step), "identity": self.identity,
            "checksums": checksums(state) if jax.process_index() == 0 else {}}
    try:
      self.manager.save(step, args=ocp.args.Composite(**{
          STATE: ocp.args.StandardSave(state), META: ocp.args.JsonSave(meta)}),
          force=True)
    except Exception as e:  # noqa: BLE001 - orbax reports write failures as many types
      raise self._save_error(step, e) from e

  def _save_error(self, step: int | None, error: BaseException) -> CheckpointSaveError:
    which = f"checkpoint {step}" if step is not None else "a checkpoint"
    return CheckpointSaveError(
        f"Saving {which} to {self.directory} failed ({short(error)}). Fix the cause (free space, "
        "permissions) and run the same command again; it resumes from the last complete "
        "checkpoint.")

  def check_for_errors(self) -> None:
    """Raises CheckpointSaveError if a finished asynchronous save failed."""
    self._reporting_save_errors(self.manager.check_for_errors)

  def _reporting_save_errors(self, manager_method: Callable[[], Any]) -> None:
    try:
      manager_method()
    except Exception as e:  # noqa: BLE001 - orbax reports write failures as many types
      raise self._save_error(None, e) from e

  def restore_latest(self, abstract_state: Any, check_meta: Callable[[int, dict], None] = (
      lambda step, meta: None)) -> tuple[Any, dict[str, Any]] | None:
    """The newest readable, intact checkpoint as (state, meta), or None when there is none; the
    state as numpy arrays (this process's copy).

    Args:
      abstract_state: the structure of the train state to restore, with the sharding each array
        is restored to (any topology: see `parallel.Runner.placed`).
      check_meta: (step, meta) -> None, raising when the checkpoint is not this run's (called
        before its state is read).

    Raises:
      CheckpointMismatchError: the newest checkpoint was written by a different model/config.
      StateStructureError: the newest readable checkpoint holds a state of another structure.
      InvalidInputError: checkpoints exist but none of them can be read.
    """
    steps = sorted(self.manager.all_steps(), reverse=True)
    for step in steps:
      try:
        meta = self.manager.restore(step, args=ocp.args.Composite(**{
            META: ocp.args.JsonRestore()}))[META]
        if not isinstance(meta, dict) or "step" not in meta:
          raise ValueError(f"its metadata is not this project's ({type(meta).__name__})")
        saved_structure = self.manager.item_metadata(step)[STATE].tree
      except READ_ERRORS as e:
        self._quarantine(step, short(e))
        continue
      self._check_identity(step, meta.get("identity", {}))
      check_meta(step, meta)
      differences = structure_differences(saved_structure, abstract_state)
      if differences:
        raise StateStructureError(step, self.directory, differences, meta=meta,
                                  saved_structure=saved_structure)
      try:
        state = local_copy(self.manager.restore(step, args=ocp.args.Composite(**{
            STATE: ocp.args.StandardRestore(abstract_state)}))[STATE])
      except Exception as e:  # noqa: BLE001 - orbax wraps what tensorstore raises
        cause = read_error(e)
        if cause is None:
          raise
        self._quarantine(step, short(cause))
        continue
      damaged = damaged_leaves(state, meta, f"Checkpoint {step} in {self.directory}")
      if damaged:
        self._quarantine(step, f"checksum mismatch in {summarize(damaged)}")
        continue
      if step != steps[0]:
        logging.warning("Resuming from checkpoint %d, not the newest (%d).", step, steps[0])
      return state, meta
    if steps:
      raise InvalidInputError(
          f"None of the checkpoints {steps} in {self.directory} can be read (each was moved "
          "aside as N.corrupt). Move the folder away to start afresh, or point --workdir "
          "elsewhere.")
    return None

  def _quarantine(self, step: int, reason: str) -> None:
    """Moves an unusable checkpoint aside (kept for inspection, never deleted)."""
    source = os.path.join(self.directory, str(step))
    target = source + CORRUPT_SUFFIX
    for n in range(2, 10**6):
      if not epath.Path(target).exists():
        break
      target = f"{source}{CORRUPT_SUFFIX}-{n}"
    logging.warning("Checkpoint %d in %s is corrupt or incomplete (%s); moved to %s, trying an "
                    "older one.", step, self.directory, reason, target)
    if jax.process_index() == 0:
      epath.Path(source).rename(target)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f"quarantine checkpoint {step}")
    self.manager.reload()

  def _check_identity(self, step: int, saved: dict[str, Any]) -> None:
    diffs = identity_differences(saved, self.identity, elastic=self.elastic)
    if diffs:
      raise CheckpointMismatchError(
          f"Checkpoint {step} in {self.directory} was written by a different run ("
          f"{summarize(diffs)}); use a new --workdir for a new run (it is never overwritten).")

  def wait(self) -> None:
    """Blocks until every started save is on disk.

    Raises:
      CheckpointSaveError: a save failed.
    """
    self._reporting_save_errors(self.manager.wait_until_finished)
    self.check_for_errors()

  def close(self) -> None:
    """Waits for every started save, then closes.

    Raises:
      CheckpointSaveError: a save failed.
    """
    self._reporting_save_errors(self.manager.close)
