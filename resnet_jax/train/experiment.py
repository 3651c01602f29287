"""The one setup path: what a config builds, for training, evaluation, the benchmark and the
PyTorch comparison alike. Nothing is compiled here.

- `build_state`: the model, its optimizer and schedule, the train state's structure and the
  per-replica steps; no runner, no data (a resumed run checks a checkpoint's structure with it);
- `compose_steps`: a runner compiles those steps with the data side's device functions;
- `assemble`: opens the dataset once, makes its pipeline and the runner, and joins the two.
"""

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from resnet_jax import data
from resnet_jax.data.sources import eval_geometry
from resnet_jax.errors import InvalidInputError, check_divisible
from resnet_jax.models import ARCHITECTURE_OPTIONS, create_model, describe_architecture
from resnet_jax.pretrained import Pretrained, adapt
from resnet_jax.train import losses, optim, parallel, step
from resnet_jax.train.config import PRECISIONS, run_length
from resnet_jax.train.metrics import summed_over_windows
from resnet_jax.train.state import LossScale, TrainState, create_train_state


@dataclasses.dataclass(frozen=True, kw_only=True)
class StateParts:
  """A config's network and, when built for training, its optimizer and train state; runner-free.

  The steps are per replica (collectives over `parallel.AXIS`); `compose_steps` compiles them.
  """

  name: str  # the registry name
  model: Any
  input_shape: tuple[int, ...]  # (1, height, width, channels): what the initialisers take
  step_config: step.StepConfig
  input_dtype: Any  # of the normalised images the network takes
  eval_step: Callable[..., Any]  # (variables, batch) -> metrics summed over the replicas
  seed: int
  # For training only (None when built to evaluate):
  tx: optax.GradientTransformation | None = None
  schedule: optax.Schedule | None = None
  abstract_state: TrainState | None = None  # shapes and dtypes: the restore target
  init_state: Callable[[], TrainState] | None = None  # a fresh state (compiles the initialisers)
  train_step: Callable[..., Any] | None = None  # (state, batch, rng) -> (state, window sums)

  def init_key(self) -> jax.Array:
    """The key the parameters are drawn with."""
    # The "rbg" generator: its initialisers compile several times faster than threefry's
    # (seconds per run). The steps' key stays threefry, a uint32[2] (`rng`).
    return jax.random.key(self.seed, impl="rbg")

  @functools.cached_property
  def state(self) -> TrainState:
    """The initial train state on the host (made on first use)."""
    return self.init_state()

  @functools.cached_property
  def rng(self) -> jax.Array:
    """The base key of a fresh run's train steps (a resumed run reads its own)."""
    return jax.random.fold_in(jax.random.PRNGKey(self.seed), 1)


@dataclasses.dataclass(frozen=True)
class CompiledSteps:
  """The runner-compiled steps, fed by the data side (see `parallel.Runner`)."""

  train: Callable[..., Any] | None  # (state, inputs, rng, arrays) -> (state, window sums)
  eval: Callable[..., Any]  # (variables, inputs, arrays) -> summed metrics


@dataclasses.dataclass(frozen=True, kw_only=True)
class Experiment:
  """A config assembled: its dataset, pipeline, runner, state parts and compiled steps."""

  config: Any
  dataset: data.Dataset
  pipeline: data.Pipeline | None  # None for a dataset without records (synthetic)
  runner: parallel.Runner
  parts: StateParts
  steps: CompiledSteps
  steps_per_epoch: int
  total_steps: int
  eval_every: int  # steps between evaluations; 0: only at the end
  weights: Pretrained | None  # the weights it starts from (training) or evaluates

  @property
  def info(self) -> data.DatasetInfo:
    return self.dataset.info

  def model_description(self) -> dict[str, Any]:
    """What a checkpoint needs to rebuild and feed its network (see `Pretrained`)."""
    return Pretrained(
        variables={}, model=self.parts.name, num_classes=self.info.num_classes,
        options=describe_architecture(self.parts.model),
        preprocessing=self.info.preprocessing(*eval_geometry(self.config.data)[::-1]),
        class_names=self.info.class_names).describe()


def model_architecture(config: Any, weights: Pretrained | None) -> tuple[str, dict[str, Any]]:
  """The registry name and variable-shaping options: the config's, or a fine-tuned checkpoint's."""
  model_config = config.model
  options = {k: model_config[k] for k in ARCHITECTURE_OPTIONS
             if model_config.get(k) is not None}  # None: the registry's
  if weights is None:
    return model_config.name, options
  if model_config.name and model_config.name != weights.model:
    raise InvalidInputError(f"init.checkpoint holds a {weights.model}, but model.name is "
                            f"{model_config.name!r}; set --config.model.name={weights.model} or "
                            "leave it empty.")
  return weights.model, {**options, **weights.options}


