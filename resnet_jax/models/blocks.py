"""Residual blocks (basic, bottleneck, pre-activation), their shortcuts, and the block registry.

Blocks receive `conv` and `norm` already bound with dtype, initialisers and BatchNorm settings by the
network (`functools.partial`), so no block hard-codes them. A norm followed by ReLU is one module
when the norm takes `relu=True` (our BatchNorm: ReLU inside its gradient, no stored mask).
Submodule names follow torchvision's (`conv1`, `bn1`, ..., `downsample_conv`, `downsample_bn`)
because `resnet_jax.interop.convert` maps them.
"""

import functools
from typing import Any, ClassVar

import flax.linen as nn
import jax.numpy as jnp

from resnet_jax.errors import InvalidInputError
from resnet_jax.layers.batchnorm import BatchNorm
from resnet_jax.layers.drop_path import drop_path, keep_rows
from resnet_jax.registry import Registry

ModuleDef = Any
SHORTCUTS = ("projection", "zero_pad")
BLOCKS: Registry[type] = Registry("block", "model.block")
register_block = BLOCKS.register


def block_name(block_cls: type) -> str:
  """The registered name of a block class.

  Raises:
    InvalidInputError: the class is not registered (register it to save networks built with it).
  """
  for name, cls in BLOCKS.items():
    if cls is block_cls:
      return name
  raise InvalidInputError(f"The block {block_cls.__name__} is not registered; register it with "
                          "resnet_jax.register_block so that checkpoints can name it.")


def _pad(kernel_size: int) -> tuple[tuple[int, int], tuple[int, int]]:
  # Symmetric padding as in PyTorch; "SAME" pads asymmetrically for even inputs at stride 2.
  p = kernel_size // 2
  return ((p, p), (p, p))


