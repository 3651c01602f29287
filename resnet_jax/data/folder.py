"""`folder:DIR` datasets: DIR/train/<class>/<image> and DIR/test/<class>/<image>, any Pillow format.

A folder source reads like a tfds data source (random access, records {"image", "label"}), so it
goes through the same pipeline as every other dataset.
"""

import os

import numpy as np
from PIL import Image, UnidentifiedImageError

EVAL_FOLDERS = ("test", "val", "validation")


class ImageReadError(ValueError):
  """An image file that cannot be read; the message names it."""


def _visible(names):
  return sorted(n for n in names if not n.startswith("."))


def find_classes(root: str) -> list[str]:
  """Sorted class folder names under DIR/train; raises when there are none."""
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
  for name in EVAL_FOLDERS:
    if os.path.isdir(os.path.join(root, name)):
      return name
  raise ValueError(f"Image folder {root!r} has no evaluation split: add {root}/test/<class>/... "
                   "(or val/ or validation/).")


class FolderSource:
  """Random access to one split of an image folder; picklable, for worker processes."""

  def __init__(self, root: str, split: str, classes: list[str]):
    self.root, self.split = root, split
    split_dir = os.path.join(root, split)
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
      raise ValueError(f"No images under {split_dir}/<class>/.")

  def __len__(self) -> int:
    return len(self.files)

  def open(self, index: int) -> Image.Image:
    """The PIL image at `index` (decoded lazily); raises ImageReadError naming the file."""
    path = self.files[index]
    try:
      image = Image.open(path)
      image.load()
      return image
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
      raise ImageReadError(f"Cannot read image {path}: {e}. Remove or replace the file.") from e

  def __getitem__(self, index: int) -> dict:
    image = self.open(int(index))
    if image.mode not in ("L", "RGB"):
      image = image.convert("RGB")
    array = np.asarray(image, np.uint8)
    return {"image": array[..., None] if array.ndim == 2 else array,
            "label": self.labels[int(index)]}

  def __getitems__(self, indices) -> list[dict]:
    return [self[i] for i in indices]

  def scan(self) -> tuple[set[str], set[tuple[int, int]]]:
    """Modes and sizes of every image from its header; raises ImageReadError naming a bad file."""
    modes, sizes = set(), set()
    for path in self.files:
      try:
        with Image.open(path) as image:
          modes.add(image.mode)
          sizes.add(image.size)
      except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise ImageReadError(f"Cannot read image {path}: {e}. Remove or replace the file.") from e
    return modes, sizes
