"""Resuming a run: its newest intact checkpoint, or why the run cannot resume from it."""

import copy
import dataclasses
import logging
from typing import Any

import numpy as np

from resnet_jax.data import check_same_classes
from resnet_jax.errors import InvalidInputError, check
from resnet_jax.train import checkpoint
from resnet_jax.train.experiment import Experiment, build_state
from resnet_jax.train.workdir import Workdir, config_differences


@dataclasses.dataclass(frozen=True, kw_only=True)
class Resumed:
  """Where a resumed run starts: its checkpoint's state, the steps' key, and the last window's
  metrics saved with it (see `loop.Run.save`)."""

  state: Any  # on the host
  rng: np.ndarray
  step: int
  record: dict[str, Any]


def resume(exp: Experiment, checkpointer: checkpoint.Checkpointer,
           run_dir: Workdir) -> Resumed | None:
  """The run's newest intact checkpoint, or None when it has none (a fresh start).

  Raises:
    InvalidInputError: the checkpoint was trained on other classes, holds a state of another
      structure (says why), or is past this run's last step; before anything is compiled.
  """
  def same_classes(step: int, meta: dict) -> None:
    check_same_classes(saved_dataset(meta), exp.info, action="resume", where=run_dir.path,
                       trained=f"its checkpoint {step}", remedy="use a new --workdir")

  try:
    restored = checkpointer.restore_latest(exp.parts.abstract_state, same_classes)
  except checkpoint.StateStructureError as e:
    raise structure_change_error(e, run_dir, exp) from None
  if restored is None:
    return None
  state, meta = restored
  step = int(meta["step"])
  check(step <= exp.total_steps, f"{checkpointer.directory} holds checkpoint {step}, past this "
        f"run's {exp.total_steps} steps; give train.num_steps >= {step} to continue it, or "
        "evaluate one of its checkpoints with python -m experiments.evaluate --step=N.")
  logging.info("Resumed from step %d of %s.", step, checkpointer.directory)
  return Resumed(state=state, rng=np.asarray(meta["rng"], np.uint32), step=step,
                 record=meta.get("record") or {})


def saved_dataset(meta: dict[str, Any]) -> dict[str, Any] | None:
  """The dataset identity saved with a checkpoint; for one saved before identities were, the
  class names its model description kept."""
  names = (meta.get("model") or {}).get("class_names")
  return meta.get("dataset") or ({"classes": names} if names else None)


def structure_change_error(error: checkpoint.StateStructureError, run_dir: Workdir,
                           exp: Experiment) -> InvalidInputError:
  """Why a resumed run's train state differs from its checkpoint's: the dataset's classes, the
  settings that change the state (each tried alone), or another version of this project.

  Args:
    error: what the checkpointer found.
    run_dir: the run folder being resumed (its saved config).
    exp: the new run, as assembled.
  """
  config, info = exp.config, exp.info
  saved_classes = error.meta.get("model", {}).get("num_classes")
  if saved_classes is not None and saved_classes != info.num_classes:
    return InvalidInputError(
        f"Cannot resume {run_dir.path}: {info.name} now has {info.num_classes} classes, but its "
        f"checkpoint {error.step} was trained on {saved_classes}; restore the dataset's classes, "
        "or use a new --workdir.")
  changed = config_differences(run_dir.saved_config, config) if run_dir.saved_config else []
  fits = lambda changes: _reverting_fits(changes, exp, error.saved_structure)
  causes = [c for c in changed if fits([c])]
  state = (f"the structure of the train state in its checkpoint {error.step} "
           f"({checkpoint.summarize(error.differences, 1)})")
  if causes or (changed and fits(changed)):
    listed = "; ".join(f"{k} (saved {saved!r}, now {now!r})" for k, saved, now in causes or changed)
    verb = "changes" if len(causes) == 1 else "together change" if not causes else "each change"
    return InvalidInputError(f"Cannot resume {run_dir.path}: {listed} {verb} {state}. Resume "
                             "with the saved values, or use a new --workdir.")
  return InvalidInputError(f"Cannot resume {run_dir.path}: no setting explains {state}, so another "
                           "version of resnet_jax wrote it: resume it with that version, or use a "
                           "new --workdir.")


def _reverting_fits(changes: list[tuple[str, Any, Any]], exp: Experiment,
                    saved_structure: Any) -> bool:
  """Whether the config with these settings back at their saved values builds the saved state
  (the state's structure alone: no runner, no data)."""
  candidate = copy.deepcopy(exp.config)
  try:
    for key, saved, _ in changes:
      *sections, field = key.split(".")
      target = candidate
      for section in sections:
        target = target[section]
      target[field] = tuple(saved) if isinstance(target[field], tuple) else saved
    parts = build_state(candidate, exp.info, steps_per_epoch=exp.steps_per_epoch,
                        total_steps=exp.total_steps, weights=exp.weights)
    return not checkpoint.structure_differences(saved_structure, parts.abstract_state)
  except (TypeError, ValueError, KeyError, AttributeError):
    return False
