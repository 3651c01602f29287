"""The one image decoder: file bytes -> an HWC uint8 array, for training, evaluation and predict.

Grey images give 1 channel, every other mode 3 (RGB). 16-bit grey PNGs are scaled to 0..255, not
clipped. Grey and colour JPEGs are decoded by OpenCV: the same pixels as Pillow's (tested), faster
(README, Performance), and decoding is most of the host pipeline's cost per image. EXIF orientation
is ignored, as Pillow ignores it.
"""

import io
from concurrent import futures

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError
from etils import epath

from resnet_jax.errors import InvalidInputError

# Modes whose pixels are one grey level: such images keep 1 channel when the whole folder is grey.
GRAYSCALE_MODES = frozenset({"1", "L", "I", "I;16", "I;16L", "I;16B", "I;16N"})
# OpenCV's reading of the JPEGs whose Pillow mode is L or RGB; Pillow ignores EXIF orientation.
OPENCV_JPEG_FLAGS = {"L": cv2.IMREAD_GRAYSCALE | cv2.IMREAD_IGNORE_ORIENTATION,
                     "RGB": cv2.IMREAD_COLOR_RGB | cv2.IMREAD_IGNORE_ORIENTATION}
MAX_LISTED = 5  # unreadable files named in one message


class ImageReadError(InvalidInputError):
  """An image file that cannot be read; the message names it."""


def read_error(path: str, error: BaseException) -> ImageReadError:
  """The error for an unreadable `path`: its name, the decoder's reason, what to do."""
  if isinstance(error, UnidentifiedImageError):
    reason = "UnidentifiedImageError: no decoder recognises it as an image"
  else:
    reason = f"{type(error).__name__}: {str(error).rstrip('.')}" if str(error) else \
        type(error).__name__
  return ImageReadError(f"Cannot read image {path}: {reason}. Remove or replace the file.")


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


def decode_image(data: bytes, path: str) -> np.ndarray:
  """The pixels of an encoded image (any format Pillow reads) as `to_uint8` gives them.

  Args:
    data: the file's bytes.
    path: its name, for the error message.

  Raises:
    ImageReadError: naming `path`, for any failure to decode (including Pillow's
      decompression-bomb guard against images of more than 2 x Image.MAX_IMAGE_PIXELS pixels).
  """
  try:
    with Image.open(io.BytesIO(data)) as image:  # the header only, until load()
      if image.format == "JPEG" and image.mode in OPENCV_JPEG_FLAGS:
        array = cv2.imdecode(np.frombuffer(data, np.uint8), OPENCV_JPEG_FLAGS[image.mode])
        if array is not None:
          return array[..., None] if array.ndim == 2 else array
      image.load()
      return to_uint8(image)
  except Exception as e:  # noqa: BLE001 - decoders raise many types for one cause: a bad file
    raise read_error(path, e) from e


def read_image(path: str) -> np.ndarray:
  """`decode_image` of the file at `path`; raises ImageReadError naming it."""
  try:
    data = epath.Path(path).read_bytes()  # a local file or an object in a bucket
  except OSError as e:
    raise read_error(path, e) from e
  return decode_image(data, path)


def read_header(path: str) -> tuple[bool, tuple[int, int]]:
  """(grayscale, (width, height)) from a file's header, without decoding its pixels."""
  try:
    with epath.Path(path).open("rb") as f, Image.open(f) as image:
      return image.mode in GRAYSCALE_MODES, image.size
  except Exception as e:  # noqa: BLE001 - see decode_image
    raise read_error(path, e) from e


def describe_all(paths: list[str], *, decode: bool, num_threads: int = 4
                 ) -> list[tuple[bool, tuple[int, int]]]:
  """(grayscale, (width, height)) of every file, from its header or from its decoded pixels.

  Args:
    paths: image files.
    decode: decode every file fully (finds files whose header reads but whose pixels do not).
    num_threads: decoding threads (the decoders release the GIL).

  Raises:
    ImageReadError: naming the unreadable files (the first few, and how many there are).
  """
  def describe(path):
    if not decode:
      return read_header(path)
    pixels = read_image(path)
    return pixels.shape[-1] == 1, (pixels.shape[1], pixels.shape[0])

  results, errors = [], []
  with futures.ThreadPoolExecutor(num_threads) as pool:
    for path, future in zip(paths, [pool.submit(describe, p) for p in paths]):
      try:
        results.append(future.result())
      except ImageReadError as e:
        errors.append((path, e))
  if len(errors) == 1:
    raise errors[0][1]
  if errors:
    shown = "; ".join(str(e).removeprefix("Cannot read image ").removesuffix(
        " Remove or replace the file.") for _, e in errors[:MAX_LISTED])
    more = f"; ... and {len(errors) - MAX_LISTED} more" if len(errors) > MAX_LISTED else ""
    raise ImageReadError(f"Cannot read {len(errors)} of {len(paths)} images: {shown}{more}. "
                         "Remove or replace these files.")
  return results
