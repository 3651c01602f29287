"""train_and_evaluate(config, workdir): the loop that joins data, model, optimizer, runner, checkpoints.

Everything that can be wrong with the input (names, sizes, numbers, the work directory) is checked
before anything is compiled.
"""

import collections
import copy
import dataclasses
import functools
import itertools
import json
import logging
import math
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from resnet_jax import data
from resnet_jax.errors import InputNotFoundError, InvalidInputError, check
from resnet_jax.models import ARCHITECTURE_OPTIONS, MODELS, create_model, describe_architecture
from resnet_jax.train import checkpoint, optim, parallel, pretrained, steps
from resnet_jax.train.metrics import MetricsWriter, Progress, read_metrics
from resnet_jax.train.preemption import Preempted, PreemptionWatcher
from resnet_jax.train.workdir import (CONFIG_FILE, Workdir, config_differences, default_workdir,
                                run_identity)

PRECISIONS = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


class NonFiniteError(FloatingPointError):
  """The loss or the gradients stopped being finite."""


def validate_config(config: Any) -> None:
  """Rejects out-of-range numbers and unknown choices with what to do about them."""
  for key, value in _numbers(config.to_dict()):
    check(math.isfinite(value), f"{key}={value} must be a finite number.")
  t, o, d = config.train, config.optim, config.data
  check(t.batch_size > 0, f"train.batch_size must be positive, got {t.batch_size}.")
  check(t.eval_batch_size > 0, f"train.eval_batch_size must be positive, got {t.eval_batch_size}.")
  check(t.num_steps > 0 or t.num_epochs > 0,
        f"Set train.num_steps or train.num_epochs to a positive value (got {t.num_steps}, "
        f"{t.num_epochs}).")
  check(t.num_steps >= 0 and t.num_epochs >= 0,
        "train.num_steps and train.num_epochs must be >= 0.")
  check(o.learning_rate > 0, f"optim.learning_rate must be positive, got {o.learning_rate}.")
  check(o.weight_decay >= 0, f"optim.weight_decay must be >= 0, got {o.weight_decay}.")
  check(o.warmup_epochs >= 0, f"optim.warmup_epochs must be >= 0, got {o.warmup_epochs}.")
  check(0 <= o.ema_decay < 1, f"optim.ema_decay must be in [0, 1), got {o.ema_decay}.")
  check(0 <= o.label_smoothing < 1,
        f"optim.label_smoothing must be in [0, 1), got {o.label_smoothing}.")
  check(o.clip_norm >= 0, f"optim.clip_norm must be >= 0 (0: off), got {o.clip_norm}.")
  check(d.num_workers >= 0, f"data.num_workers must be >= 0 (0: one decoding thread), got "
        f"{d.num_workers}.")
  check(d.crop_padding >= 0, f"data.crop_padding must be >= 0 (0: off), got {d.crop_padding}.")
  check(t.log_every_steps > 0, f"train.log_every_steps must be positive, got {t.log_every_steps}.")
  check(t.eval_every_epochs >= 0, "train.eval_every_epochs must be >= 0 (0: only at the end).")
  check(t.checkpoint_every_steps >= 0,
        "train.checkpoint_every_steps must be >= 0 (0: at each evaluation).")
  check(t.keep_checkpoints > 0, f"train.keep_checkpoints must be positive, got "
        f"{t.keep_checkpoints}.")
  check(t.precision in PRECISIONS, f"Unknown train.precision {t.precision!r}; choose one of "
        f"{tuple(PRECISIONS)}.")
  parallel.RUNNERS[t.runner]  # an unknown name is refused, listing the registered ones
  check(t.on_nonfinite in ("auto",) + steps.NONFINITE_POLICIES, f"Unknown train.on_nonfinite "
        f"{t.on_nonfinite!r}; choose auto, stop or skip.")
  check(config.model.name in MODELS or (not config.model.name and config.init.checkpoint),
        f"Unknown model.name {config.model.name!r}; valid names: {', '.join(sorted(MODELS))}.")
  check(config.init.head in ("replace", "keep"), "init.head must be replace or keep.")
  check(config.init.backbone_lr_scale > 0, "init.backbone_lr_scale must be positive (freeze "
        "with init.freeze instead of a zero rate).")
  optim.check_names(o)
  check(o.boundaries_unit in ("steps", "epochs"), "optim.boundaries_unit must be steps or epochs.")


