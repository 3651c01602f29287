"""train_and_evaluate(config, workdir): the loop that joins data, model, optimizer, runner, checkpoints.

Everything that can be wrong with the input (names, sizes, numbers, the work directory) is checked
before anything is compiled.
"""

import collections
import dataclasses
import datetime
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

from resnet_jax import checkpoint, data, optim, parallel, pretrained, steps
from resnet_jax.metrics import MetricsWriter, Progress
from resnet_jax.models import MODELS, create_model, part_of
from resnet_jax.preemption import Preempted, PreemptionWatcher

PRECISIONS = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
CONFIG_FILE = "config.json"


class NonFiniteError(FloatingPointError):
  """The loss or the gradients stopped being finite."""


def validate_config(config: Any) -> None:
  """Rejects out-of-range numbers and unknown choices with what to do about them."""
  def need(ok: bool, message: str) -> None:
    if not ok:
      raise ValueError(message)

  t, o = config.train, config.optim
  need(t.batch_size > 0, f"train.batch_size must be positive, got {t.batch_size}.")
  need(t.eval_batch_size > 0, f"train.eval_batch_size must be positive, got {t.eval_batch_size}.")
  need(t.num_steps > 0 or t.num_epochs > 0,
       f"Set train.num_steps or train.num_epochs to a positive value (got {t.num_steps}, "
       f"{t.num_epochs}).")
  need(t.num_steps >= 0 and t.num_epochs >= 0, "train.num_steps and train.num_epochs must be >= 0.")
  need(o.learning_rate > 0, f"optim.learning_rate must be positive, got {o.learning_rate}.")
  need(o.weight_decay >= 0, f"optim.weight_decay must be >= 0, got {o.weight_decay}.")
  need(o.warmup_epochs >= 0, f"optim.warmup_epochs must be >= 0, got {o.warmup_epochs}.")
  need(0 <= o.ema_decay < 1, f"optim.ema_decay must be in [0, 1), got {o.ema_decay}.")
  need(0 <= o.label_smoothing < 1, f"optim.label_smoothing must be in [0, 1), got {o.label_smoothing}.")
  need(t.log_every_steps > 0, f"train.log_every_steps must be positive, got {t.log_every_steps}.")
  need(t.eval_every_epochs >= 0, "train.eval_every_epochs must be >= 0 (0: only at the end).")
  need(t.keep_checkpoints > 0, f"train.keep_checkpoints must be positive, got {t.keep_checkpoints}.")
  need(t.precision in PRECISIONS, f"Unknown train.precision {t.precision!r}; choose one of "
       f"{tuple(PRECISIONS)}.")
  need(t.runner in parallel.RUNNERS, f"Unknown train.runner {t.runner!r}; choose one of "
       f"{parallel.RUNNERS}.")
  need(t.on_nonfinite in ("auto",) + steps.NONFINITE_POLICIES, f"Unknown train.on_nonfinite "
       f"{t.on_nonfinite!r}; choose auto, stop or skip.")
  need(config.model.name in MODELS or (not config.model.name and config.init.checkpoint),
       f"Unknown model.name {config.model.name!r}; valid names: {', '.join(sorted(MODELS))}.")
  need(config.init.head in ("replace", "keep"), "init.head must be replace or keep.")
  need(config.init.backbone_lr_scale > 0, "init.backbone_lr_scale must be positive (freeze with "
       "init.freeze instead of a zero rate).")
  need(o.name in optim.OPTIMIZERS, f"Unknown optim.name {o.name!r}; choose one of "
       f"{optim.OPTIMIZERS}.")
  need(o.schedule in optim.SCHEDULES, f"Unknown optim.schedule {o.schedule!r}; choose one of "
       f"{optim.SCHEDULES}.")
  need(o.boundaries_unit in ("steps", "epochs"), "optim.boundaries_unit must be steps or epochs.")


