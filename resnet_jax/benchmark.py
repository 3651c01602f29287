"""Throughput of the real train step (synthetic data), of the input pipeline, and of PyTorch's twin.

Timings are medians over windows of steps dispatched back to back after warm-up; FLOPs are those
of the forward and backward pass's convolutions and matrix products; MFU divides achieved FLOP/s
by the device's published peak.
"""

import collections
import copy
import dataclasses
import functools
import itertools
import json
import math
import os
import re
import resource
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.extend.core
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from resnet_jax import compiler, data, files
from resnet_jax.data import pipeline as pipeline_lib
from resnet_jax.errors import InvalidInputError
from resnet_jax.layers import conv
from resnet_jax.layers.batchnorm import BatchNorm, batch_norm_train
from resnet_jax.layers.pooling import max_pool2d
from resnet_jax.models import blocks
from resnet_jax.models import create_model
from resnet_jax.timing import PHASES, summary, timed
from resnet_jax.train import parallel
from resnet_jax.train import step as step_lib
from resnet_jax.train.config import validate_config
from resnet_jax.train.experiment import Experiment, assemble

# Dense peak FLOP/s per device, from the vendors' data sheets (no sparsity).
PEAK_FLOPS = {  # device-kind substring -> {compute dtype: FLOP/s}
    "H200": {"bfloat16": 989e12, "float16": 989e12, "float32": 67e12},
    "H100 PCIe": {"bfloat16": 756e12, "float16": 756e12, "float32": 51e12},
    "H100": {"bfloat16": 989e12, "float16": 989e12, "float32": 67e12},
    "A100": {"bfloat16": 312e12, "float16": 312e12, "float32": 19.5e12},
    "TPU v4": {"bfloat16": 275e12, "float32": 275e12 / 4},
    "TPU v5 lite": {"bfloat16": 197e12, "float32": 197e12 / 4},
    "TPU v5e": {"bfloat16": 197e12, "float32": 197e12 / 4},
    "TPU v5p": {"bfloat16": 459e12, "float32": 459e12 / 4},
    "TPU v5": {"bfloat16": 459e12, "float32": 459e12 / 4},
}


def peak_flops(device_kind: str, dtype: str) -> float | None:
  """Published dense peak FLOP/s of one device, or None when the device is not in the table."""
  for kind, peaks in PEAK_FLOPS.items():
    if kind in device_kind:
      return peaks.get(dtype)
  return None