def _numbers(tree: dict, prefix: str = ""):
  """(dotted key, value) of every float in a config dict, sequences included."""
  for key, value in tree.items():
    name = f"{prefix}{key}"
    if isinstance(value, dict):
      yield from _numbers(value, name + ".")
    elif isinstance(value, float):
      yield name, value
    elif isinstance(value, (list, tuple)):
      yield from ((f"{name}[{i}]", v) for i, v in enumerate(value) if isinstance(v, float))


def train_inputs(pipeline, runner: parallel.Runner, arrays: Any, start_step: int):
  """(batch, train arrays) per step from `start_step`, batches moved to the devices ahead.

  Device-resident data: the images stay on the devices (`arrays`, replicated once) and only
  each epoch's order is sent, at the epoch's first step.
  """
  if not pipeline.device_resident:
    for batch in _prefetch(pipeline.train_batches(start_step), runner):
      yield batch, None
    return
  empty = runner.shard_batch({})  # the step slices its rows of the epoch order on the device
  epoch = None
  for step in itertools.count(start_step):
    if step // pipeline.steps_per_epoch != epoch:
      epoch = step // pipeline.steps_per_epoch
      arrays = {**arrays, "order": runner.replicate(pipeline.epoch_order(epoch))}
    yield empty, arrays


def _prefetch(iterator, runner: parallel.Runner, depth: int = 2):
  """Moves batches to the devices `depth` steps ahead (the copies overlap the running step)."""
  queue = collections.deque()
  for batch in iterator:
    queue.append(runner.shard_batch(batch))
    if len(queue) > depth:
      yield queue.popleft()
  yield from queue


def evaluate(eval_fn, variables, pipeline, runner: parallel.Runner, arrays) -> dict[str, float]:
  """Exact loss, top-1 and top-5 over the whole eval split (padding is masked out)."""
  totals = None
  for batch in _prefetch(pipeline.eval_batches(), runner, depth=1):
    sums = eval_fn(variables, batch, arrays)
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  totals = jax.device_get(totals)
  count = float(totals["count"])
  if count != pipeline.num_eval:
    raise RuntimeError(f"Evaluated {count} examples, expected {pipeline.num_eval}.")
  return {"eval_loss": float(totals["loss"]) / count, "eval_accuracy": float(totals["top1"]) / count,
          "eval_top5": float(totals["top5"]) / count}


def _check_finite(host_state: Any, policy: str) -> int:
  count = int(host_state.nonfinite_count)
  if policy == "stop" and int(host_state.first_nonfinite_step) >= 0:
    what = "loss" if int(host_state.first_nonfinite_kind) == steps.NONFINITE_LOSS else "gradient"
    raise NonFiniteError(f"Non-finite {what} at step {int(host_state.first_nonfinite_step) + 1}; "
                         "stopped without saving that state (the last checkpoint is intact). "
                         "Lower optim.learning_rate, set optim.clip_norm, or use "
                         "train.on_nonfinite=skip.")
  return count


@dataclasses.dataclass
class Experiment:
  """What a config builds: the model, optimizer, runner-wrapped steps and the train state's
  structure; nothing is compiled until `init_state` or a step is called."""

  name: str  # the registry name
  model: Any
  tx: Any
  schedule: Any
  step_config: steps.StepConfig
  abstract_state: steps.TrainState  # shapes and dtypes: the restore target
  init_state: Any  # () -> a fresh train state on the host (compiles the initialisers)
  seed: int
  train_fn: Any
  eval_fn: Any

  @functools.cached_property
  def state(self) -> steps.TrainState:
    """The initial train state on the host (made on first use)."""
    return self.init_state()

  @functools.cached_property
  def rng(self) -> jax.Array:
    """The base key of a fresh run's train steps (a resumed run reads its own)."""
    return jax.random.fold_in(jax.random.PRNGKey(self.seed), 1)