def run_identity(config: Any) -> dict[str, Any]:
  """The config values that make a run what it is; a resumed run must share them."""
  return {
      "model": config.model.to_dict(), "data.name": config.data.name,
      "data.image_size": config.data.image_size, "optim.name": config.optim.name,
      "train.batch_size": config.train.batch_size, "train.precision": config.train.precision,
      "ema": config.optim.ema_decay > 0, "seed": config.seed,
      "init.checkpoint": config.init.checkpoint, "init.freeze": config.init.freeze,
  }


def prepare_workdir(workdir: str | None, config: Any) -> str:
  """Creates the run folder (default: a new one under ./runs) and refuses another run's folder."""
  if not workdir:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    workdir = os.path.join("runs", f"{stamp}-{config.model.name}-{config.data.name}".replace(
        ":", "_").replace("/", "_"))
  workdir = os.path.abspath(workdir)
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise ValueError(f"--workdir {workdir} is a file; give a folder (new or of this same run).")
  saved_path = os.path.join(workdir, CONFIG_FILE)
  if os.path.exists(saved_path):
    with open(saved_path) as f:
      saved = json.load(f)
    saved_identity = saved.get("identity", {})
    diffs = [f"{k}: saved {saved_identity.get(k)!r}, now {v!r}"
             for k, v in run_identity(config).items()
             if json.loads(json.dumps(v)) != saved_identity.get(k)]
    if diffs:
      raise ValueError(f"--workdir {workdir} holds a run of another config:\n  " +
                       "\n  ".join(diffs) + "\nChoose a new --workdir, or the same config to resume.")
  os.makedirs(workdir, exist_ok=True)
  return workdir


def _save_config(workdir: str, config: Any) -> None:
  with open(os.path.join(workdir, CONFIG_FILE), "w") as f:
    json.dump({"config": json.loads(config.to_json_best_effort()),
               "identity": run_identity(config)}, f, indent=2)


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
    raise NonFiniteError(
        f"Non-finite {what} at step {int(host_state.first_nonfinite_step) + 1}; stopped without "
        "saving that state (the last checkpoint is intact). Lower optim.learning_rate, set "
        "optim.clip_norm, or use train.on_nonfinite=skip.")
  return count


@dataclasses.dataclass
class Experiment:
  """What a config builds: the model, optimizer and the runner-wrapped steps, and a fresh state."""

  name: str  # the registry name
  model: Any
  tx: Any
  schedule: Any
  step_config: steps.StepConfig
  state: steps.TrainState  # on the host
  rng: jax.Array  # the base key of the train steps
  train_fn: Any
  eval_fn: Any


