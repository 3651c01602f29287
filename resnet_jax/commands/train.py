"""Trains and evaluates a ResNet: `python -m experiments.train [--config=FILE] [--workdir=DIR]`.

Intentionally kept short: flags in, `resnet_jax.train.loop.train_and_evaluate` out.
"""

import logging
import os
import signal
import sys

from absl import flags

from resnet_jax.commands import cli

FLAGS = flags.FLAGS


def define_flags() -> None:
  cli.define_config_flag()
  flags.DEFINE_string("workdir", None, "Run folder; running again with it resumes. Default: a new "
                      "folder under ./runs.")


def main(argv):
  with cli.command():
    config = cli.config_from_flags(argv)
    from resnet_jax.train.preemption import Preempted
    from resnet_jax.train.loop import train_and_evaluate
    try:
      final = train_and_evaluate(config, FLAGS.workdir)
    except Preempted as e:
      logging.warning("%s", e)
      sys.exit(e.exit_code)
  summary = ", ".join(f"{k} {final[k]:.4f}" for k in ("eval_accuracy", "eval_top5", "eval_loss")
                      if k in final)
  print(f"Finished step {final['step']}: {summary}. Run folder: {final['workdir']}")


def stop_while_starting(signum, frame) -> None:
  # Until the trainer takes the signals over (at the start of train_and_evaluate), nothing is
  # open that needs closing. os._exit, not sys.exit: a SystemExit raised while Python runs a
  # callback (a garbage-collection hook of jax's, an import's finaliser) is ignored and printed.
  del frame
  print(f"Stopped by {signal.Signals(signum).name} while starting, before the first step; "
        "nothing was saved or changed.", file=sys.stderr, flush=True)
  sys.stdout.flush()
  os._exit(128 + signum)


def console() -> None:
  """The console script resnet-jax-train."""
  for signum in (signal.SIGTERM, signal.SIGINT):
    signal.signal(signum, stop_while_starting)
  cli.run(main, define_flags)


if __name__ == "__main__":
  console()
