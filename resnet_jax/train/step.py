"""The per-replica train and eval steps: pure functions of the state and a batch of normalised
images and labels, with collectives over a named axis. They know nothing of where batches come
from (`resnet_jax.data.device` builds them on the device; the runner composes the two)."""

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from resnet_jax.layers.replicas import replica_mean, replica_sum
from resnet_jax.train import losses
from resnet_jax.train.parallel import AXIS
from resnet_jax.train.state import TrainState

NONFINITE_POLICIES = ("stop", "skip")
NONFINITE_LOSS, NONFINITE_GRADIENTS = 1, 2


@dataclasses.dataclass(frozen=True)
class StepConfig:
  """What optimisation needs, bound with `functools.partial` before transforming."""

  num_classes: int
  axis_name: str = AXIS
  label_smoothing: float = 0.0
  ema_decay: float = 0.0
  on_nonfinite: str = "stop"
  sync_batchnorm: bool = True
  loss_scaling: bool = False  # float16: the state carries a dynamic loss scale
  exact_reduction: bool = False  # replica means with the same bits on any topology
  ema_every: int = 1  # the EMA is updated at every N-th step of an epoch (counted from 0)
  ema_copy_until: int = -1  # EMA updates at steps up to this one copy the weights
  steps_per_epoch: int = 0  # for ema_every's count within an epoch (0: from the run's start)
  loss: tuple = ("softmax_cross_entropy", ())  # `losses.parse_loss`: (name, kwargs pairs)
  accumulate_steps: int = 1  # micro-batches per update, each with its own BatchNorm statistics


def metric_names(config: StepConfig) -> tuple[str, ...]:
  """The names of the metrics `train_step` returns, all scalars."""
  return ("train_loss", "train_accuracy", "grad_norm") + (
      ("loss_scale",) if config.loss_scaling else ())


def cross_entropy(logits: jax.Array, labels: jax.Array, num_classes: int,
                  label_smoothing: float = 0.0) -> jax.Array:
  """Per-example softmax cross-entropy in float32 (float64 for float64 logits), with optional
  label smoothing."""
  dtype = jnp.promote_types(logits.dtype, jnp.float32)
  targets = losses.soft_targets(labels, num_classes, label_smoothing, dtype=dtype)
  return losses.softmax_cross_entropy(logits.astype(dtype), targets)


def global_norm(tree: Any) -> jax.Array:
  """The L2 norm of every leaf together, as one reduction over their concatenation: one kernel
  on a GPU, where `optax.tree.norm`'s sum per leaf is one per leaf (161 for a ResNet-50)."""
  flat = jnp.concatenate([jnp.ravel(x) for x in jax.tree.leaves(tree)])
  return jnp.sqrt(jnp.sum(jnp.square(flat)))


def ema_update(config: StepConfig, step: jax.Array, ema: Any, current: Any) -> Any:
  """The moving average after `step`'s update: decay x ema + (1 - decay) x current, at the steps
  `config.ema_every` picks; up to `ema_copy_until` an update copies `current` (torchvision's
  reset of the average during the warm-up, and its first update)."""
  decay = config.ema_decay
  if config.ema_copy_until >= 0:
    decay = jnp.where(step <= config.ema_copy_until, 0.0, decay)
  updated = jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema, current)
  if config.ema_every == 1:
    return updated
  in_epoch = step % config.steps_per_epoch if config.steps_per_epoch else step
  due = in_epoch % config.ema_every == 0
  return jax.tree.map(lambda u, e: jnp.where(due, u, e), updated, ema)