def zero_pad_shortcut(x: jnp.ndarray, out_channels: int, strides: int) -> jnp.ndarray:
  """Parameter-free shortcut ("option A", He et al. 2015): subsample, then zero-pad channels."""
  if strides > 1:
    x = x[:, ::strides, ::strides, :]
  extra = out_channels - x.shape[-1]
  if extra < 0:
    raise InvalidInputError(f"zero_pad shortcut cannot reduce channels ({x.shape[-1]} -> "
                            f"{out_channels}).")
  return jnp.pad(x, ((0, 0), (0, 0), (0, 0), (extra // 2, extra - extra // 2)))


def takes_relu(norm: Any) -> bool:
  """Whether `norm(..., relu=True)` is the norm followed by ReLU: our BatchNorm (or partials of
  it), or a norm factory marked `takes_relu` (the ResNet's)."""
  while isinstance(norm, functools.partial):
    norm = norm.func
  return getattr(norm, "takes_relu", False) or (isinstance(norm, type)
                                                 and issubclass(norm, BatchNorm))


class _Block(nn.Module):
  """Fields shared by every block; `num_filters` is the block's base width ("planes")."""

  num_filters: int
  conv: ModuleDef
  norm: ModuleDef
  strides: int = 1
  groups: int = 1
  width_per_group: int = 64
  stride_in_1x1: bool = False
  shortcut: str = "projection"
  zero_init_last: bool = False
  drop_path_rate: float = 0.0  # stochastic depth: how often this block's branch is dropped
  deterministic: bool = True  # no stochastic depth (evaluation)

  expansion: ClassVar[int] = 1
  preactivation: ClassVar[bool] = False
  # torch names of submodules that differ from the Flax ones (torchvision's layout).
  torch_names: ClassVar[dict[str, str]] = {"downsample_conv": "downsample.0",
                                           "downsample_bn": "downsample.1"}

  @property
  def out_channels(self) -> int:
    return self.num_filters * self.expansion

  def _shortcut(self, x: jnp.ndarray, with_norm: bool) -> jnp.ndarray:
    if x.shape[-1] == self.out_channels and self.strides == 1:
      return x
    if self.shortcut == "zero_pad":
      return zero_pad_shortcut(x, self.out_channels, self.strides)
    x = self.conv(self.out_channels, (1, 1), strides=self.strides, padding="VALID",
                  name="downsample_conv")(x)
    return self.norm(name="downsample_bn")(x) if with_norm else x

  def _norm_relu(self, name: str, x: jnp.ndarray) -> jnp.ndarray:
    if takes_relu(self.norm):
      return self.norm(name=name, relu=True)(x)
    return nn.relu(self.norm(name=name)(x))

  def _drop_path(self, branch: jnp.ndarray) -> jnp.ndarray:
    """The residual branch under stochastic depth: its rows dropped from the "dropout" stream."""
    if self.deterministic or not self.drop_path_rate:
      return branch
    keep = keep_rows(self.make_rng("dropout"), self.drop_path_rate, branch.shape[0])
    # Recorded only when "intermediates" is mutable (the PyTorch twin reads the masks; free in
    # the train step, which does not ask for them).
    self.sow("intermediates", "drop_path_keep", keep)
    return drop_path(branch, self.drop_path_rate, keep)

  def _last_norm(self, name: str) -> nn.Module:
    init = nn.initializers.zeros if self.zero_init_last else nn.initializers.ones
    return self.norm(scale_init=init, name=name)

  def _last_conv_init(self) -> dict:
    return {"kernel_init": nn.initializers.zeros} if self.zero_init_last else {}

  def _bottleneck_width(self) -> int:
    return int(self.num_filters * (self.width_per_group / 64.0)) * self.groups

  def _check_basic(self) -> None:
    if self.groups != 1 or self.width_per_group != 64:
      raise InvalidInputError(f"{type(self).__name__} supports only groups=1 and "
                              f"width_per_group=64 (got {self.groups}, {self.width_per_group}); "
                              "use a bottleneck block.")


@register_block("basic")
class BasicBlock(_Block):
  """Two 3x3 convolutions, post-activation (He et al. 2015, figure 2 left)."""

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    self._check_basic()
    y = self.conv(self.num_filters, (3, 3), strides=self.strides, padding=_pad(3), name="conv1")(x)
    y = self._norm_relu("bn1", y)
    y = self.conv(self.num_filters, (3, 3), padding=_pad(3), name="conv2")(y)
    y = self._last_norm("bn2")(y)
    return nn.relu(self._drop_path(y) + self._shortcut(x, with_norm=True))


@register_block("bottleneck")
class Bottleneck(_Block):
  """1x1 -> 3x3 (grouped) -> 1x1; stride on the 3x3 (v1.5) unless `stride_in_1x1` (v1)."""

  expansion: ClassVar[int] = 4

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    width = self._bottleneck_width()
    s1, s3 = (self.strides, 1) if self.stride_in_1x1 else (1, self.strides)
    y = self.conv(width, (1, 1), strides=s1, padding="VALID", name="conv1")(x)
    y = self._norm_relu("bn1", y)
    y = self.conv(width, (3, 3), strides=s3, padding=_pad(3), feature_group_count=self.groups,
                  name="conv2")(y)
    y = self._norm_relu("bn2", y)
    y = self.conv(self.out_channels, (1, 1), padding="VALID", name="conv3")(y)
    y = self._last_norm("bn3")(y)
    return nn.relu(self._drop_path(y) + self._shortcut(x, with_norm=True))


@register_block("preact_basic")
class PreActBasicBlock(_Block):
  """BN-ReLU-conv3x3 twice (He et al. 2016, "Identity Mappings", figure 4e)."""

  preactivation: ClassVar[bool] = True

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    self._check_basic()
    pre = self._norm_relu("bn1", x)
    # When the shape changes, the projection sees the pre-activated input, as in the paper's code.
    shortcut = x if x.shape[-1] == self.out_channels and self.strides == 1 else pre
    y = self.conv(self.num_filters, (3, 3), strides=self.strides, padding=_pad(3), name="conv1")(pre)
    y = self._norm_relu("bn2", y)
    y = self.conv(self.num_filters, (3, 3), padding=_pad(3), name="conv2",
                  **self._last_conv_init())(y)
    return self._drop_path(y) + self._shortcut(shortcut, with_norm=False)


@register_block("preact_bottleneck")
class PreActBottleneck(_Block):
  """Pre-activation bottleneck (BN-ReLU before each of 1x1, 3x3, 1x1), stride on the 3x3."""

  expansion: ClassVar[int] = 4
  preactivation: ClassVar[bool] = True

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    width = self._bottleneck_width()
    s1, s3 = (self.strides, 1) if self.stride_in_1x1 else (1, self.strides)
    pre = self._norm_relu("bn1", x)
    shortcut = x if x.shape[-1] == self.out_channels and self.strides == 1 else pre
    y = self.conv(width, (1, 1), strides=s1, padding="VALID", name="conv1")(pre)
    y = self._norm_relu("bn2", y)
    y = self.conv(width, (3, 3), strides=s3, padding=_pad(3), feature_group_count=self.groups,
                  name="conv2")(y)
    y = self._norm_relu("bn3", y)
    y = self.conv(self.out_channels, (1, 1), padding="VALID", name="conv3",
                  **self._last_conv_init())(y)
    return self._drop_path(y) + self._shortcut(shortcut, with_norm=False)