def build(config: Any, info: data.DatasetInfo, runner: parallel.Runner, *, steps_per_epoch: int,
          total_steps: int) -> Experiment:
  """Builds model, optimizer, initial state and compiled-on-first-call steps from a config.

  Args:
    config: the run config.
    info: the dataset's classes, image shape and normalisation.
    runner: the parallel runner that wraps the steps.
    steps_per_epoch, total_steps: for the schedule.

  Returns:
    An `Experiment`; its steps are the real ones used by training and the benchmark.
  """
  t, o = config.train, config.optim
  dtype = PRECISIONS[t.precision]
  init = config.init
  source = pretrained.load(init.checkpoint) if init.checkpoint else None
  name, architecture = model_architecture(config, source)
  num_stages = len(MODELS[name].keywords["stage_sizes"])
  frozen_stages = frozen_parts(init.freeze, num_stages)
  model = create_model(
      name, num_classes=info.num_classes, dtype=dtype,
      axis_name=parallel.AXIS if t.sync_batchnorm else None,
      zero_init_residual=config.model.zero_init_residual, remat=config.model.remat,
      frozen_stages=frozen_stages, **architecture)
  input_shape = (1,) + tuple(info.image_shape)
  model.check_input_shape(input_shape)
  init_rng = jax.random.key(config.seed, impl="rbg")
  variables = None
  if source is not None:
    # Check the match on shapes alone, before anything is compiled.
    shapes = jax.eval_shape(lambda: model.init(init_rng, jnp.zeros(input_shape), train=False))
    variables = pretrained.adapt(source.variables, shapes, replace_head=init.head == "replace")
  tx, schedule = optim.make_optimizer(o, steps_per_epoch=steps_per_epoch, total_steps=total_steps,
                                      batch_size=t.batch_size)
  if frozen_stages or init.backbone_lr_scale != 1.0:
    tx = optim.for_fine_tuning(tx, functools.partial(part_of, num_stages=num_stages),
                               frozen_stages=frozen_stages,
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
  # Parameters are drawn with the "rbg" generator (init_rng): its initialisers compile several
  # times faster than threefry's (seconds per run). The step's key stays threefry, a uint32[2].
  train_rng = jax.random.fold_in(jax.random.PRNGKey(config.seed), 1)
  loss_scale = steps.LossScale.create(period=t.loss_scale_period) if t.precision == "float16" \
      else None
  if variables is not None:  # a replaced head takes freshly initialised values
    fresh = jax.jit(functools.partial(model.init, train=False))(init_rng, jnp.zeros(input_shape))
    variables = jax.tree.map(lambda v, f: f if isinstance(v, jax.ShapeDtypeStruct) else v,
                             variables, jax.device_get(fresh))
  state = jax.device_get(jax.jit(functools.partial(
      steps.create_train_state, model, tx, input_shape=input_shape, ema=o.ema_decay > 0,
      loss_scale=loss_scale))(init_rng, variables=variables))
  train_fn = runner.train_step(functools.partial(steps.train_step, model=model, tx=tx,
                                                 schedule=schedule, config=step_config))
  eval_fn = runner.eval_step(functools.partial(steps.eval_step, model=model, config=step_config))
  return Experiment(name, model, tx, schedule, step_config, state, train_rng, train_fn, eval_fn)


def model_architecture(config: Any, source: "pretrained.Pretrained | None"
                       ) -> tuple[str, dict[str, Any]]:
  """The registry name and variable-shaping options: the config's, or a fine-tuned checkpoint's."""
  m = config.model
  options = {k: m[k] for k in pretrained.ARCHITECTURE_OPTIONS if m[k] is not None}  # None: default
  if source is None:
    return m.name, options
  if m.name and m.name != source.model:
    raise ValueError(f"init.checkpoint holds a {source.model}, but model.name is {m.name!r}; set "
                     f"--config.model.name={source.model} or leave it empty.")
  return source.model, {**options, **source.options}


def frozen_parts(freeze: str, num_stages: int) -> int:
  """`init.freeze` as `ResNet.frozen_stages`: none, stem, stage1..stageN, backbone."""
  names = ["none", "stem"] + [f"stage{i}" for i in range(1, num_stages + 1)] + ["backbone"]
  if freeze not in names:
    raise ValueError(f"Unknown init.freeze {freeze!r}; choose one of {names}.")
  return min(names.index(freeze), num_stages + 1)


def model_description(config: Any, info: data.DatasetInfo, exp: "Experiment") -> dict[str, Any]:
  """What a checkpoint needs to rebuild and feed its network (see `pretrained.Pretrained`)."""
  model = exp.model
  return pretrained.Pretrained(
      variables={}, model=exp.name, num_classes=info.num_classes,
      options={k: getattr(model, k) for k in pretrained.ARCHITECTURE_OPTIONS},
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
    Preempted: after checkpointing in response to SIGTERM/SIGINT.
    NonFiniteError: the loss or gradients became non-finite with on_nonfinite="stop".
  """
  validate_config(config)
  d = config.distributed
  parallel.initialize_distributed(d.coordinator_address, d.num_processes, d.process_id)
  is_main = jax.process_index() == 0
  workdir = prepare_workdir(workdir, config)
  t, o = config.train, config.optim

  info = data.get_info(config.data)
  runner = parallel.make_runner(t.runner)
  runner.check_batch_size(t.batch_size)
  runner.check_batch_size(t.eval_batch_size, "train.eval_batch_size")
  pipeline = data.create_pipeline(
      config.data, info, global_batch_size=t.batch_size, eval_batch_size=t.eval_batch_size,
      seed=config.seed, process_index=jax.process_index(), process_count=jax.process_count())
  steps_per_epoch = pipeline.steps_per_epoch
  if steps_per_epoch < 1:
    raise ValueError(f"train.batch_size={t.batch_size} exceeds the {info.num_train} training "
                     "examples; lower it.")
  total_steps = t.num_steps or math.ceil(t.num_epochs * steps_per_epoch)
  eval_every = max(1, round(t.eval_every_epochs * steps_per_epoch)) if t.eval_every_epochs else 0
  exp = build(config, info, runner, steps_per_epoch=steps_per_epoch, total_steps=total_steps)
  if is_main:
    _save_config(workdir, config)
  logging.info("%s on %s: %d steps (%d per epoch), batch %d over %d %s device(s), runner %s; "
               "workdir %s", config.model.name, info.name, total_steps, steps_per_epoch,
               t.batch_size, runner.num_replicas, jax.devices()[0].platform, runner.name, workdir)

  state, train_rng = exp.state, exp.rng
  description = model_description(config, info, exp)
  checkpointer = checkpoint.Checkpointer(
      os.path.join(workdir, "checkpoints"), identity=run_identity(config),
      keep=t.keep_checkpoints, keep_best=t.keep_best, async_save=t.async_checkpointing)
  restored = checkpointer.restore_latest(checkpoint.abstract(state))
  start_step = 0
  if restored is not None:
    state, meta = restored
    start_step = int(meta["step"])
    train_rng = jnp.asarray(meta["rng"], jnp.uint32)
    logging.info("Resumed from step %d of %s.", start_step, checkpointer.directory)

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
    with PreemptionWatcher() as watcher:
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
    if start_step >= total_steps:  # resumed a finished run: report its final evaluation again
      eval_metrics = run_eval(device_state)
    checkpointer.wait()
    final = {**record, **eval_metrics, "final": True}
    writer.write(total_steps, final)
  finally:
    progress.close()
    writer.close()
    checkpointer.close()
  return {"step": total_steps, **final, "workdir": workdir}


def _window_fields(state: steps.TrainState) -> steps.TrainState:
  """The scalars the host reads at a log step (no big transfers)."""
  return state.replace(params=None, batch_stats=None, opt_state=None, ema_params=None,
                       ema_batch_stats=None, loss_scale=None)


def load_config(workdir: str) -> Any:
  """The resolved config a run saved in WORKDIR/config.json."""
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{workdir} is not a run folder (no {CONFIG_FILE}).")
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
  config.init.checkpoint = ""  # the run's own checkpoint replaces any starting weights
  info = data.get_info(config.data)
  runner = parallel.make_runner(config.train.runner)
  runner.check_batch_size(config.train.eval_batch_size, "train.eval_batch_size")
  pipeline = data.create_pipeline(
      config.data, info, global_batch_size=config.train.batch_size,
      eval_batch_size=config.train.eval_batch_size, seed=config.seed,
      process_index=jax.process_index(), process_count=jax.process_count())
  state, meta = checkpoint.load(os.path.join(workdir, "checkpoints"), step)
  config.model.name = meta["model"]["model"]
  config.model.update(meta["model"]["options"])
  exp = build(config, info, runner, steps_per_epoch=max(1, pipeline.steps_per_epoch),
              total_steps=1)
  variables = runner.replicate({"params": state["params"], "batch_stats": state["batch_stats"]})
  arrays = runner.replicate(pipeline.arrays["eval"]) if pipeline.device_resident else None
  metrics = evaluate(exp.eval_fn, variables, pipeline, runner, arrays)
  return {"step": int(meta["step"]), "split": config.data.eval_split or "default",
          "num_examples": pipeline.num_eval, **metrics}
