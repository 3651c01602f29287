"""The train state: everything a step changes, so that a checkpoint of it resumes a run exactly."""

from collections.abc import Sequence
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax


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
  first_nonfinite_kind: jax.Array = None  # step.NONFINITE_LOSS or step.NONFINITE_GRADIENTS
  # Sums of the step's metrics over the current logging window, and the number of finite steps
  # in it ("steps"). Kept in the state, so a resumed run logs exactly what an uninterrupted one
  # logs.
  metric_sums: dict = None

  def variables(self, ema: bool = False) -> dict:
    if ema:
      return {"params": self.ema_params, "batch_stats": self.ema_batch_stats}
    return {"params": self.params, "batch_stats": self.batch_stats}


def create_train_state(model: nn.Module, tx: optax.GradientTransformation, rng: jax.Array,
                       input_shape: tuple[int, ...], *, metrics: Sequence[str],
                       ema: bool = False, loss_scale: LossScale | None = None,
                       variables: dict | None = None) -> TrainState:
  """Initialises parameters (or takes `variables`), BatchNorm statistics and optimizer state
  (call under `jax.jit`).

  Args:
    model, tx: the network and its optimizer.
    rng: the initialisers' key.
    input_shape: an NHWC batch shape.
    metrics: the names of the step's metrics, summed over each logging window.
    ema: keep an exponential moving average of the weights.
    loss_scale: float16's dynamic loss scale, or None.
    variables: starting {"params", "batch_stats"} instead of fresh ones.
  """
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
      metric_sums={k: jnp.zeros((), jnp.float32) for k in (*metrics, "steps")})
