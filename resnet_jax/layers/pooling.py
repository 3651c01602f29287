"""Max-pooling with a hand-written gradient: the same values and gradients as `nn.max_pool`.

Autodiff of `lax.reduce_window(max)` carries every window's winning position through the forward
pass as 32-bit indices next to float32 values, and its transpose is a scatter (`select_and_scatter`)
into a padded copy of the input, which on a GPU runs well below the memory bandwidth (measured for
the ImageNet stem's 3x3/2 pool: README, Performance). Here the forward pass keeps one int8 per
output (which of the k*k taps won, the first on ties, as autodiff and PyTorch choose) and the
backward pass builds each stride phase of the input gradient from shifted output-resolution arrays
and interleaves the phases: elementwise passes XLA fuses, with no scatter (on a GPU the forward's
winner bookkeeping fuses into the BN + ReLU before it).
"""

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax import lax

Array = jax.Array


def _taps(x: Array, window: tuple[int, int], strides: tuple[int, int],
          padding: tuple[tuple[int, int], ...]) -> list[Array]:
  """The k*k strided views of the (-inf padded) input whose elementwise max is the pool's output."""
  (pt, pb), (pl, pr) = padding
  xp = lax.pad(x, jnp.array(-jnp.inf, x.dtype), ((0, 0, 0), (pt, pb, 0), (pl, pr, 0), (0, 0, 0)))
  (sh, sw), (kh, kw) = strides, window
  ho, wo = (xp.shape[1] - kh) // sh + 1, (xp.shape[2] - kw) // sw + 1
  return [xp[:, i:i + sh * (ho - 1) + 1:sh, j:j + sw * (wo - 1) + 1:sw, :]
          for i in range(kh) for j in range(kw)]


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def max_pool(x: Array, window: tuple[int, int], strides: tuple[int, int],
             padding: tuple[tuple[int, int], ...]) -> Array:
  """2-D max-pooling of an NHWC batch with explicit (low, high) padding per spatial dimension."""
  return lax.reduce_window(x, jnp.array(-jnp.inf, x.dtype), lax.max, (1, *window, 1),
                           (1, *strides, 1), ((0, 0), *padding, (0, 0)))


def _max_pool_fwd(x, window, strides, padding):
  taps = _taps(x, window, strides, padding)
  y = functools.reduce(jnp.maximum, taps)
  index = jnp.int8 if len(taps) <= jnp.iinfo(jnp.int8).max else jnp.int32
  winner = jnp.zeros(y.shape, index)
  for t in reversed(range(len(taps))):  # the first tap equal to the max wins ties
    winner = jnp.where(taps[t] == y, index(t), winner)
  return y, (winner, x.shape)


def _max_pool_bwd(window, strides, padding, residuals, dy):
  winner, x_shape = residuals
  (kh, kw), (sh, sw), (pt, pl) = window, strides, (padding[0][0], padding[1][0])
  n, ho, wo, c = dy.shape
  h, w = x_shape[1:3]
  # Padded input row sh*m + r is tap i = r + sh*q of output row m - q. So each phase (r, t) of the
  # padded input is a sum of a few shifted output-resolution arrays, and the phases interleave.
  mh, mw = -(-(pt + h) // sh), -(-(pl + w) // sw)
  dtype = dy.dtype
  dy = dy.astype(jnp.promote_types(dtype, jnp.float32))
  zero = jnp.zeros((), dy.dtype)

  def won(i, j):  # the gradients of the windows tap (i, j) won, moved to padded-input blocks
    g = jnp.where(winner == i * kw + j, dy, zero)
    q, p = i // sh, j // sw
    return lax.pad(g, zero, ((0, 0, 0), (q, mh - ho - q, 0), (p, mw - wo - p, 0), (0, 0, 0)))

  phases = [[sum((won(i, j) for i in range(r, kh, sh) for j in range(t, kw, sw)),
                 jnp.zeros((n, mh, mw, c), dy.dtype))
             for t in range(sw)] for r in range(sh)]
  dx = jnp.stack([jnp.stack(row, axis=3) for row in phases], axis=2)  # (n, mh, sh, mw, sw, c)
  dx = dx.reshape(n, mh * sh, mw * sw, c)[:, pt:pt + h, pl:pl + w]
  return (dx.astype(dtype),)


max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)


def max_pool2d(x: Array, window: Sequence[int], strides: Sequence[int],
               padding: Sequence[Sequence[int]]) -> Array:
  """`nn.max_pool(x, window, strides, padding)` for NHWC batches, with the gradient above."""
  return max_pool(x, tuple(window), tuple(strides), tuple(tuple(p) for p in padding))