def build(config: Any, info: data.DatasetInfo, runner: parallel.Runner, *, steps_per_epoch: int,
          total_steps: int, source: "pretrained.Pretrained | None" = None) -> Experiment:
  """Builds model, optimizer, the train state's structure and the runner-wrapped steps.

  Args:
    config: the run config.
    info: the dataset's classes, image shape and normalisation.
    runner: the parallel runner that wraps the steps.
    steps_per_epoch, total_steps: for the schedule.
    source: the weights of init.checkpoint, when set (`pretrained.load`).

  Returns:
    An `Experiment`; its steps are the real ones used by training and the benchmark.
  """
  t, o = config.train, config.optim
  dtype = PRECISIONS[t.precision]
  init = config.init
  name, architecture = model_architecture(config, source)
  model = create_model(
      name, num_classes=info.num_classes, dtype=dtype,
      axis_name=parallel.AXIS if t.sync_batchnorm else None,
      zero_init_residual=config.model.zero_init_residual, remat=config.model.remat,
      **architecture)
  frozen_stages = frozen_parts(init.freeze, len(model.stage_sizes))
  model = model.clone(frozen_stages=frozen_stages)
  input_shape = (1,) + tuple(info.image_shape)
  model.check_input_shape(input_shape)
  # Parameters are drawn with the "rbg" generator: its initialisers compile several times faster
  # than threefry's (seconds per run). The steps' key stays threefry, a uint32[2] (`rng`).
  init_rng = lambda: jax.random.key(config.seed, impl="rbg")
  init_variables = lambda: model.init(init_rng(), jnp.zeros(input_shape), train=False)
  variables = None
  if source is not None:
    # Check the match on shapes alone, before anything is compiled.
    variables = pretrained.adapt(source.variables, jax.eval_shape(init_variables),
                                 replace_head=init.head == "replace", head=model.head,
                                 input_conv=model.input_conv)
  tx, schedule = optim.make_optimizer(o, steps_per_epoch=steps_per_epoch, total_steps=total_steps,
                                      batch_size=t.batch_size)
  if frozen_stages or init.backbone_lr_scale != 1.0:
    tx = optim.for_fine_tuning(tx, model.part_of, frozen_stages=frozen_stages,
                               backbone_lr_scale=init.backbone_lr_scale)
  on_nonfinite = t.on_nonfinite if t.on_nonfinite != "auto" else (
      "skip" if t.precision == "float16" else "stop")
  step_config = steps.StepConfig(
      num_classes=info.num_classes, mean=tuple(info.mean), std=tuple(info.std), dtype=dtype,
      axis_name=parallel.AXIS, label_smoothing=o.label_smoothing,
      crop_padding=config.data.crop_padding,
      # The host's random-resized crop flips too.
      random_flip=config.data.random_flip and not config.data.random_resized_crop,
      ema_decay=o.ema_decay, on_nonfinite=on_nonfinite, sync_batchnorm=t.sync_batchnorm,
      log_every_steps=t.log_every_steps, steps_per_epoch=steps_per_epoch,
      global_batch_size=t.batch_size)
  create_state = lambda variables=None: steps.create_train_state(
      model, tx, init_rng(), input_shape, ema=o.ema_decay > 0, variables=variables,
      loss_scale=steps.LossScale.create(period=t.loss_scale_period)
      if t.precision == "float16" else None)

  def init_state():
    start = variables
    if start is not None:  # a replaced head takes freshly initialised values
      fresh = jax.device_get(jax.jit(init_variables)())
      start = jax.tree.map(lambda v, f: f if isinstance(v, jax.ShapeDtypeStruct) else v,
                           start, fresh)
    return jax.device_get(jax.jit(create_state)(start))

  train_fn = runner.train_step(functools.partial(steps.train_step, model=model, tx=tx,
                                                 schedule=schedule, config=step_config))
  eval_fn = runner.eval_step(functools.partial(steps.eval_step, model=model, config=step_config))
  return Experiment(name, model, tx, schedule, step_config, jax.eval_shape(create_state),
                    init_state, config.seed, train_fn, eval_fn)


