"""train_and_evaluate(config, workdir): the training loop and its records (metrics, evaluations,
checkpoints). The run folder is locked first; then `train.experiment.assemble` builds the
experiment and `train.resume` finds where it starts, refusing whatever is wrong with the input
(names, sizes, numbers, the run folder, a checkpoint of another shape) before anything is
compiled."""

import dataclasses
import logging
import os
import time
from typing import Any

import jax
import numpy as np

from resnet_jax import data, hosts, pretrained
from resnet_jax.errors import InputError, InvalidInputError
from resnet_jax.saved import CHECKPOINTS_DIR
from resnet_jax.train import checkpoint, parallel, resume
from resnet_jax.train.config import validate_config
from resnet_jax.train.evaluate import evaluate
from resnet_jax.train.experiment import Experiment, assemble, model_architecture
from resnet_jax.train.metrics import MetricsWriter, Progress, read_metrics, window_means
from resnet_jax.train.preemption import Preempted, PreemptionWatcher
from resnet_jax.train.profiling import StepProfiler
from resnet_jax.train.step import NONFINITE_LOSS, metric_names
from resnet_jax.train.workdir import Workdir, default_workdir, run_identity


class NonFiniteError(InvalidInputError, FloatingPointError):
  """The loss or the gradients stopped being finite: a setting to lower (one line, exit 2)."""


def train_and_evaluate(config: Any, workdir: str | None = None) -> dict[str, Any]:
  """Trains and evaluates as `config` says, resuming from `workdir` when it holds a checkpoint.

  Args:
    config: a config from resnet_jax/configs (see default.py for every key).
    workdir: the run folder (checkpoints, metrics.jsonl, TensorBoard, config.json); None makes
      a new one under ./runs.

  Returns:
    The final record written to metrics.jsonl (step, eval metrics, ...), plus "workdir".

  Raises:
    InputError: a mistake in the config, the data or the run folder (before anything compiles).
    Preempted: after checkpointing in response to SIGTERM/SIGINT.
    NonFiniteError: the loss or gradients became non-finite with on_nonfinite="stop".
  """
  validate_config(config)
  distributed = config.distributed
  heartbeat_s = distributed.get("heartbeat_timeout_s", 100)
  parallel.initialize_distributed(distributed.coordinator_address, distributed.num_processes,
                                  distributed.process_id, heartbeat_s)
  # A lost process ends the others in one line (see hosts.LifeWatch), before the runtime would.
  with hosts.LifeWatch(lost_after_s=heartbeat_s / 2) as life:
    try:
      result = _train_and_evaluate(config, workdir)
    except Preempted:  # every process stops at the same step
      life.done()
      raise
    except Exception as e:  # noqa: BLE001 - re-raised, after the watch had its say
      life.wait_if_lost(e)
      raise
    life.done()
    return result


def _train_and_evaluate(config: Any, workdir: str | None) -> dict[str, Any]:
  with PreemptionWatcher() as watcher:
    weights = pretrained.load(config.init.checkpoint) if config.init.checkpoint else None
    # The folder is locked before the data is opened: a second command on it stops at once.
    path = workdir or default_workdir(model_architecture(config, weights)[0], config.data.name)
    with Workdir(path, config, is_main=jax.process_index() == 0) as run_dir:
      exp = assemble(config, weights=weights)
      run, feed, failed = Run.start(exp, run_dir), None, True
      profiler = StepProfiler(config.train.profile_steps, run_dir.path)
      try:
        if run.finished is not None:  # a finished run is reported again, not retrained
          failed = False
          return run.finished
        watcher.start_training()
        device_state = exp.runner.replicate(run.state)
        rng = exp.runner.replicate(run.rng)
        feed = exp.pipeline.train_feed(run.start_step, exp.runner, run.epoch_steps)
        eval_metrics = {}
        record = run.resumed_record  # the last window's, when it goes into the final record
        if run.evaluation_missing():  # stopped between the save at this step and its evaluation
          eval_metrics = run.evaluate(run.start_step, device_state,
                                      write=run.start_step < run.last_step)
        for step in range(run.start_step, run.last_step):
          try:
            inputs, arrays = next(feed)
          except InputError:  # an unreadable image: keep the steps trained so far
            if jax.process_count() == 1:  # the other processes, not failing, could not join in
              run.save(step, device_state)
            raise
          profiler.before(step)
          device_state, _ = exp.steps.train(device_state, inputs, rng, arrays)
          done = step + 1
          profiler.after(done, device_state)
          is_last = done == run.last_step
          stop = watcher.should_stop(done) and not is_last  # the last step finishes the run
          if done % config.train.log_every_steps == 0 or is_last:
            record = run.log(done, device_state, write=not is_last)
          evaluate_now = is_last or run.evaluates_at(done)
          # Saved before its evaluation, which reads files that may fail.
          if evaluate_now or stop or run.checkpoint_due(done):
            run.save(done, device_state, record if is_last else None)
          if evaluate_now:
            eval_metrics = run.evaluate(done, device_state, write=not is_last)
          if stop:
            run.checkpointer.wait()
            raise Preempted(watcher.signum, done)
        final = run.finish({**record, **eval_metrics})
        failed = False
        return final
      finally:
        profiler.close()  # a run stopped inside the window keeps the trace so far
        if feed is not None:
          feed.close()  # stops the decoding workers before anything else closes
        run.close(after_failure=failed)


