"""Re-evaluates a run's checkpoint with exact top-1/top-5:
`python -m experiments.evaluate --workdir=DIR [--split=NAME] [--step=N]`."""

import argparse
import json
import sys

from resnet_jax.commands import cli


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--workdir", required=True, help="A training run folder.")
  p.add_argument("--split", default="", help="Dataset split (default: the run's eval split).")
  p.add_argument("--step", type=int, default=None, help="Checkpoint step (default: newest).")
  p.add_argument("--data", default="", help="The run's dataset at a new place, e.g. "
                 "folder:NEW_DIR for an image folder that moved (its classes must not change). "
                 "Default: as the run saved it (a folder by its absolute path).")
  return p.parse_args(argv)


def main(argv=None) -> int:
  args = parse_args(argv)
  with cli.command():
    from resnet_jax.train.evaluate import evaluate_run
    result = evaluate_run(args.workdir, split=args.split, step=args.step, data_name=args.data)
  print(f"step {result['step']} on {result['split']}: top-1 {result['eval_accuracy']:.4f}, "
        f"top-5 {result['eval_top5']:.4f}, loss {result['eval_loss']:.4f} "
        f"({result['num_examples']} examples)")
  print(json.dumps(result))
  return 0


def console() -> None:
  """The console script resnet-jax-evaluate."""
  sys.exit(main())


if __name__ == "__main__":
  console()
