"""Host-side image transforms (Pillow): the eval resize/crop shared with inference, and the
Inception-style random-resized crop for ImageNet training."""

import math

import numpy as np
from PIL import Image


def to_pil(image: np.ndarray, channels: int) -> Image.Image:
  """An HWC uint8 array (1, 3 or 4 channels) as a PIL image with `channels` (1 or 3) channels."""
  if image.ndim == 2:
    image = image[..., None]
  if image.shape[-1] == 1:
    pil = Image.fromarray(image[..., 0])
  else:
    pil = Image.fromarray(image[..., :3])  # drop alpha
  return pil.convert("L" if channels == 1 else "RGB")


def to_array(pil: Image.Image) -> np.ndarray:
  array = np.asarray(pil, dtype=np.uint8)
  return array[..., None] if array.ndim == 2 else array


def eval_transform(image: np.ndarray | Image.Image, *, image_size: int, channels: int,
                   crop_ratio: float = 1.0) -> np.ndarray:
  """The deterministic preprocessing of evaluation (and of inference, and of resident data).

  Args:
    image: HWC uint8 array or PIL image, grayscale or colour.
    image_size: output side; 0 keeps the native size.
    channels: 1 or 3 output channels.
    crop_ratio: < 1: resize the shorter side to round(image_size / crop_ratio), then take the
      central image_size square (ImageNet: 0.875, i.e. 256 -> 224); 1: resize the whole image.

  Returns:
    (image_size, image_size, channels) uint8 array.
  """
  pil = image.convert("L" if channels == 1 else "RGB") if isinstance(image, Image.Image) else \
      to_pil(image, channels)
  if image_size:
    if crop_ratio < 1.0:
      short = int(round(image_size / crop_ratio))
      w, h = pil.size
      scale = short / min(w, h)
      pil = pil.resize((max(short, round(w * scale)), max(short, round(h * scale))),
                       Image.BILINEAR)
      w, h = pil.size
      left, top = (w - image_size) // 2, (h - image_size) // 2
      pil = pil.crop((left, top, left + image_size, top + image_size))
    elif pil.size != (image_size, image_size):
      pil = pil.resize((image_size, image_size), Image.BILINEAR)
  return to_array(pil)


def random_resized_crop(image: np.ndarray | Image.Image, rng: np.random.Generator, *,
                        image_size: int, channels: int, scale=(0.08, 1.0),
                        ratio=(3.0 / 4.0, 4.0 / 3.0)) -> np.ndarray:
  """Inception-style crop as torchvision's RandomResizedCrop: random area and aspect, resized."""
  pil = image.convert("L" if channels == 1 else "RGB") if isinstance(image, Image.Image) else \
      to_pil(image, channels)
  width, height = pil.size
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
      break
  else:  # central crop at the nearest allowed aspect ratio
    in_ratio = width / height
    if in_ratio < ratio[0]:
      w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
      w, h = int(round(height * ratio[1])), height
    else:
      w, h = width, height
    top, left = (height - h) // 2, (width - w) // 2
  pil = pil.resize((image_size, image_size), Image.BILINEAR, box=(left, top, left + w, top + h))
  return to_array(pil)