def frozen_stage_count(freeze: str, num_stages: int) -> int:
  """`init.freeze` as `ResNet.frozen_stages`: none, stem, stage1..stageN, backbone."""
  names = ["none", "stem"] + [f"stage{i}" for i in range(1, num_stages + 1)] + ["backbone"]
  if freeze not in names:
    raise InvalidInputError(f"Unknown init.freeze {freeze!r}; choose one of {names}.")
  return min(names.index(freeze), num_stages + 1)


def make_step_config(config: Any, num_classes: int) -> step.StepConfig:
  """The optimisation settings of a run config."""
  train_config = config.train
  on_nonfinite = train_config.on_nonfinite
  if on_nonfinite == "auto":
    on_nonfinite = "skip" if train_config.precision == "float16" else "stop"
  return step.StepConfig(
      num_classes=num_classes, label_smoothing=config.optim.label_smoothing,
      ema_decay=config.optim.ema_decay, on_nonfinite=on_nonfinite,
      sync_batchnorm=train_config.sync_batchnorm,
      loss_scaling=train_config.precision == "float16",
      exact_reduction=train_config.get("exact_reduction", False),
      loss=losses.parse_loss(config.optim.get("loss", "softmax_cross_entropy")),
      accumulate_steps=config.optim.get("accumulate_steps", 1))


def _network(config: Any, info: data.DatasetInfo,
             weights: Pretrained | None) -> tuple[StateParts, Callable[[], Any]]:
  """The evaluation-ready parts, and the network's initialiser () -> variables."""
  train_config = config.train
  name, architecture = model_architecture(config, weights)
  float64 = train_config.precision == "float64"
  model = create_model(
      name, num_classes=info.num_classes, dtype=PRECISIONS[train_config.precision],
      param_dtype=jnp.float64 if float64 else jnp.float32,
      axis_name=parallel.AXIS if train_config.sync_batchnorm else None,
      exact_mean=train_config.get("exact_reduction", False),
      zero_init_residual=config.model.zero_init_residual, remat=config.model.remat,
      drop_path_rate=config.model.get("drop_path_rate", 0.0),
      bn_unbiased_var=config.model.get("bn_unbiased_var", True), **architecture)
  model = model.clone(frozen_stages=frozen_stage_count(config.init.freeze,
                                                       len(model.stage_sizes)))
  input_shape = (1,) + tuple(info.image_shape)
  model.check_input_shape(input_shape)
  settings = make_step_config(config, info.num_classes)
  parts = StateParts(
      name=name, model=model, input_shape=input_shape, step_config=settings,
      input_dtype=jnp.float64 if float64 else jnp.float32, seed=config.seed,
      eval_step=functools.partial(step.eval_step, model=model, config=settings))
  return parts, lambda: model.init(parts.init_key(), jnp.zeros(input_shape), train=False)


def ema_schedule(config: Any, *, steps_per_epoch: int, total_steps: int) -> dict[str, Any]:
  """The StepConfig fields of the EMA's schedule: every `optim.ema_every_steps` steps of an epoch;
  with `optim.ema_adjust`, torchvision's recipe: the decay adjusted to the batch size, the update
  interval and the run's epochs (1 - min(1, (1 - decay) x batch x every / epochs)), and each update
  until the first after the learning-rate warm-up copying the weights."""
  optim_config = config.optim
  every = int(optim_config.get("ema_every_steps", 1))
  fields = {"ema_every": every, "steps_per_epoch": steps_per_epoch}
  if not (optim_config.ema_decay and optim_config.get("ema_adjust", False)):
    return fields
  epochs = config.train.num_epochs if not config.train.num_steps else \
      total_steps / steps_per_epoch
  adjust = config.train.batch_size * every / epochs
  copy_until = optim.schedule_steps(optim_config, steps_per_epoch)[0]  # the warm-up's end
  while (copy_until % steps_per_epoch) % every:  # the first update at or after it
    copy_until += 1
  return {**fields, "ema_decay": 1.0 - min(1.0, (1.0 - optim_config.ema_decay) * adjust),
          "ema_copy_until": copy_until}


