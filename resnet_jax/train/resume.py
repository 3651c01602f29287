"""Resuming a run: its newest intact checkpoint, or why the run cannot resume from it."""

import copy
from typing import Any

from resnet_jax.data import DatasetInfo, check_same_classes
from resnet_jax.errors import InvalidInputError
from resnet_jax.train import checkpoint
from resnet_jax.train.workdir import Workdir, config_differences


def restore(checkpointer: checkpoint.Checkpointer, abstract_state: Any, run_dir: Workdir,
            config: Any, info: DatasetInfo, abstract_state_of: Any) -> tuple[Any, dict] | None:
  """The run's newest intact checkpoint as (state, meta), or None when it has none.

  Args:
    checkpointer: the run's checkpoints.
    abstract_state: the structure this config's train state has (the restore target).
    run_dir, config, info: the run folder, its new config and dataset.
    abstract_state_of: config -> the train state's structure under that config.

  Raises:
    InvalidInputError: the checkpoint was trained on other classes, or holds a state of another
      structure; says why (before anything is compiled).
  """
  def same_classes(step: int, meta: dict) -> None:
    check_same_classes(saved_dataset(meta), info, action="resume", where=run_dir.path,
                       trained=f"its checkpoint {step}", remedy="use a new --workdir")

  try:
    return checkpointer.restore_latest(abstract_state, same_classes)
  except checkpoint.StateStructureError as e:
    raise structure_change_error(e, run_dir, config, info, abstract_state_of) from None


def saved_dataset(meta: dict[str, Any]) -> dict[str, Any] | None:
  """The dataset identity saved with a checkpoint; for one saved before identities were, the
  class names its model description kept."""
  names = (meta.get("model") or {}).get("class_names")
  return meta.get("dataset") or ({"classes": names} if names else None)


def structure_change_error(error: checkpoint.StateStructureError, run_dir: Workdir, config: Any,
                           info: DatasetInfo, abstract_state_of: Any) -> InvalidInputError:
  """Why a resumed run's train state differs from its checkpoint's: the dataset's classes, the
  settings that change the state (each tried alone), or another version of this project.

  Args:
    error: what the checkpointer found.
    run_dir: the run folder being resumed (its saved config).
    config, info: the new run's config and dataset.
    abstract_state_of: config -> the train state's structure under that config.
  """
  saved_classes = error.meta.get("model", {}).get("num_classes")
  if saved_classes is not None and saved_classes != info.num_classes:
    return InvalidInputError(
        f"Cannot resume {run_dir.path}: {info.name} now has {info.num_classes} classes, but its "
        f"checkpoint {error.step} was trained on {saved_classes}; restore the dataset's classes, "
        "or use a new --workdir.")
  changed = config_differences(run_dir.saved_config, config) if run_dir.saved_config else []
  fits = lambda changes: _reverting_fits(changes, config, error.saved_structure, abstract_state_of)
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


def _reverting_fits(changes: list[tuple[str, Any, Any]], config: Any, saved_structure: Any,
                    abstract_state_of: Any) -> bool:
  """Whether the config with these settings back at their saved values builds the saved state."""
  candidate = copy.deepcopy(config)
  try:
    for key, saved, _ in changes:
      *sections, field = key.split(".")
      target = candidate
      for section in sections:
        target = target[section]
      target[field] = tuple(saved) if isinstance(target[field], tuple) else saved
    return not checkpoint.structure_differences(saved_structure, abstract_state_of(candidate))
  except (TypeError, ValueError, KeyError, AttributeError):
    return False
