"""Stochastic depth (Huang et al. 2016): a residual branch dropped for whole examples.

In training each example keeps the branch with probability 1 - rate, scaled by 1 / (1 - rate)
when kept, the semantics of `torchvision.ops.StochasticDepth(p=rate, mode="row")` and timm's
`DropPath` (tested against torchvision's with the same mask); in evaluation it is the identity.
"""

import jax
import jax.numpy as jnp

Array = jax.Array


def keep_rows(key: Array, rate: float, num_rows: int) -> Array:
  """Which of `num_rows` examples keep their branch: booleans, each True with 1 - rate (drawn in
  float32 whatever the network's precision, so a float64 run drops the same rows)."""
  return jax.random.bernoulli(key, jnp.float32(1.0 - rate), (num_rows,))


def drop_path(x: Array, rate: float, keep: Array) -> Array:
  """`x` (a residual branch's output, batch first) with the rows `keep` marks False zeroed and
  the others scaled by 1 / (1 - rate)."""
  if rate >= 1.0:
    return jnp.zeros_like(x)
  scale = jnp.where(keep, 1.0 / (1.0 - rate), 0.0).astype(x.dtype)
  return x * scale.reshape((-1,) + (1,) * (x.ndim - 1))
