"""Augmentations: one registry, and the one place that decides where each one runs.

An augmentation has a host implementation (numpy, on each decoded image, in the input pipeline),
a device implementation (jax, per example inside the compiled train step), or both. `plan` splits
a run's list into a host stage and a device stage: the host stage is the longest leading run of
augmentations that the host can do, when it includes one that only the host can do (a crop that
needs the decoded image); everything after it runs on the device. A dataset stays on the devices
only when the host stage is empty. A fork adds one from its own file:

    @device_augmentation("cutout")
    def cutout(image, key, *, size=8): ...

and names it in the config: `data.augmentations=("cutout(size=4)",)`.
"""

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from resnet_jax.data import policies
from resnet_jax.data.transforms import random_resized_crop
from resnet_jax.errors import InvalidInputError
from resnet_jax.registry import Registry, parse_call


@dataclasses.dataclass(frozen=True)
class Augmentation:
  """A registered augmentation.

  Attributes:
    name: its registry name.
    host: (image: HWC uint8 numpy, rng: np.random.Generator, **kwargs) -> image, or None.
    device: (image: HWC jax array, key, **kwargs) -> image of the same shape, or None.
    resizes: the host implementation takes the decoded image (any size) and returns it at the
      run's size, in place of the evaluation resize; it must come first.
  """

  name: str
  host: Callable[..., np.ndarray] | None = None
  device: Callable[..., jax.Array] | None = None
  resizes: bool = False


AUGMENTATIONS: Registry[Augmentation] = Registry("augmentation", "data.augmentations")


def register_augmentation(name: str, *, host: Callable | None = None,
                          device: Callable | None = None, resizes: bool = False) -> Augmentation:
  """Registers an augmentation with its host and/or device implementation."""
  if host is None and device is None:
    raise ValueError(f"Augmentation {name!r} needs a host or a device implementation.")
  return AUGMENTATIONS.register(name, Augmentation(name, host, device, resizes))


def device_augmentation(name: str) -> Callable[[Callable], Callable]:
  """Decorator: registers `fn(image, key, **kwargs)` as an on-device augmentation."""
  def add(fn):
    register_augmentation(name, device=fn)
    return fn
  return add


def host_augmentation(name: str, *, resizes: bool = False) -> Callable[[Callable], Callable]:
  """Decorator: registers `fn(image, rng, **kwargs)` as a host augmentation."""
  def add(fn):
    register_augmentation(name, host=fn, resizes=resizes)
    return fn
  return add


def _random_resized_crop(image, rng, *, size, channels):
  return random_resized_crop(image, rng, size=size, channels=channels, random_flip=False)


def _flip_host(image, rng):
  return image[:, ::-1] if rng.random() < 0.5 else image


def _flip_device(image, key):
  return jnp.where(jax.random.bernoulli(key), image[:, ::-1, :], image)


def _pad_crop(image, key, *, padding):
  """Zero-pads `padding` pixels on each side and crops back to size at a random offset."""
  h, w, c = image.shape
  padded = jnp.pad(image, ((padding, padding), (padding, padding), (0, 0)))
  dy, dx = jax.random.randint(key, (2,), 0, 2 * padding + 1)
  return jax.lax.dynamic_slice(padded, (dy, dx, 0), (h, w, c))


register_augmentation("random_resized_crop", host=_random_resized_crop, resizes=True)
register_augmentation("pad_crop", device=_pad_crop)
register_augmentation("flip", host=_flip_host, device=_flip_device)
# torchvision.transforms.v2's policies, through Pillow (`data/policies.py`).
register_augmentation("trivial_augment_wide", host=policies.trivial_augment_wide)
register_augmentation("rand_augment", host=policies.rand_augment)
register_augmentation("auto_augment", host=policies.auto_augment)

# (augmentation, its keyword arguments as sorted (name, value) pairs): hashable, so that a stage
# can be a static part of a compiled function.
Stage = tuple[tuple[Augmentation, tuple[tuple[str, Any], ...]], ...]


