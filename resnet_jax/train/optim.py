"""Optimisers and learning-rate schedules from a config: registries of recipes, any optax
optimizer by name, and an optax chain with masked weight decay.

A fork adds its own from its own file:

    @register_optimizer("my_sgd")
    def my_sgd(optim_config, schedule, mask):
      return optax.sgd(schedule, momentum=0.8)

    @register_schedule("linear")
    def linear(optim_config, *, peak, warmup, steps_per_epoch, total_steps): ...
"""

import collections
import inspect
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from resnet_jax.errors import InvalidInputError
from resnet_jax.registry import Registry, parse_arguments

# name -> (optim_config, schedule, decay mask or None) -> a GradientTransformation, or a list of
# them to chain (flat, so that the optimizer state keeps one structure).
OPTIMIZERS: Registry[Callable[..., Any]] = Registry("optimizer")
# name -> (optim_config, *, peak, warmup, steps_per_epoch, total_steps) -> schedule
SCHEDULES: Registry[Callable[..., optax.Schedule]] = Registry("schedule")
register_optimizer = OPTIMIZERS.register
register_schedule = SCHEDULES.register
OPTAX_PREFIX = "optax."  # optim.name=optax.<name>: any optax optimizer, kwargs from optim.kwargs
# The optimizers whose update of an element reads that element alone (and global sums such as a
# norm's): applied to a concatenation of the leaves, each is the same optimizer, so
# `optim.flat_update` may pack them. A fork adds the name of such an optimizer it registers.
ELEMENTWISE = {"sgd", "adamw"}


def epochs_to_steps(epochs: float, steps_per_epoch: int,
                    rounding: Callable[[float], Any] = round) -> int:
  """A length in epochs as whole steps: the one conversion (`rounding`: round, or math.ceil for
  a run's length, so that a partial last epoch is trained)."""
  return int(rounding(epochs * steps_per_epoch))


def schedule_steps(optim_config: Any, steps_per_epoch: int) -> tuple[int, list[int]]:
  """(warm-up steps, the piecewise schedule's boundaries in steps) of the `optim` section."""
  warmup = epochs_to_steps(optim_config.warmup_epochs, steps_per_epoch)
  if optim_config.schedule != "piecewise":
    return warmup, []
  per_unit = steps_per_epoch if optim_config.boundaries_unit == "epochs" else 1
  return warmup, [epochs_to_steps(b, per_unit) for b in optim_config.boundaries]


def peak_learning_rate(optim_config: Any, batch_size: int) -> float:
  """The configured rate, scaled linearly by `batch_size / lr_batch_base` when that is set."""
  lr = float(optim_config.learning_rate)
  base = int(optim_config.lr_batch_base)
  return lr * batch_size / base if base > 0 else lr


def with_warmup(main: optax.Schedule, warmup: int, start: float = 0.0) -> optax.Schedule:
  """`main` multiplied by a factor that rises linearly from `start` to 1 over `warmup` steps
  (PyTorch's LinearLR; boundaries of `main` stay absolute step numbers)."""
  if warmup == 0:
    return main
  return lambda step: main(step) * (start + (1.0 - start) * jnp.minimum(1.0, step / warmup))


@register_schedule("constant")
def constant(optim_config, *, peak, warmup, steps_per_epoch, total_steps):
  del steps_per_epoch, total_steps
  return with_warmup(optax.constant_schedule(peak), warmup, optim_config.warmup_start_factor)


@register_schedule("piecewise")
def piecewise(optim_config, *, peak, warmup, steps_per_epoch, total_steps):
  """/decay_factor at each of `boundaries` (in steps or epochs)."""
  del total_steps
  boundaries = schedule_steps(optim_config, steps_per_epoch)[1]
  return with_warmup(optax.piecewise_constant_schedule(
      peak, {b: float(optim_config.decay_factor) for b in boundaries}), warmup,
      optim_config.warmup_start_factor)


@register_schedule("cosine")
def cosine(optim_config, *, peak, warmup, steps_per_epoch, total_steps):
  """Linear warm-up from warmup_start_factor x peak, then a cosine to 0 at the last step."""
  del steps_per_epoch
  return optax.warmup_cosine_decay_schedule(optim_config.warmup_start_factor * peak, peak, warmup,
                                            max(total_steps, warmup + 1))


@register_schedule("onecycle")
def onecycle(optim_config, *, peak, warmup, steps_per_epoch, total_steps):
  del optim_config, warmup, steps_per_epoch  # it has its own warm-up phase (pct_start)
  return optax.cosine_onecycle_schedule(total_steps, peak)


def make_schedule(optim_config: Any, *, steps_per_epoch: int, total_steps: int,
                  batch_size: int) -> optax.Schedule:
  """Learning rate per step: the registered schedule `optim.schedule` (constant, piecewise,
  cosine, onecycle, or a fork's), with its linear warm-up from warmup_start_factor x peak.

  Args:
    optim_config: the config's `optim` section.
    steps_per_epoch: converts `warmup_epochs` and epoch `boundaries` to steps.
    total_steps: length of the run.
    batch_size: global batch size, for linear scaling.

  Returns:
    An optax schedule.
  """
  return SCHEDULES[optim_config.schedule](
      optim_config, peak=peak_learning_rate(optim_config, batch_size),
      warmup=schedule_steps(optim_config, steps_per_epoch)[0],
      steps_per_epoch=steps_per_epoch, total_steps=total_steps)


