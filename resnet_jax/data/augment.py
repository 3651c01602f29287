"""On-device preprocessing inside the compiled train step: pad-and-crop, flip, normalise."""

from collections.abc import Sequence

import jax
import jax.numpy as jnp


def augment_on_device(images: jax.Array, keys: jax.Array, *, crop_padding: int,
                      random_flip: bool) -> jax.Array:
  """Random pad-and-crop (zero padding) and horizontal flip, one key per example.

  Args:
    images: (batch, height, width, channels), any dtype (uint8 from the pipelines).
    keys: (batch,) PRNG keys; giving each example its own key (from its global position) makes
      the result independent of how the batch is split over devices.
    crop_padding: pixels of zero padding on each side before cropping back to size; 0: no crop.
    random_flip: flip each example left-right with probability 1/2.

  Returns:
    Augmented images, same shape and dtype.
  """
  if not crop_padding and not random_flip:
    return images
  _, h, w, c = images.shape
  p = crop_padding

  def one(image, key):
    crop_key, flip_key = jax.random.split(key)
    if p:
      padded = jnp.pad(image, ((p, p), (p, p), (0, 0)))
      dy, dx = jax.random.randint(crop_key, (2,), 0, 2 * p + 1)
      image = jax.lax.dynamic_slice(padded, (dy, dx, 0), (h, w, c))
    if random_flip:
      image = jnp.where(jax.random.bernoulli(flip_key), image[:, ::-1, :], image)
    return image

  return jax.vmap(one)(images, keys)


def normalize(images: jax.Array, mean: Sequence[float], std: Sequence[float],
              dtype=jnp.float32) -> jax.Array:
  """(images - mean) / std per channel, computed in float32 and cast to the compute dtype."""
  x = images.astype(jnp.float32)
  x = (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)
  return x.astype(dtype)
