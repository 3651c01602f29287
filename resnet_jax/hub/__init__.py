"""Pretrained weights by name: `resnet_jax.create_model("resnet50", pretrained="torchvision")`,
`--config.init.checkpoint=torchvision:resnet50`, `predict --checkpoint=timm:resnet50.a1_in1k`.

A name is "SOURCE:MODEL.TAG" (one entry), "SOURCE:MODEL" (the source's default weights for that
model) or, with the model given apart, "SOURCE" or "SOURCE:TAG". The entries are registered
(`WEIGHTS`; the built-in ones are the tables torchvision and timm publish, `hub/table.py`); a fork
registers its own with `register_weights`. Each file is downloaded once into the cache
(`$RESNET_JAX_CACHE`, default ~/.cache/resnet_jax), verified by its digest, converted once, and the
converted variables are cached too (`hub/cache.py`).
"""

import dataclasses
from typing import Any

from resnet_jax.errors import InvalidInputError
from resnet_jax.hub import table
from resnet_jax.registry import Registry


@dataclasses.dataclass(frozen=True)
class Weights:
  """One published file of weights and how its images are prepared.

  Attributes:
    name: "SOURCE:MODEL.TAG".
    model: the registry network the file's state dict belongs to (torchvision's key layout).
    url: where the file is published (.pth or .safetensors).
    sha256: its published SHA-256, whole or as the hex prefix torchvision's file names carry;
      None: the one the server sends (Hugging Face's X-Linked-Etag), refused when it sends none.
    num_classes, image_size, crop_ratio: the head, the evaluation crop and crop / resize.
    mean, std: normalisation in 0..1 units, as the source gives them.
    interpolation, accuracy: the source's resize and its published top-1 (None: not published).
    test_image_size, test_crop_ratio: the larger test-time crop timm recommends, if any.
    source, default: where the entry comes from, and whether it is the source's default for the
      model.
  """

  name: str
  model: str
  url: str
  sha256: str | None
  num_classes: int = 1000
  image_size: int = 224
  crop_ratio: float = 0.875
  mean: tuple[float, ...] = (0.485, 0.456, 0.406)
  std: tuple[float, ...] = (0.229, 0.224, 0.225)
  interpolation: str = "bilinear"
  accuracy: float | None = None
  test_image_size: int | None = None
  test_crop_ratio: float | None = None
  source: str = ""
  default: bool = False

  @property
  def origin(self) -> str:
    return self.name.split(":", 1)[0]


WEIGHTS: Registry[Weights] = Registry("pretrained weights")


def register_weights(weights: Weights, *, replace: bool = False) -> Weights:
  """Adds an entry under its name (a fork's own weights, a mirror of a table's file)."""
  if ":" not in weights.name:
    raise InvalidInputError(f"Weights are named SOURCE:MODEL.TAG; got {weights.name!r}.")
  return WEIGHTS.register(weights.name, weights, replace=replace)


for _entry in table.ENTRIES:
  register_weights(Weights(**{**_entry, "mean": tuple(_entry["mean"]),
                              "std": tuple(_entry["std"])}))


def sources() -> list[str]:
  """The registered sources ("timm", "torchvision", a fork's)."""
  return sorted({w.origin for _, w in WEIGHTS.items()})


def is_name(text: str) -> bool:
  """Whether `text` names registered weights rather than a path ("torchvision:...", not gs://)."""
  return "://" not in text and text.split(":", 1)[0] in sources()


def resolve(spec: str, model: str | None = None) -> Weights:
  """The entry `spec` names (see the module docstring), for `model` when given.

  Raises:
    InvalidInputError: no such entry, or the entry is for another model; naming the valid ones.
  """
  origin, _, rest = spec.partition(":")
  if origin not in sources():
    raise InvalidInputError(f"Unknown weights source {origin!r} in {spec!r}; sources: "
                            f"{', '.join(sources())}.")
  mine = [w for _, w in WEIGHTS.items() if w.origin == origin]
  if not rest and model is None:
    raise InvalidInputError(f"{spec!r} names no model; use {origin}:MODEL, e.g. "
                            f"{mine[0].name.rsplit('.', 1)[0]}.")
  if f"{origin}:{rest}" in WEIGHTS:
    found = WEIGHTS[f"{origin}:{rest}"]
  elif model is not None and f"{origin}:{model}.{rest}" in WEIGHTS:
    found = WEIGHTS[f"{origin}:{model}.{rest}"]
  else:  # a model's default: "SOURCE" or "SOURCE:MODEL"
    arch = rest or model
    defaults = [w for w in mine if w.model == arch and w.default and model in (None, arch)]
    if not defaults:
      arch = model or arch
      names = [w.name for w in mine if w.model == arch] or sorted(
          {f"{origin}:{w.model}" for w in mine})
      raise InvalidInputError(f"No {origin} weights named {spec!r}"
                              f"{f' for {model}' if model else ''}; valid: {', '.join(names)}.")
    found = defaults[0]
  if model is not None and found.model != model:
    raise InvalidInputError(f"{found.name} are {found.model} weights, not {model}; use "
                            f"create_model({found.model!r}, pretrained={spec!r}).")
  return found


def load(spec: str, model: str | None = None, cache_dir: str | None = None) -> Any:
  """The weights `spec` names, as a `resnet_jax.pretrained.Pretrained` (downloaded, verified and
  converted once; see `hub.cache`)."""
  from resnet_jax.hub import cache  # orbax and the converter: only when weights are loaded
  return cache.load(resolve(spec, model), cache_dir)


def create_model(name: str, *, pretrained: str | None = None, cache_dir: str | None = None,
                 **overrides: Any) -> Any:
  """`resnet_jax.create_model`: the registry network; with `pretrained`, (network, variables).

  Args:
    name: a name from `list_models()`.
    pretrained: None, or weights by name: "torchvision" (its default for `name`),
      "torchvision:IMAGENET1K_V2", "timm:resnet50.a1_in1k", ...; `list_weights()` lists them.
    cache_dir: where downloads and converted weights are kept (default: $RESNET_JAX_CACHE or
      ~/.cache/resnet_jax).
    **overrides: `num_classes` and any network option (`models.create_model`); with pretrained
      weights, a different `num_classes` is refused (fine-tune with init.checkpoint instead).

  Returns:
    The network, or (network, {"params", "batch_stats"}) with `pretrained`.
  """
  from resnet_jax import models
  if pretrained is None:
    return models.create_model(name, **overrides)
  weights = load(pretrained, model=name, cache_dir=cache_dir)
  classes = overrides.pop("num_classes", weights.num_classes)
  if classes != weights.num_classes:
    raise InvalidInputError(f"{pretrained} has {weights.num_classes} classes, not {classes}; "
                            "load it as it is, or fine-tune it with --config.init.checkpoint="
                            f"{pretrained} and a new head.")
  return weights.create_model(**overrides), weights.variables


def list_weights(model: str | None = None) -> list[str]:
  """The registered weights' names, of every model or of one."""
  return [n for n, w in WEIGHTS.items() if model is None or w.model == model]
