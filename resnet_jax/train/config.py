"""Every config key's documented range (RANGES), checked in one place before anything is built,
compiled or written (validate_config), and the run's length."""

import dataclasses
import math
from collections.abc import Callable, Collection
from typing import Any

import jax
import jax.numpy as jnp

from resnet_jax.data import augment, erasing, folder, mixing, pipeline, sources
from resnet_jax.errors import InvalidInputError, check
from resnet_jax.models import BLOCKS, MODELS
from resnet_jax.models.blocks import SHORTCUTS
from resnet_jax.models.resnet import STEMS
from resnet_jax.train import losses, optim, parallel, step
from resnet_jax.train.profiling import parse_steps

# float64 (parameters too) needs 64-bit JAX (JAX_ENABLE_X64=1): for checking numerics, not speed.
PRECISIONS = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16,
              "float64": jnp.float64}
HEADS = ("replace", "keep")  # init.head: the checkpoint's classifier
BOUNDARIES_UNITS = ("steps", "epochs")
PROGRESS_BARS = ("auto", "yes", "no")  # the modes of metrics.Progress


@dataclasses.dataclass(frozen=True)
class Range:
  """One config key's documented range, and how it is checked."""

  kind: type  # int, float (ints too), str, bool or tuple (lists too)
  text: str  # errors read "<key> must be <text>, got <value>."
  ok: Callable[[Any], bool] = lambda value: True
  choices: Callable[[], str] | None = None  # the valid names, for "Unknown <key> ..." errors
  noun: str = ""  # what an unknown choice is called in errors; "": the key
  # A check that lives with the code using the key (which also runs it for callers that skip
  # validate_config); called with the key's section, it raises its own one-line error.
  checker: Callable[[Any], Any] | None = None
  optional: bool = False  # None (a placeholder left unset) is in range
  bad: Any = None  # a value out of range, for the tests; None: every value of `kind` is in range

  def check(self, key: str, value: Any, section: Any) -> None:
    """Raises InvalidInputError, in one line naming `key` and `value`, unless it is in range."""
    if value is None and self.optional:
      return
    kinds = {float: (int, float), tuple: (tuple, list)}.get(self.kind, self.kind)
    check(isinstance(value, kinds), f"{key} must be of type {self.kind.__name__}, got {value!r}.")
    sequence = isinstance(value, (tuple, list))
    check(all(math.isfinite(v) for v in (value if sequence else [value]) if isinstance(v, float)),
          f"{key}={value} must be a finite number{'s' if sequence else ''}.")
    if not self.ok(value):
      what = f"{self.noun} {value!r} ({key})" if self.noun else f"{key} {value!r}"
      raise InvalidInputError(f"Unknown {what}; valid names: {self.choices()}." if self.choices
                              else f"{key} must be {self.text}, got {value!r}.")
    if self.checker is not None:
      self.checker(section)


def _valid(parse: Callable[[Any], Any]) -> Callable[[Any], bool]:
  """Whether `parse` accepts a value (raises no ValueError)."""
  def ok(value: Any) -> bool:
    try:
      parse(value)
    except ValueError:
      return False
    return True
  return ok


def _positive(kind: type = int, note: str = "") -> Range:
  """A number > 0."""
  return Range(kind, "positive" + note, lambda value: value > 0, bad=0)


def _non_negative(kind: type = int, note: str = "") -> Range:
  """A number >= 0."""
  return Range(kind, ">= 0" + note, lambda value: value >= 0, bad=-1)


def _fraction(interval: str, note: str = "") -> Range:
  """A float in `interval`: "[0, 1)", "(0, 1]" or "[0, 1]"; its open end is the bad example."""
  low_in, high_in = interval[0] == "[", interval[-1] == "]"
  return Range(float, f"in {interval}{note}",
               lambda v: (v >= 0 if low_in else v > 0) and (v <= 1 if high_in else v < 1),
               bad=1.0 if not high_in else 0.0 if not low_in else 1.5)


def _one_of(names: Collection[str], text: str = "", **kwargs: Any) -> Range:
  """A name from `names` (a tuple, dict or registry: read when checked, so forks' names count)."""
  kwargs = {"ok": lambda value: value in names, "bad": "nonesuch", **kwargs}
  return Range(str, text or "one of " + " | ".join(names), choices=lambda: ", ".join(names),
               **kwargs)


