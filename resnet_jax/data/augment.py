"""On-device preprocessing inside the compiled train step: pad-and-crop, flip, normalise."""

from collections.abc import Sequence

import jax
import jax.numpy as jnp


def _example_keys(rng: jax.Array, batch: int) -> jax.Array:
  """One key per example: `rng` itself when it already is a batch of keys, else split."""
  typed = jnp.issubdtype(rng.dtype, jax.dtypes.prng_key)
  if rng.ndim == (0 if typed else 1):
    return jax.random.split(rng, batch)
  if rng.shape[0] != batch:
    raise ValueError(f"augment_on_device got {rng.shape[0]} keys for {batch} images; pass one "
                     "key, or one per image.")
  return rng


def augment_on_device(images: jax.Array, rng: jax.Array, *, crop_padding: int,
                      random_flip: bool) -> jax.Array:
  """Random pad-and-crop (zero padding) and horizontal flip, independently per example.

  Args:
    images: (batch, height, width, channels), any dtype (uint8 from the pipelines).
    rng: one PRNG key (split per example), or a (batch,) array of keys, one per example.
      Per-example keys derived from each example's global position make the result independent
      of how the batch is split over devices.
    crop_padding: pixels of zero padding on each side before cropping back to size; 0: no crop.
    random_flip: flip each example left-right with probability 1/2.

  Returns:
    Augmented images, same shape and dtype (the input itself when both are off).
  """
  if not crop_padding and not random_flip:
    return images
  batch, h, w, c = images.shape
  p = crop_padding
  keys = _example_keys(rng, batch)

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
  """(images - mean) / std per channel, computed in float32 and cast to the compute dtype.

  Args:
    images: (..., channels) in 0..255 units, any dtype.
    mean, std: per-channel statistics in 0..255 units (`DatasetInfo.mean`, `.std`).
    dtype: the output (compute) dtype.

  Returns:
    The normalised images in `dtype`.
  """
  x = images.astype(jnp.float32)
  x = (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)
  return x.astype(dtype)
