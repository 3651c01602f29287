"""TrivialAugmentWide, RandAugment and AutoAugment (ImageNet policy) with the operations and
magnitude tables of torchvision.transforms.v2, on the host (each decoded uint8 image, in the input
pipeline), through Pillow as torchvision's recipes run them (their default PIL backend): nearest
interpolation, fill 0.

Each policy is a registered host augmentation (`data/augment.py`), named in the config:
`data.augmentations=("trivial_augment_wide",)`, `("rand_augment(num_ops=2, magnitude=9)",)` or
`("auto_augment",)`. It draws from the example's own generator; `apply_op` applies one operation
at a given magnitude, which the tests compare with torchvision's for the same draws, and the
`draw_*` functions sample the operations, which the tests compare with its distributions.
"""

import math
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

from resnet_jax.errors import InvalidInputError

Table = Callable[[int, int, int], np.ndarray | None]  # (num_bins, height, width) -> magnitudes


def linspace(start: float, end: float, steps: int) -> np.ndarray:
  """torch.linspace in float32, as its CPU kernel computes it: float32 ends and step, each value
  a fused multiply-add from the start up to the middle and from the end after it (one rounding;
  emulated in float64, where the product is exact), so that a magnitude is torchvision's."""
  start32, end32 = np.float32(start), np.float32(end)
  step = np.float64((end32 - start32) / np.float32(max(steps - 1, 1)))
  i = np.arange(steps, dtype=np.float64)
  return np.where(i < steps // 2, np.float64(start32) + step * i,
                  np.float64(end32) - step * (steps - 1 - i)).astype(np.float32)


def _posterize_bits(top: int) -> Table:
  """(8 - arange(bins) / ((bins - 1) / top)).round(): bits from 8 down to 8 - top."""
  return lambda bins, h, w: np.round(
      np.float32(8) - np.arange(bins, dtype=np.float32) / np.float32((bins - 1) / top)
  ).astype(np.int32)


_NONE: Table = lambda bins, h, w: None


def _space(*, shear: float, translate: Callable[[int, int], tuple[float, float]], rotate: float,
           enhance: float, posterize_top: int) -> dict[str, tuple[Table, bool]]:
  """name -> (magnitudes, signed): a torchvision _AUGMENTATION_SPACE, in its order, from the top
  magnitudes of its operations (`translate`: (height, width) -> the top shifts along x and y)."""
  up_to = lambda top: (lambda bins, h, w: linspace(0.0, top, bins))
  return {
      "Identity": (_NONE, False),
      "ShearX": (up_to(shear), True),
      "ShearY": (up_to(shear), True),
      "TranslateX": (lambda bins, h, w: linspace(0.0, translate(h, w)[0], bins), True),
      "TranslateY": (lambda bins, h, w: linspace(0.0, translate(h, w)[1], bins), True),
      "Rotate": (up_to(rotate), True),
      "Brightness": (up_to(enhance), True),
      "Color": (up_to(enhance), True),
      "Contrast": (up_to(enhance), True),
      "Sharpness": (up_to(enhance), True),
      "Posterize": (_posterize_bits(posterize_top), False),
      "Solarize": (lambda bins, h, w: linspace(1.0, 0.0, bins), False),
      "AutoContrast": (_NONE, False),
      "Equalize": (_NONE, False),
  }


RAND_AUGMENT = _space(shear=0.3, translate=lambda h, w: (150.0 / 331.0 * w, 150.0 / 331.0 * h),
                      rotate=30.0, enhance=0.9, posterize_top=4)
TRIVIAL_AUGMENT_WIDE = _space(shear=0.99, translate=lambda h, w: (32.0, 32.0), rotate=135.0,
                              enhance=0.99, posterize_top=6)
