"""XLA options for the project's compiled functions, per platform, and `jit` with them.

CPU: jaxlib 0.10 to 0.12 send large convolutions to YNNPACK, whose convolution weight gradient
runs about 11x slower than XLA's Eigen convolutions on x86 (README, Performance). The option below
keeps YNNPACK for matrix products, reductions and elementwise fusions (without its reductions a
BatchNorm statistic runs 10x slower) and leaves convolutions to Eigen. It is passed per compiled
function, so neither the user nor the trainer sets `XLA_FLAGS`, and a user's own `XLA_FLAGS`
still apply to everything else. jaxlib 0.12.0 has the same option and values.

GPU: the latency-hiding scheduler overlaps gradient all-reduces with the backward pass, and
all-reduces of up to 64 MiB are combined into one (a ResNet-50's gradients, 100 MB in float32,
in two), as the JAX GPU performance guide recommends for data parallelism.

An option this jaxlib does not know (names change between releases) is dropped: each is tried
once per platform on a trivial function.

`exact=True` (train.exact_reduction: the same bits on any split of the devices over processes)
leaves out the options in `TOPOLOGY_DEPENDENT`: Eigen's threaded CPU convolutions sum in an order
that depends on how a process's devices share its threads (a step on 2 processes x 2 devices
differs from one on 1 x 4 in the last bits, tested), jaxlib's default YNNPACK convolutions do not.
"""

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

OPTIONS: dict[str, dict[str, Any]] = {
    "cpu": {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,"
                                                     "LIBRARY_FUSION_TYPE_REDUCE,"
                                                     "LIBRARY_FUSION_TYPE_ELTWISE"},
    "gpu": {"xla_gpu_enable_latency_hiding_scheduler": True,
            "xla_gpu_all_reduce_combine_threshold_bytes": 64 * 2**20},
}
TOPOLOGY_DEPENDENT: dict[str, tuple[str, ...]] = {"cpu": ("xla_cpu_experimental_ynn_fusion_type",)}
_PLATFORM_FAMILY = {"cuda": "gpu", "rocm": "gpu"}


def family(platform: str) -> str:
  """"gpu" for "cuda" and "rocm"; other platforms are their own family."""
  return _PLATFORM_FAMILY.get(platform, platform)


@functools.cache
def options(platform: str | None = None, exact: bool = False) -> dict[str, Any]:
  """The options of `OPTIONS` that this jaxlib accepts for `platform` (default: JAX's backend);
  `exact`: without those whose numbers depend on the topology."""
  platform = platform or jax.default_backend()
  wanted = {name: value for name, value in OPTIONS.get(family(platform), {}).items()
            if not (exact and name in TOPOLOGY_DEPENDENT.get(family(platform), ()))}
  if platform != jax.default_backend():
    return dict(wanted)  # cannot be tried here; lowering (not compiling) ignores them anyway
  accepted = {}
  for name, value in wanted.items():
    try:
      jax.jit(jnp.negative, compiler_options={name: value}).lower(
          jax.ShapeDtypeStruct((), jnp.float32)).compile()
    except jax.errors.JaxRuntimeError:  # "No such compile option" or an enum value it lacks
      continue
    accepted[name] = value
  return accepted


def jit(fn: Callable, *, exact: bool = False, **kwargs: Any) -> Callable:
  """`jax.jit(fn, **kwargs)` compiled with `options(exact=exact)`."""
  return jax.jit(fn, compiler_options=options(exact=exact), **kwargs)


class WithOptions:
  """A transformed function without a `compiler_options` argument (`jax.pmap`), compiled with
  `options()`: once per argument signature on call, or through `.lower(...).compile()`."""

  def __init__(self, fn: Any, exact: bool = False):
    self._fn, self._exact, self._compiled = fn, exact, {}

  def lower(self, *args: Any) -> "_Lowered":
    return _Lowered(self._fn.lower(*args), self._exact)

  def __call__(self, *args: Any) -> Any:
    leaves, tree = jax.tree.flatten(args)
    key = (tree, tuple((jnp.shape(x), jnp.result_type(x), getattr(x, "sharding", None))
                       for x in leaves))
    if key not in self._compiled:
      self._compiled[key] = self.lower(*args).compile()
    return self._compiled[key](*args)


class _Lowered:
  def __init__(self, lowered: Any, exact: bool):
    self._lowered, self._exact = lowered, exact

  def compile(self, compiler_options: dict[str, Any] | None = None) -> Any:
    """Compiled with `options()` and `compiler_options` on top."""
    return self._lowered.compile(compiler_options={**options(exact=self._exact),
                                                   **(compiler_options or {})})
