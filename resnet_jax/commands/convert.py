"""Converts PyTorch weights to a Flax model folder:
`python -m experiments.convert --model=resnet50 --from=FILE(.pth|.safetensors) --out=DIR`.

DIR then serves `experiments.predict --checkpoint=DIR` and fine-tuning
(`--config.init.checkpoint=DIR`). `.pth` files are read with `torch.load(weights_only=True)`
(needs torch), `.safetensors` files with numpy alone; neither executes code from the file.
"""

import argparse
import sys

from resnet_jax.commands import cli


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--model", required=True, help="Registry name, e.g. resnet50.")
  p.add_argument("--from", dest="weights_file", required=True, help=".pth/.pt/.bin or .safetensors")
  p.add_argument("--out", required=True, help="New folder for the Flax model.")
  p.add_argument("--image-size", type=int, default=224, help="Evaluation crop (pixels).")
  p.add_argument("--crop-ratio", type=float, default=0.875,
                 help="Crop / resize: 0.875 (resize 256, crop 224) for torchvision V1 weights, "
                      "0.9655 (232 -> 224) for V2 weights.")
  p.add_argument("--labels", default="auto",
                 help="auto (the ImageNet-1k class names for a 1000-class head, else none), imagenet, "
                      "a text file with one name per line, or none.")
  args = p.parse_args(argv)
  if args.image_size <= 0:
    p.error(f"--image-size must be positive, got {args.image_size}")
  if not 0.0 < args.crop_ratio <= 1.0:
    p.error(f"--crop-ratio must be in (0, 1], got {args.crop_ratio}")
  return args


def main(argv=None) -> int:
  args = parse_args(argv)
  with cli.command():
    from resnet_jax import pretrained
    from resnet_jax.interop import convert
    weights = convert.converted_model(args.model, args.weights_file, image_size=args.image_size,
                                      crop_ratio=args.crop_ratio, labels=args.labels)
    pretrained.export(args.out, weights)
  print(f"Wrote {args.model} ({weights.num_classes} classes, "
        f"{weights.preprocessing.channels}-channel input) to {args.out}")
  return 0


def console() -> None:
  """The console script resnet-jax-convert."""
  sys.exit(main())


if __name__ == "__main__":
  console()