def requested(data_config: Any) -> list[tuple[str, dict[str, Any]]]:
  """The augmentations a data config asks for, in order: the built-in switches
  (random_resized_crop, crop_padding -> pad_crop, random_flip -> flip), then data.augmentations."""
  items = []
  if data_config.random_resized_crop:
    items.append(("random_resized_crop", {}))
  if data_config.crop_padding:
    items.append(("pad_crop", {"padding": int(data_config.crop_padding)}))
  if data_config.random_flip:
    items.append(("flip", {}))
  return items + [parse_call(entry, "data.augmentations", "flip or pad_crop(padding=4)")
                  for entry in data_config.get("augmentations", ())]


@dataclasses.dataclass(frozen=True)
class Plan:
  """Where each augmentation of a run runs."""

  host: Stage = ()
  device: Stage = ()


def plan(items: Sequence[tuple[str, dict[str, Any]]]) -> Plan:
  """Splits augmentations into the host stage and the device stage (see the module docstring).

  Raises:
    InvalidInputError: an unknown name, a resizing crop that is not first, or an augmentation
      that only the device can run placed before one that only the host can run.
  """
  stage = tuple((AUGMENTATIONS[name], tuple(sorted(kwargs.items()))) for name, kwargs in items)
  for i, (aug, _) in enumerate(stage):
    if aug.resizes and i:
      raise InvalidInputError(f"Augmentation {aug.name} decides the image size, so it must come "
                              "first.")
  host_only = [i for i, (aug, _) in enumerate(stage) if aug.device is None]
  if not host_only:
    return Plan(device=stage)
  cut = host_only[-1] + 1
  while cut < len(stage) and stage[cut][0].host is not None:
    cut += 1
  for aug, _ in stage[:cut]:
    if aug.host is None:
      raise InvalidInputError(
          f"Augmentation {aug.name} runs only on the device but comes before "
          f"{stage[host_only[-1]][0].name}, which runs only on the host; reorder them.")
  return Plan(host=stage[:cut], device=stage[cut:])


def apply_on_host(image: np.ndarray, stage: Stage, rng: np.random.Generator, *,
                  size: tuple[int, int], channels: int,
                  resize: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
  """The host stage on one decoded image.

  Args:
    image: the decoded image, HWC uint8 at its own size.
    stage: `Plan.host`.
    rng: the example's own generator; the augmentations draw from it in order.
    size, channels: the run's (height, width) and channel count, for a resizing crop.
    resize: the evaluation resize, applied first unless a resizing crop replaces it.
  """
  if not (stage and stage[0][0].resizes):
    image = resize(image)
  for aug, kwargs in stage:
    if aug.resizes:
      image = aug.host(image, rng, size=size, channels=channels, **dict(kwargs))
    else:
      image = aug.host(image, rng, **dict(kwargs))
  return image


def apply_on_device(images: jax.Array, keys: jax.Array, stage: Stage) -> jax.Array:
  """The device stage on a batch, independently per example (one key each, split per
  augmentation)."""
  if not stage:
    return images

  def one(image, key):
    for (aug, kwargs), subkey in zip(stage, jax.random.split(key, len(stage))):
      image = aug.device(image, subkey, **dict(kwargs))
    return image

  return jax.vmap(one)(images, keys)


def normalize(images: jax.Array, mean: Sequence[float], std: Sequence[float],
              dtype=jnp.float32) -> jax.Array:
  """(images - mean) / std per channel, computed in float32 (float64 for a float64 `dtype`) and
  cast to `dtype`.

  Args:
    images: (..., channels) in 0..255 units, any dtype.
    mean, std: per-channel statistics in 0..255 units (`DatasetInfo.mean`, `.std`).
    dtype: the output dtype.

  Returns:
    The normalised images in `dtype`.
  """
  work = jnp.promote_types(dtype, jnp.float32)
  x = images.astype(work)
  x = (x - jnp.asarray(mean, work)) / jnp.asarray(std, work)
  return x.astype(dtype)