def _placeholder(value_range: Range) -> Range:
  """`value_range`, or None for the registered model's own choice."""
  return dataclasses.replace(value_range, text=value_range.text + " (None: the model's)",
                             optional=True)


def _check_freeze(init_config: Any) -> None:
  """Refuses an init.freeze that names no part of any ResNet; the stage number is checked against
  the model once it is built (experiment.frozen_stage_count)."""
  from resnet_jax.train.experiment import frozen_stage_count  # experiment imports this module
  stage = init_config.freeze.removeprefix("stage")
  # The stage count is not known yet: accept the named stage, and list four in an error.
  frozen_stage_count(init_config.freeze, max(int(stage) if stage.isdigit() else 0, 4))


def _ascending_positive(numbers: Any) -> bool:
  """Whether `numbers` are numbers > 0 in strictly ascending order."""
  positive = all(isinstance(b, (int, float)) and b > 0 for b in numbers)
  return positive and all(a < b for a, b in zip(numbers, numbers[1:]))


FLAG = Range(bool, "True or False")

# Every key of resnet_jax/configs/default.py, its documented range and its check (a fork adds
# the keys of its own sections here). Choices come from the registries and constants that the
# code using them reads.
RANGES: dict[str, Range] = {
    "seed": Range(int, "in [0, 2**32) (without 64-bit JAX, larger seeds repeat smaller ones)",
                  lambda value: 0 <= value < 2**32, bad=-1),

    "model.name": _one_of(MODELS, "a registered model (resnet_jax.list_models()), or '' for the "
                          "model of init.checkpoint", ok=lambda value: value in MODELS or
                          value == "", bad="resnet5"),
    "model.zero_init_residual": FLAG,
    "model.stride_in_1x1": FLAG,
    "model.block": _placeholder(_one_of(BLOCKS, "a registered block")),
    "model.stage_sizes": _placeholder(Range(
        tuple, "positive ints, at least one", lambda value: len(value) > 0 and all(
            isinstance(n, int) and n > 0 for n in value), bad=(2, 0))),
    "model.num_filters": _placeholder(_positive()),
    "model.stem": _placeholder(_one_of(STEMS)),
    "model.shortcut": _placeholder(_one_of(SHORTCUTS)),
    "model.groups": _placeholder(_positive()),
    "model.width_per_group": _placeholder(_positive()),
    "model.scan_blocks": _placeholder(FLAG),
    "model.remat": FLAG,
    "model.drop_path_rate": _fraction("[0, 1)"),
    "model.bn_momentum": _fraction("[0, 1]", " (1: the running statistics never change)"),
    "model.bn_epsilon": _positive(float),
    "model.bn_unbiased_var": FLAG,

    "data.name": Range(str, "a registered dataset source (a tfds name, digits, folder:DIR, ...)",
                       lambda value: sources.source_name(value) in sources.SOURCES,
                       choices=sources.valid_names, noun="dataset", bad="cifar11"),
    "data.data_dir": Range(str, "a folder, or '' for tfds's default"),
    "data.eval_split": Range(str, "a split of the dataset, or '' for its test or validation split "
                             "(checked when the dataset is opened)"),
    # These three are checked by the data side, which also runs without validate_config.
    "data.image_size": Range(int, ">= 0 (0: the native size)", checker=sources._check_config,
                             bad=-1),
    "data.eval_crop_ratio": Range(float, "in (0, 1]", checker=sources._check_config, bad=0.0),
    "data.eval_crop": Range(int, ">= 0 (0: data.image_size)",
                            checker=sources.eval_geometry, bad=-1),
    "data.eval_resize": Range(int, ">= the evaluation crop, or 0 (eval_crop / eval_crop_ratio)",
                              checker=sources.eval_geometry, bad=-1),
    "data.normalization": Range(str, "one of " + " | ".join(sources.NORMALIZATIONS),
                                checker=sources._check_config, bad="none"),
    "data.crop_padding": _non_negative(int, " (0: off)"),
    "data.random_flip": FLAG,
    "data.random_resized_crop": FLAG,
    "data.augmentations": Range(tuple, "registered augmentations, \"name\" or \"name(key=value, "
                                "...)\", in an order augment.plan accepts",
                                checker=lambda data: augment.plan(augment.requested(data)),
                                bad=("cutout",)),
    # Mixup/CutMix with timm's meaning (data.mixing), on the device after normalisation.
    "data.mixup_alpha": _non_negative(float, " (0: off)"),
    "data.cutmix_alpha": _non_negative(float, " (0: off)"),
    "data.mix_prob": _fraction("[0, 1]"),
    "data.mix_switch_prob": _fraction("[0, 1]"),
    "data.mix_mode": _one_of(mixing.MODES),
    # Random erasing with torchvision's meaning (data.erasing), on the device after normalisation.
    "data.erasing_prob": _fraction("[0, 1]", " (0: off)"),
    "data.erasing_scale": Range(tuple, "(low, high), 0 < low <= high <= 1: the erased share of "
                                "the area", checker=erasing.Erasing.from_config, bad=(0.5, 0.1)),
    "data.erasing_ratio": Range(tuple, "(low, high), 0 < low <= high: the aspect ratio",
                                checker=erasing.Erasing.from_config, bad=(0.0, 1.0)),
    "data.erasing_value": Range(str, "\"0\" or \"random\" (normal noise)",
                                checker=erasing.Erasing.from_config, bad="1"),
    "data.repeated_augmentations": _positive(int, " (1: off; k: each example k times per epoch "
                                            "on different devices)"),
    "data.device_resident": _one_of(pipeline.DEVICE_RESIDENT),
    "data.max_device_bytes": _non_negative(int, " (the limit of device_resident=auto)"),
    "data.num_workers": _non_negative(int, " (0: one decoding thread)"),
    "data.verify_images": _one_of(folder.VERIFY_IMAGES),
    "data.mirror_dir": Range(str, "a local folder, or '' (with a bucket data_dir: this host's "
                             "copy of the dataset)"),
    "data.prepare_timeout_s": _positive(int, " (seconds the other processes wait for process 0 "
                                        "to prepare a tfds dataset)"),

    # optim.check_names refuses an unknown optimizer or schedule, listing the registered ones.
    "optim.name": Range(str, "a registered optimizer, or optax.<name> for any optax optimizer",
                        checker=optim.check_names, bad="adam"),
    "optim.kwargs": Range(str, "\"name=value, ...\" with Python literals: optax.<name>'s arguments",
                          checker=optim.optax_kwargs, bad="b1"),
    "optim.loss": Range(str, "a registered loss, \"name\" or \"name(key=value, ...)\"",
                        checker=lambda section: losses.parse_loss(section.loss), bad="hinge"),
    "optim.accumulate_steps": _positive(int, " (micro-batches per update; each replica's rows "
                                        "must divide by it)"),
    "optim.learning_rate": _positive(float),
    "optim.lr_batch_base": _non_negative(int, " (0: off; else the rate is scaled by "
                                         "batch_size / lr_batch_base)"),
    "optim.momentum": _fraction("[0, 1)"),
    "optim.nesterov": FLAG,
    "optim.weight_decay": _non_negative(float),
    "optim.decay_all": FLAG,
    "optim.schedule": Range(str, "a registered schedule", checker=optim.check_names, bad="linear"),
    "optim.warmup_epochs": _non_negative(float),
    "optim.warmup_start_factor": _fraction("[0, 1]"),
    "optim.boundaries": Range(tuple, "ascending numbers > 0, in boundaries_unit (schedule "
                              "piecewise only)", _ascending_positive, bad=(60, 30)),
    "optim.boundaries_unit": _one_of(BOUNDARIES_UNITS),
    "optim.decay_factor": _fraction("(0, 1]", " (the rate's factor at each boundary)"),
    "optim.b1": _fraction("[0, 1)"),
    "optim.b2": _fraction("[0, 1)"),
    "optim.eps": _positive(float),
    "optim.trust_coefficient": _positive(float),
    "optim.clip_norm": _non_negative(float, " (0: off)"),
    "optim.flat_update": FLAG,
    "optim.label_smoothing": _fraction("[0, 1)"),
    "optim.ema_decay": _fraction("[0, 1)", " (0: off)"),
    "optim.ema_every_steps": _positive(int, " (the EMA is updated at every N-th step of an "
                                       "epoch)"),
    "optim.ema_adjust": FLAG,

    "train.batch_size": _positive(int, " (global; a multiple of the device and process count)"),
    "train.eval_batch_size": _positive(int, " (a multiple of the device and process count)"),
    "train.num_epochs": _non_negative(float, " (read when num_steps is 0)"),
    "train.num_steps": _non_negative(int, " (> 0 overrides num_epochs)"),
    "train.precision": _one_of(PRECISIONS, bad="fp8"),
    "train.runner": _one_of(parallel.RUNNERS, "a registered runner"),
    "train.sync_batchnorm": FLAG,
    "train.exact_reduction": FLAG,
    "train.log_every_steps": _positive(),
    "train.eval_every_epochs": _non_negative(float, " (0: only at the end)"),
    "train.checkpoint_every_steps": _non_negative(int, " (0: at each evaluation)"),
    "train.keep_checkpoints": _positive(),
    "train.keep_best": FLAG,
    "train.async_checkpointing": FLAG,
    "train.on_nonfinite": _one_of(("auto",) + step.NONFINITE_POLICIES),
    "train.loss_scale_period": _positive(int, " (steps between loss-scale increases)"),
    "train.progress_bar": _one_of(PROGRESS_BARS),
    "train.elastic": FLAG,
    "log.wandb": Range(str, "a Weights & Biases project name, or '' for none"),
    "train.profile_steps": Range(str, '"START,END" with 0 <= START < END, or "" for no trace',
                                 _valid(parse_steps), bad="5,5"),

    "init.checkpoint": Range(str, "a converted model, a run folder, weights by name "
                             "(torchvision:resnet50), or '' for none"),
    "init.head": _one_of(HEADS),
    "init.freeze": Range(str, "none | stem | stageK (K up to the model's stage count) | backbone",
                         checker=_check_freeze, bad="stage0"),
    "init.backbone_lr_scale": _positive(float, " (freeze with init.freeze instead of a zero "
                                        "rate)"),

    # initialize_distributed checks the three together, right after validate_config.
    "distributed.coordinator_address": Range(str, "host:port of process 0, or '' (a single "
                                             "process, or auto-detected)"),
    "distributed.num_processes": _non_negative(int, " (0: a single process, or auto-detected)"),
    "distributed.heartbeat_timeout_s": Range(int, ">= 2 (seconds without a sign of life after "
                                             "which a process is lost)", lambda value: value >= 2,
                                             bad=1),
    "distributed.process_id": Range(int, ">= -1 (-1: auto-detected)", lambda value: value >= -1,
                                    bad=-2),
}