def build_state(config: Any, info: data.DatasetInfo, *, steps_per_epoch: int, total_steps: int,
                weights: Pretrained | None = None) -> StateParts:
  """Builds the model, its optimizer and schedule, the train state's structure and the steps.

  Args:
    config: the run config.
    info: the dataset's classes and image shape.
    steps_per_epoch, total_steps: for the schedule.
    weights: the weights of init.checkpoint, when set (`pretrained.load`).

  Returns:
    `StateParts` for training; nothing is compiled until its `state` is read.

  Raises:
    InvalidInputError: the model does not fit the data, or init.checkpoint the model.
  """
  train_config, optim_config, init = config.train, config.optim, config.init
  parts, init_variables = _network(config, info, weights)
  parts = dataclasses.replace(parts, step_config=dataclasses.replace(
      parts.step_config, **ema_schedule(config, steps_per_epoch=steps_per_epoch,
                                        total_steps=total_steps)))
  model = parts.model
  start = None
  if weights is not None:
    # Check the match on shapes alone, before anything is compiled.
    start = adapt(weights.variables, jax.eval_shape(init_variables),
                  replace_head=init.head == "replace", head=model.head,
                  input_conv=model.input_conv)
  tx, schedule = optim.make_optimizer(optim_config, steps_per_epoch=steps_per_epoch,
                                      total_steps=total_steps,
                                      batch_size=train_config.batch_size)
  if model.frozen_stages or init.backbone_lr_scale != 1.0:
    tx = optim.for_fine_tuning(tx, model.part_of, frozen_stages=model.frozen_stages,
                               backbone_lr_scale=init.backbone_lr_scale)
  loss_scale = LossScale.create(period=train_config.loss_scale_period) if \
      parts.step_config.loss_scaling else None
  create_state = lambda variables=None: create_train_state(
      model, tx, parts.init_key(), parts.input_shape,
      metrics=step.metric_names(parts.step_config), ema=optim_config.ema_decay > 0,
      variables=variables, loss_scale=loss_scale)

  def init_state() -> TrainState:
    variables = start
    if variables is not None:  # a replaced head takes freshly initialised values
      fresh = jax.device_get(jax.jit(init_variables)())
      variables = jax.tree.map(lambda v, f: f if isinstance(v, jax.ShapeDtypeStruct) else v,
                               variables, fresh)
    return jax.device_get(jax.jit(create_state)(variables))

  one_step = functools.partial(step.train_step, model=model, tx=tx, config=parts.step_config)
  return dataclasses.replace(
      parts, tx=tx, schedule=schedule, abstract_state=jax.eval_shape(create_state),
      init_state=init_state,
      train_step=summed_over_windows(one_step, train_config.log_every_steps))


def compose_steps(parts: StateParts, runner: parallel.Runner,
                  batches: data.DeviceBatches) -> CompiledSteps:
  """The runner's compiled steps, each fed by the data side's device functions in one program."""
  batches = dataclasses.replace(batches, dtype=parts.input_dtype)
  return CompiledSteps(
      train=runner.train_step(parts.train_step, batches,
                              exact=parts.step_config.exact_reduction) if parts.train_step else None,
      eval=runner.eval_step(parts.eval_step, batches))


def assemble(config: Any, *, weights: Pretrained | None = None,
             dataset: data.Dataset | None = None, runner: parallel.Runner | None = None,
             for_training: bool = True) -> Experiment:
  """Assembles the experiment a config describes; everything wrong with it is refused here,
  before anything is compiled.

  Args:
    config: the run config.
    weights: for training, the weights of init.checkpoint; for evaluation (for_training=False), the
      network to evaluate (its architecture wins over the config's).
    dataset: the dataset, already opened (`data.open`), or one without records (synthetic: the
      host sends each batch); None opens config.data.
    runner: the parallel runner; None makes config.train.runner.
    for_training: build the optimizer, the train state and the train step too.

  Returns:
    An `Experiment`.

  Raises:
    InvalidInputError: a mistake in the config or the data.
  """
  train_config = config.train
  dataset = dataset or data.open(config.data)
  runner = runner or parallel.make_runner(train_config.runner)
  if for_training:
    runner.check_batch_size(train_config.batch_size)
    k = config.optim.get("accumulate_steps", 1)
    check_divisible(train_config.batch_size, runner.num_replicas * k, "train.batch_size",
                    "device count times optim.accumulate_steps")
  runner.check_batch_size(train_config.eval_batch_size, "train.eval_batch_size")
  pipeline = None
  if dataset.splits is None:
    batches = data.DeviceBatches.unpipelined(config.data, dataset.info, parallel.AXIS)
    steps_per_epoch = dataset.info.num_train // train_config.batch_size
  else:
    pipeline = data.Pipeline(
        config.data, dataset, global_batch_size=train_config.batch_size,
        eval_batch_size=train_config.eval_batch_size, seed=config.seed,
        process_index=jax.process_index(), process_count=jax.process_count(),
        replicas=runner.num_replicas)
    if for_training:
      pipeline.check_steps()
    batches = pipeline.device_batches(parallel.AXIS)
    steps_per_epoch = pipeline.steps_per_epoch
  total_steps, eval_every = run_length(train_config, steps_per_epoch)
  if for_training:
    parts = build_state(config, dataset.info, steps_per_epoch=steps_per_epoch,
                        total_steps=total_steps, weights=weights)
  else:
    parts = _network(config, dataset.info, weights)[0]
  return Experiment(config=config, dataset=dataset, pipeline=pipeline, runner=runner, parts=parts,
                    steps=compose_steps(parts, runner, batches), steps_per_epoch=steps_per_epoch,
                    total_steps=total_steps, eval_every=eval_every, weights=weights)
