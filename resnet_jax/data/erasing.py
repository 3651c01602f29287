"""Random erasing (Zhong et al. 2017) with torchvision.transforms.v2.RandomErasing's semantics, on
the device after normalisation (where torchvision's recipes apply it): with probability `prob` a
rectangle of a uniform share `scale` of the area and a log-uniform aspect `ratio` (the first of 10
tries that fits) is set to `value`, 0 or "random" (standard normal per pixel and channel, in the
normalised units)."""

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp

from resnet_jax.errors import InvalidInputError

TRIES = 10  # torchvision's attempts at a rectangle that fits


@dataclasses.dataclass(frozen=True)
class Erasing:
  """torchvision's RandomErasing arguments (prob 0: off)."""

  prob: float = 0.0
  scale: tuple[float, float] = (0.02, 0.33)
  ratio: tuple[float, float] = (0.3, 3.3)
  value: str = "0"  # "0" or "random"

  @classmethod
  def from_config(cls, data_config: Any) -> "Erasing":
    """`data.erasing_prob`, `erasing_scale`, `erasing_ratio` and `erasing_value`.

    Raises:
      InvalidInputError: a value other than "0" or "random", or a range that is not (low, high).
    """
    erasing = cls(float(data_config.get("erasing_prob", 0.0)),
                  tuple(data_config.get("erasing_scale", (0.02, 0.33))),
                  tuple(data_config.get("erasing_ratio", (0.3, 3.3))),
                  str(data_config.get("erasing_value", "0")))
    if erasing.value not in ("0", "random"):
      raise InvalidInputError(f"data.erasing_value={erasing.value!r}; choose \"0\" or \"random\".")
    for name, (low, high) in (("scale", erasing.scale), ("ratio", erasing.ratio)):
      if not 0 < low <= high or (name == "scale" and high > 1):
        raise InvalidInputError(f"data.erasing_{name}=({low}, {high}) must be (low, high) with "
                                f"0 < low <= high{' <= 1' if name == 'scale' else ''}.")
    return erasing


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Box:
  """One image's rectangle: top row, left column, height, width; erase False: left alone."""

  top: jax.Array
  left: jax.Array
  height: jax.Array
  width: jax.Array
  erase: jax.Array


def sample(key: jax.Array, erasing: Erasing, height: int, width: int) -> Box:
  """One image's draw, as torchvision's `make_params` and its probability draw make it."""
  k_apply, k_scale, k_ratio, k_top, k_left = jax.random.split(key, 5)
  area = jax.random.uniform(k_scale, (TRIES,), minval=erasing.scale[0],
                            maxval=erasing.scale[1]) * (height * width)
  aspect = jnp.exp(jax.random.uniform(k_ratio, (TRIES,), minval=math.log(erasing.ratio[0]),
                                      maxval=math.log(erasing.ratio[1])))
  h = jnp.round(jnp.sqrt(area * aspect)).astype(jnp.int32)
  w = jnp.round(jnp.sqrt(area / aspect)).astype(jnp.int32)
  fits = (h < height) & (w < width)
  first = jnp.argmax(fits)  # the first try that fits (0 when none does; erase is then False)
  h, w = h[first], w[first]
  top = jax.random.randint(k_top, (), 0, height - h + 1)
  left = jax.random.randint(k_left, (), 0, width - w + 1)
  erase = (jax.random.uniform(k_apply) < erasing.prob) & fits.any()
  return Box(top, left, h, w, erase)


def erase(image: jax.Array, box: Box, values: jax.Array) -> jax.Array:
  """`image` (HWC) with `box` set to `values` (broadcast to HWC: a scalar, or noise)."""
  rows = jnp.arange(image.shape[0])[:, None]
  cols = jnp.arange(image.shape[1])[None, :]
  inside = ((rows >= box.top) & (rows < box.top + box.height) &
            (cols >= box.left) & (cols < box.left + box.width) & box.erase)
  return jnp.where(inside[..., None], jnp.broadcast_to(values, image.shape).astype(image.dtype),
                   image)


def random_erasing(images: jax.Array, keys: jax.Array, erasing: Erasing) -> jax.Array:
  """Each image of a normalised NHWC batch erased with its own key."""
  def one(image, key):
    k_box, k_noise = jax.random.split(key)
    box = sample(k_box, erasing, *image.shape[:2])
    values = (jax.random.normal(k_noise, image.shape) if erasing.value == "random"
              else jnp.zeros(()))
    return erase(image, box, values)
  return jax.vmap(one)(images, keys)
