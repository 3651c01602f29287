"""`folder:DIR` datasets: DIR/train/<class>/<image> and DIR/test/<class>/<image>, any Pillow format.

A folder source reads like a tfds data source (random access, records {"image", "label"}), so it
goes through the same pipeline as every other dataset. Grey and colour JPEGs are decoded by OpenCV:
the same pixels as Pillow's (tested), faster (README, Performance), and decoding is most of the
host pipeline's cost per image. tensorflow-datasets decodes its image features with OpenCV too.
"""

import io
import os
from collections.abc import Sequence

import cv2
import numpy as np
from PIL import Image

EVAL_FOLDERS = ("test", "val", "validation")
# Modes whose pixels are one grey level: such images keep 1 channel when the whole folder is grey.
GRAYSCALE_MODES = frozenset({"1", "L", "I", "I;16", "I;16L", "I;16B", "I;16N"})
# OpenCV's reading of the JPEGs whose Pillow mode is L or RGB; Pillow ignores EXIF orientation.
OPENCV_JPEG_FLAGS = {"L": cv2.IMREAD_GRAYSCALE | cv2.IMREAD_IGNORE_ORIENTATION,
                     "RGB": cv2.IMREAD_COLOR_RGB | cv2.IMREAD_IGNORE_ORIENTATION}


class ImageReadError(ValueError):
  """An image file that cannot be read; the message names it."""


def _visible(names: Sequence[str]) -> list[str]:
  return sorted(n for n in names if not n.startswith("."))


def _read_error(path: str, error: Exception) -> ImageReadError:
  return ImageReadError(f"Cannot read image {path}: {error}. Remove or replace the file.")


def find_classes(root: str) -> list[str]:
  """Sorted class folder names under DIR/train; raises when there are none."""
  if not os.path.isdir(root):
    raise ValueError(f"Image folder {root!r} does not exist.")
  train = os.path.join(root, "train")
  if not os.path.isdir(train):
    raise ValueError(f"Image folder {root!r} has no 'train' subfolder; expected "
                     f"{root}/train/<class>/<image> and {root}/test/<class>/<image>.")
  classes = [n for n in _visible(os.listdir(train)) if os.path.isdir(os.path.join(train, n))]
  if not classes:
    raise ValueError(f"{train} has no class subfolders; put each class's images in "
                     f"{train}/<class_name>/.")
  return classes


def eval_folder(root: str) -> str:
  """The evaluation split's folder name: test, else val, else validation."""
  for name in EVAL_FOLDERS:
    if os.path.isdir(os.path.join(root, name)):
      return name
  raise ValueError(f"Image folder {root!r} has no evaluation split: add {root}/test/<class>/... "
                   "(or val/ or validation/).")


def to_uint8(image: Image.Image) -> np.ndarray:
  """An HWC uint8 array of a decoded image: grey modes give 1 channel, every other mode RGB."""
  if image.mode in ("L", "RGB"):
    array = np.asarray(image, np.uint8)
  elif image.mode in GRAYSCALE_MODES - {"1"}:
    # 16-bit (and 32-bit integer) grey PNGs: a plain convert("L") clips everything above 255.
    array = np.asarray(image).astype(np.float64)
    array = np.round(np.clip(array, 0, 65535) / 257.0).astype(np.uint8)
  elif image.mode == "1":
    array = np.asarray(image.convert("L"), np.uint8)
  else:  # LA, P, PA, RGBA, CMYK, YCbCr, ...
    array = np.asarray(image.convert("RGB"), np.uint8)
  return array[..., None] if array.ndim == 2 else array