def train_step(state: TrainState, batch: dict, rng: jax.Array, *, model: nn.Module,
               tx: optax.GradientTransformation, config: StepConfig) -> tuple[TrainState, dict]:
  """One optimisation step on this replica's shard of the global batch.

  Gradients are averaged over `config.axis_name`; BatchNorm statistics are averaged inside the
  model (its `axis_name`) when `sync_batchnorm`, else after the step. A step whose loss or
  gradients are not finite leaves every parameter, statistic and moment unchanged; with
  `on_nonfinite="stop"` every later step is frozen too, so the host can stop with the step number
  and nothing poisoned can be checkpointed.

  Args:
    state: the replicated train state.
    batch: {"image": normalised images, "label"}, this replica's rows; with Mixup/CutMix also
      "mix_label" and "mix_weight" (`data.mixing`), which the targets mix in.
    rng: this step's key; a stochastic layer of a fork draws from its "dropout" stream, which
      differs per replica.
    model, tx, config: bound with `functools.partial`.

  Returns:
    (new state, metrics averaged over replicas; see `metric_names`).
  """
  axis = config.axis_name
  labels = batch["label"]
  scale = state.loss_scale.scale if config.loss_scaling else None
  dropout_key = jax.random.fold_in(rng, jax.lax.axis_index(axis))
  name, kwargs = config.loss
  loss_of = functools.partial(losses.LOSSES[name], **dict(kwargs))

  def loss_fn(params, batch_stats, micro, key):
    logits, updates = model.apply({"params": params, "batch_stats": batch_stats}, micro["image"],
                                  train=True, mutable=["batch_stats"], rngs={"dropout": key})
    dtype = jnp.promote_types(logits.dtype, jnp.float32)
    targets = losses.soft_targets(micro["label"], config.num_classes, config.label_smoothing,
                                  micro.get("mix_label"), micro.get("mix_weight"), dtype)
    loss = jnp.mean(loss_of(logits.astype(dtype), targets))
    hits = jnp.sum(jnp.argmax(logits, -1) == micro["label"])
    return (loss * scale if scale is not None else loss), (loss, hits, updates["batch_stats"])

  grad_fn = jax.grad(loss_fn, has_aux=True)
  k = config.accumulate_steps
  if k == 1:
    grads, (loss, hits, batch_stats) = grad_fn(state.params, state.batch_stats, batch, dropout_key)
  else:  # k micro-batches in turn: gradients summed, BatchNorm statistics updated by each
    # Unrolled, not a loop: XLA's CPU backend ran a lax.scan of this body 26x slower.
    rows = labels.shape[0] // k
    grads, batch_stats, loss, hits = None, state.batch_stats, 0.0, 0
    for i in range(k):
      micro = jax.tree.map(lambda x, i=i: x[i * rows:(i + 1) * rows], batch)
      g, (micro_loss, micro_hits, batch_stats) = grad_fn(
          state.params, batch_stats, micro, jax.random.fold_in(dropout_key, i))
      grads = g if grads is None else jax.tree.map(jnp.add, grads, g)
      loss, hits = loss + micro_loss, hits + micro_hits
    grads = jax.tree.map(lambda g: g / k, grads)
    loss = loss / k
  mean = lambda tree: replica_mean(tree, axis, config.exact_reduction)
  grads = mean(grads)
  if scale is not None:
    grads = jax.tree.map(lambda g: g / scale, grads)
  if not config.sync_batchnorm:
    batch_stats = mean(batch_stats)
  loss = mean(loss)
  accuracy = mean(hits / labels.shape[0])
  grad_norm = global_norm(grads)

  finite_loss, finite_grads = jnp.isfinite(loss), jnp.isfinite(grad_norm)
  finite = finite_loss & finite_grads
  apply = finite & (state.first_nonfinite_step < 0) if config.on_nonfinite == "stop" else finite
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  new = state.replace(params=params, batch_stats=batch_stats, opt_state=opt_state)
  if config.ema_decay:
    new = new.replace(**ema_update(config, state.step,
                                   {"ema_params": state.ema_params,
                                    "ema_batch_stats": state.ema_batch_stats},
                                   {"ema_params": params, "ema_batch_stats": batch_stats}))
  new = jax.tree.map(lambda a, b: jnp.where(apply, a, b), new, state)

  first_bad = (state.first_nonfinite_step < 0) & ~finite
  kind = jnp.where(finite_loss, NONFINITE_GRADIENTS, NONFINITE_LOSS)
  new = new.replace(
      step=state.step + 1,
      loss_scale=state.loss_scale.update(finite) if scale is not None else state.loss_scale,
      nonfinite_count=state.nonfinite_count + (~finite).astype(jnp.int32),
      first_nonfinite_step=jnp.where(first_bad, state.step, state.first_nonfinite_step),
      first_nonfinite_kind=jnp.where(first_bad, kind, state.first_nonfinite_kind))
  metrics = {"train_loss": loss, "train_accuracy": accuracy, "grad_norm": grad_norm}
  if scale is not None:
    metrics["loss_scale"] = scale
  return new, metrics


def eval_step(variables: dict, batch: dict, *, model: nn.Module, config: StepConfig) -> dict:
  """Sums of loss, top-1 and top-5 hits and example count over the global batch (mask-aware).

  Args:
    variables: {"params", "batch_stats"}.
    batch: {"image": normalised images, "label", "mask"} (mask False on padding).
    model, config: bound with `functools.partial`.
  """
  logits = model.apply(variables, batch["image"], train=False)
  labels, mask = batch["label"], batch["mask"].astype(jnp.float32)  # sums stay float32
  k = min(5, config.num_classes)
  top_k = jax.lax.top_k(logits, k)[1]
  sums = {
      "loss": jnp.sum(cross_entropy(logits, labels, config.num_classes) * mask),
      "top1": jnp.sum((top_k[:, 0] == labels) * mask),
      "top5": jnp.sum(jnp.any(top_k == labels[:, None], axis=-1) * mask),
      "count": jnp.sum(mask),
  }
  return replica_sum(sums, config.axis_name)