def write_jpeg_folder(folder: str, *, num_images: int, num_classes: int = 10, seed: int = 0) -> None:
  """Writes ImageNet-like JPEGs (about 500x375, smooth content, quality 90) as a `folder:` dataset."""
  from PIL import Image
  rng = np.random.RandomState(seed)
  for split, count in (("train", num_images), ("test", max(num_classes, num_images // 8))):
    for i in range(count):
      label = i % num_classes
      os.makedirs(os.path.join(folder, split, f"class{label:02d}"), exist_ok=True)
      w, h = rng.randint(400, 600), rng.randint(300, 450)
      coarse = rng.randint(0, 256, (h // 16 + 1, w // 16 + 1, 3), dtype=np.uint8)
      image = Image.fromarray(coarse).resize((w, h), Image.BICUBIC)
      noisy = np.asarray(image, np.int16) + rng.randint(-12, 13, (h, w, 3))
      Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(
          os.path.join(folder, split, f"class{label:02d}", f"{i:05d}.jpg"), quality=90)


def format_table(results: dict[str, Any]) -> str:
  """A short human-readable summary of `experiments.benchmark`'s results."""
  rows = [f"{results['model']} batch {results['batch_size']} {results['image_size']}px "
          f"{results['dtype']} on {results['num_devices']} x {results['device']} "
          f"({results['runner']})"]
  if "census" in results:
    return "\n".join(rows + [format_census(results["census"], results["census"]["platform"])])
  for key in ("synthetic", "with_input", "input_only", "torch"):
    r = results.get(key)
    if not r:
      continue
    if r.get("device_resident") and key == "input_only":
      rows.append(f"  {key:11s} device-resident dataset: no per-step host work")
      continue
    line = (f"  {key:11s} {r['images_per_sec']:10.1f} img/s (min {r['images_per_sec_min']:.1f}, "
            f"max {r['images_per_sec_max']:.1f}), step {r['step_time_ms']:.2f} ms")
    if "compile_time_s" in r:
      line += f", compile {r['compile_time_s']:.1f} s"
    rows.append(line)
  step = results["synthetic"]
  mfu = f"{100 * step['mfu']:.1f}%" if step["mfu"] is not None else "n/a (peak unknown)"
  rows.append(f"  FLOPs/image {step['flops_per_image'] / 1e9:.3f} G (fwd+bwd), achieved "
              f"{step['achieved_flops_per_sec_per_device'] / 1e12:.2f} TFLOP/s per device, MFU "
              f"{mfu}, peak memory {step['peak_memory_bytes'] / 2**30:.2f} GiB "
              f"({step['peak_memory_kind']})")
  for name, profile in results.get("convolutions", {}).items():
    rows.append(f"  {name} convolutions alone: " + ", ".join(
        f"{phase.replace('_', ' ')} {profile[phase + '_ms']:.1f} ms" for phase in PHASES))
  for name, tried in results.get("tuning", {}).items():
    rows.append(f"  tuning {name}: " + (
        f"{tried['images_per_sec']:.1f} img/s at batch {tried['batch_size']}, "
        f"{tried['vs_default']:.3f}x the default" if "error" not in tried else
        f"refused: {tried['error']}"))
  if "layers" in results:
    rows.append("  jax other parts alone: " + ", ".join(
        f"{key[:-3].replace('_', ' ')} {value:.1f} ms" for key, value in results["layers"].items()
        if key.endswith("_ms")))
  for key, label in (("input_vs_synthetic", "input-fed / synthetic"),
                     ("jax_vs_torch", "JAX / PyTorch")):
    if key in results:
      rows.append(f"  {label}: {results[key]:.3f}x")
  return "\n".join(rows)


def _peak_memory_bytes() -> tuple[int | None, str]:
  stats = jax.local_devices()[0].memory_stats() or {}
  if "peak_bytes_in_use" in stats:
    return int(stats["peak_bytes_in_use"]), "device"
  # The CPU backend keeps no allocator statistics: report the process's peak resident memory.
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "host_rss"


def synthetic_info(num_classes: int, image_size: int, channels: int,
                   num_train: int) -> data.DatasetInfo:
  """A stand-in dataset description: ImageNet-like normalisation, no files; `num_train` examples
  make an epoch (of num_train // batch_size steps) for the schedule."""
  mean = (124.0, 116.0, 104.0)[:channels] if channels <= 3 else (127.5,) * channels
  std = (58.0, 57.0, 57.5)[:channels] if channels <= 3 else (64.0,) * channels
  return data.DatasetInfo(name="synthetic", num_classes=num_classes,
                          class_names=tuple(str(i) for i in range(num_classes)),
                          image_shape=(image_size, image_size, channels), num_train=num_train,
                          num_eval=0,
                          mean=mean, std=std)


def _jaxprs_in_params(params: dict) -> list[Any]:
  """The jaxprs of a higher-order primitive (scan, cond, custom_vjp_call, ...)."""
  found = []
  for value in params.values():
    for item in value if isinstance(value, (tuple, list)) else (value,):
      if isinstance(item, jax.extend.core.ClosedJaxpr):
        found.append(item.jaxpr)
      elif isinstance(item, jax.extend.core.Jaxpr):
        found.append(item)
  return found


def _jaxpr_flops(jaxpr: Any) -> float:
  """FLOPs of the convolutions and matrix products in a jaxpr (2 per multiply-add)."""
  total = 0.0
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "conv_general_dilated":
      rhs, out = eqn.invars[1].aval, eqn.outvars[0].aval
      out_features = rhs.shape[eqn.params["dimension_numbers"].rhs_spec[0]]
      total += 2.0 * out.size * (rhs.size // out_features)
    elif eqn.primitive.name == "dot_general":
      (lhs_contract, _), _ = eqn.params["dimension_numbers"]
      lhs = eqn.invars[0].aval
      total += 2.0 * eqn.outvars[0].aval.size * math.prod(lhs.shape[d] for d in lhs_contract)
    subs = [_jaxpr_flops(sub) for sub in _jaxprs_in_params(eqn.params)]
    if eqn.primitive.name == "cond":  # one branch runs
      total += max(subs, default=0.0)
    else:
      total += eqn.params.get("length", 1) * sum(subs) if eqn.primitive.name == "scan" else \
          sum(subs)
  return total


def train_flops_per_image(model: Any, image_shape: tuple[int, ...]) -> float:
  """FLOPs of one forward and backward pass per image, by the usual convention: three times the
  forward pass's convolutions and matrix products, 2 FLOPs per multiply-add (torchvision's
  published counts; tested), kernel taps over padding included, elementwise work (BatchNorm
  included) not counted. Counted on the forward pass's jaxpr rather than
  taken from XLA's cost analysis, which on GPUs does not see the convolutions (they become cuDNN
  calls) and on CPU skips the taps over padding (a few percent for a CIFAR ResNet-8, tested; a
  quarter for a ResNet-18 at 64x64).
  """
  model = model.clone(axis_name=None)
  base = model.conv
  while isinstance(base, functools.partial):
    base = base.func
  if isinstance(base, type) and issubclass(base, conv.Conv):
    # Count the model's multiply-adds, not the stem's zero-padded space-to-depth taps.
    model = model.clone(conv=functools.partial(model.conv, space_to_depth=False))
  x = jnp.zeros((2,) + tuple(image_shape), jnp.float32)
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x))

  jaxpr = jax.make_jaxpr(lambda variables, x: model.apply(
      variables, x, train=True, mutable=["batch_stats"],
      rngs={"dropout": jax.random.key(0)}))(variables, x)  # stochastic depth draws from it
  return 3 * _jaxpr_flops(jaxpr.jaxpr) / x.shape[0]


ConvShape = collections.namedtuple(
    "ConvShape", "input_shape kernel_shape strides padding groups")


def convolutions(model: Any, image_shape: tuple[int, ...],
                 batch_size: int) -> list[tuple[ConvShape, int]]:
  """Every convolution one forward pass of `model` computes: (shape, how many times), distinct
  shapes in order of first use (scanned stages are counted block by block; a space-to-depth stem
  as the convolution it stands for)."""
  model = model.clone(scan_blocks=False, axis_name=None)
  counts: dict[ConvShape, int] = collections.Counter()

  def census(next_fun, args, kwargs, context):
    module = context.module
    if isinstance(module, conv.Conv) and context.method_name == "__call__":
      shape = tuple(args[0].shape)
      counts[ConvShape(shape, *module.geometry(shape), module.feature_group_count)] += 1
    return next_fun(*args, **kwargs)

  x = jax.ShapeDtypeStruct((batch_size,) + tuple(image_shape), jnp.float32)
  with nn.intercept_methods(census):
    jax.eval_shape(lambda x: model.init(jax.random.key(0), x), x)
  return list(counts.items())


def profile_convolutions(shapes: list[tuple[ConvShape, int]],
                         time_one: Callable[[ConvShape], dict[str, float]]) -> dict[str, Any]:
  """Milliseconds per phase summed over the network: each shape's `time_one` (milliseconds per
  phase of that convolution alone) times its count, the first convolution's input gradient, which
  training does not compute, left out; and the rows per shape."""
  totals = dict.fromkeys(PHASES, 0.0)
  rows = []
  for index, (shape, count) in enumerate(shapes):
    times = time_one(shape)
    rows.append({"shape": shape._asdict(), "count": count,
                 **{f"{phase}_ms": times[phase] for phase in PHASES}})
    for phase in PHASES:
      totals[phase] += (count - (index == 0 and phase == "input_gradient")) * times[phase]
  return {**{f"{phase}_ms": totals[phase] for phase in PHASES}, "shapes": rows}


def time_convolution(shape: ConvShape, *, dtype: str, steps: int,
                     warmup: int) -> dict[str, float]:
  """One convolution alone as the train step computes it (`layers.conv.conv2d` compiled with
  `compiler.options()`): median milliseconds per phase."""
  dtype = jnp.dtype(dtype)
  keys = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(keys[0], shape.input_shape, dtype)
  w = jax.random.normal(keys[1], shape.kernel_shape, dtype)
  forward = functools.partial(conv.conv2d, strides=shape.strides, padding=shape.padding,
                              groups=shape.groups)
  dy = jax.random.normal(keys[2], jax.eval_shape(forward, x, w).shape, dtype)
  fns = {"forward": compiler.jit(forward),
         "input_gradient": compiler.jit(lambda x, w: jax.vjp(lambda x: forward(x, w), x)[1](dy)),
         "weight_gradient": compiler.jit(lambda x, w: jax.vjp(lambda w: forward(x, w), w)[1](dy))}
  return {phase: 1e3 * statistics.median(
      timed(lambda fn=fn: fn(x, w), jax.block_until_ready, steps=steps, warmup=warmup + 1,
            window=1)) for phase, fn in fns.items()}


class StepTimer:
  """An assembled experiment's real train step, compiled (with `compiler.options()` and any
  `compiler_options` on top) and ready to time.

  With a pipeline, the step is fed as training feeds it; on a dataset without records, by one
  synthetic batch already on the devices.
  """

  def __init__(self, exp: Experiment, compiler_options: dict[str, Any] | None = None):
    runner, info, self.batch_size = exp.runner, exp.info, exp.config.train.batch_size
    self._state, self._rng = runner.replicate(exp.parts.state), runner.replicate(exp.parts.rng)
    if exp.pipeline is None:
      local = self.batch_size // jax.process_count()
      r = np.random.RandomState(0)
      host = {"image": r.randint(0, 256, (local,) + tuple(info.image_shape), dtype=np.uint8),
              "label": r.randint(0, info.num_classes, (local,)).astype(np.int32)}
      inputs = itertools.repeat((runner.shard_batch(host), None))
    else:
      inputs = exp.pipeline.train_feed(0, runner)
    first = next(inputs)
    self._inputs = itertools.chain([first], inputs)
    start = time.perf_counter()
    lowered = exp.steps.train.lower(self._state, first[0], self._rng, first[1])
    self._compiled = lowered.compile(compiler_options=compiler_options)
    self.compile_s = time.perf_counter() - start

  def step(self) -> Any:
    batch, arrays = next(self._inputs)
    self._state, metrics = self._compiled(self._state, batch, self._rng, arrays)
    return metrics

  def time(self, *, steps: int, warmup: int) -> list[float]:
    """Seconds per step, one value per window (`timing.timed`)."""
    return timed(self.step, jax.block_until_ready, steps=steps, warmup=warmup)


def time_train_step(exp: Experiment, *, steps: int, warmup: int) -> dict[str, Any]:
  """Compiles and times an assembled experiment's real train step (see `StepTimer`).

  Args:
    exp: `train.experiment.assemble`'s experiment.
    steps, warmup: timed steps and untimed warm-up steps.

  Returns:
    images/s (median, min, max), step time, compile time, FLOPs per image and peak memory.
  """
  runner = exp.runner
  timer = StepTimer(exp)
  flops_per_image = train_flops_per_image(exp.parts.model, exp.info.image_shape)
  times = timer.time(steps=steps, warmup=warmup)
  memory, memory_kind = _peak_memory_bytes()
  result = {**summary(times, timer.batch_size), "compile_time_s": timer.compile_s,
            "flops_per_image": flops_per_image,
            "peak_memory_bytes": memory, "peak_memory_kind": memory_kind,
            "num_devices": runner.num_replicas}
  achieved = result["flops_per_image"] * result["images_per_sec"] / runner.num_replicas
  peak = peak_flops(jax.devices()[0].device_kind, exp.config.train.precision)
  result.update({"achieved_flops_per_sec_per_device": achieved,
                 "peak_flops_per_sec_per_device": peak, "mfu": achieved / peak if peak else None})
  return result


# Settings `--tuning` times against the default step, per platform family: name -> (XLA options
# on top of `compiler.options()`, global batch size as a multiple of --batch-size, config
# overrides as {"section.key": value}).
TUNING: dict[str, dict[str, tuple[dict[str, Any], float, dict[str, Any]]]] = {
    "gpu": {
        "conv_fusion": ({"xla_gpu_experimental_enable_conv_fusion": True}, 1, {}),
        "command_buffers_off": ({"xla_gpu_enable_command_buffer": ""}, 1, {}),
        "command_buffers_with_cudnn": (
            {"xla_gpu_enable_command_buffer": "FUSION,CUBLAS,CUBLASLT,CUSTOM_CALL,CUDNN"}, 1, {}),
        "command_buffers_of_any_size": ({"xla_gpu_graph_min_graph_size": 1}, 1, {}),
        "batch_x1.5": ({}, 1.5, {}),  # 384 per device from --batch-size=256 on one
        "batch_x2": ({}, 2, {}),  # 512
        "flat_optimizer": ({}, 1, {"optim.flat_update": True}),  # a few kernels, not 161+
    },
    "cpu": {
        "ynn_convolutions": ({"xla_cpu_experimental_ynn_fusion_type":
                              "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,"
                              "LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION"}, 1, {}),
        "batch_x2": ({}, 2, {}),
        "flat_optimizer": ({}, 1, {"optim.flat_update": True}),
    },
}


def tune(make_exp: Callable[[int], Experiment], platform: str, *, steps: int, warmup: int,
         rounds: int = 3) -> dict[str, Any]:
  """Each of `TUNING`'s settings for `platform` against the default step, timed alternately
  (`rounds` windows of `steps` each, in turn) in one process.

  Args:
    make_exp: (global batch size, config overrides) -> the assembled experiment to time; (0, {})
      is the default one.
    platform: "cuda", "rocm", "cpu", ...

  Returns:
    setting -> {images_per_sec (median), vs_default (ratio of medians), batch_size, options};
    a setting this jaxlib refuses is reported with its error instead.
  """
  default = make_exp(0, {})
  candidates = {"default": ({}, 1.0, {}), **TUNING.get(compiler.family(platform), {})}
  timers, results = {}, {}
  for name, (xla, factor, overrides) in candidates.items():
    batch_size = int(default.config.train.batch_size * factor)
    exp = default if factor == 1 and not overrides else make_exp(batch_size, overrides)
    try:
      timers[name] = StepTimer(exp, xla)
    except jax.errors.JaxRuntimeError as e:  # an option this jaxlib does not have
      results[name] = {"error": str(e).splitlines()[0], "options": xla}
  for timer in timers.values():
    timer.time(steps=1, warmup=warmup)
  times = {name: [] for name in timers}
  for _ in range(rounds):
    for name, timer in timers.items():
      times[name] += timer.time(steps=steps, warmup=0)
  base = summary(times["default"], timers["default"].batch_size)["images_per_sec"]
  for name, timer in timers.items():
    rate = summary(times[name], timer.batch_size)["images_per_sec"]
    results[name] = {"images_per_sec": rate, "vs_default": rate / base,
                     "batch_size": timer.batch_size, "options": candidates[name][0],
                     "config": candidates[name][2]}
  return results


def layers(model: Any, image_shape: tuple[int, ...], batch_size: int) -> dict[str, Any]:
  """The work of one forward pass besides its convolutions: every BatchNorm ((input shape,
  relu inside), count), every residual join ((output shape, count): the add and ReLU that end a
  post-activation block), the stem's max-pool input shape (None without one) and the head's
  input shape."""
  model = model.clone(scan_blocks=False, axis_name=None)
  block_classes = tuple(cls for _, cls in blocks.BLOCKS.items())
  norms, joins = collections.Counter(), collections.Counter()
  pool = None

  def census(next_fun, args, kwargs, context):
    nonlocal pool
    out = next_fun(*args, **kwargs)
    module = context.module
    if context.method_name == "__call__" and isinstance(module, BatchNorm):
      norms[(tuple(args[0].shape), module.relu)] += 1
      if model.stem == "imagenet" and module.name == "bn1" and \
          isinstance(module.parent, type(model)):
        pool = tuple(out.shape)  # the stem's normalised output, which the max-pool reads
    elif context.method_name == "__call__" and isinstance(module, block_classes) and \
        not module.preactivation:
      joins[tuple(out.shape)] += 1
    return out

  x = jax.ShapeDtypeStruct((batch_size,) + tuple(image_shape), jnp.float32)
  with nn.intercept_methods(census):
    variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x), x)
  features = jax.eval_shape(lambda v, x: model.apply(v, x, return_features=True), variables, x)
  return {"batchnorm": list(norms.items()), "residual": list(joins.items()), "max_pool": pool,
          "head": tuple(features[f"stage{len(model.stage_sizes)}"].shape)}


def _time_alone(fn: Callable, *args: Any, steps: int, warmup: int) -> float:
  """Median milliseconds of `compiler.jit(fn)(*args)`, each call synchronised."""
  compiled = compiler.jit(fn)
  return 1e3 * statistics.median(timed(lambda: compiled(*args), jax.block_until_ready,
                                       steps=steps, warmup=warmup + 1, window=1))


def profile_layers(exp: Experiment, *, steps: int, warmup: int) -> dict[str, Any]:
  """Milliseconds per train step of everything besides the convolutions, each part timed alone,
  forward and backward, as the step computes it, times its count: BatchNorm (ReLU inside where
  the network has it there), the residual joins, the stem's max-pool, the head (global pool,
  classifier, loss) and the optimizer update (with the gradient norm)."""
  model, runner = exp.parts.model, exp.runner
  dtype = jnp.dtype(model.dtype)
  census = layers(model, exp.info.image_shape, exp.config.train.batch_size // runner.num_replicas)
  key = map(functools.partial(jax.random.fold_in, jax.random.key(0)), itertools.count())
  normal = lambda shape, dtype=dtype: jax.random.normal(next(key), shape, dtype)
  timing = {"steps": steps, "warmup": warmup}

  def backward(f, *args):  # forward and backward of f, as a gradient of a weighted sum
    dy = normal(jax.eval_shape(f, *args).shape, jax.eval_shape(f, *args).dtype)
    return lambda *a: jax.vjp(f, *a)[1](dy)

  rows, totals = [], collections.Counter()
  for (shape, relu), count in census["batchnorm"]:
    c = shape[-1]
    f = lambda x, s, b, relu=relu: batch_norm_train(x, s, b, 1e-5, None, dtype, relu=relu)[0]
    args = (normal(shape), 1 + normal((c,), jnp.float32), normal((c,), jnp.float32))
    ms = _time_alone(backward(f, *args), *args, **timing)
    rows.append({"part": "batchnorm", "shape": shape, "relu": relu, "count": count, "ms": ms})
  for shape, count in census["residual"]:
    f = lambda y, s: jax.nn.relu(y + s)
    args = (normal(shape), normal(shape))
    rows.append({"part": "residual", "shape": shape, "count": count,
                 "ms": _time_alone(backward(f, *args), *args, **timing)})
  if census["max_pool"]:
    f = lambda x: max_pool2d(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    x = normal(census["max_pool"])
    rows.append({"part": "max_pool", "shape": census["max_pool"], "count": 1,
                 "ms": _time_alone(backward(f, x), x, **timing)})
  shape, classes = census["head"], exp.info.num_classes
  labels = jax.random.randint(next(key), shape[:1], 0, classes)
  f = lambda x, w: jnp.mean(step_lib.cross_entropy(
      jnp.mean(x.astype(jnp.float32), axis=(1, 2)) @ w, labels, classes))
  args = (normal(shape), normal((shape[-1], classes), jnp.float32))
  rows.append({"part": "head", "shape": shape, "count": 1,
               "ms": _time_alone(jax.grad(f, argnums=(0, 1)), *args, **timing)})
  state, tx = exp.parts.state, exp.parts.tx

  def update(params, opt_state, grads):
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, step_lib.global_norm(grads)
  grads = jax.tree.map(lambda p: normal(p.shape, p.dtype), state.params)
  rows.append({"part": "optimizer", "shape": None, "count": 1,
               "ms": _time_alone(update, state.params, state.opt_state, grads, **timing)})
  for row in rows:
    totals[row["part"]] += row["count"] * row["ms"]
  return {**{f"{part}_ms": ms for part, ms in totals.items()}, "rows": rows}


def lower_train_step(exp: Experiment, platform: str) -> str:
  """The StableHLO text of an experiment's real train step lowered for `platform` ("cuda",
  "rocm", "tpu", "cpu"), which needs no device of that kind: state and batch are abstract arrays
  placed as the runner places them (`train.runner=mesh`)."""
  runner, info = exp.runner, exp.info
  if not hasattr(runner, "mesh"):
    raise InvalidInputError(f"Lowering for {platform} needs --runner=mesh (the step is one "
                            f"jit over a device mesh); got --runner={runner.name}.")
  sharded = jax.sharding.NamedSharding(runner.mesh, jax.sharding.PartitionSpec(parallel.AXIS))
  batch_size = exp.config.train.batch_size
  inputs = {"image": jax.ShapeDtypeStruct((batch_size,) + tuple(info.image_shape), jnp.uint8,
                                          sharding=sharded),
            "label": jax.ShapeDtypeStruct((batch_size,), jnp.int32, sharding=sharded)}
  rng = exp.parts.rng
  rng = jax.ShapeDtypeStruct(rng.shape, rng.dtype, sharding=runner.state_sharding)
  traced = exp.steps.train.trace(runner.placed(exp.parts.abstract_state), inputs, rng, None)
  return traced.lower(lowering_platforms=(platform,)).as_text()


COLLECTIVES = ("all_reduce", "all_gather", "reduce_scatter", "all_to_all", "collective_permute",
               "collective_broadcast")


def program_census(text: str) -> dict[str, Any]:
  """What a lowered program (StableHLO text) computes: operations by kind, the element types of
  its convolutions, and how many of its arguments are donated and aliased to an output."""
  ops = collections.Counter(re.findall(r"\bstablehlo\.([a-z_]+)\b", text))
  conv_types = collections.Counter(
      "x".join(sorted(set(re.findall(r"x(bf16|f16|f32|f64)>", line))))
      for line in text.splitlines() if "stablehlo.convolution" in line)
  main = re.search(r"func\.func public @main\((.*?)\) ->", text, re.S)
  arguments = main.group(1) if main else ""
  return {"ops": dict(ops.most_common()), "convolution_types": dict(conv_types),
          "collectives": sum(ops[name] for name in COLLECTIVES),
          "conditionals": ops["case"] + ops["if"],
          "arguments": arguments.count("%arg"),
          "aliased_arguments": arguments.count("tf.aliasing_output"),
          "donated_arguments": len(re.findall(r"tf\.aliasing_output|jax\.buffer_donor",
                                              arguments))}


def format_census(census: dict[str, Any], platform: str) -> str:
  """`program_census` as lines: the totals, then operations by kind, most frequent first."""
  rows = [f"lowered for {platform}: {sum(census['ops'].values())} operations, "
          f"{census['conditionals']} conditionals, {census['collectives']} collectives, "
          f"{census['donated_arguments']} of {census['arguments']} arguments donated "
          f"({census['aliased_arguments']} aliased to an output)",
          "  convolutions by element type: " + ", ".join(
              f"{kind} {count}" for kind, count in census["convolution_types"].items())]
  rows += [f"  {count:6d} {name}" for name, count in census["ops"].items()]
  return "\n".join(rows)


def time_input(pipeline: Any, *, batch_size: int, steps: int, warmup: int) -> dict[str, Any]:
  """Host input pipeline alone: images/s delivered (decode, augment, batch); nothing for a
  device-resident dataset, whose batches are made on the devices.

  The warm-up also takes the batches the workers had ready, so the timed steps see only what
  they compute while timed.
  """
  if pipeline.device_resident:
    return {"device_resident": True}
  batches = pipeline.train_batches(0)
  times = timed(lambda: next(batches), lambda _: None, steps=steps,
                 warmup=warmup + pipeline_lib.BATCHES_AHEAD * max(1, pipeline.num_workers))
  return {**summary(times, batch_size), "device_resident": pipeline.device_resident}


@dataclasses.dataclass(frozen=True, kw_only=True)
class Options:
  """What to time: the flags of `experiments.benchmark`, which documents and defaults them."""

  model: str
  batch_size: int  # global
  image_size: int
  channels: int
  num_classes: int
  dtype: str  # the compute precision: float32, bfloat16 or float16
  steps: int  # timed steps
  warmup: int  # untimed steps after compilation
  runner: str
  num_devices: int  # the first N devices; 0: all
  lower_only: str  # a platform: only lower the train step for it and count its operations
  compare_torch: bool  # also time PyTorch's twin
  torch_compile: bool | None  # None: on CUDA only
  profile_convs: bool  # also time each convolution alone
  profile_layers: bool  # also time every other part of the step alone (and the convolutions)
  tuning: bool  # also time `TUNING`'s settings for this platform against the default
  input: bool  # also time the input pipeline alone and the step fed by it
  data: str  # the dataset for `input`; "": digits under 64 pixels, else generated JPEGs
  data_dir: str
  num_workers: int
  settings: tuple[tuple[str, Any], ...] = ()  # ("section.key", value): config overrides


def benchmark_config(options: Options, base: Any, jpeg_folder: str) -> Any:
  """The run config the benchmark times: `base` (a full config, e.g. resnet_jax/configs'
  default) with SGD, momentum and weight decay at a constant rate, for as many steps as it runs,
  reading `options.data` (or its default) for `input`."""
  config = copy.deepcopy(base)
  imagenet_like = options.image_size >= 64
  config.model.name = options.model
  config.optim.update(name="sgd", momentum=0.9, nesterov=False, weight_decay=1e-4,
                      schedule="constant", warmup_epochs=0.0)
  config.train.update(batch_size=options.batch_size, eval_batch_size=options.batch_size,
                      precision=options.dtype, runner=options.runner,
                      num_steps=options.warmup + options.steps)
  config.data.update(
      name=options.data or (f"folder:{jpeg_folder}" if imagenet_like else "digits"),
      data_dir=options.data_dir, image_size=options.image_size, num_workers=options.num_workers,
      crop_padding=0 if imagenet_like else 4, random_flip=True,
      # The synthetic step alone times the device-side augmentations; read JPEGs are cropped on
      # the host, as ImageNet training crops them, which leaves nothing on the device.
      random_resized_crop=options.input and imagenet_like, device_resident="auto",
      eval_crop_ratio=0.875 if imagenet_like else 1.0)
  for key, value in options.settings:
    section, _, name = key.partition(".")
    if section not in config or not isinstance(config[section], ml_collections.ConfigDict) or \
        name not in config[section]:
      raise InvalidInputError(f"--set {key}=...: no such config key; give section.key as in "
                              "resnet_jax/configs/default.py, e.g. --set data.mixup_alpha=0.2.")
    config[section][name] = value
  if options.settings:
    validate_config(config)
  return config


def run(options: Options, base_config: Any) -> dict[str, Any]:
  """Every timing `options` asks for, as one results dict (see `format_table`).

  Args:
    options: what to time.
    base_config: a full run config that `benchmark_config` adapts (resnet_jax/configs/default).
  """
  model = create_model(options.model, num_classes=options.num_classes)  # an unknown name fails
  results = {"model": options.model, "batch_size": options.batch_size,
             "image_size": options.image_size, "dtype": options.dtype, "runner": options.runner,
             "device": jax.devices()[0].device_kind, "platform": jax.devices()[0].platform,
             "jax_version": jax.__version__, "settings": dict(options.settings)}
  timing = {"steps": options.steps, "warmup": options.warmup}
  channels = options.channels
  devices = jax.devices()
  if options.num_devices > len(devices):
    raise InvalidInputError(f"--num-devices={options.num_devices}, but this machine has "
                            f"{len(devices)} devices.")
  runner = parallel.make_runner(options.runner, devices[:options.num_devices or len(devices)])
  results["num_devices"] = runner.num_replicas
  if options.lower_only:
    synthetic = data.Dataset(synthetic_info(options.num_classes, options.image_size, channels,
                                            num_train=options.batch_size), splits=None)
    config = benchmark_config(options, base_config, "")
    text = lower_train_step(assemble(config, dataset=synthetic, runner=runner),
                            options.lower_only)
    results["census"] = {"platform": options.lower_only, **program_census(text)}
    return results
  with tempfile.TemporaryDirectory() as folder:
    config = benchmark_config(options, base_config, folder)
    real = None
    if options.input:
      if not options.data and options.image_size >= 64:
        write_jpeg_folder(folder, num_images=max(64, 2 * options.batch_size))
      real = assemble(config, runner=runner)
      channels = real.info.image_shape[-1]  # time the synthetic step on the same input shape
    synthetic = data.Dataset(synthetic_info(options.num_classes, options.image_size, channels,
                                            num_train=options.batch_size * config.train.num_steps),
                             splits=None)
    synthetic_exp = assemble(config, dataset=synthetic, runner=runner)
    results["synthetic"] = time_train_step(synthetic_exp, **timing)
    if options.tuning:
      def make_exp(batch_size: int, overrides: dict[str, Any]) -> Experiment:
        if not batch_size:
          return synthetic_exp
        other = copy.deepcopy(config)
        other.train.update(batch_size=batch_size, eval_batch_size=batch_size)
        for key, value in overrides.items():
          section, name = key.split(".")
          other[section][name] = value
        return assemble(other, dataset=synthetic, runner=runner)
      results["tuning"] = tune(make_exp, jax.default_backend(), **timing)
    if real is not None:
      results["input_only"] = time_input(real.pipeline, batch_size=options.batch_size, **timing)
      if not real.pipeline.device_resident:
        results["input_only"]["images_per_sec_per_worker"] = (
            results["input_only"]["images_per_sec"] / max(1, options.num_workers))
      results["with_input"] = time_train_step(real, **timing)
      results["with_input"]["device_resident"] = real.pipeline.device_resident
      results["input_vs_synthetic"] = (results["with_input"]["images_per_sec"] /
                                       results["synthetic"]["images_per_sec"])
  if options.compare_torch:
    from resnet_jax.interop.torch_timing import time_torch
    results["torch"] = time_torch(
        model, batch_size=options.batch_size, image_size=options.image_size, channels=channels,
        precision=options.dtype, learning_rate=config.optim.learning_rate,
        momentum=config.optim.momentum, weight_decay=config.optim.weight_decay,
        compile=options.torch_compile, **timing)
    results["jax_vs_torch"] = (results["synthetic"]["images_per_sec"] /
                               results["torch"]["images_per_sec"])
  if options.profile_convs or options.profile_layers:
    shapes = convolutions(model, (options.image_size, options.image_size, channels),
                          options.batch_size // runner.num_replicas)
    timers = {"jax": time_convolution}
    if options.compare_torch:
      from resnet_jax.interop.torch_timing import time_torch_convolution
      timers["torch"] = time_torch_convolution
    results["convolutions"] = {
        name: profile_convolutions(shapes, functools.partial(timer, dtype=options.dtype, **timing))
        for name, timer in timers.items()}
  if options.profile_layers:
    parts = profile_layers(synthetic_exp, **timing)
    accounted = sum(results["convolutions"]["jax"][f"{phase}_ms"] for phase in PHASES) + sum(
        v for k, v in parts.items() if k.endswith("_ms"))
    parts["unaccounted_ms"] = results["synthetic"]["step_time_ms"] - accounted
    results["layers"] = parts
  return results


def write_results(results: dict[str, Any], path: str) -> None:
  """Writes `results` as JSON to `path` (atomically; its folder is made)."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  files.write_atomic(path, json.dumps(
      results, indent=2, default=lambda x: x.item() if hasattr(x, "item") else str(x)))
