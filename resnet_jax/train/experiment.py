"""What a config builds: the model, its optimizer, the train state's structure, and the steps
composed with the data side's device functions by the runner. Nothing is compiled here."""

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import optax

from resnet_jax.data import DatasetInfo, DeviceBatches
from resnet_jax.errors import InvalidInputError
from resnet_jax.models import ARCHITECTURE_OPTIONS, create_model, describe_architecture
from resnet_jax import pretrained
from resnet_jax.train import optim, parallel, step
from resnet_jax.train.config import PRECISIONS
from resnet_jax.train.metrics import summed_over_windows
from resnet_jax.train.state import LossScale, TrainState, create_train_state


@dataclasses.dataclass
class Experiment:
  """The built pieces of a run; `state` and the steps compile on first use."""

  name: str  # the registry name
  model: Any
  tx: optax.GradientTransformation
  schedule: optax.Schedule
  step_config: step.StepConfig
  abstract_state: TrainState  # shapes and dtypes: the restore target
  init_state: Any  # () -> a fresh train state on the host (compiles the initialisers)
  seed: int
  train_fn: Any  # runner-compiled (state, inputs, rng, arrays) -> (state, metrics)
  eval_fn: Any  # runner-compiled (variables, inputs, arrays) -> summed metrics

  @functools.cached_property
  def state(self) -> TrainState:
    """The initial train state on the host (made on first use)."""
    return self.init_state()

  @functools.cached_property
  def rng(self) -> jax.Array:
    """The base key of a fresh run's train steps (a resumed run reads its own)."""
    return jax.random.fold_in(jax.random.PRNGKey(self.seed), 1)


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


def step_config(config: Any, num_classes: int) -> step.StepConfig:
  """The optimisation settings of a run config."""
  t, o = config.train, config.optim
  return step.StepConfig(
      num_classes=num_classes, label_smoothing=o.label_smoothing, ema_decay=o.ema_decay,
      on_nonfinite=t.on_nonfinite if t.on_nonfinite != "auto" else (
          "skip" if t.precision == "float16" else "stop"),
      sync_batchnorm=t.sync_batchnorm, loss_scaling=t.precision == "float16")


def build(config: Any, info: DatasetInfo, runner: parallel.Runner, batches: DeviceBatches, *,
          steps_per_epoch: int, total_steps: int,
          source: "pretrained.Pretrained | None" = None) -> Experiment:
  """Builds model, optimizer, the train state's structure and the runner-composed steps.

  Args:
    config: the run config.
    info: the dataset's classes and image shape.
    runner: the parallel runner that composes and compiles the steps.
    batches: the data side's device functions (`Pipeline.device_batches`).
    steps_per_epoch, total_steps: for the schedule.
    source: the weights of init.checkpoint, when set (`pretrained.load`).

  Returns:
    An `Experiment`; its steps are the real ones used by training and the benchmark.
  """
  t, o, init = config.train, config.optim, config.init
  name, architecture = model_architecture(config, source)
  float64 = t.precision == "float64"
  if float64:
    batches = dataclasses.replace(batches, dtype=jnp.float64)
  model = create_model(
      name, num_classes=info.num_classes, dtype=PRECISIONS[t.precision],
      param_dtype=jnp.float64 if float64 else jnp.float32,
      axis_name=parallel.AXIS if t.sync_batchnorm else None,
      zero_init_residual=config.model.zero_init_residual, remat=config.model.remat,
      bn_unbiased_var=config.model.get("bn_unbiased_var", True), **architecture)
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
  steps = step_config(config, info.num_classes)
  create_state = lambda variables=None: create_train_state(
      model, tx, init_rng(), input_shape, metrics=step.metric_names(steps),
      ema=o.ema_decay > 0, variables=variables,
      loss_scale=LossScale.create(period=t.loss_scale_period) if steps.loss_scaling else None)

  def init_state():
    start = variables
    if start is not None:  # a replaced head takes freshly initialised values
      fresh = jax.device_get(jax.jit(init_variables)())
      start = jax.tree.map(lambda v, f: f if isinstance(v, jax.ShapeDtypeStruct) else v,
                           start, fresh)
    return jax.device_get(jax.jit(create_state)(start))

  train = functools.partial(step.train_step, model=model, tx=tx, config=steps)
  train_fn = runner.train_step(summed_over_windows(train, t.log_every_steps), batches)
  eval_fn = runner.eval_step(functools.partial(step.eval_step, model=model, config=steps), batches)
  return Experiment(name, model, tx, schedule, steps, jax.eval_shape(create_state), init_state,
                    config.seed, train_fn, eval_fn)


def model_description(config: Any, info: DatasetInfo, exp: Experiment) -> dict[str, Any]:
  """What a checkpoint needs to rebuild and feed its network (see `pretrained.Pretrained`)."""
  return pretrained.Pretrained(
      variables={}, model=exp.name, num_classes=info.num_classes,
      options=describe_architecture(exp.model),
      preprocessing=info.preprocessing(config.data.eval_crop_ratio),
      class_names=info.class_names).describe()