def move_schedule(opt_state: Any, steps: int) -> Any:
  """`opt_state` with its schedule's step count moved by `steps`.

  optax evaluates the schedule at its own count (`ScaleByScheduleState`), not at the train
  state's step; a run resumed with another batch size moves it to its new schedule step. Other
  counts (Adam's bias correction) count the updates made, and stay.

  Raises:
    InvalidInputError: `steps` is not 0 and the state holds no such count (an optimizer that reads
      its schedule another way).
  """
  is_count = lambda node: isinstance(node, optax.ScaleByScheduleState)
  counts = [node for node in jax.tree.leaves(opt_state, is_leaf=is_count) if is_count(node)]
  if steps and not counts:
    raise InvalidInputError("This optimizer keeps no optax schedule count "
                            "(ScaleByScheduleState) to move to the new batch size's schedule "
                            "step; resume with the saved train.batch_size.")
  return jax.tree.map(lambda node: node._replace(count=node.count + steps) if is_count(node)
                      else node, opt_state, is_leaf=is_count)


def decay_mask(params: Any) -> Any:
  """True for convolution and dense kernels; BatchNorm scales/biases and dense biases are exempt."""
  return jax.tree_util.tree_map_with_path(
      lambda path, _: getattr(path[-1], "key", None) == "kernel", params)


@register_optimizer("sgd")
def sgd(optim_config, schedule, mask):
  """SGD with (Nesterov) momentum; weight decay is added to the gradient before momentum, as
  PyTorch's SGD does."""
  chain = []
  if optim_config.weight_decay:
    chain.append(optax.add_decayed_weights(float(optim_config.weight_decay), mask))
  chain.append(optax.sgd(schedule, momentum=optim_config.momentum or None,
                         nesterov=optim_config.nesterov))
  return chain


@register_optimizer("adamw")
def adamw(optim_config, schedule, mask):
  return optax.adamw(schedule, b1=optim_config.b1, b2=optim_config.b2, eps=optim_config.eps,
                     weight_decay=float(optim_config.weight_decay), mask=mask)


@register_optimizer("lars")
def lars(optim_config, schedule, mask):
  return optax.lars(schedule, weight_decay=float(optim_config.weight_decay),
                    weight_decay_mask=mask or True,
                    trust_coefficient=optim_config.trust_coefficient,
                    trust_ratio_mask=mask or True, momentum=optim_config.momentum,
                    nesterov=optim_config.nesterov)


@register_optimizer("lamb")
def lamb(optim_config, schedule, mask):
  """timm's Lamb (You et al. 2019): Adam's bias-corrected step (b1, b2, eps), plus weight decay,
  scaled per leaf by the trust ratio |w| / |step| (1 where either is 0) on the decayed leaves only,
  as timm adapts only where weight decay is on. timm's Lamb also clips the global gradient norm
  at 1 by default: optim.clip_norm=1.0."""
  wd = float(optim_config.weight_decay)
  chain = [optax.scale_by_adam(optim_config.b1, optim_config.b2, optim_config.eps)]
  if wd:
    trust = optax.scale_by_trust_ratio()
    chain += [optax.add_decayed_weights(wd, mask), optax.masked(trust, mask) if mask else trust]
  return chain + [optax.scale_by_learning_rate(schedule)]


def optax_kwargs(optim_config: Any) -> dict[str, Any]:
  """optim.kwargs, the argument list of optax.<name>'s call ("b1=0.95, nesterov=True").

  Args:
    optim_config: the config's `optim` section.

  Returns:
    name -> value (Python literals).

  Raises:
    InvalidInputError: naming optim.kwargs and the item that is not name=value with a literal.
  """
  return parse_arguments(optim_config.kwargs, "optim.kwargs", "b1=0.95, nesterov=True")


def _optax_optimizer(name: str, optim_config: Any, schedule: optax.Schedule,
                     mask: Any) -> list[optax.GradientTransformation]:
  """optax.<name>(learning_rate=schedule, **optim.kwargs); optim.weight_decay goes to its own
  weight_decay (and mask) argument, or is added to the gradient first where it has none."""
  fn = getattr(optax, name, None)
  if not callable(fn) or "learning_rate" not in inspect.signature(fn).parameters:
    raise InvalidInputError(f"optim.name={OPTAX_PREFIX}{name}: optax has no optimizer {name!r} "
                            "taking a learning_rate.")
  kwargs = optax_kwargs(optim_config)
  parameters = inspect.signature(fn).parameters
  wd = float(optim_config.weight_decay)
  chain = []
  if wd and "weight_decay" not in kwargs:
    if "weight_decay" in parameters:
      kwargs["weight_decay"] = wd
      if "mask" in parameters:
        kwargs["mask"] = mask
    else:
      chain.append(optax.add_decayed_weights(wd, mask))
  try:
    chain.append(fn(learning_rate=schedule, **kwargs))
  except TypeError as e:
    raise InvalidInputError(f"optim.kwargs={optim_config.kwargs!r} do not fit optax.{name}: "
                            f"{e}.") from e
  return chain


