"""Orbax checkpoints: atomic asynchronous saves, latest-K plus best, validated exact resume."""

import logging
import os
import shutil
from typing import Any

import jax
from jax.experimental import multihost_utils
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

STATE, META = "state", "meta"


class CheckpointMismatchError(ValueError):
  """A checkpoint belongs to a different model or config than the run that tries to resume it."""


class Checkpointer:
  """Saves and restores {train state, run metadata}; one instance per run directory.

  Each save is written to a temporary folder and renamed when complete, so a kill during a save
  leaves the previous checkpoints intact. Restoring walks from the newest checkpoint back and uses
  the first that reads completely, reporting the ones that do not.
  """

  def __init__(self, directory: str, *, identity: dict[str, Any], keep: int = 2,
               keep_best: bool = True, async_save: bool = True):
    """Opens (and creates) `directory`.

    Args:
      directory: where checkpoints live (WORKDIR/checkpoints).
      identity: the config values a resumed run must share with the saved one (model, data,
        optimizer, batch size, seed, ...); compared on restore.
      keep: how many of the latest checkpoints to keep.
      keep_best: also keep the checkpoint with the best `eval_accuracy`.
      async_save: write in a background thread while training continues.
    """
    self.directory = os.path.abspath(directory)
    self.identity = identity
    unfinished = [n for n in os.listdir(self.directory) if ".orbax-checkpoint-tmp" in n] if \
        os.path.isdir(self.directory) else []
    for name in unfinished:
      logging.warning("Ignoring an unfinished checkpoint save (killed while writing?): %s",
                      os.path.join(self.directory, name))
    policy = policies.LatestN(keep)
    if keep_best:
      policy = policies.AnyPreservationPolicy([policy, policies.BestN(
          get_metric_fn=lambda m: m["eval_accuracy"], n=1,
          keep_checkpoints_without_metrics=False)])
    options = ocp.CheckpointManagerOptions(
        preservation_policy=policy, enable_async_checkpointing=async_save,
        cleanup_tmp_directories=True, create=True)
    self.manager = ocp.CheckpointManager(self.directory, item_names=(STATE, META),
                                         options=options)

  def save(self, step: int, state: Any, meta: dict[str, Any],
           eval_accuracy: float | None = None) -> None:
    """Starts saving `state` (a host or replicated tree) at `step`; returns before it is written."""
    metrics = {"eval_accuracy": float(eval_accuracy)} if eval_accuracy is not None else None
    self.manager.save(step, args=ocp.args.Composite(**{
        STATE: ocp.args.StandardSave(state),
        META: ocp.args.JsonSave({**meta, "step": int(step), "identity": self.identity})}),
        metrics=metrics, force=True)

  def restore_latest(self, abstract_state: Any) -> tuple[Any, dict[str, Any]] | None:
    """The newest readable checkpoint as (state, meta), or None when there is none.

    Raises:
      CheckpointMismatchError: the newest checkpoint was written by a different model/config.
      RuntimeError: checkpoints exist but none of them can be read.
    """
    steps = sorted(self.manager.all_steps(), reverse=True)
    for step in steps:
      try:
        meta = self.manager.restore(step, args=ocp.args.Composite(**{META: ocp.args.JsonRestore()}))
        meta = meta[META]
        self._check_identity(step, meta.get("identity", {}))
        restored = self.manager.restore(step, args=ocp.args.Composite(**{
            STATE: ocp.args.StandardRestore(abstract_state)}))
      except CheckpointMismatchError:
        raise
      except Exception as e:  # noqa: BLE001 - any read failure means this checkpoint is unusable
        self._quarantine(step, e)
        continue
      if step != steps[0]:
        logging.warning("Resuming from checkpoint %d, not the newest (%d).", step, steps[0])
      return restored[STATE], meta
    if steps:
      raise RuntimeError(f"None of the checkpoints {steps} in {self.directory} can be read. Move "
                         "the folder away to start afresh, or point --workdir elsewhere.")
    return None

  def _quarantine(self, step: int, error: Exception) -> None:
    """Moves an unreadable checkpoint aside (kept for inspection) so the run can save that step."""
    target = os.path.join(self.directory, f"{step}.corrupt")
    logging.warning("Checkpoint %d in %s is corrupt or incomplete (%s); moved to %s, trying an "
                    "older one.", step, self.directory, _short(error), target)
    if jax.process_index() == 0:
      shutil.rmtree(target, ignore_errors=True)
      os.rename(os.path.join(self.directory, str(step)), target)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f"quarantine checkpoint {step}")
    self.manager.reload()

  def _check_identity(self, step: int, saved: dict[str, Any]) -> None:
    diffs = [f"{k}: checkpoint {saved.get(k)!r}, this run {v!r}" for k, v in self.identity.items()
             if _jsonable(saved.get(k)) != _jsonable(v)]
    if diffs:
      raise CheckpointMismatchError(
          f"Checkpoint {step} in {self.directory} was written by a different run:\n  " +
          "\n  ".join(diffs) + "\nUse a new --workdir for a new run (it is never overwritten).")

  def wait(self) -> None:
    """Blocks until every started save is on disk."""
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.close()


def _jsonable(value: Any) -> Any:
  if isinstance(value, (list, tuple)):
    return [_jsonable(v) for v in value]
  if isinstance(value, dict):
    return {k: _jsonable(v) for k, v in value.items()}
  return value


def _short(error: Exception) -> str:
  text = f"{type(error).__name__}: {error}"
  return text if len(text) < 300 else text[:300] + "..."


def abstract(tree: Any) -> Any:
  """Shape/dtype structure of a host tree, the restore target."""
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


def load(directory: str, step: int | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
  """Reads a checkpoint as saved (nested dicts of numpy arrays) and its metadata; no target needed.

  Args:
    directory: a run's checkpoints folder (WORKDIR/checkpoints).
    step: which checkpoint; None for the newest.

  Returns:
    (state, meta): the train state's fields by name, and the run metadata.
  """
  manager = ocp.CheckpointManager(os.path.abspath(directory), item_names=(STATE, META),
                                  options=ocp.CheckpointManagerOptions(read_only=True))
  try:
    step = manager.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"No checkpoint in {directory}.")
    restored = manager.restore(step, args=ocp.args.Composite(**{
        STATE: ocp.args.StandardRestore(), META: ocp.args.JsonRestore()}))
    return restored[STATE], restored[META]
  finally:
    manager.close()