AUTO_AUGMENT: dict[str, tuple[Table, bool]] = {
    **{k: v for k, v in RAND_AUGMENT.items() if k != "Identity"},
    "Invert": (_NONE, False),
}
# AutoAugment's ImageNet policy: 25 pairs of (operation, probability, magnitude bin of 10).
IMAGENET_POLICY = (
    (("Posterize", 0.4, 8), ("Rotate", 0.6, 9)), (("Solarize", 0.6, 5), ("AutoContrast", 0.6, None)),
    (("Equalize", 0.8, None), ("Equalize", 0.6, None)), (("Posterize", 0.6, 7), ("Posterize", 0.6, 6)),
    (("Equalize", 0.4, None), ("Solarize", 0.2, 4)), (("Equalize", 0.4, None), ("Rotate", 0.8, 8)),
    (("Solarize", 0.6, 3), ("Equalize", 0.6, None)), (("Posterize", 0.8, 5), ("Equalize", 1.0, None)),
    (("Rotate", 0.2, 3), ("Solarize", 0.6, 8)), (("Equalize", 0.6, None), ("Posterize", 0.4, 6)),
    (("Rotate", 0.8, 8), ("Color", 0.4, 0)), (("Rotate", 0.4, 9), ("Equalize", 0.6, None)),
    (("Equalize", 0.0, None), ("Equalize", 0.8, None)), (("Invert", 0.6, None), ("Equalize", 1.0, None)),
    (("Color", 0.6, 4), ("Contrast", 1.0, 8)), (("Rotate", 0.8, 8), ("Color", 1.0, 2)),
    (("Color", 0.8, 8), ("Solarize", 0.8, 7)), (("Sharpness", 0.4, 7), ("Invert", 0.6, None)),
    (("ShearX", 0.6, 5), ("Equalize", 1.0, None)), (("Color", 0.4, 0), ("Equalize", 0.6, None)),
    (("Equalize", 0.4, None), ("Solarize", 0.2, 4)), (("Solarize", 0.6, 5), ("AutoContrast", 0.6, None)),
    (("Invert", 0.6, None), ("Equalize", 1.0, None)), (("Color", 0.6, 4), ("Contrast", 1.0, 8)),
    (("Equalize", 0.8, None), ("Equalize", 0.6, None)),
)


def _black(image: Image.Image) -> int | tuple[int, ...]:
  """torchvision's fill 0 for a PIL image of `image`'s mode."""
  return 0 if image.mode == "L" else (0,) * len(image.getbands())


def _affine(image: Image.Image, *, angle: float = 0.0, translate=(0.0, 0.0),
            shear=(0.0, 0.0), center=None) -> Image.Image:
  """torchvision's affine on a PIL image: its inverse matrix, nearest, fill 0."""
  cx, cy = center if center is not None else (image.size[0] * 0.5, image.size[1] * 0.5)
  rot, sx, sy = math.radians(angle), math.radians(shear[0]), math.radians(shear[1])
  a = math.cos(rot - sy) / math.cos(sy)
  b = -math.cos(rot - sy) * math.tan(sx) / math.cos(sy) - math.sin(rot)
  c = math.sin(rot - sy) / math.cos(sy)
  d = -math.sin(rot - sy) * math.tan(sx) / math.cos(sy) + math.cos(rot)
  m = [d, -b, 0.0, -c, a, 0.0]
  tx, ty = translate
  m[2] += m[0] * (-cx - tx) + m[1] * (-cy - ty) + cx
  m[5] += m[3] * (-cx - tx) + m[4] * (-cy - ty) + cy
  return image.transform(image.size, Image.AFFINE, m, Image.NEAREST, fillcolor=_black(image))