def check_names(optim_config: Any) -> None:
  """Raises InvalidInputError for an unknown optimizer or schedule name, listing the valid ones."""
  name = optim_config.name
  if name not in OPTIMIZERS and not name.startswith(OPTAX_PREFIX):
    raise InvalidInputError(f"Unknown optim.name {name!r}; valid names: "
                            f"{', '.join(OPTIMIZERS.names())}, or {OPTAX_PREFIX}<name> for any "
                            "optax optimizer (its arguments in optim.kwargs).")
  if optim_config.schedule not in SCHEDULES:
    raise InvalidInputError(f"Unknown optim.schedule {optim_config.schedule!r}; valid names: "
                            f"{', '.join(SCHEDULES.names())}.")


def make_optimizer(optim_config: Any, *, steps_per_epoch: int, total_steps: int,
                   batch_size: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """Builds the optax transformation and its schedule from the `optim` config section.

  Args:
    optim_config: name (a registered optimizer: sgd, adamw, lars, lamb, a fork's; or optax.<name>),
      learning_rate, lr_batch_base, momentum, nesterov, weight_decay, decay_all (decay BatchNorm
      and biases too), b1, b2, eps, trust_coefficient, kwargs (optax.<name>'s arguments),
      clip_norm (0 = off), flat_update (the update over one vector per group of leaves:
      `flattened`; sgd, adamw) and the schedule keys of `make_schedule`.
    steps_per_epoch, total_steps, batch_size: as for `make_schedule`.

  Returns:
    (transformation, schedule).
  """
  name = optim_config.name
  if name.startswith(OPTAX_PREFIX):
    build = lambda *args: _optax_optimizer(name[len(OPTAX_PREFIX):], *args)
  else:
    build = OPTIMIZERS[name]
  if optim_config.flat_update and name not in ELEMENTWISE:
    raise InvalidInputError(
        f"optim.flat_update=True packs the parameters into one vector, which changes "
        f"optim.name={name!r}'s update (per-layer norms or factors); use it with "
        f"{', '.join(sorted(ELEMENTWISE))}, or set optim.flat_update=False.")
  schedule = make_schedule(optim_config, steps_per_epoch=steps_per_epoch, total_steps=total_steps,
                           batch_size=batch_size)
  mask = None if optim_config.decay_all else decay_mask
  flat = optim_config.flat_update
  chain = []
  if optim_config.clip_norm > 0:
    chain.append(optax.clip_by_global_norm(optim_config.clip_norm))
  built = build(optim_config, schedule, group_mask if flat and mask else mask)
  chain.extend(built if isinstance(built, list) else [built])  # a transformation is a tuple
  tx = optax.chain(*chain)
  return (flattened(tx, mask) if flat else tx), schedule


def flattened(inner: optax.GradientTransformation, mask: Any) -> optax.GradientTransformation:
  """`inner` applied to one vector per group of leaves instead of leaf by leaf: a few kernels per
  step on a GPU instead of one or more per leaf (161 leaves in a ResNet-50).

  The groups are the decayed and the exempt leaves (by `mask`), per dtype, keyed "decay/float32"
  and so on; `inner` must decay the groups whose key starts with "decay" (`group_mask`). Its
  state holds the packed vectors, so a checkpoint written with and one without differ in
  structure.

  Args:
    inner: an elementwise transformation (`ELEMENTWISE`), built with `group_mask`.
    mask: params -> a tree of bools (True: decayed), or None (all decayed).
  """
  def groups(tree):
    leaves, treedef = jax.tree.flatten(tree)
    decayed = jax.tree.leaves(mask(tree)) if mask else [True] * len(leaves)
    keys = [f"{'decay' if d else 'exempt'}/{jnp.dtype(x.dtype).name}"
            for d, x in zip(decayed, leaves, strict=True)]
    return leaves, treedef, keys

  def pack(tree):
    leaves, _, keys = groups(tree)
    return {key: jnp.concatenate([jnp.ravel(x) for x, k in zip(leaves, keys) if k == key])
            for key in dict.fromkeys(keys)}

  def unpack(packed, like):
    leaves, treedef, keys = groups(like)
    start, out = collections.Counter(), []
    for x, key in zip(leaves, keys):
      out.append(packed[key][start[key]:start[key] + x.size].reshape(x.shape))
      start[key] += x.size
    return jax.tree.unflatten(treedef, out)

  def update(updates, state, params=None):
    packed, state = inner.update(pack(updates), state, None if params is None else pack(params))
    return unpack(packed, updates), state

  return optax.GradientTransformation(lambda params: inner.init(pack(params)), update)


def group_mask(packed: dict[str, Any]) -> dict[str, bool]:
  """The decay mask of `flattened`'s packed vectors."""
  return {key: key.startswith("decay/") for key in packed}


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
