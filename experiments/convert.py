"""Converts PyTorch weights to a Flax model folder:
`python -m experiments.convert --model=resnet50 --from=FILE(.pth|.safetensors) --out=DIR`.

DIR then serves `experiments.predict --checkpoint=DIR` and fine-tuning
(`--config.init.checkpoint=DIR`). `.pth` files are read with `torch.load(weights_only=True)`
(needs torch), `.safetensors` files with numpy alone; neither executes code from the file.
"""

import argparse
import sys

from experiments import cli


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--model", required=True, help="Registry name, e.g. resnet50.")
  p.add_argument("--from", dest="source", required=True, help=".pth/.pt/.bin or .safetensors")
  p.add_argument("--out", required=True, help="New folder for the Flax model.")
  p.add_argument("--image-size", type=int, default=224, help="Evaluation crop (pixels).")
  p.add_argument("--crop-ratio", type=float, default=0.875,
                 help="Crop / resize: 0.875 (resize 256, crop 224) for torchvision V1 weights, "
                      "0.9655 (232 -> 224) for V2 weights.")
  p.add_argument("--labels", default="auto",
                 help="auto (the ImageNet-1k synsets for a 1000-class head, else none), imagenet, "
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
    from resnet_jax import inference
    from resnet_jax.interop import convert
    from resnet_jax import pretrained
    from resnet_jax.data.sources import IMAGENET_MEAN, IMAGENET_STD
    from resnet_jax.data.transforms import Preprocessing
    from resnet_jax.errors import InvalidInputError
    from resnet_jax.models import create_model

    state_dict = convert.load_state_dict(args.source)
    variables = convert.from_torchvision(args.model, state_dict)
    model = create_model(args.model)
    head = variables["params"].get(model.head)
    num_classes = int(head["kernel"].shape[1]) if head else 0
    channels = int(variables["params"][model.input_conv]["kernel"].shape[2])
    spec = args.labels
    if spec == "auto":
      spec = "imagenet" if num_classes == 1000 else "none"
    labels = None
    if spec != "none":
      if not num_classes:
        raise InvalidInputError(f"These {args.model} weights have no classifier head, so they "
                                "take no labels; use --labels=none.")
      labels = inference.read_labels(spec, num_classes, None)
    mean, std = (IMAGENET_MEAN, IMAGENET_STD) if channels == 3 else ((127.5,) * channels,
                                                                     (64.0,) * channels)
    source = pretrained.Pretrained(
        variables=variables, model=args.model, num_classes=num_classes,
        preprocessing=Preprocessing(args.image_size, channels, args.crop_ratio, mean,
                                               std),
        class_names=tuple(labels) if labels else None)
    pretrained.export(args.out, source)
  print(f"Wrote {args.model} ({num_classes} classes, {channels}-channel input) to {args.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
