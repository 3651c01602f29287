"""2-D convolution: the same function and variables as nn.Conv, with a regrouped stem.

A stride-2 convolution over a few input channels (the ImageNet stem's 7x7/2 over RGB) runs as a
stride-1 convolution over 2x2 space-to-depth blocks: the same sums (the kernel is zero-padded to an
even size and regrouped), with 4x the input channels. Tensor-core convolutions pad three channels to
eight and run the stem at a few percent of peak; the regrouped stem's forward and weight gradient
take less GPU time (measured: README, Performance).

Gradients are XLA's own on every platform. On CPU they are fast only with Eigen's convolutions,
which `resnet_jax.compiler.options` selects for every compiled step.
"""

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from resnet_jax.errors import InvalidInputError

Array = jax.Array
DIMENSIONS = ("NHWC", "HWIO", "NHWC")
# Stride-2 convolutions with fewer input channels than this run over space-to-depth blocks.
MAX_CHANNELS_FOR_SPACE_TO_DEPTH = 8


def conv2d(x: Array, w: Array, strides: tuple[int, int], padding: tuple[tuple[int, int], ...],
           groups: int = 1) -> Array:
  """NHWC x HWIO convolution with explicit padding."""
  return lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=DIMENSIONS,
                                  feature_group_count=groups)


def space_to_depth_conv2d(x: Array, w: Array, padding: tuple[tuple[int, int], ...]) -> Array:
  """`conv2d(x, w, (2, 2), padding)` computed as a stride-1 convolution over 2x2 blocks.

  Output row o sums w[k] * xpad[2o + k] over taps k = 2a + b (b in {0, 1}); with blocks
  X[m, b] = xpad[2m + b] that is sum over a, b of w[2a + b] * X[o + a, b], a stride-1
  convolution over X whose kernel is w zero-padded to an even size and regrouped.
  """
  n, h, wd, c = x.shape
  kh, kw, _, out = w.shape
  (pt, pb), (pl, pr) = padding
  ho, wo = (h + pt + pb - kh) // 2 + 1, (wd + pl + pr - kw) // 2 + 1
  bh, bw = (kh + 1) // 2, (kw + 1) // 2  # kernel size in blocks
  rows, cols = 2 * (ho + bh - 1), 2 * (wo + bw - 1)  # the padded input the blocks cover
  x = lax.pad(x, jnp.zeros((), x.dtype),
              ((0, 0, 0), (pt, rows - h - pt, 0), (pl, cols - wd - pl, 0), (0, 0, 0)))
  x = x.reshape(n, rows // 2, 2, cols // 2, 2, c).transpose(0, 1, 3, 2, 4, 5)
  # Zero channels up to a multiple of 8 keep tensor-core kernels aligned (no padding pass).
  extra = -4 * c % 8
  x = jnp.pad(x.reshape(n, rows // 2, cols // 2, 4 * c), ((0, 0), (0, 0), (0, 0), (0, extra)))
  w = jnp.pad(w, ((0, 2 * bh - kh), (0, 2 * bw - kw), (0, 0), (0, 0)))
  w = w.reshape(bh, 2, bw, 2, c, out).transpose(0, 2, 1, 3, 4, 5).reshape(bh, bw, 4 * c, out)
  w = jnp.pad(w, ((0, 0), (0, 0), (0, extra), (0, 0)))
  return conv2d(x, w, (1, 1), ((0, 0), (0, 0)), 1)


def _explicit_padding(padding: Any, kernel_size: Sequence[int], strides: Sequence[int],
                      spatial: Sequence[int]) -> tuple[tuple[int, int], ...]:
  if not isinstance(padding, str):
    return tuple((int(lo), int(hi)) for lo, hi in padding)
  if padding == "VALID":
    return ((0, 0),) * len(kernel_size)
  return tuple(lax.padtype_to_pads(spatial, kernel_size, strides, padding))


class Conv(nn.Module):
  """Drop-in for `nn.Conv` on NHWC inputs (2-D, no dilation): same `kernel`/`bias` variables."""

  features: int
  kernel_size: Sequence[int]
  strides: int | Sequence[int] = 1
  padding: Any = "SAME"
  feature_group_count: int = 1
  use_bias: bool = True
  dtype: Any = None
  param_dtype: Any = jnp.float32
  kernel_init: Any = nn.initializers.lecun_normal()
  bias_init: Any = nn.initializers.zeros
  space_to_depth: bool = True  # stride-2 convolutions over few channels as 2x2 blocks (same sums)

  def geometry(self, input_shape: Sequence[int]) -> tuple[tuple[int, ...], tuple[int, int],
                                                          tuple[tuple[int, int], ...]]:
    """The kernel's shape (HWIO), the strides and the explicit padding for an NHWC input."""
    kernel_size = tuple(self.kernel_size)
    strides = (self.strides,) * 2 if isinstance(self.strides, int) else tuple(self.strides)
    kernel_shape = kernel_size + (input_shape[-1] // self.feature_group_count, self.features)
    return kernel_shape, strides, _explicit_padding(self.padding, kernel_size, strides,
                                                    input_shape[1:3])

  @nn.compact
  def __call__(self, x: Array) -> Array:
    in_features = x.shape[-1]
    if in_features % self.feature_group_count:
      raise InvalidInputError(f"Input channels {in_features} are not divisible by "
                              f"feature_group_count={self.feature_group_count}.")
    kernel_shape, strides, padding = self.geometry(x.shape)
    kernel = self.param("kernel", self.kernel_init, kernel_shape, self.param_dtype)
    bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype) \
        if self.use_bias else None
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    if (self.space_to_depth and strides == (2, 2) and self.feature_group_count == 1
        and max(kernel_shape[:2]) > 2 and in_features < MAX_CHANNELS_FOR_SPACE_TO_DEPTH):
      y = space_to_depth_conv2d(x, kernel, padding)
    else:
      y = conv2d(x, kernel, strides, padding, self.feature_group_count)
    return y + bias if bias is not None else y
