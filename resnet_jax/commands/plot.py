"""Training curves of runs: `python -m experiments.plot RUN [RUN ...] --out=curves.png`.

Draws train and evaluation loss, accuracy and the learning rate against the step (or --x=epoch)
for each run folder, one colour per run, named by the folder (or --names). Needs matplotlib
(`pip install -e ".[plot]"`).
"""

import argparse
import sys

from resnet_jax.commands import cli


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("runs", nargs="+", help="Training run folders.")
  p.add_argument("--out", default="curves.png", help="Image file: .png, .pdf or .svg.")
  p.add_argument("--x", default="step", help="step or epoch.")
  p.add_argument("--names", default="", help="Comma-separated legend names, one per run.")
  args = p.parse_args(argv)
  if args.names and len(args.names.split(",")) != len(args.runs):
    p.error(f"--names gives {len(args.names.split(','))} names for {len(args.runs)} runs")
  return args


def main(argv=None) -> int:
  args = parse_args(argv)
  with cli.command():
    from resnet_jax.train import plots
    plots.plot_runs(args.runs, args.out, x=args.x,
                    names=args.names.split(",") if args.names else None)
  print(f"Wrote {args.out}")
  return 0


def console() -> None:
  """The console script resnet-jax-plot."""
  sys.exit(main())


if __name__ == "__main__":
  console()
