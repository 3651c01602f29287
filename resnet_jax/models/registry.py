"""The one registry of named networks: `create_model`, `list_models`, `register_model`.

A named network is a factory of modules: a `functools.partial` of `ResNet` (as here), or any
callable taking `num_classes` and options. A fork registers its own from its own file:

    register_model("se_resnet8", functools.partial(ResNet, stage_sizes=(1, 1, 1),
                                                   block_cls=MySEBlock, stem="cifar"))
"""

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn

from resnet_jax.errors import InvalidInputError
from resnet_jax.models.blocks import BLOCKS, block_name
from resnet_jax.models.resnet import ResNet
from resnet_jax.registry import Registry

MODELS: Registry[Callable[..., nn.Module]] = Registry("model")
register_model = MODELS.register
# Options that shape a network's variables or its function, saved with its weights so that a
# checkpoint rebuilds the same network (`describe_architecture`).
ARCHITECTURE_OPTIONS = ("stage_sizes", "block", "num_filters", "stem", "groups",
                        "width_per_group", "stride_in_1x1", "shortcut", "scan_blocks",
                        "bn_momentum", "bn_epsilon")


def _imagenet(stage_sizes, block, **kwargs):
  return functools.partial(ResNet, stage_sizes=stage_sizes, block_cls=BLOCKS[block], **kwargs)


def _cifar(stage_sizes, block, **kwargs):
  return functools.partial(ResNet, stage_sizes=stage_sizes, block_cls=BLOCKS[block],
                           stem="cifar", num_filters=16, **kwargs)


for _name, _factory in {
    # ImageNet family, v1.5 as torchvision (stride_in_1x1=True gives v1).
    "resnet18": _imagenet((2, 2, 2, 2), "basic"),
    "resnet34": _imagenet((3, 4, 6, 3), "basic"),
    "resnet50": _imagenet((3, 4, 6, 3), "bottleneck"),
    "resnet101": _imagenet((3, 4, 23, 3), "bottleneck"),
    "resnet152": _imagenet((3, 8, 36, 3), "bottleneck"),
    "resnet200": _imagenet((3, 24, 36, 3), "bottleneck"),
    "resnext50_32x4d": _imagenet((3, 4, 6, 3), "bottleneck", groups=32, width_per_group=4),
    "resnext101_32x8d": _imagenet((3, 4, 23, 3), "bottleneck", groups=32, width_per_group=8),
    "resnext101_64x4d": _imagenet((3, 4, 23, 3), "bottleneck", groups=64, width_per_group=4),
    "wide_resnet50_2": _imagenet((3, 4, 6, 3), "bottleneck", width_per_group=128),
    "wide_resnet101_2": _imagenet((3, 4, 23, 3), "bottleneck", width_per_group=128),
    # Pre-activation ResNets (He et al. 2016) with the ImageNet stem.
    "preact_resnet18": _imagenet((2, 2, 2, 2), "preact_basic"),
    "preact_resnet34": _imagenet((3, 4, 6, 3), "preact_basic"),
    "preact_resnet50": _imagenet((3, 4, 6, 3), "preact_bottleneck"),
    "preact_resnet101": _imagenet((3, 4, 23, 3), "preact_bottleneck"),
    "preact_resnet152": _imagenet((3, 8, 36, 3), "preact_bottleneck"),
    "preact_resnet200": _imagenet((3, 24, 36, 3), "preact_bottleneck"),
    # CIFAR ResNets of He et al. 2015 section 4.2: 6n+2 layers, option-A shortcuts.
    "resnet8": _cifar((1, 1, 1), "basic", shortcut="zero_pad"),  # n=1: quick experiments, tests
    "resnet20": _cifar((3, 3, 3), "basic", shortcut="zero_pad"),
    "resnet32": _cifar((5, 5, 5), "basic", shortcut="zero_pad"),
    "resnet44": _cifar((7, 7, 7), "basic", shortcut="zero_pad"),
    "resnet56": _cifar((9, 9, 9), "basic", shortcut="zero_pad"),
    "resnet110": _cifar((18, 18, 18), "basic", shortcut="zero_pad"),
    "resnet1202": _cifar((200, 200, 200), "basic", shortcut="zero_pad", scan_blocks=True),
    # Pre-activation CIFAR bottleneck ResNets of He et al. 2016: 9n+2 layers.
    "preact_resnet164": _cifar((18, 18, 18), "preact_bottleneck"),
    "preact_resnet1001": _cifar((111, 111, 111), "preact_bottleneck", scan_blocks=True),
}.items():
  register_model(_name, _factory)
# The ImageNet architectures with the CIFAR stem (3x3/1 conv, no max-pool) for 32x32 inputs.
for _name in ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "preact_resnet18",
              "preact_resnet34", "preact_resnet50"):
  register_model(f"{_name}_cifar", functools.partial(MODELS[_name], stem="cifar"))

# Registry entries whose architecture and parameter names match torchvision.models exactly.
TORCHVISION_MODELS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
                      "resnext50_32x4d", "resnext101_32x8d", "resnext101_64x4d", "wide_resnet50_2",
                      "wide_resnet101_2")


def list_models() -> list[str]:
  """Names accepted by `create_model`, sorted."""
  return MODELS.names()


def _module_class(factory: Any) -> type | None:
  while isinstance(factory, functools.partial):
    factory = factory.func
  return factory if isinstance(factory, type) and dataclasses.is_dataclass(factory) else None


def create_model(name: str, *, num_classes: int = 1000, **overrides: Any) -> nn.Module:
  """Builds a registered network.

  Args:
    name: a name from `list_models()`.
    num_classes: classifier outputs; 0 returns pooled features instead of logits.
    **overrides: any other attribute of the network (dtype, axis_name, zero_init_residual,
      stride_in_1x1, scan_blocks, remat, ...); `block` takes a registered block name.

  Returns:
    An unbound module (a `ResNet` for every built-in name).
  """
  factory = MODELS[name]
  if num_classes < 0:
    raise InvalidInputError("num_classes must be >= 0 (0 for a headless backbone), got "
                            f"{num_classes}.")
  if "block" in overrides:
    overrides["block_cls"] = BLOCKS[overrides.pop("block")]
  cls = _module_class(factory)
  if cls is not None:
    fields = {f.name for f in dataclasses.fields(cls)} - {"parent", "name"}
    unknown = sorted(set(overrides) - fields)
    if unknown:
      raise InvalidInputError(f"Unknown {cls.__name__} option(s) {unknown}. Valid options: "
                              f"{sorted(fields)}.")
  return factory(num_classes=num_classes, **overrides)


def describe_architecture(model: nn.Module) -> dict[str, Any]:
  """The `ARCHITECTURE_OPTIONS` of a network, JSON-friendly (the block by its registered name)."""
  options = {k: getattr(model, k) for k in ARCHITECTURE_OPTIONS
             if k != "block" and hasattr(model, k)}
  if "stage_sizes" in options:
    options["stage_sizes"] = list(options["stage_sizes"])
  if hasattr(model, "block_cls"):
    options["block"] = block_name(model.block_cls)
  return options
