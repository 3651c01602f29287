"""Using trained or converted networks: features for other JAX code, and top-k classification of
image files, preprocessed exactly as evaluation preprocesses them."""

import functools
import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath

from resnet_jax import compiler
from resnet_jax.errors import InvalidInputError

if TYPE_CHECKING:
  from resnet_jax.pretrained import Pretrained

# Classification decodes and preprocesses image files: its data modules (decode, transforms,
# augment) are imported on use, so that
# `feature_fn` (a backbone inside other JAX code) loads none of them. Weights arrive as a
# `Pretrained` the caller loaded, so no checkpoint module is imported here.


def feature_fn(model: Any) -> Callable[[dict, jax.Array], dict[str, jax.Array]]:
  """A jitted `f(variables, images) -> features` for using a network as a backbone.

  Args:
    model: a `ResNet` (e.g. `resnet_jax.create_model("resnet50", num_classes=0)`).

  Returns:
    A function of the variables and a normalised NHWC batch returning {"stem", "stage1", ...,
    "pooled"} (plus "logits" when the network has a head), in inference mode.
  """
  return compiler.jit(functools.partial(model.apply, train=False, return_features=True))


IMAGENET_CLASSES = os.path.join(os.path.dirname(__file__), "data", "imagenet_classes.txt")


def imagenet_classes() -> tuple[tuple[str, str], ...]:
  """The 1000 ImageNet-1k classes in the order of torchvision's and timm's heads, as (synset id,
  name): ("n01440764", "tench"), ... ("n02123045", "tabby"), ...; the names are torchvision's
  (`weights.meta["categories"]`), shipped with the package."""
  with open(IMAGENET_CLASSES, encoding="utf-8") as f:
    return tuple(tuple(line.rstrip("\n").split("\t")) for line in f if line.strip())


def imagenet_class_names() -> tuple[str, ...]:
  """The 1000 ImageNet-1k class names ("tench", "goldfish", ...), in the heads' order."""
  return tuple(name for _, name in imagenet_classes())


def read_labels(labels: str, num_classes: int, default: Sequence[str] | None) -> list[str]:
  """Class names from "imagenet", a text file (one per line), "none" (class indices) or, for "",
  the checkpoint's own.

  Raises:
    InvalidInputError: their number differs from the network's classes.
  """
  if labels == "imagenet":
    names, origin = list(imagenet_class_names()), "the ImageNet-1k list"
  elif labels and labels != "none":
    try:
      text = epath.Path(labels).read_text()  # a local file or an object in a bucket
      names, origin = [line.strip() for line in text.splitlines() if line.strip()], labels
    except OSError as e:
      raise InvalidInputError(f"Cannot read the labels file {labels!r}: {e.strerror}; give a text "
                              "file with one class name per line, or --labels=none.") from e
  elif labels != "none" and default:
    names, origin = list(default), "the checkpoint"
  else:
    return [str(i) for i in range(num_classes)]
  if len(names) != num_classes:
    raise InvalidInputError(
        f"{origin} names {len(names)} classes, but the network's head has {num_classes} outputs: "
        "these labels do not belong to this checkpoint. Use the labels it was trained with, or "
        "--labels=none to print class indices.")
  return names


class Classifier:
  """Top-k predictions of a network for image files, batched and jitted."""

  def __init__(self, weights: "Pretrained", batch_size: int = 64):
    if weights.num_classes == 0:
      raise InvalidInputError(
          f"This {weights.model} has no classifier head (num_classes=0), so it cannot predict "
          "classes; use resnet_jax.inference.feature_fn for its features, or fine-tune a head.")
    if batch_size <= 0:
      raise InvalidInputError(f"The batch size must be positive, got {batch_size}.")
    self.weights, self.batch_size = weights, batch_size
    self.model = weights.create_model()
    self.variables = jax.device_put(weights.variables)
    from resnet_jax.data.augment import normalize
    prep = weights.preprocessing
    self._forward = compiler.jit(lambda variables, images: jax.nn.softmax(self.model.apply(
        variables, normalize(images, prep.mean, prep.std), train=False)))

  def preprocess(self, image: np.ndarray) -> np.ndarray:
    """A decoded image (HWC uint8) prepared exactly as evaluation prepares it."""
    from resnet_jax.data.transforms import eval_transform
    prep = self.weights.preprocessing
    return eval_transform(image, image_size=prep.image_size, channels=prep.channels,
                          crop_ratio=prep.crop_ratio)

  def probabilities(self, images: Sequence[np.ndarray]) -> np.ndarray:
    """Class probabilities (float32, N x classes) of decoded images; batches are padded to a
    fixed size so the network compiles once."""
    arrays = np.stack([self.preprocess(image) for image in images])
    out = []
    for start in range(0, len(arrays), self.batch_size):
      chunk = arrays[start:start + self.batch_size]
      padded = np.concatenate([chunk, np.repeat(chunk[:1], self.batch_size - len(chunk), 0)])
      out.append(np.asarray(self._forward(self.variables, jnp.asarray(padded)))[:len(chunk)])
    return np.concatenate(out)

  def classify_files(self, paths: Sequence[str], labels: Sequence[str], top: int = 5
                     ) -> tuple[list[tuple[str, list[tuple[float, str]]]], list[str]]:
    """([(path, [(probability, label), ...]) for each readable file], [error per unreadable]).

    Raises:
      InvalidInputError: `top` is not positive.
    """
    if top <= 0:
      raise InvalidInputError(f"top must be a positive number of classes, got {top}.")
    from resnet_jax.data.decode import ImageReadError, read_image
    images, readable, errors = [], [], []
    for path in paths:
      try:
        images.append(read_image(os.fspath(path)))
        readable.append(os.fspath(path))
      except ImageReadError as e:
        errors.append(str(e))
    if not images:
      return [], errors
    probs = self.probabilities(images)
    k = min(top, probs.shape[1])
    results = []
    for path, p in zip(readable, probs):
      best = np.argsort(-p)[:k]
      results.append((path, [(float(p[i]), labels[i]) for i in best]))
    return results, errors