class FolderSource:
  """Random access to one split of an image folder; picklable, for worker processes."""

  def __init__(self, root: str, split: str, classes: Sequence[str]):
    self.root, self.split = root, split
    split_dir = os.path.join(root, split)
    if not os.path.isdir(split_dir):
      raise ValueError(f"Image folder {root!r} has no split {split!r} (no folder {split_dir}).")
    unknown = [n for n in _visible(os.listdir(split_dir))
               if os.path.isdir(os.path.join(split_dir, n)) and n not in classes]
    if unknown:
      raise ValueError(f"{split_dir} has class folders {unknown} that {root}/train lacks; every "
                       "evaluation class must also be a training class.")
    self.files, self.labels = [], []
    for label, name in enumerate(classes):
      class_dir = os.path.join(split_dir, name)
      if not os.path.isdir(class_dir):
        continue
      for filename in _visible(os.listdir(class_dir)):
        path = os.path.join(class_dir, filename)
        if os.path.isfile(path):
          self.files.append(path)
          self.labels.append(label)
    if not self.files:
      raise ValueError(f"No images under {split_dir}/<class>/; put image files (JPEG, PNG, ...) "
                       "in the class folders.")

  def __len__(self) -> int:
    return len(self.files)

  def read(self, index: int) -> np.ndarray:
    """The image at `index` as `to_uint8` gives it; raises ImageReadError naming the file."""
    path = self.files[index]
    try:
      with open(path, "rb") as f:
        data = f.read()
      with Image.open(io.BytesIO(data)) as image:  # the header only, until load()
        if image.format == "JPEG" and image.mode in OPENCV_JPEG_FLAGS:
          array = cv2.imdecode(np.frombuffer(data, np.uint8), OPENCV_JPEG_FLAGS[image.mode])
          if array is not None:
            return array[..., None] if array.ndim == 2 else array
        image.load()
        return to_uint8(image)
    except (OSError, SyntaxError, ValueError) as e:  # Pillow's ways of saying "not an image"
      raise _read_error(path, e) from e

  def __getitem__(self, index: int) -> dict:
    index = int(index)
    return {"image": self.read(index), "label": self.labels[index]}

  def __getitems__(self, indices: Sequence[int]) -> list[dict]:
    return [self[i] for i in indices]

  def scan(self) -> tuple[bool, set[tuple[int, int]]]:
    """(every image is grayscale, the set of (width, height)), from every file's header.

    Headers only (no pixel decoding), so even large folders are checked before training starts.

    Returns:
      (all grayscale, sizes seen).

    Raises:
      ImageReadError: naming the first file that is not an image.
    """
    grayscale, sizes = True, set()
    for path in self.files:
      try:
        with Image.open(path) as image:
          grayscale = grayscale and image.mode in GRAYSCALE_MODES
          sizes.add(image.size)
      except (OSError, SyntaxError, ValueError) as e:
        raise _read_error(path, e) from e
    return grayscale, sizes


def open_folder(root: str, eval_split: str = "") -> tuple[FolderSource, FolderSource, list[str]]:
  """(train source, eval source, class names) of the image folder `root`.

  Args:
    root: the folder holding train/ and test/ (or val/, validation/).
    eval_split: the evaluation split's folder name; "" picks test, val or validation.

  Returns:
    The two sources and the sorted class names.
  """
  classes = find_classes(root)
  return (FolderSource(root, "train", classes),
          FolderSource(root, eval_split or eval_folder(root), classes), classes)


def native_shape(sources: Sequence[FolderSource], image_size: int) -> tuple[int, int, int]:
  """(height, width, channels) of a folder's images before resizing; checks every header.

  Args:
    sources: the splits that will be read.
    image_size: the configured data.image_size; 0 requires every image to have the same size.

  Returns:
    The common native shape (with image_size > 0, the smallest size seen); channels is 1 when
    every image is grayscale, else 3.

  Raises:
    ValueError: sizes differ and image_size is 0; ImageReadError: a file is not an image.
  """
  grayscale, sizes = True, set()
  for source in sources:
    grey, seen = source.scan()
    grayscale, sizes = grayscale and grey, sizes | seen
  if len(sizes) > 1 and not image_size:
    examples = ", ".join(f"{w}x{h}" for w, h in sorted(sizes)[:4])
    raise ValueError(f"Images in {sources[0].root} have {len(sizes)} different sizes ({examples}"
                     f"{', ...' if len(sizes) > 4 else ''}); set --config.data.image_size=N to "
                     "resize them to NxN.")
  width, height = next(iter(sorted(sizes)))
  return height, width, 1 if grayscale else 3
