"""Exports a model for deployment:
`python -m experiments.export --checkpoint=RUN_OR_MODEL --format=FORMAT --out=PATH`.

RUN_OR_MODEL is a training run folder, a converted model folder, or weights by name
(torchvision:resnet50). FORMAT: stablehlo (jax.export, symbolic batch; PATH.json describes it),
savedmodel (TensorFlow, `pip install -e ".[export]"`), onnx (same extra) or torch (a .pth or
.safetensors state dict for torchvision.models). The program takes normalised float32 NHWC
images, or with --with-preprocessing uint8 NHWC images at the evaluation crop size, and returns
float32 logits, for any batch size.
"""

import argparse
import sys

from resnet_jax.commands import cli


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--checkpoint", required=True,
                 help="Run folder, model folder, or weights by name (torchvision:resnet50).")
  p.add_argument("--format", required=True,
                 help="stablehlo, savedmodel, onnx or torch (or a format a fork registered).")
  p.add_argument("--out", required=True, help="New file (or folder, for savedmodel).")
  p.add_argument("--weights", default="final",
                 help="final, best (best evaluation accuracy) or ema (a run folder's).")
  p.add_argument("--with-preprocessing", action="store_true",
                 help="uint8 NHWC in, the normalisation inside.")
  p.add_argument("--dtype", default="float32", help="Compute dtype: float32, bfloat16, float16.")
  return p.parse_args(argv)


def main(argv=None) -> int:
  args = parse_args(argv)
  with cli.command():
    from resnet_jax import export
    if args.format not in export.FORMATS:  # before any weights are read
      export.FORMATS[args.format]
    weights = export.load_weights(args.checkpoint, args.weights)
    program = export.export(weights, args.format, args.out,
                            with_preprocessing=args.with_preprocessing, dtype=args.dtype)
  shape = "x".join(map(str, program.image_shape))
  print(f"Wrote {weights.model} ({args.weights} weights) as {args.format} to {args.out}: "
        f"batch x {shape} {program.describe()['input']['dtype']} in, "
        f"batch x {weights.num_classes} float32 logits out")
  return 0


def console() -> None:
  """The console script resnet-jax-export."""
  sys.exit(main())


if __name__ == "__main__":
  console()
