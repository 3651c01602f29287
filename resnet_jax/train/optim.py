"""Optimisers and learning-rate schedules from a config: an optax chain with masked weight decay."""

from typing import Any

import jax
import jax.numpy as jnp
import optax

from resnet_jax.errors import InvalidInputError

OPTIMIZERS = ("sgd", "adamw", "lars")
SCHEDULES = ("constant", "cosine", "piecewise", "onecycle")


def peak_learning_rate(optim_config: Any, batch_size: int) -> float:
  """The configured rate, scaled linearly by `batch_size / lr_batch_base` when that is set."""
  lr = float(optim_config.learning_rate)
  base = int(optim_config.lr_batch_base)
  return lr * batch_size / base if base > 0 else lr


def make_schedule(optim_config: Any, *, steps_per_epoch: int, total_steps: int,
                  batch_size: int) -> optax.Schedule:
  """Learning rate per step: linear warmup from 0, then constant, cosine, piecewise or one-cycle.

  Args:
    optim_config: the config's `optim` section.
    steps_per_epoch: converts `warmup_epochs` and epoch `boundaries` to steps.
    total_steps: length of the run.
    batch_size: global batch size, for linear scaling.

  Returns:
    An optax schedule.
  """
  peak = peak_learning_rate(optim_config, batch_size)
  warmup = int(round(optim_config.warmup_epochs * steps_per_epoch))
  name = optim_config.schedule
  if name == "onecycle":  # has its own warm-up phase (pct_start)
    return optax.cosine_onecycle_schedule(total_steps, peak)
  if name == "cosine":
    return optax.warmup_cosine_decay_schedule(0.0, peak, warmup, max(total_steps, warmup + 1))
  if name == "constant":
    main = optax.constant_schedule(peak)
  elif name == "piecewise":
    scale = steps_per_epoch if optim_config.boundaries_unit == "epochs" else 1
    boundaries = [int(round(b * scale)) for b in optim_config.boundaries]
    main = optax.piecewise_constant_schedule(
        peak, {b: float(optim_config.decay_factor) for b in boundaries})
  else:
    raise InvalidInputError(f"Unknown schedule {name!r}; choose one of {SCHEDULES}.")
  if warmup == 0:
    return main
  # Boundaries stay absolute step numbers: the warm-up multiplies, it does not shift.
  return lambda step: main(step) * jnp.minimum(1.0, step / warmup)


def decay_mask(params: Any) -> Any:
  """True for convolution and dense kernels; BatchNorm scales/biases and dense biases are exempt."""
  return jax.tree_util.tree_map_with_path(
      lambda path, _: getattr(path[-1], "key", None) == "kernel", params)


def make_optimizer(optim_config: Any, *, steps_per_epoch: int, total_steps: int,
                   batch_size: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """Builds the optax transformation and its schedule from the `optim` config section.

  Args:
    optim_config: name (sgd|adamw|lars), learning_rate, lr_batch_base, momentum, nesterov,
      weight_decay, decay_all (decay BatchNorm and biases too), b1, b2, eps, trust_coefficient,
      clip_norm (0 = off) and the schedule keys of `make_schedule`.
    steps_per_epoch, total_steps, batch_size: as for `make_schedule`.

  Returns:
    (transformation, schedule).
  """
  name = optim_config.name
  if name not in OPTIMIZERS:
    raise InvalidInputError(f"Unknown optimizer {name!r}; choose one of {OPTIMIZERS}.")
  schedule = make_schedule(optim_config, steps_per_epoch=steps_per_epoch, total_steps=total_steps,
                           batch_size=batch_size)
  wd = float(optim_config.weight_decay)
  mask = None if optim_config.decay_all else decay_mask
  chain = []
  if optim_config.clip_norm > 0:
    chain.append(optax.clip_by_global_norm(optim_config.clip_norm))
  if name == "sgd":
    # PyTorch's SGD adds weight decay to the gradient before momentum; so does this chain.
    if wd:
      chain.append(optax.add_decayed_weights(wd, mask))
    chain.append(optax.sgd(schedule, momentum=optim_config.momentum or None,
                           nesterov=optim_config.nesterov))
  elif name == "adamw":
    chain.append(optax.adamw(schedule, b1=optim_config.b1, b2=optim_config.b2,
                             eps=optim_config.eps, weight_decay=wd, mask=mask))
  else:
    chain.append(optax.lars(schedule, weight_decay=wd, weight_decay_mask=mask or True,
                            trust_coefficient=optim_config.trust_coefficient,
                            trust_ratio_mask=mask or True, momentum=optim_config.momentum,
                            nesterov=optim_config.nesterov))
  return optax.chain(*chain), schedule


def for_fine_tuning(tx: optax.GradientTransformation, part_of: Any, *, frozen_stages: int,
                    backbone_lr_scale: float) -> optax.GradientTransformation:
  """Applies `tx` to the head, `tx` scaled by `backbone_lr_scale` to the trainable backbone, and
  nothing at all (no update, no weight decay) to the frozen parts.

  Args:
    tx: the optimizer of the head.
    part_of: maps a top-level parameter name to its part (0 stem, i stage i, None head).
    frozen_stages: parts [0, frozen_stages) are frozen.
    backbone_lr_scale: learning-rate multiplier of the rest of the backbone.
  """
  def label(name: str) -> str:
    part = part_of(name)
    if part is None:
      return "head"
    return "frozen" if part < frozen_stages else "backbone"

  labels = lambda params: {name: jax.tree.map(lambda _, n=name: label(n), sub)
                           for name, sub in params.items()}
  backbone = tx if backbone_lr_scale == 1.0 else optax.chain(tx, optax.scale(backbone_lr_scale))
  return optax.multi_transform({"head": tx, "backbone": backbone, "frozen": optax.set_to_zero()},
                               labels)