def model_architecture(config: Any, source: "pretrained.Pretrained | None"
                       ) -> tuple[str, dict[str, Any]]:
  """The registry name and variable-shaping options: the config's, or a fine-tuned checkpoint's."""
  m = config.model
  options = {k: m[k] for k in ARCHITECTURE_OPTIONS if m.get(k) is not None}  # None: registry's
  if source is None:
    return m.name, options
  if m.name and m.name != source.model:
    raise InvalidInputError(f"init.checkpoint holds a {source.model}, but model.name is "
                            f"{m.name!r}; set --config.model.name={source.model} or leave it "
                            "empty.")
  return source.model, {**options, **source.options}


def frozen_parts(freeze: str, num_stages: int) -> int:
  """`init.freeze` as `ResNet.frozen_stages`: none, stem, stage1..stageN, backbone."""
  names = ["none", "stem"] + [f"stage{i}" for i in range(1, num_stages + 1)] + ["backbone"]
  if freeze not in names:
    raise InvalidInputError(f"Unknown init.freeze {freeze!r}; choose one of {names}.")
  return min(names.index(freeze), num_stages + 1)


def model_description(config: Any, info: data.DatasetInfo, exp: "Experiment") -> dict[str, Any]:
  """What a checkpoint needs to rebuild and feed its network (see `pretrained.Pretrained`)."""
  model = exp.model
  return pretrained.Pretrained(
      variables={}, model=exp.name, num_classes=info.num_classes,
      options=describe_architecture(model),
      preprocessing=pretrained.Preprocessing(
          image_size=info.image_shape[0], channels=info.image_shape[2],
          crop_ratio=config.data.eval_crop_ratio, mean=info.mean, std=info.std),
      class_names=info.class_names).describe()