def flatten(config: Any) -> dict[str, Any]:
  """Every key of a config, dotted ("optim.momentum"), with its value."""
  def walk(tree: dict, prefix: str):
    for key, value in tree.items():
      if isinstance(value, dict):
        yield from walk(value, f"{prefix}{key}.")
      else:
        yield prefix + key, value
  return dict(walk(config.to_dict(), ""))


def validate_config(config: Any) -> None:
  """Refuses, in one line, a value out of its range (RANGES) or a mismatch between keys.

  Args:
    config: a run config (resnet_jax/configs); keys not in RANGES are not checked.

  Raises:
    InvalidInputError: naming the key, the value given and what it may be.
  """
  values = flatten(config)
  for key, value_range in RANGES.items():
    if key in values:
      section = config
      for name in key.split(".")[:-1]:
        section = section[name]
      value_range.check(key, values[key], section)
  train_config, optim_config = config.train, config.optim
  check(train_config.num_steps > 0 or train_config.num_epochs > 0,
        "Set train.num_steps or train.num_epochs to a positive value (got "
        f"{train_config.num_steps}, {train_config.num_epochs}).")
  check(not optim_config.boundaries or optim_config.schedule == "piecewise",
        f"optim.boundaries={optim_config.boundaries} is read only by optim.schedule=piecewise, "
        f"not {optim_config.schedule!r}; set that schedule or leave the boundaries empty.")
  check(train_config.precision != "float64" or jax.config.jax_enable_x64,
        "train.precision=float64 needs 64-bit JAX: set JAX_ENABLE_X64=1.")
  check(config.model.name or config.init.checkpoint, "model.name='' takes the model of "
        "init.checkpoint, which is not set; set one of them.")


def run_length(train_config: Any, steps_per_epoch: int) -> tuple[int, int]:
  """(total steps, steps between evaluations or 0 for only at the end)."""
  total_steps = train_config.num_steps or optim.epochs_to_steps(
      train_config.num_epochs, steps_per_epoch, math.ceil)
  every = train_config.eval_every_epochs
  return total_steps, max(1, optim.epochs_to_steps(every, steps_per_epoch)) if every else 0
