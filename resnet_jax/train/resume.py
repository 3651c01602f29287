"""Resuming a run: its newest intact checkpoint, or why the run cannot resume from it."""

import copy
import dataclasses
import logging
from typing import Any

import numpy as np

from resnet_jax import data
from resnet_jax.data import check_same_classes
from resnet_jax.errors import InvalidInputError, check
from resnet_jax.train import checkpoint, optim
from resnet_jax.train.experiment import Experiment, build_state
from resnet_jax.train.workdir import Workdir, config_differences


@dataclasses.dataclass(frozen=True, kw_only=True)
class Resumed:
  """Where a resumed run starts: its checkpoint's state, the steps' key, the last window's
  metrics saved with it (see `loop.Run.save`), and which examples its steps read."""

  state: Any  # on the host
  rng: np.ndarray
  step: int
  record: dict[str, Any]
  epoch_steps: data.EpochSteps  # at this run's batch size, from where the checkpoint stood


def resume(exp: Experiment, checkpointer: checkpoint.Checkpointer,
           run_dir: Workdir) -> Resumed | None:
  """The run's newest intact checkpoint, or None when it has none (a fresh start).

  A checkpoint of another batch size (which only train.elastic lets through) continues its epoch
  from the example it stopped at, and the schedule from the same point of the epoch, at the
  new batch size (`data.EpochSteps`): the optimizer's schedule count moves to the new step.

  Raises:
    InvalidInputError: the checkpoint was trained on other classes, holds a state of another
      structure (says why), or is past this run's last step; or the batch size changed and the
      run's length or boundaries are in steps; before anything is compiled.
  """
  def same_classes(step: int, meta: dict) -> None:
    check_same_classes(saved_dataset(meta), exp.info, action="resume", where=run_dir.path,
                       trained=f"its checkpoint {step}", remedy="use a new --workdir")

  try:
    restored = checkpointer.restore_latest(exp.runner.placed(exp.parts.abstract_state),
                                           same_classes)
  except checkpoint.StateStructureError as e:
    raise structure_change_error(e, run_dir, exp) from None
  if restored is None:
    return None
  state, meta = restored
  step = int(meta["step"])
  batch_size = exp.config.train.batch_size
  saved_batch_size = int(meta.get("identity", {}).get("train.batch_size", batch_size))
  position, saved_schedule_step = saved_position(meta, step, exp.info.num_train, batch_size)
  if saved_batch_size != batch_size:
    check_elastic(exp.config, run_dir, saved_batch_size, exp.info.num_train)
  epoch_steps = data.EpochSteps.resume(position, step, num_train=exp.info.num_train,
                                       global_batch_size=batch_size,
                                       repeats=exp.pipeline.repeats, replicas=exp.pipeline.replicas)
  schedule_step = epoch_steps.schedule_step(step)
  remedy = f"train.num_steps >= {step}" if saved_batch_size == batch_size else \
      f"train.num_epochs >= {schedule_step / epoch_steps.steps_per_epoch:g}"
  check(schedule_step <= exp.total_steps, f"{checkpointer.directory} holds checkpoint {step}, "
        f"past this run's {exp.total_steps} steps; give {remedy} to continue it, or evaluate "
        "one of its checkpoints with python -m experiments.evaluate --step=N.")
  if schedule_step != saved_schedule_step:
    state = state.replace(opt_state=optim.move_schedule(state.opt_state,
                                                        schedule_step - saved_schedule_step))
  if saved_batch_size != batch_size:
    logging.info("Resumed from step %d of %s with train.batch_size %d (saved %d): epoch %d from "
                 "its example %d, at schedule step %d of %d.", step, checkpointer.directory,
                 batch_size, saved_batch_size, position.epoch, position.examples, schedule_step,
                 exp.total_steps)
  else:
    logging.info("Resumed from step %d of %s.", step, checkpointer.directory)
  return Resumed(state=state, rng=np.asarray(meta["rng"], np.uint32), step=step,
                 record=meta.get("record") or {}, epoch_steps=epoch_steps)


def saved_position(meta: dict[str, Any], step: int, num_train: int,
                   batch_size: int) -> tuple[data.EpochPosition, int]:
  """(where a checkpoint's run stood in its training data, its schedule step)."""
  position = meta.get("data_position")
  if isinstance(position, dict):
    return data.EpochPosition(int(position["epoch"]), int(position["examples"])), int(
        meta["schedule_step"])
  # Saved before elastic resumes: step s had read s % steps_per_epoch batches of its epoch.
  saved_batch_size = meta.get("identity", {}).get("train.batch_size", batch_size)
  steps = data.EpochSteps(num_train, int(saved_batch_size))
  return steps.position(step), step


def check_elastic(config: Any, run_dir: Workdir, saved_batch_size: int, num_train: int) -> None:
  """Refuses a batch size change (train.elastic) where the run's length or its schedule's
  boundaries are counted in steps: their epochs would move."""
  train_config, optim_config = config.train, config.optim
  what = (f"Cannot resume {run_dir.path} with train.batch_size={train_config.batch_size} (saved "
          f"{saved_batch_size}): train.elastic keeps the run's length and schedule in epochs, but")
  saved_epochs = train_config.num_steps / max(1, num_train // saved_batch_size)
  check(train_config.num_steps == 0, f"{what} train.num_steps={train_config.num_steps} counts "
        f"steps; set train.num_steps=0 and train.num_epochs={saved_epochs:g} (its length "
        "in epochs).")
  check(not (optim_config.schedule == "piecewise" and optim_config.boundaries and
             optim_config.boundaries_unit == "steps"),
        f"{what} optim.boundaries are in steps; give them in epochs "
        "(optim.boundaries_unit=epochs).")
  check(config.data.get("repeated_augmentations", 1) == 1,
        f"{what} data.repeated_augmentations lays each epoch out for the saved batch size; "
        "resume with it.")


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