def train_and_evaluate(config: Any, workdir: str | None = None) -> dict[str, Any]:
  """Trains and evaluates as `config` says, resuming from `workdir` when it holds a checkpoint.

  Args:
    config: a config from experiments/configs (see default.py for every key).
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
  d = config.distributed
  parallel.initialize_distributed(d.coordinator_address, d.num_processes, d.process_id)
  with PreemptionWatcher() as watcher:
    source = pretrained.load(config.init.checkpoint) if config.init.checkpoint else None
    name = model_architecture(config, source)[0]
    with Workdir(workdir or default_workdir(name, config.data.name), config,
                 is_main=jax.process_index() == 0) as run_dir:
      return _train(config, run_dir, source, watcher)


def _train(config: Any, run_dir: Workdir, source: "pretrained.Pretrained | None",
           watcher: PreemptionWatcher) -> dict[str, Any]:
  is_main = jax.process_index() == 0
  workdir = run_dir.path
  t, o = config.train, config.optim

  info = data.get_info(config.data)
  runner = parallel.make_runner(t.runner)
  runner.check_batch_size(t.batch_size)
  runner.check_batch_size(t.eval_batch_size, "train.eval_batch_size")
  pipeline = data.create_pipeline(
      config.data, info, global_batch_size=t.batch_size, eval_batch_size=t.eval_batch_size,
      seed=config.seed, process_index=jax.process_index(), process_count=jax.process_count())
  steps_per_epoch = pipeline.steps_per_epoch
  check(steps_per_epoch >= 1, f"train.batch_size={t.batch_size} exceeds the {info.num_train} "
        "training examples; lower it.")
  total_steps = t.num_steps or math.ceil(t.num_epochs * steps_per_epoch)
  eval_every = max(1, round(t.eval_every_epochs * steps_per_epoch)) if t.eval_every_epochs else 0
  exp = build(config, info, runner, steps_per_epoch=steps_per_epoch, total_steps=total_steps,
              source=source)
  state, train_rng = None, None
  description = model_description(config, info, exp)
  checkpointer = checkpoint.Checkpointer(
      os.path.join(workdir, "checkpoints"), identity=run_identity(config),
      keep=t.keep_checkpoints, keep_best=t.keep_best, async_save=t.async_checkpointing)
  try:
    try:
      restored = checkpointer.restore_latest(exp.abstract_state)
    except checkpoint.StateStructureError as e:
      rebuild = lambda c: build(c, info, runner, steps_per_epoch=steps_per_epoch,
                                total_steps=total_steps, source=source).abstract_state
      raise structure_change_error(e, run_dir, config, info, rebuild) from None
    start_step = 0
    if restored is not None:
      state, meta = restored
      start_step = int(meta["step"])
      train_rng = np.asarray(meta["rng"], np.uint32)
      logging.info("Resumed from step %d of %s.", start_step, checkpointer.directory)
    if start_step >= total_steps:
      final = _final_record(workdir, total_steps)
      if final is not None:
        run_dir.accept()
        logging.info("The run in %s already finished at step %d.", workdir, total_steps)
        return {"step": total_steps, **final, "workdir": workdir}
    if state is None:
      state, train_rng = exp.state, exp.rng
    run_dir.accept()
    watcher.start_training()
    logging.info("%s on %s: %d steps (%d per epoch), batch %d over %d %s device(s), runner %s; "
                 "workdir %s", exp.name, info.name, total_steps, steps_per_epoch,
                 t.batch_size, runner.num_replicas, jax.devices()[0].platform, runner.name, workdir)
    return _loop(config, exp, state, train_rng, start_step, total_steps, eval_every, pipeline,
                 runner, checkpointer, description, watcher, workdir, is_main)
  finally:
    checkpointer.close()


def _final_record(workdir: str, step: int) -> dict[str, Any] | None:
  """The "final" record of a finished run at `step` in metrics.jsonl, if there is one."""
  finals = [r for r in read_metrics(workdir) if r.get("final") and r["step"] == step]
  return {k: v for k, v in finals[-1].items() if k != "step"} if finals else None


def _loop(config, exp, state, train_rng, start_step, total_steps, eval_every, pipeline, runner,
          checkpointer, description, watcher, workdir, is_main):
  t, o = config.train, config.optim
  steps_per_epoch = pipeline.steps_per_epoch
  train_fn, eval_fn, on_nonfinite = exp.train_fn, exp.eval_fn, exp.step_config.on_nonfinite
  arrays = runner.replicate(pipeline.arrays) if pipeline.device_resident else {
      "train": None, "eval": None}
  device_state = runner.replicate(state)
  rng = runner.replicate(train_rng)
  writer = MetricsWriter(workdir, enabled=is_main, resume_step=start_step)
  progress = Progress(total_steps, start_step, mode=t.progress_bar, enabled=is_main)

  def run_eval(device_state) -> dict[str, float]:
    result = evaluate(eval_fn, device_state.variables(), pipeline, runner, arrays["eval"])
    if o.ema_decay:
      ema = evaluate(eval_fn, device_state.variables(ema=True), pipeline, runner, arrays["eval"])
      result.update({f"ema_{k}": v for k, v in ema.items()})
    return result

  def save(step: int, device_state, eval_metrics=None) -> None:
    host_state = runner.unreplicate(device_state)
    _check_finite(host_state, on_nonfinite)  # never checkpoint a poisoned run
    checkpointer.save(step, host_state,
                      {"rng": np.asarray(train_rng).tolist(), "data_position": step,
                       "steps_per_epoch": steps_per_epoch, "model": description},
                      eval_accuracy=(eval_metrics or {}).get("eval_accuracy"))

  record: dict[str, Any] = {}
  eval_metrics: dict[str, float] = {}
  last_time, last_step = time.time(), start_step
  inputs = train_inputs(pipeline, runner, arrays["train"], start_step)
  try:
    for step in range(start_step, total_steps):
      batch, train_arrays = next(inputs)
      device_state, _ = train_fn(device_state, batch, rng, train_arrays)
      done = step + 1
      stop = watcher.should_stop(done)
      is_last = done == total_steps
      if done % t.log_every_steps == 0 or is_last:
        watched = runner.unreplicate(_window_fields(device_state))
        now = time.time()
        bad = _check_finite(watched, on_nonfinite)
        checkpointer.check_for_errors()
        sums = watched.metric_sums
        record = {k: float(sums[k]) / float(sums["steps"]) if sums["steps"] else float("nan")
                  for k in steps.WINDOW_METRICS}
        record.update(learning_rate=float(exp.schedule(step)), epoch=done / steps_per_epoch,
                      images_per_sec=(done - last_step) * t.batch_size / (now - last_time))
        if bad:
          record["nonfinite_steps"] = bad
        last_time, last_step = now, done
        progress.update(done, record)
        if not is_last:  # the last one goes into the final record
          writer.write(done, record)
      eval_now = is_last or (eval_every and done % eval_every == 0)
      if eval_now:
        eval_metrics = run_eval(device_state)
        logging.info("step %d: %s", done,
                     " ".join(f"{k}={v:.4f}" for k, v in eval_metrics.items()))
        if not is_last:
          writer.write(done, eval_metrics)
        last_time = time.time()  # keep evaluation out of the training throughput
      if eval_now or stop or (t.checkpoint_every_steps and done % t.checkpoint_every_steps == 0):
        save(done, device_state, eval_metrics if eval_now else None)
      if stop:
        checkpointer.wait()
        raise Preempted(watcher.signum, done)
    if start_step >= total_steps:  # resumed a finished run without its final record
      eval_metrics = run_eval(device_state)
    checkpointer.wait()
    final = {**record, **eval_metrics, "final": True}
    writer.write(total_steps, final)
  finally:
    progress.close()
    writer.close()
  return {"step": total_steps, **final, "workdir": workdir}


def structure_change_error(error: checkpoint.StateStructureError, run_dir: Workdir, config: Any,
                           info: data.DatasetInfo, abstract_state_of: Any) -> InvalidInputError:
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


def _window_fields(state: steps.TrainState) -> steps.TrainState:
  """The scalars the host reads at a log step (no big transfers)."""
  return state.replace(params=None, batch_stats=None, opt_state=None, ema_params=None,
                       ema_batch_stats=None, loss_scale=None)


def load_config(workdir: str) -> Any:
  """The resolved config a run saved in WORKDIR/config.json."""
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    raise InputNotFoundError(f"{workdir} is not a run folder (no {CONFIG_FILE}).")
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f)["config"])


def evaluate_run(workdir: str, *, split: str = "", step: int | None = None) -> dict[str, Any]:
  """Exact loss, top-1 and top-5 of a run's checkpoint on a split of its dataset.

  Args:
    workdir: the run folder.
    split: a split name (default: the run's evaluation split).
    step: which checkpoint (default: the newest).

  Returns:
    {"step", "split", "num_examples", "eval_loss", "eval_accuracy", "eval_top5"}.
  """
  config = load_config(workdir)
  config.data.eval_split = split or config.data.eval_split
  info = data.get_info(config.data)
  runner = parallel.make_runner(config.train.runner)
  runner.check_batch_size(config.train.eval_batch_size, "train.eval_batch_size")
  pipeline = data.create_pipeline(
      config.data, info, global_batch_size=config.train.batch_size,
      eval_batch_size=config.train.eval_batch_size, seed=config.seed,
      process_index=jax.process_index(), process_count=jax.process_count())
  state, meta = checkpoint.load(os.path.join(workdir, "checkpoints"), step)
  variables = {"params": state["params"], "batch_stats": state["batch_stats"]}
  config.model.name = ""
  config.init.update(head="keep", freeze="none")
  exp = build(config, info, runner, steps_per_epoch=max(1, pipeline.steps_per_epoch),
              total_steps=1, source=pretrained.from_description(variables, meta["model"]))
  variables = runner.replicate({"params": state["params"], "batch_stats": state["batch_stats"]})
  arrays = runner.replicate(pipeline.arrays["eval"]) if pipeline.device_resident else None
  metrics = evaluate(exp.eval_fn, variables, pipeline, runner, arrays)
  return {"step": int(meta["step"]), "split": config.data.eval_split or "default",
          "num_examples": pipeline.num_eval, **metrics}
