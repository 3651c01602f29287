"""Top-5 classes of images: `python -m experiments.predict --checkpoint=DIR [--labels=imagenet|FILE|none] IMAGE...`.

DIR is a converted model (experiments.convert) or a training run folder. Images (JPEG, PNG, ...,
any size, grayscale or colour) are decoded and preprocessed exactly as evaluation does; files that
cannot be decoded are reported by name and skipped. Exit status: 0 when every image was classified,
1 when some could not be read, 2 when none could (or the input was wrong).
"""

import argparse
import sys

from resnet_jax.commands import cli


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--checkpoint", required=True, help="Model folder or training run folder.")
  p.add_argument("--labels", default="", help="imagenet, a file with one name per line, none "
                 "(class indices), or empty for the checkpoint's own class names.")
  p.add_argument("--top", type=int, default=5, help="Classes shown per image (positive).")
  p.add_argument("--batch-size", type=int, default=32, help="Images per batch (positive).")
  p.add_argument("images", nargs="+")
  args = p.parse_args(argv)
  for name in ("top", "batch_size"):
    if getattr(args, name) <= 0:
      p.error(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
  return args


def main(argv=None) -> int:
  args = parse_args(argv)
  with cli.command():
    from resnet_jax import inference
    from resnet_jax import pretrained
    weights = pretrained.load(args.checkpoint)
    labels = inference.read_labels(args.labels, weights.num_classes, weights.class_names)
    classifier = inference.Classifier(weights, batch_size=args.batch_size)
    results, errors = classifier.classify_files(args.images, labels, top=args.top)
  for path, top in results:
    print(path)
    for probability, label in top:
      print(f"  {probability:7.4f}  {label}")
  for error in errors:
    print(f"skipped: {error}", file=sys.stderr)
  return 0 if not errors else (1 if results else 2)


def console() -> None:
  """The console script resnet-jax-predict."""
  sys.exit(main())


if __name__ == "__main__":
  console()
