"""`folder:DIR` datasets: DIR/train/<class>/<image> and DIR/test/<class>/<image>, any Pillow format.

A folder source reads like a tfds data source (random access, records {"image", "label"}), so it
goes through the same pipeline as every other dataset; its images are decoded by `decode`, the one
decoder of training, evaluation and predict.
"""

import os
from collections.abc import Sequence

import numpy as np
from etils import epath

from resnet_jax import files
from resnet_jax.data.decode import ImageReadError, describe_all, read_image
from resnet_jax.errors import InvalidInputError

EVAL_FOLDERS = ("test", "val", "validation")
VERIFY_IMAGES = ("auto", "yes", "no")
# data.verify_images=auto decodes every image of each split with at most this many files before
# training, a wait of seconds at this size (README, Performance); larger splits get a
# header check. Per split: a large training split still has its (smaller) evaluation split
# decoded, so that no evaluation fails on an unreadable image after hours of training.
VERIFY_LIMIT = 10_000

__all__ = ["EVAL_FOLDERS", "FolderSource", "ImageReadError", "eval_folder", "find_classes",
           "native_shape", "open_folder"]


def _visible(names: Sequence[str]) -> list[str]:
  return sorted(n for n in names if not n.startswith("."))


def _listing(folder: str) -> tuple[list[str], list[str]]:
  """(subfolder names, file names) of `folder`, sorted, hidden ones left out; for a folder in a
  bucket one listing request, not one lookup per entry."""
  if files.is_remote(folder):
    _, folders, names = next(epath.Path(folder).walk(), (None, [], []))
    return _visible(folders), _visible(names)
  names = _visible(os.listdir(folder))
  return ([n for n in names if os.path.isdir(os.path.join(folder, n))],
          [n for n in names if os.path.isfile(os.path.join(folder, n))])


def _is_folder(path: str) -> bool:
  return epath.Path(path).is_dir()


def find_classes(root: str) -> list[str]:
  """Sorted class folder names under DIR/train; raises unless there are at least two."""
  if not _is_folder(root):
    raise InvalidInputError(f"Image folder {root!r} does not exist.")
  train = os.path.join(root, "train")
  if not _is_folder(train):
    raise InvalidInputError(f"Image folder {root!r} has no 'train' subfolder; expected "
                            f"{root}/train/<class>/<image> and {root}/test/<class>/<image>.")
  classes = _listing(train)[0]
  if not classes:
    raise InvalidInputError(f"{train} has no class subfolders; put each class's images in "
                            f"{train}/<class_name>/.")
  if len(classes) < 2:
    raise InvalidInputError(f"{train} has one class folder ({classes[0]}); a classifier needs at "
                            f"least two: add a folder per class under {train}/.")
  return classes


def eval_folder(root: str) -> str:
  """The evaluation split's folder name: test, else val, else validation."""
  for name in EVAL_FOLDERS:
    if _is_folder(os.path.join(root, name)):
      return name
  raise InvalidInputError(f"Image folder {root!r} has no evaluation split: add "
                          f"{root}/test/<class>/... (or val/ or validation/).")


class FolderSource:
  """Random access to one split of an image folder; picklable, for worker processes."""

  def __init__(self, root: str, split: str, classes: Sequence[str]):
    self.root, self.split = root, split
    split_dir = os.path.join(root, split)
    if not _is_folder(split_dir):
      raise InvalidInputError(f"Image folder {root!r} has no split {split!r} (no folder "
                              f"{split_dir}).")
    present = _listing(split_dir)[0]
    unknown = [n for n in present if n not in classes]
    if unknown:
      raise InvalidInputError(f"{split_dir} has class folders {unknown} that {root}/train lacks; "
                              "every evaluation class must also be a training class.")
    self.files, self.labels = [], []
    for label, name in enumerate(classes):
      if name not in present:
        continue
      class_dir = os.path.join(split_dir, name)
      images = [os.path.join(class_dir, f) for f in _listing(class_dir)[1]]
      self.files.extend(images)
      self.labels.extend([label] * len(images))
    if not self.files:
      raise InvalidInputError(f"No images under {split_dir}/<class>/; put image files (JPEG, PNG, "
                              "...) in the class folders.")
    if split == "train":  # an empty training class would be a class no example ever shows
      present = set(self.labels)
      empty = [name for label, name in enumerate(classes) if label not in present]
      if empty:
        raise InvalidInputError(f"{os.path.join(split_dir, empty[0])} has no images; remove that "
                                "folder or add its images (every folder under train/ is a class).")

  def __len__(self) -> int:
    return len(self.files)

  def read(self, index: int) -> np.ndarray:
    """The image at `index`, decoded; raises ImageReadError naming the file."""
    return read_image(self.files[index])

  def __getitem__(self, index: int) -> dict:
    index = int(index)
    return {"image": self.read(index), "label": self.labels[index]}

  def scan(self, verify: bool) -> tuple[bool, set[tuple[int, int]]]:
    """(every image is grayscale, the set of (width, height)) of the split's files.

    Args:
      verify: decode every file; else read only the headers (no pixel decoding), so that even
        large folders are checked before training starts.

    Raises:
      ImageReadError: naming the files that are not readable images.
    """
    described = describe_all(self.files, decode=verify)
    return all(grey for grey, _ in described), {size for _, size in described}


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


def native_shape(sources: Sequence[FolderSource], image_size: int,
                 verify_images: str = "auto") -> tuple[int, int, int]:
  """(height, width, channels) of a folder's images before resizing; checks every file.

  Args:
    sources: the splits that will be read.
    image_size: the configured data.image_size; 0 requires every image to have the same size.
    verify_images: data.verify_images: "yes" decodes every image, "no" reads only headers,
      "auto" decodes every image of each split with at most VERIFY_LIMIT files.

  Returns:
    The common native shape (with image_size > 0, the smallest size seen); channels is 1 when
    every image is grayscale, else 3.

  Raises:
    InvalidInputError: sizes differ and image_size is 0; ImageReadError: a file is not an image.
  """
  if verify_images not in VERIFY_IMAGES:
    raise InvalidInputError(f"data.verify_images={verify_images!r}; use one of {VERIFY_IMAGES}.")
  grayscale, sizes = True, set()
  for source in sources:
    grey, seen = source.scan(verify_images == "yes" or (
        verify_images == "auto" and len(source) <= VERIFY_LIMIT))
    grayscale, sizes = grayscale and grey, sizes | seen
  if len(sizes) > 1 and not image_size:
    examples = ", ".join(f"{w}x{h}" for w, h in sorted(sizes)[:4])
    raise InvalidInputError(f"Images in {sources[0].root} have {len(sizes)} different sizes "
                            f"({examples}{', ...' if len(sizes) > 4 else ''}); set "
                            "--config.data.image_size=N to resize them to NxN.")
  width, height = next(iter(sorted(sizes)))
  return height, width, 1 if grayscale else 3
