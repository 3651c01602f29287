"""Host-side image transforms (Pillow): the eval resize/crop shared with inference, and the
Inception-style random-resized crop (with flip) for ImageNet-style training."""

import dataclasses
import math

import numpy as np
from PIL import Image

from resnet_jax.errors import InvalidInputError

# ImageNet's per-channel statistics (torchvision's), in 0..255 units.
IMAGENET_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
IMAGENET_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)


@dataclasses.dataclass(frozen=True)
class Preprocessing:
  """How images are prepared for a network: `eval_transform`'s arguments, then (x - mean) / std
  per channel (0..255 units). Saved with the weights, so that predict prepares images as
  evaluation did."""

  image_size: int
  channels: int
  crop_ratio: float
  mean: tuple[float, ...]
  std: tuple[float, ...]


def to_pil(image: np.ndarray | Image.Image, channels: int) -> Image.Image:
  """An image (HWC/HW uint8 array with 1-4 channels, or PIL) as PIL with 1 ("L") or 3 ("RGB")."""
  if channels not in (1, 3):
    raise ValueError(f"channels must be 1 or 3, got {channels}.")
  if isinstance(image, Image.Image):
    pil = image
  else:
    image = np.asarray(image)
    if image.dtype != np.uint8:
      raise ValueError(f"Expected a uint8 image, got {image.dtype}; scale it to 0..255 first.")
    if image.ndim == 3 and image.shape[-1] in (1, 2):
      image = image[..., 0]  # grey (and alpha, dropped)
    elif image.ndim == 3 and image.shape[-1] == 4:
      image = image[..., :3]  # RGBA: alpha dropped
    elif not (image.ndim == 2 or (image.ndim == 3 and image.shape[-1] == 3)):
      raise ValueError(f"Expected an (H, W, C) image with 1-4 channels, got shape {image.shape}.")
    pil = Image.fromarray(image)
  mode = "L" if channels == 1 else "RGB"
  return pil if pil.mode == mode else pil.convert(mode)  # convert() copies even to its own mode


def to_array(pil: Image.Image) -> np.ndarray:
  """HWC uint8 (a trailing channel axis also for grayscale)."""
  array = np.asarray(pil, dtype=np.uint8)
  return array[..., None] if array.ndim == 2 else array


def eval_transform(image: np.ndarray | Image.Image, *, image_size: int, channels: int,
                   crop_ratio: float = 1.0) -> np.ndarray:
  """The deterministic preprocessing of evaluation (and of inference, and of resident data).

  Args:
    image: HWC uint8 array or PIL image, grayscale or colour.
    image_size: output side; 0 keeps the native size (and ignores crop_ratio).
    channels: 1 or 3 output channels.
    crop_ratio: in (0, 1]. Below 1: resize the shorter side to round(image_size / crop_ratio),
      then take the central image_size square (ImageNet: 0.875, i.e. 256 -> 224); 1: resize the
      whole image to image_size x image_size.

  Returns:
    (image_size, image_size, channels) uint8 array ((H, W, channels) when image_size is 0).
  """
  if not 0.0 < crop_ratio <= 1.0:
    raise InvalidInputError("crop_ratio (data.eval_crop_ratio) must be in (0, 1], got "
                            f"{crop_ratio}.")
  pil = to_pil(image, channels)
  if image_size:
    if crop_ratio < 1.0:
      short = int(round(image_size / crop_ratio))
      w, h = pil.size
      scale = short / min(w, h)
      # Both sides at least `short`: rounding must never leave a side below the crop.
      pil = pil.resize((max(short, round(w * scale)), max(short, round(h * scale))),
                       Image.Resampling.BILINEAR)
      w, h = pil.size
      left, top = (w - image_size) // 2, (h - image_size) // 2
      pil = pil.crop((left, top, left + image_size, top + image_size))
    elif pil.size != (image_size, image_size):
      # Pillow's BILINEAR widens its kernel when shrinking, i.e. it antialiases.
      pil = pil.resize((image_size, image_size), Image.Resampling.BILINEAR)
  return to_array(pil)


def crop_box(width: int, height: int, rng: np.random.Generator, *, scale=(0.08, 1.0),
             ratio=(3.0 / 4.0, 4.0 / 3.0)) -> tuple[int, int, int, int]:
  """(left, top, crop width, crop height), sampled as torchvision's RandomResizedCrop.get_params.

  10 tries of a random area fraction in `scale` and a log-uniform aspect ratio in `ratio`; then
  the central crop at the nearest allowed aspect ratio.
  """
  area = width * height
  log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
  for _ in range(10):
    target = area * rng.uniform(*scale)
    aspect = math.exp(rng.uniform(*log_ratio))
    w = int(round(math.sqrt(target * aspect)))
    h = int(round(math.sqrt(target / aspect)))
    if 0 < w <= width and 0 < h <= height:
      top = int(rng.integers(0, height - h + 1))
      left = int(rng.integers(0, width - w + 1))
      return left, top, w, h
  in_ratio = width / height
  if in_ratio < min(ratio):
    w, h = width, int(round(width / min(ratio)))
  elif in_ratio > max(ratio):
    w, h = int(round(height * max(ratio))), height
  else:
    w, h = width, height
  return (width - w) // 2, (height - h) // 2, w, h


def random_resized_crop(image: np.ndarray | Image.Image, rng: np.random.Generator, *,
                        size: tuple[int, int], channels: int, random_flip: bool,
                        scale=(0.08, 1.0), ratio=(3.0 / 4.0, 4.0 / 3.0)) -> np.ndarray:
  """Inception-style training crop: a random area and aspect ratio, resized, maybe flipped.

  Args:
    image: HWC uint8 array or PIL image.
    rng: the example's own generator (the result is a pure function of it and the image).
    size: (height, width) of the output.
    channels: 1 or 3 output channels.
    random_flip: also flip left-right with probability 1/2.
    scale, ratio: ranges of the crop's area fraction and aspect ratio (torchvision's defaults).

  Returns:
    (height, width, channels) uint8 array.
  """
  pil = to_pil(image, channels)
  left, top, w, h = crop_box(*pil.size, rng, scale=scale, ratio=ratio)
  pil = pil.resize((size[1], size[0]), Image.Resampling.BILINEAR,
                   box=(left, top, left + w, top + h))
  if random_flip and rng.random() < 0.5:
    pil = pil.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
  return to_array(pil)
