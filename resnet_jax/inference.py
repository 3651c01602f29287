"""Using trained or converted networks: features for other JAX code, and top-k classification of
image files, preprocessed exactly as evaluation preprocesses them."""

import functools
import os
import tempfile
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image, UnidentifiedImageError

from resnet_jax.data import eval_transform, normalize
from resnet_jax.pretrained import Pretrained


def feature_fn(model: Any) -> Callable[[dict, jax.Array], dict[str, jax.Array]]:
  """A jitted `f(variables, images) -> features` for using a network as a backbone.

  Args:
    model: a `ResNet` (e.g. `resnet_jax.create_model("resnet50", num_classes=0)`).

  Returns:
    A function of the variables and a normalised NHWC batch returning {"stem", "stage1", ...,
    "pooled"} (plus "logits" when the network has a head), in inference mode.
  """
  return jax.jit(functools.partial(model.apply, train=False, return_features=True))


def imagenet_class_names() -> tuple[str, ...]:
  """The 1000 ImageNet-1k synset ids (n01440764, ...) in the class order of torchvision's
  weights, as tensorflow-datasets ships them."""
  import tensorflow_datasets as tfds
  with tempfile.TemporaryDirectory() as empty:  # the builder reads no data to list its labels
    return tuple(tfds.builder_cls("imagenet2012")(data_dir=empty).info.features["label"].names)


def read_labels(spec: str, num_classes: int, default: Sequence[str] | None) -> list[str]:
  """Class names from "imagenet", a text file (one per line), or the checkpoint's own.

  Raises:
    ValueError: their number differs from the network's classes.
  """
  if spec == "imagenet":
    names, origin = list(imagenet_class_names()), "the ImageNet-1k list"
  elif spec:
    with open(spec) as f:
      names, origin = [line.strip() for line in f if line.strip()], spec
  elif default:
    names, origin = list(default), "the checkpoint"
  else:
    return [str(i) for i in range(num_classes)]
  if len(names) != num_classes:
    raise ValueError(f"{origin} names {len(names)} classes, but the network's head has "
                     f"{num_classes} outputs: these labels do not belong to this checkpoint. Use "
                     "the labels it was trained with (or none, to print class indices).")
  return names


def read_image(path: str) -> Image.Image:
  """Decodes an image file; raises ValueError naming it when it cannot be decoded."""
  try:
    with Image.open(path) as image:
      image.load()
      return image.copy()
  except (UnidentifiedImageError, OSError, SyntaxError) as e:
    raise ValueError(f"{path}: cannot decode ({e})") from e


class Classifier:
  """Top-k predictions of a network for image files, batched and jitted."""

  def __init__(self, source: Pretrained, batch_size: int = 64):
    self.source, self.batch_size = source, batch_size
    self.model = source.create_model()
    self.variables = jax.device_put(source.variables)
    prep = source.preprocessing
    self._forward = jax.jit(lambda variables, images: jax.nn.softmax(self.model.apply(
        variables, normalize(images, prep.mean, prep.std), train=False)))

  def preprocess(self, image: Image.Image) -> np.ndarray:
    prep = self.source.preprocessing
    return eval_transform(image, image_size=prep.image_size, channels=prep.channels,
                          crop_ratio=prep.crop_ratio)

  def probabilities(self, images: Sequence[Image.Image]) -> np.ndarray:
    """Class probabilities (float32, N x classes); batches are padded to a fixed size so the
    network compiles once."""
    arrays = np.stack([self.preprocess(image) for image in images])
    out = []
    for start in range(0, len(arrays), self.batch_size):
      chunk = arrays[start:start + self.batch_size]
      padded = np.concatenate([chunk, np.repeat(chunk[:1], self.batch_size - len(chunk), 0)])
      out.append(np.asarray(self._forward(self.variables, jnp.asarray(padded)))[:len(chunk)])
    return np.concatenate(out)

  def classify_files(self, paths: Sequence[str], labels: Sequence[str], top: int = 5
                     ) -> tuple[list[tuple[str, list[tuple[float, str]]]], list[str]]:
    """([(path, [(probability, label), ...]) for each readable file], [error per unreadable])."""
    images, readable, errors = [], [], []
    for path in paths:
      try:
        images.append(read_image(path))
        readable.append(os.fspath(path))
      except ValueError as e:
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
