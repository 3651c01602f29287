"""The generic ResNet: stem, stages of blocks, head, feature outputs, and its named parts."""

import functools
import re
from collections.abc import Sequence
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from resnet_jax.errors import InvalidInputError
from resnet_jax.layers.batchnorm import BatchNorm
from resnet_jax.layers.conv import Conv
from resnet_jax.layers.pooling import max_pool2d
from resnet_jax.models import blocks

ModuleDef = Any
STEMS = ("imagenet", "cifar")

# torchvision's initialisers: He-normal over fan_out for convolutions, and nn.Linear's default
# (kernel and bias uniform in +-1/sqrt(fan_in)) for the classifier.
conv_kernel_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
dense_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def dense_bias_init(fan_in: int) -> Any:
  """nn.Linear's bias initialiser: uniform in +-1/sqrt(fan_in)."""
  bound = 1.0 / fan_in**0.5
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound,
                                                                   bound)


class _ScanAdapter(nn.Module):
  """Gives a block the (carry, x) -> (carry, y) signature that `nn.scan` needs."""

  block: ModuleDef

  @nn.compact
  def __call__(self, x: jnp.ndarray, _: Any) -> tuple[jnp.ndarray, None]:
    return self.block(name="block")(x), None


class ResNet(nn.Module):
  """ResNet v1/v1.5 and pre-activation ResNet, ResNeXt and wide ResNet, with ImageNet or CIFAR stem.

  Attributes:
    stage_sizes: blocks per stage; stage `i` has base width `num_filters * 2**i`.
    block_cls: a block class from `resnet_jax.models.blocks`.
    num_classes: classifier outputs; 0 drops the head and returns pooled features.
    num_filters: base width of the first stage (64 ImageNet, 16 CIFAR).
    stem: "imagenet" (7x7/2 conv + 3x3/2 max-pool) or "cifar" (3x3/1 conv, no pooling).
    groups, width_per_group: ResNeXt cardinality and width (bottleneck blocks only).
    stride_in_1x1: put the bottleneck's stride on its first 1x1 (ResNet v1) instead of its 3x3 (v1.5).
    shortcut: "projection" (1x1 conv + BN where shapes change) or "zero_pad" (option A).
    zero_init_residual: zero-init the last BN scale of each branch (last conv when pre-activation),
      making every block the identity at initialisation (Goyal et al. 2017).
    bn_momentum, bn_epsilon: BatchNorm's running-average decay and epsilon (PyTorch's 0.1 -> 0.9).
    bn_unbiased_var: the running variance averages the unbiased batch variance (PyTorch's);
      False: the biased one (flax's).
    axis_name: mapped axis over which training-mode BatchNorm statistics are averaged.
    dtype: compute dtype; parameters, BatchNorm statistics, pooling and logits stay float32
      (float64 for a float64 network).
    param_dtype: parameter dtype.
    conv, norm: the convolution and normalisation modules, bound by the network with `partial`.
      The defaults compute what `flax.linen.Conv` and `flax.linen.BatchNorm` compute (same
      variables): `resnet_jax.layers.conv.Conv` (a regrouped stem) and
      `resnet_jax.layers.batchnorm.BatchNorm` (a fused backward pass, ReLU inside).
    drop_path_rate: stochastic depth in training: block b of B drops its residual branch for an
      example with rate drop_path_rate * b / (B - 1) (linear from 0, as timm's ResNet), drawn
      from the "dropout" stream; 0: off.
    scan_blocks: run each stage's repeated blocks with `nn.scan` (constant compile time in depth).
    remat: rematerialise each block in the backward pass (memory for compute).
    frozen_stages: how many leading parts are frozen for fine-tuning, the stem counting as part 0
      and stage i as part i (len(stage_sizes) + 1: the whole backbone). Frozen parts keep their
      BatchNorm in inference mode and pass no gradient (see `part_of`).
  """

  stage_sizes: Sequence[int]
  block_cls: ModuleDef
  num_classes: int = 1000
  num_filters: int = 64
  stem: str = "imagenet"
  groups: int = 1
  width_per_group: int = 64
  stride_in_1x1: bool = False
  shortcut: str = "projection"
  zero_init_residual: bool = False
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  bn_unbiased_var: bool = True
  axis_name: str | None = None
  exact_mean: bool = False  # BatchNorm averages over axis_name exactly (layers.replicas)
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  conv: ModuleDef = Conv
  norm: ModuleDef = BatchNorm
  scan_blocks: bool = False
  remat: bool = False
  frozen_stages: int = 0
  drop_path_rate: float = 0.0

  def drop_path_rates(self) -> list[float]:
    """Each block's stochastic-depth rate, in order: linear from 0 to `drop_path_rate`."""
    total = sum(self.stage_sizes)
    return [self.drop_path_rate * b / max(total - 1, 1) for b in range(total)]

  # The network's named parts, which conversion and fine-tuning read instead of assuming names.
  stem_modules: ClassVar[tuple[str, ...]] = ("conv1", "bn1")  # part 0
  input_conv: ClassVar[str] = "conv1"  # the convolution that sees the image's channels
  head: ClassVar[str] = "fc"  # the classifier, replaced for new classes
  # torch names of top-level modules that differ from the Flax ones (blocks: Block.torch_names).
  torch_names: ClassVar[dict[str, str]] = {}

  def part_of(self, top_level_name: str) -> int | None:
    """Which part a top-level module belongs to (see `frozen_stages`): 0 for the stem, i for stage
    i (a pre-activation network's final BN in its last stage), None for the head.

    Raises:
      InvalidInputError: a module this network does not know (declare it in a subclass's
        `stem_modules`, or override `part_of`), rather than guessing and freezing it.
    """
    if top_level_name == self.head:
      return None
    if top_level_name in self.stem_modules:
      return 0
    if top_level_name == "final_bn":
      return len(self.stage_sizes)
    match = re.match(r"^layer(\d+)_", top_level_name)
    if match:
      return int(match.group(1))
    raise InvalidInputError(
        f"{type(self).__name__} does not know which part its module {top_level_name!r} belongs "
        "to; add it to stem_modules, or override part_of.")

  @property
  def total_stride(self) -> int:
    """Downsampling factor from input to the last feature map; also the smallest input size."""
    return (4 if self.stem == "imagenet" else 1) * 2 ** (len(self.stage_sizes) - 1)

  def check_input_shape(self, shape: Sequence[int]) -> None:
    """Raises InvalidInputError unless `shape` is an NHWC batch this network can reduce."""
    if self.stem not in STEMS:
      raise InvalidInputError(f"Unknown stem {self.stem!r}; choose one of {STEMS}.")
    if self.shortcut not in blocks.SHORTCUTS:
      raise InvalidInputError(f"Unknown shortcut {self.shortcut!r}; choose one of "
                              f"{blocks.SHORTCUTS}.")
    if len(shape) != 4:
      raise InvalidInputError(f"Expected an NHWC batch of rank 4, got shape {tuple(shape)}.")
    h, w = shape[1], shape[2]
    if min(h, w) < self.total_stride:
      raise InvalidInputError(f"Input {h}x{w} is too small: this network downsamples by "
                              f"{self.total_stride}, so images must be at least "
                              f"{self.total_stride}x{self.total_stride}; resize them (e.g. "
                              f"--config.data.image_size={self.total_stride}) or use a CIFAR-stem "
                              "model.")

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False, return_features: bool = False):
    """Runs the network on an NHWC batch.

    Args:
      x: images, shape (batch, height, width, channels), any channel count.
      train: use batch statistics (and update `batch_stats`, which must then be mutable).
      return_features: return a dict of every stage's feature map, the pooled features
        ("pooled") and, when the network has a head, "logits".

    Returns:
      Logits (float32), pooled features when `num_classes == 0`, or the feature dict.
    """
    self.check_input_shape(x.shape)
    conv = functools.partial(self.conv, use_bias=False, dtype=self.dtype,
                             param_dtype=self.param_dtype, kernel_init=conv_kernel_init)
    folds_relu = blocks.takes_relu(self.norm)

    def norm(part: int, relu: bool = False, **kwargs):
      """The norm of `part`; with `relu`, followed by ReLU (inside our BatchNorm's gradient)."""
      frozen = not train or part < self.frozen_stages
      module = self.norm(use_running_average=frozen, momentum=self.bn_momentum,
                         epsilon=self.bn_epsilon, dtype=self.dtype, param_dtype=self.param_dtype,
                         axis_name=None if frozen else self.axis_name,
                         unbiased_running_var=self.bn_unbiased_var,
                         **({"exact_mean": True} if self.exact_mean else {}),
                         **({"relu": True} if relu and folds_relu else {}), **kwargs)
      return (lambda x: nn.relu(module(x))) if relu and not folds_relu else module
    norm.takes_relu = True

    def end_of_part(part: int, x: jnp.ndarray) -> jnp.ndarray:
      # Nothing before the last frozen part needs a gradient: stop the backward pass there.
      return jax.lax.stop_gradient(x) if part == self.frozen_stages - 1 else x

    preact = self.block_cls.preactivation
    last = len(self.stage_sizes)
    features = {}

    x = x.astype(self.dtype)
    if self.stem == "imagenet":
      x = conv(self.num_filters, (7, 7), strides=2, padding=((3, 3), (3, 3)),
               name=self.input_conv)(x)
      x = norm(0, relu=True, name="bn1")(x)
      x = max_pool2d(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    else:
      x = conv(self.num_filters, (3, 3), padding=((1, 1), (1, 1)), name=self.input_conv)(x)
      if not preact:  # pre-activation blocks normalise their own input
        x = norm(0, relu=True, name="bn1")(x)
    x = features["stem"] = end_of_part(0, x)

    block_cls = nn.remat(self.block_cls) if self.remat else self.block_cls
    if self.drop_path_rate and self.scan_blocks:
      raise InvalidInputError("model.drop_path_rate needs model.scan_blocks=false: the blocks of "
                              "a scanned stage share one rate, and stochastic depth gives each "
                              "its own.")
    rates = iter(self.drop_path_rates())

    def stochastic_depth(part: int) -> dict:
      """The next block's drop-path settings (none when off, so forks' blocks need no field)."""
      if not self.drop_path_rate:
        return {}
      return {"drop_path_rate": next(rates),
              "deterministic": not train or part < self.frozen_stages}

    for i, num_blocks in enumerate(self.stage_sizes):
      block = functools.partial(
          block_cls, num_filters=self.num_filters * 2**i, conv=conv,
          norm=functools.partial(norm, i + 1), groups=self.groups,
          width_per_group=self.width_per_group, stride_in_1x1=self.stride_in_1x1,
          shortcut=self.shortcut, zero_init_last=self.zero_init_residual)
      x = block(strides=1 if i == 0 else 2, name=f"layer{i + 1}_0", **stochastic_depth(i + 1))(x)
      if self.scan_blocks and num_blocks > 1:
        scanned = nn.scan(_ScanAdapter, variable_axes={"params": 0, "batch_stats": 0},
                          split_rngs={"params": True}, length=num_blocks - 1)
        x, _ = scanned(block, name=f"layer{i + 1}_scan")(x, None)
      else:
        for j in range(1, num_blocks):
          x = block(name=f"layer{i + 1}_{j}", **stochastic_depth(i + 1))(x)
      if preact and i + 1 == last:
        x = norm(last, relu=True, name="final_bn")(x)
      x = features[f"stage{i + 1}"] = end_of_part(i + 1, x)

    # Pool in float32: a bfloat16 mean over 7x7 or 8x8 positions loses precision in the logits.
    head_dtype = jnp.promote_types(self.dtype, jnp.float32)
    x = jnp.mean(x.astype(head_dtype), axis=(1, 2))
    features["pooled"] = x
    if self.num_classes:
      x = nn.Dense(self.num_classes, dtype=head_dtype, param_dtype=self.param_dtype,
                   kernel_init=dense_kernel_init, bias_init=dense_bias_init(x.shape[-1]),
                   name=self.head)(x)
      features["logits"] = x
    return features if return_features else x
