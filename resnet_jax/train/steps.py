"""TrainState and the per-replica train and eval steps (pure; collectives over a named axis)."""

import dataclasses
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from resnet_jax.data.augment import augment_on_device, normalize

NONFINITE_POLICIES = ("stop", "skip")
NONFINITE_LOSS, NONFINITE_GRADIENTS = 1, 2
WINDOW_METRICS = ("train_loss", "train_accuracy", "grad_norm")


@flax.struct.dataclass
class LossScale:
  """Dynamic loss scale for float16: halve on overflow, double after `period` finite steps."""

  scale: jax.Array
  good_steps: jax.Array
  period: int = flax.struct.field(pytree_node=False, default=2000)

  @classmethod
  def create(cls, initial: float = 2.0**15, period: int = 2000) -> "LossScale":
    return cls(jnp.asarray(initial, jnp.float32), jnp.zeros((), jnp.int32), period)

  def update(self, finite: jax.Array) -> "LossScale":
    grow = finite & (self.good_steps + 1 >= self.period)
    scale = jnp.where(finite, jnp.where(grow, self.scale * 2, self.scale),
                      jnp.maximum(self.scale / 2, 1.0))
    good = jnp.where(finite & ~grow, self.good_steps + 1, 0)
    return self.replace(scale=scale, good_steps=good)


@flax.struct.dataclass
class TrainState:
  """Everything a step changes; a checkpoint of it resumes a run exactly."""

  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  ema_params: Any = None
  ema_batch_stats: Any = None
  loss_scale: LossScale | None = None
  nonfinite_count: jax.Array = None  # steps whose loss or gradients were not finite
  first_nonfinite_step: jax.Array = None  # -1 until the first such step
  first_nonfinite_kind: jax.Array = None  # NONFINITE_LOSS or NONFINITE_GRADIENTS
  # Sums of the train metrics over the current logging window (steps [m*L, (m+1)*L)). Kept in the
  # state, so a resumed run logs exactly what an uninterrupted one logs.
  metric_sums: dict = None

  def variables(self, ema: bool = False) -> dict:
    if ema:
      return {"params": self.ema_params, "batch_stats": self.ema_batch_stats}
    return {"params": self.params, "batch_stats": self.batch_stats}


@dataclasses.dataclass(frozen=True)
class StepConfig:
  """Hyperparameters the steps need, bound with `functools.partial` before transforming."""

  num_classes: int
  mean: tuple[float, ...]
  std: tuple[float, ...]
  dtype: Any = jnp.float32
  axis_name: str = "batch"
  label_smoothing: float = 0.0
  crop_padding: int = 0
  random_flip: bool = False
  ema_decay: float = 0.0
  on_nonfinite: str = "stop"
  sync_batchnorm: bool = True
  log_every_steps: int = 1
  steps_per_epoch: int = 1  # with global_batch_size: device-resident batches from the epoch order
  global_batch_size: int = 0


def create_train_state(model: nn.Module, tx: optax.GradientTransformation, rng: jax.Array,
                       input_shape: tuple[int, ...], *, ema: bool = False,
                       loss_scale: LossScale | None = None,
                       variables: dict | None = None) -> TrainState:
  """Initialises parameters (or takes `variables`), BatchNorm statistics and optimizer state
  (call under `jax.jit`)."""
  if variables is None:
    variables = model.init(rng, jnp.zeros(input_shape, jnp.float32), train=False)
  params, batch_stats = variables["params"], variables.get("batch_stats", {})
  return TrainState(
      step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
      opt_state=tx.init(params), ema_params=params if ema else None,
      ema_batch_stats=batch_stats if ema else None, loss_scale=loss_scale,
      nonfinite_count=jnp.zeros((), jnp.int32),
      first_nonfinite_step=jnp.full((), -1, jnp.int32),
      first_nonfinite_kind=jnp.zeros((), jnp.int32),
      metric_sums={k: jnp.zeros((), jnp.float32) for k in WINDOW_METRICS + ("steps",)})


def cross_entropy(logits: jax.Array, labels: jax.Array, num_classes: int,
                  label_smoothing: float = 0.0) -> jax.Array:
  """Per-example softmax cross-entropy in float32, with optional label smoothing."""
  targets = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
  if label_smoothing:
    targets = optax.smooth_labels(targets, label_smoothing)
  return optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)


def _images_and_labels(batch: dict, arrays: dict | None) -> tuple[jax.Array, jax.Array]:
  # Device-resident evaluation sends only indices; the images never leave the device.
  if "index" in batch:
    return arrays["image"][batch["index"]], arrays["label"][batch["index"]]
  return batch["image"], batch["label"]


def _resident_batch(arrays: dict, step: jax.Array, config: StepConfig) -> dict:
  """This replica's rows of the global batch at `step`, sliced from the epoch's order on device,
  so a device-resident run needs nothing from the host between epochs."""
  local = config.global_batch_size // jax.lax.axis_size(config.axis_name)
  start = (step % config.steps_per_epoch) * config.global_batch_size + \
      jax.lax.axis_index(config.axis_name) * local
  return {"index": jax.lax.dynamic_slice(arrays["order"], (start,), (local,))}