def apply_op(image: np.ndarray, op: str, magnitude: float) -> np.ndarray:
  """One operation of the tables above on an HWC uint8 image (1 or 3 channels), as torchvision's
  `_apply_image_or_video_transform` does it on a PIL image."""
  pil = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
  if op == "Identity":
    return image
  if op in ("ShearX", "ShearY"):
    shear = math.degrees(math.atan(magnitude))
    out = _affine(pil, shear=(shear, 0.0) if op == "ShearX" else (0.0, shear), center=(0, 0))
  elif op in ("TranslateX", "TranslateY"):
    shift = float(int(magnitude))
    out = _affine(pil, translate=(shift, 0.0) if op == "TranslateX" else (0.0, shift))
  elif op == "Rotate":
    out = pil.rotate(magnitude, Image.NEAREST, False, None, fillcolor=_black(pil))
  elif op in ("Brightness", "Color", "Contrast", "Sharpness"):
    out = getattr(ImageEnhance, op)(pil).enhance(1.0 + magnitude)
  elif op == "Posterize":
    out = ImageOps.posterize(pil, int(magnitude))
  elif op == "Solarize":
    out = ImageOps.solarize(pil, 255.0 * magnitude)
  elif op == "AutoContrast":
    out = ImageOps.autocontrast(pil)
  elif op == "Equalize":
    out = ImageOps.equalize(pil)
  elif op == "Invert":
    out = ImageOps.invert(pil)
  else:
    raise InvalidInputError(f"Unknown augmentation operation {op!r}; valid ones: "
                            f"{', '.join(AUTO_AUGMENT)}, Identity.")
  return np.asarray(out).reshape(image.shape)


Draw = tuple[str, int, float]  # (operation, magnitude bin, signed magnitude)


def _draw(space: dict[str, tuple[Table, bool]], op: str, bins: int, index: int,
          shape: tuple[int, ...], rng: np.random.Generator) -> Draw:
  table, signed = space[op]
  magnitudes = table(bins, shape[0], shape[1])
  if magnitudes is None:
    return op, 0, 0.0
  magnitude = float(magnitudes[index])
  return op, index, -magnitude if signed and rng.random() < 0.5 else magnitude


def draw_trivial_augment_wide(rng: np.random.Generator, shape: tuple[int, ...], *,
                              num_magnitude_bins: int = 31) -> list[Draw]:
  """One operation, uniformly, at a uniform magnitude bin (and a fair sign)."""
  op = list(TRIVIAL_AUGMENT_WIDE)[rng.integers(len(TRIVIAL_AUGMENT_WIDE))]
  return [_draw(TRIVIAL_AUGMENT_WIDE, op, num_magnitude_bins,
                int(rng.integers(num_magnitude_bins)), shape, rng)]


def draw_rand_augment(rng: np.random.Generator, shape: tuple[int, ...], *, num_ops: int = 2,
                      magnitude: int = 9, num_magnitude_bins: int = 31) -> list[Draw]:
  """`num_ops` operations, each uniformly, all at bin `magnitude` (each with a fair sign)."""
  if not 0 <= magnitude < num_magnitude_bins or num_ops < 0:
    raise InvalidInputError(f"rand_augment(num_ops={num_ops}, magnitude={magnitude}, "
                            f"num_magnitude_bins={num_magnitude_bins}): need num_ops >= 0 and "
                            "0 <= magnitude < num_magnitude_bins.")
  return [_draw(RAND_AUGMENT, list(RAND_AUGMENT)[rng.integers(len(RAND_AUGMENT))],
                num_magnitude_bins, magnitude, shape, rng) for _ in range(num_ops)]


def draw_auto_augment(rng: np.random.Generator, shape: tuple[int, ...], *,
                      policy: str = "imagenet") -> list[Draw]:
  """One of the ImageNet policy's 25 pairs, uniformly; each operation with its probability."""
  if policy != "imagenet":
    raise InvalidInputError(f"auto_augment(policy={policy!r}): only the 'imagenet' policy is "
                            "provided.")
  pair = IMAGENET_POLICY[rng.integers(len(IMAGENET_POLICY))]
  return [_draw(AUTO_AUGMENT, op, 10, index or 0, shape, rng)
          for op, probability, index in pair if rng.random() <= probability]


def _policy(draw: Callable[..., list[Draw]]) -> Callable[..., np.ndarray]:
  """The host augmentation (image, rng, **kwargs) that applies `draw`'s operations in turn."""
  def augment(image: np.ndarray, rng: np.random.Generator, **kwargs) -> np.ndarray:
    for op, _, magnitude in draw(rng, image.shape, **kwargs):
      image = apply_op(image, op, magnitude)
    return image
  augment.__doc__ = draw.__doc__
  return augment


trivial_augment_wide = _policy(draw_trivial_augment_wide)
rand_augment = _policy(draw_rand_augment)
auto_augment = _policy(draw_auto_augment)
