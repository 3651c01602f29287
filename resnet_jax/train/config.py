"""Checks of a run config, before anything is built or compiled, and the run's length."""

import math
from typing import Any

import jax
import jax.numpy as jnp

from resnet_jax.data import augment
from resnet_jax.errors import check
from resnet_jax.models import MODELS
from resnet_jax.train import optim, parallel, step

# float64 (parameters too) needs 64-bit JAX (JAX_ENABLE_X64=1): for checking numerics, not speed.
PRECISIONS = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16,
              "float64": jnp.float64}


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
  check(t.precision != "float64" or jax.config.jax_enable_x64, "train.precision=float64 needs "
        "64-bit JAX: set JAX_ENABLE_X64=1.")
  check(0 <= o.warmup_start_factor <= 1, "optim.warmup_start_factor must be in [0, 1], got "
        f"{o.warmup_start_factor}.")
  parallel.RUNNERS[t.runner]  # an unknown name is refused, listing the registered ones
  check(t.on_nonfinite in ("auto",) + step.NONFINITE_POLICIES, f"Unknown train.on_nonfinite "
        f"{t.on_nonfinite!r}; choose auto, stop or skip.")
  check(config.model.name in MODELS or (not config.model.name and config.init.checkpoint),
        f"Unknown model.name {config.model.name!r}; valid names: {', '.join(sorted(MODELS))}.")
  check(config.init.head in ("replace", "keep"), "init.head must be replace or keep.")
  check(config.init.backbone_lr_scale > 0, "init.backbone_lr_scale must be positive (freeze "
        "with init.freeze instead of a zero rate).")
  optim.check_names(o)
  augment.plan(augment.requested(d))  # unknown or misordered augmentations
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


def run_length(train_config: Any, steps_per_epoch: int) -> tuple[int, int]:
  """(total steps, steps between evaluations or 0 for only at the end): epochs to steps, once."""
  t = train_config
  total_steps = t.num_steps or math.ceil(t.num_epochs * steps_per_epoch)
  eval_every = max(1, round(t.eval_every_epochs * steps_per_epoch)) if t.eval_every_epochs else 0
  return total_steps, eval_every
