"""The embedded dataset: scikit-learn's bundled handwritten digits as a tensorflow-datasets builder.

1,797 8x8 grayscale images of the digits 0-9 (UCI ML hand-written digits), shipped inside
scikit-learn, so the default run needs no download. It goes through exactly the same tfds reader
(array_record + data source) as every other dataset. Examples are yielded as PIL images so that
preparation needs no TensorFlow.
"""

import numpy as np
import tensorflow_datasets as tfds

TEST_FRACTION = 0.2
SPLIT_SEED = 0


def split_indices(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """A fixed stratified 80/20 split: every class loses the same share to the test split."""
  rng = np.random.RandomState(SPLIT_SEED)
  train, test = [], []
  for label in np.unique(labels):
    members = rng.permutation(np.flatnonzero(labels == label))
    n_test = int(round(len(members) * TEST_FRACTION))
    test.extend(members[:n_test])
    train.extend(members[n_test:])
  return np.sort(train), np.sort(test)


class Digits(tfds.core.GeneratorBasedBuilder):
  """scikit-learn's 8x8 handwritten digits, split 80/20 (stratified, fixed seed)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description="Handwritten digits 0-9, 8x8 grayscale, from sklearn.datasets.load_digits.",
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(8, 8, 1)),
            "label": tfds.features.ClassLabel(names=[str(i) for i in range(10)]),
        }),
        supervised_keys=("image", "label"),
        homepage="https://scikit-learn.org/stable/datasets/toy_dataset.html#digits-dataset",
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download: the data ships with scikit-learn
    from sklearn.datasets import load_digits
    digits = load_digits()
    # Pixel values are counts 0..16; scale to the usual 0..255.
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
    train, test = split_indices(digits.target)
    return {"train": self._generate_examples(images, digits.target, train),
            "test": self._generate_examples(images, digits.target, test)}

  def _generate_examples(self, images, labels, indices):
    from PIL import Image
    for i in indices:
      yield int(i), {"image": Image.fromarray(images[i]), "label": int(labels[i])}
