"""PyTorch twins of the registry's networks, with torchvision's parameter names.

Used to check numerical equivalence (tests) and to compare speed (`experiments.benchmark
--compare-torch`, timed by `torch_timing`). torchvision itself is not needed: the registry also
holds networks torchvision lacks (CIFAR, pre-activation), so the twin is built from a `ResNet`'s
own attributes, each block by the twin registered for its Flax class (`register_twin`). Importing
this module needs torch (`pip install -e .[dev]`).
"""

import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from resnet_jax.errors import InvalidInputError
from resnet_jax.models import blocks as flax_blocks
from resnet_jax.models import ResNet
from resnet_jax.registry import Registry


# Flax block class name -> (model, in_channels, planes, stride) -> torch module with the same names.
TWINS: Registry[Callable[..., nn.Module]] = Registry("PyTorch twin")


def register_twin(flax_block: type) -> Callable[[Callable], Callable]:
  """Decorator: registers a factory as the PyTorch twin of a Flax block class.

  Args:
    flax_block: the Flax block class; its twin is registered under the class's name.

  Returns:
    A decorator that registers the factory `(model, in_channels, planes, stride) -> nn.Module` and
    returns it.
  """
  return TWINS.register(flax_block.__name__)


class _Block(nn.Module):
  """The torchvision blocks: basic or bottleneck, post- or pre-activation."""

  def __init__(self, model: ResNet, in_channels: int, planes: int, stride: int, *,
               bottleneck: bool):
    super().__init__()
    flax_cls = model.block_cls
    self.preact = flax_cls.preactivation
    self.bottleneck = bottleneck
    self.out_channels = planes * flax_cls.expansion
    self.stride = stride
    self.zero_pad = model.shortcut == "zero_pad"
    bn = lambda c: nn.BatchNorm2d(c, eps=model.bn_epsilon, momentum=1.0 - model.bn_momentum)
    conv = lambda i, o, k, s=1, g=1: nn.Conv2d(i, o, k, s, padding=k // 2, groups=g, bias=False)
    if self.bottleneck:
      width = int(planes * (model.width_per_group / 64.0)) * model.groups
      s1, s3 = (stride, 1) if model.stride_in_1x1 else (1, stride)
      self.conv1 = conv(in_channels, width, 1, s1)
      self.conv2 = conv(width, width, 3, s3, model.groups)
      self.conv3 = conv(width, self.out_channels, 1)
      norm_channels = [in_channels, width, width] if self.preact else [width, width, self.out_channels]
    else:
      self.conv1 = conv(in_channels, planes, 3, stride)
      self.conv2 = conv(planes, planes, 3)
      norm_channels = [in_channels, planes] if self.preact else [planes, planes]
    for i, c in enumerate(norm_channels):
      setattr(self, f"bn{i + 1}", bn(c))
    self.changes_shape = in_channels != self.out_channels or stride != 1
    # Stochastic depth with a given mask: the rate (set by TorchResNet) and which rows keep the
    # branch, set before each training forward by whoever draws the masks (the fidelity harness
    # takes the project's); without a mask the branch is kept.
    self.drop_rate, self.keep = 0.0, None
    self.downsample = None
    if self.changes_shape and not self.zero_pad:
      layers = [conv(in_channels, self.out_channels, 1, stride)]
      if not self.preact:
        layers.append(bn(self.out_channels))
      self.downsample = nn.Sequential(*layers)

  def _shortcut(self, x):
    if not self.changes_shape:
      return x
    if self.downsample is not None:
      return self.downsample(x)
    x = x[:, :, ::self.stride, ::self.stride]
    extra = self.out_channels - x.shape[1]
    return F.pad(x, (0, 0, 0, 0, extra // 2, extra - extra // 2))

  def _drop_path(self, y):
    """torchvision.ops.stochastic_depth(mode="row") with the mask `self.drop` holds."""
    if not self.training or self.keep is None or not self.drop_rate:
      return y
    if self.drop_rate >= 1.0:
      return torch.zeros_like(y)
    return y * (self.keep.to(y.dtype) / (1.0 - self.drop_rate)).view(-1, 1, 1, 1)

  def forward(self, x):
    convs = [self.conv1, self.conv2] + ([self.conv3] if self.bottleneck else [])
    norms = [self.bn1, self.bn2] + ([self.bn3] if self.bottleneck else [])
    if self.preact:
      pre = F.relu(norms[0](x))
      shortcut = self._shortcut(pre if self.changes_shape else x)
      y = pre
      for i, c in enumerate(convs):
        y = c(y) if i == 0 else c(F.relu(norms[i](y)))
      return self._drop_path(y) + shortcut
    y = x
    for i, (c, n) in enumerate(zip(convs, norms)):
      y = n(c(y))
      if i < len(convs) - 1:
        y = F.relu(y)
    return F.relu(self._drop_path(y) + self._shortcut(x))


for _cls, _bottleneck in ((flax_blocks.BasicBlock, False), (flax_blocks.Bottleneck, True),
                         (flax_blocks.PreActBasicBlock, False),
                         (flax_blocks.PreActBottleneck, True)):
  register_twin(_cls)(functools.partial(_Block, bottleneck=_bottleneck))


class ReplicaBatchNorm2d(nn.BatchNorm2d):
  """`nn.BatchNorm2d` as `replicas` data-parallel devices compute it without synchronised
  statistics (`train.sync_batchnorm=false`): each of `replicas` equal, consecutive chunks of the
  batch is normalised by its own statistics, and the running averages move towards the mean of
  the chunks' statistics (the project's step averages the replicas' running averages)."""

  def __init__(self, *args, replicas: int = 1, **kwargs):
    super().__init__(*args, **kwargs)
    self.replicas = replicas

  def forward(self, x):
    if not self.training or self.replicas == 1:
      return super().forward(x)
    chunks = x.chunk(self.replicas)
    out = torch.cat([F.batch_norm(c, None, None, self.weight, self.bias, True, 0.0, self.eps)
                     for c in chunks])
    with torch.no_grad():
      for running, stat in ((self.running_mean, lambda c: c.mean((0, 2, 3))),
                            (self.running_var, lambda c: c.var((0, 2, 3), unbiased=True))):
        running.mul_(1 - self.momentum).add_(
            self.momentum * torch.stack([stat(c) for c in chunks]).mean(0))
      self.num_batches_tracked += 1
    return out


class TorchResNet(nn.Module):
  """A PyTorch network computing the same function as a `ResNet` with converted weights.

  `replicas` > 1: BatchNorm in training mode as that many devices compute it without
  synchronising statistics (`ReplicaBatchNorm2d`).
  """

  def __init__(self, model: ResNet, in_channels: int = 3, replicas: int = 1):
    super().__init__()
    if model.stem not in ("imagenet", "cifar") or model.shortcut not in flax_blocks.SHORTCUTS:
      raise ValueError(f"Unsupported stem/shortcut {model.stem!r}/{model.shortcut!r}.")
    if model.block_cls.__name__ not in TWINS:
      raise InvalidInputError(f"No PyTorch twin is registered for {model.block_cls.__name__}; "
                              "register one with resnet_jax.interop.torch_reference.register_twin.")
    twin = TWINS[model.block_cls.__name__]
    self.preact = model.block_cls.preactivation
    self.imagenet_stem = model.stem == "imagenet"
    k = 7 if self.imagenet_stem else 3
    self.conv1 = nn.Conv2d(in_channels, model.num_filters, k, 2 if self.imagenet_stem else 1,
                           padding=k // 2, bias=False)
    self.stem_norm = self.imagenet_stem or not self.preact
    if self.stem_norm:
      self.bn1 = nn.BatchNorm2d(model.num_filters, eps=model.bn_epsilon,
                                momentum=1.0 - model.bn_momentum)
    channels = model.num_filters
    rates = iter(model.drop_path_rates())
    for i, n in enumerate(model.stage_sizes):
      planes = model.num_filters * 2**i
      stage = []
      for j in range(n):
        stage.append(twin(model, channels, planes, 2 if (i > 0 and j == 0) else 1))
        stage[-1].drop_rate = next(rates)
        channels = stage[-1].out_channels
      setattr(self, f"layer{i + 1}", nn.Sequential(*stage))
    self.num_stages = len(model.stage_sizes)
    if self.preact:
      self.final_bn = nn.BatchNorm2d(channels, eps=model.bn_epsilon,
                                     momentum=1.0 - model.bn_momentum)
    self.fc = nn.Linear(channels, model.num_classes) if model.num_classes else None
    if replicas > 1:
      for parent in list(self.modules()):
        for name, child in parent.named_children():
          if type(child) is nn.BatchNorm2d:
            setattr(parent, name, ReplicaBatchNorm2d(
                child.num_features, eps=child.eps, momentum=child.momentum, replicas=replicas))

  def forward(self, x):
    x = self.conv1(x)
    if self.stem_norm:
      x = F.relu(self.bn1(x))
    if self.imagenet_stem:
      x = F.max_pool2d(x, 3, 2, 1)
    for i in range(self.num_stages):
      x = getattr(self, f"layer{i + 1}")(x)
    if self.preact:
      x = F.relu(self.final_bn(x))
    x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
    return self.fc(x) if self.fc is not None else x