@dataclasses.dataclass(kw_only=True)
class Run:
  """An assembled experiment in its run folder: where it starts, and its records."""

  exp: Experiment
  workdir: str
  checkpointer: checkpoint.Checkpointer
  description: dict[str, Any]  # the model, for checkpoints
  state: Any = None  # the host state to start from
  rng: Any = None  # the steps' base key, on the host
  start_step: int = 0
  # Which examples each step reads; its schedule step (step + step_offset) is the one the
  # schedule, the evaluations and the run's length count in.
  epoch_steps: data.EpochSteps | None = None
  finished: dict[str, Any] | None = None  # the final record of a run that had already finished
  records: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # metrics.jsonl's
  resumed_record: dict[str, Any] = dataclasses.field(default_factory=dict)  # see `save`
  writer: MetricsWriter | None = None
  progress: Progress | None = None
  _window_start: tuple[float, int] = (0.0, 0)  # (time, step) of the current logging window

  @classmethod
  def start(cls, exp: Experiment, run_dir: Workdir) -> "Run":
    """Opens the run's checkpoints and records, resumes or initialises the state, and accepts
    the run folder."""
    train_config = exp.config.train
    checkpointer = checkpoint.Checkpointer(
        os.path.join(run_dir.path, CHECKPOINTS_DIR), identity=run_identity(exp.config),
        keep=train_config.keep_checkpoints, keep_best=train_config.keep_best,
        async_save=train_config.async_checkpointing, elastic=train_config.elastic)
    run = cls(exp=exp, workdir=run_dir.path, checkpointer=checkpointer,
              description=exp.model_description())
    try:
      run._resume_or_initialise(run_dir)
      for r in run.records:  # for keep_best
        if "eval_accuracy" in r and r["step"] <= run.start_step:
          checkpointer.record_evaluation(r["step"], r["eval_accuracy"])
    except BaseException:
      run.close()
      raise
    return run

  def _resume_or_initialise(self, run_dir: Workdir) -> None:
    """The newest intact checkpoint's state, or (with no checkpoint) a fresh one."""
    exp = self.exp
    self.records = read_metrics(self.workdir)  # damage is refused before anything is written
    resumed = resume.resume(exp, self.checkpointer, run_dir)
    self.epoch_steps = exp.pipeline.epoch_steps()
    if resumed is not None:
      self.state, self.rng, self.start_step = resumed.state, resumed.rng, resumed.step
      self.resumed_record, self.epoch_steps = resumed.record, resumed.epoch_steps
      if self.start_step == self.last_step:
        self.finished = self._final_record()
    run_dir.accept(exp.info.identity)
    if self.finished is None:
      if resumed is None:
        self.state, self.rng = exp.parts.state, exp.parts.rng
      is_main = jax.process_index() == 0
      self.writer = MetricsWriter(self.workdir, enabled=is_main, resume_step=self.start_step,
                                  config=exp.config.to_dict(), wandb_project=exp.config.log.wandb)
      self.progress = Progress(self.last_step, self.start_step,
                               mode=exp.config.train.progress_bar, enabled=is_main)
      logging.info("%s on %s: %d steps (%d per epoch), batch %d over %d %s device(s), runner "
                   "%s; workdir %s", exp.parts.name, exp.info.name, self.last_step,
                   exp.steps_per_epoch, exp.config.train.batch_size, exp.runner.num_replicas,
                   jax.devices()[0].platform, exp.runner.name, self.workdir)
    else:
      logging.info("The run in %s already finished at step %d.", self.workdir, self.last_step)
    self._window_start = (time.time(), self.start_step)

  @property
  def last_step(self) -> int:
    """The step that ends the run: its schedule step is the run's length."""
    return self.exp.total_steps - self.epoch_steps.step_offset

  def evaluates_at(self, step: int) -> bool:
    """Whether a periodic evaluation falls on `step` (the final one always comes)."""
    every = self.exp.eval_every
    return bool(every) and self.epoch_steps.schedule_step(step) % every == 0

  def evaluation_missing(self) -> bool:
    """Whether the run resumed from a checkpoint whose evaluation never finished (it failed, or
    a stop came between the two): that evaluation comes first."""
    step = self.start_step
    due = step == self.last_step or self.evaluates_at(step)
    return step > 0 and due and not any(
        r["step"] == step and ("eval_accuracy" in r or r.get("final")) for r in self.records)

  def _final_record(self) -> dict[str, Any] | None:
    """A finished run's report: its "final" record at the last step, if there is one."""
    finals = [r for r in self.records if r.get("final") and r["step"] == self.last_step]
    if not finals:
      return None
    return {"step": self.last_step, **{k: v for k, v in finals[-1].items() if k != "step"},
            "workdir": self.workdir}

  def checkpoint_due(self, step: int) -> bool:
    every = self.exp.config.train.checkpoint_every_steps
    return bool(every) and step % every == 0

  def log(self, step: int, device_state: Any, *, write: bool) -> dict[str, Any]:
    """The means of the step's metrics over the window that ends at `step`, with the learning
    rate and throughput; shown, and written unless it goes into the final record."""
    watched = self.exp.runner.unreplicate(_window_fields(device_state))
    bad = _nonfinite_steps(watched, self.exp.parts.step_config.on_nonfinite)
    self.checkpointer.check_for_errors()
    now, (since, first) = time.time(), self._window_start
    means = window_means(watched.metric_sums)
    record = {**{k: means[k] for k in metric_names(self.exp.parts.step_config)},
              "learning_rate": float(self.exp.parts.schedule(
                  self.epoch_steps.schedule_step(step) - 1)),
              "epoch": self.epoch_steps.schedule_step(step) / self.exp.steps_per_epoch,
              "images_per_sec": (step - first) * self.exp.config.train.batch_size / (now - since)}
    if bad:
      record["nonfinite_steps"] = bad
    self._window_start = (now, step)
    self.progress.update(step, record)
    if write:
      self.writer.write(step, record)
    return record

  def evaluate(self, step: int, device_state: Any, *, write: bool) -> dict[str, float]:
    """Exact metrics on the eval split (and of the EMA weights when kept); logged."""
    exp = self.exp
    result = evaluate(exp.steps.eval, device_state.variables(), exp.pipeline, exp.runner)
    if exp.config.optim.ema_decay:
      ema = evaluate(exp.steps.eval, device_state.variables(ema=True), exp.pipeline, exp.runner)
      result.update({f"ema_{k}": v for k, v in ema.items()})
    logging.info("step %d: %s", step, " ".join(f"{k}={v:.4f}" for k, v in result.items()))
    self.checkpointer.record_evaluation(step, result["eval_accuracy"])
    if write:
      self.writer.write(step, result)
    self._window_start = (time.time(), self._window_start[1])  # evaluation is not training
    return result

  def save(self, step: int, device_state: Any, record: dict[str, Any] | None = None) -> None:
    """Starts an asynchronous checkpoint of the state at `step` (never of a poisoned state, nor
    again of one already saved), with `record`: the last window's metrics when they are not
    written until the final record, so that a rerun that evaluates this state has them."""
    if step in (self.start_step, *self.checkpointer.manager.all_steps()):
      return
    _nonfinite_steps(self.exp.runner.unreplicate(_window_fields(device_state)),
                     self.exp.parts.step_config.on_nonfinite)
    position = self.epoch_steps.position(step)  # what a resume at another batch size continues
    self.checkpointer.save(
        step, self.exp.runner.global_state(device_state),
        {"rng": np.asarray(self.rng).tolist(),
         "data_position": {"epoch": position.epoch, "examples": position.examples},
         "schedule_step": self.epoch_steps.schedule_step(step),
         "steps_per_epoch": self.exp.steps_per_epoch, "model": self.description,
         "dataset": self.exp.info.identity, "record": record or {}})

  def finish(self, record: dict[str, Any]) -> dict[str, Any]:
    """Waits for the last checkpoint and writes the final record."""
    self.checkpointer.wait()
    final = {**record, "final": True}
    self.writer.write(self.last_step, final)
    return {"step": self.last_step, **final, "workdir": self.workdir}

  def close(self, after_failure: bool = False) -> None:
    """Closes the records and waits for the last checkpoint; after a failure, an error of its
    own (a save that failed too) is logged, not raised, so that the first error is the one
    reported."""
    for closable in (self.progress, self.writer, self.checkpointer):
      if closable is not None:
        try:
          closable.close()
        except InputError as e:
          if not after_failure:
            raise
          logging.error("%s", e)


def _window_fields(state: Any) -> Any:
  """The scalars the host reads at a log step (no big transfers)."""
  return state.replace(params=None, batch_stats=None, opt_state=None, ema_params=None,
                       ema_batch_stats=None, loss_scale=None)


def _nonfinite_steps(host_state: Any, policy: str) -> int:
  """How many steps were skipped as non-finite so far; under the "stop" policy, raises
  NonFiniteError at the first one instead."""
  count = int(host_state.nonfinite_count)
  if policy == "stop" and int(host_state.first_nonfinite_step) >= 0:
    what = "loss" if int(host_state.first_nonfinite_kind) == NONFINITE_LOSS else "gradient"
    raise NonFiniteError(f"Non-finite {what} at step {int(host_state.first_nonfinite_step) + 1}; "
                         "stopped without saving that state (the last checkpoint is intact). "
                         "Lower optim.learning_rate, set optim.clip_norm, or use "
                         "train.on_nonfinite=skip.")
  return count