def train_step(state: TrainState, batch: dict, rng: jax.Array, arrays: dict | None, *,
               model: nn.Module, tx: optax.GradientTransformation, schedule: optax.Schedule,
               config: StepConfig) -> tuple[TrainState, dict]:
  """One optimisation step on this replica's shard of the global batch.

  Gradients are averaged over `config.axis_name`; BatchNorm statistics are averaged inside the
  model (its `axis_name`) when `sync_batchnorm`, else after the step. A step whose loss or
  gradients are not finite leaves every parameter, statistic and moment unchanged; with
  `on_nonfinite="stop"` every later step is frozen too, so the host can stop with the step number
  and nothing poisoned can be checkpointed.

  Args:
    state: the replicated train state.
    batch: {"image", "label"}, this replica's rows; empty when the data is device-resident.
    rng: the run's base key; the step number and each example's global position are folded in.
    arrays: device-resident {"image", "label", "order"} (the whole train split and the current
      epoch's order), or None.
    model, tx, schedule, config: bound with `functools.partial`.

  Returns:
    (new state, metrics averaged over replicas).
  """
  axis = config.axis_name
  if arrays is not None:
    batch = _resident_batch(arrays, state.step, config)
  images, labels = _images_and_labels(batch, arrays)
  # One key per example from its position in the global batch: the augmentation does not depend
  # on how many devices share the batch.
  local = images.shape[0]
  positions = jax.lax.axis_index(axis) * local + jnp.arange(local)
  step_rng = jax.random.fold_in(rng, state.step)
  keys = jax.vmap(lambda i: jax.random.fold_in(step_rng, i))(positions)
  images = augment_on_device(images, keys, crop_padding=config.crop_padding,
                             random_flip=config.random_flip)
  x = normalize(images, config.mean, config.std, config.dtype)
  scale = state.loss_scale.scale if state.loss_scale is not None else None

  def loss_fn(params):
    logits, updates = model.apply({"params": params, "batch_stats": state.batch_stats}, x,
                                  train=True, mutable=["batch_stats"])
    loss = jnp.mean(cross_entropy(logits, labels, config.num_classes, config.label_smoothing))
    return (loss * scale if scale is not None else loss), (loss, logits, updates["batch_stats"])

  grads, (loss, logits, batch_stats) = jax.grad(loss_fn, has_aux=True)(state.params)
  grads = jax.lax.pmean(grads, axis)
  if scale is not None:
    grads = jax.tree.map(lambda g: g / scale, grads)
  if not config.sync_batchnorm:
    batch_stats = jax.lax.pmean(batch_stats, axis)
  loss = jax.lax.pmean(loss, axis)
  accuracy = jax.lax.pmean(jnp.mean(jnp.argmax(logits, -1) == labels), axis)
  grad_norm = optax.tree.norm(grads)

  finite_loss, finite_grads = jnp.isfinite(loss), jnp.isfinite(grad_norm)
  finite = finite_loss & finite_grads
  apply = finite & (state.first_nonfinite_step < 0) if config.on_nonfinite == "stop" else finite
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  new = state.replace(params=params, batch_stats=batch_stats, opt_state=opt_state)
  if config.ema_decay:
    d = config.ema_decay
    ema = lambda old, cur: jax.tree.map(lambda e, p: d * e + (1.0 - d) * p, old, cur)
    new = new.replace(ema_params=ema(state.ema_params, params),
                      ema_batch_stats=ema(state.ema_batch_stats, batch_stats))
  new = jax.tree.map(lambda a, b: jnp.where(apply, a, b), new, state)

  first_bad = (state.first_nonfinite_step < 0) & ~finite
  kind = jnp.where(finite_loss, NONFINITE_GRADIENTS, NONFINITE_LOSS)
  metrics = {"train_loss": loss, "train_accuracy": accuracy, "grad_norm": grad_norm,
             "learning_rate": schedule(state.step)}
  window_start = state.step % config.log_every_steps == 0
  sums = {k: jnp.where(window_start, 0.0, state.metric_sums[k]) + jnp.where(finite, metrics[k], 0.0)
          for k in WINDOW_METRICS}
  sums["steps"] = jnp.where(window_start, 0.0, state.metric_sums["steps"]) + finite
  new = new.replace(
      step=state.step + 1,
      metric_sums=sums,
      loss_scale=state.loss_scale.update(finite) if state.loss_scale is not None else None,
      nonfinite_count=state.nonfinite_count + (~finite).astype(jnp.int32),
      first_nonfinite_step=jnp.where(first_bad, state.step, state.first_nonfinite_step),
      first_nonfinite_kind=jnp.where(first_bad, kind, state.first_nonfinite_kind))
  if scale is not None:
    metrics["loss_scale"] = scale
  return new, metrics


def eval_step(variables: dict, batch: dict, arrays: dict | None, *, model: nn.Module,
              config: StepConfig) -> dict:
  """Sums of loss, top-1 and top-5 hits and example count over the global batch (mask-aware)."""
  images, labels = _images_and_labels(batch, arrays)
  x = normalize(images, config.mean, config.std, config.dtype)
  logits = model.apply(variables, x, train=False)
  mask = batch["mask"].astype(jnp.float32)
  k = min(5, config.num_classes)
  top_k = jax.lax.top_k(logits, k)[1]
  sums = {
      "loss": jnp.sum(cross_entropy(logits, labels, config.num_classes) * mask),
      "top1": jnp.sum((top_k[:, 0] == labels) * mask),
      "top5": jnp.sum(jnp.any(top_k == labels[:, None], axis=-1) * mask),
      "count": jnp.sum(mask),
  }
  return jax.lax.psum(sums, config.axis_name)
