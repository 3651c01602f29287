"""Trains and evaluates a ResNet: `python -m experiments.train [--config=FILE] [--workdir=DIR]`.

Intentionally kept short: flags in, `resnet_jax.train.loop.train_and_evaluate` out.
"""

import logging
import os
import signal
import sys

from absl import app, flags
from ml_collections import config_flags

from experiments import cli

FLAGS = flags.FLAGS
DEFAULT_CONFIG = os.path.join(os.path.dirname(__file__), "configs", "default.py")


def define_flags() -> None:
  # ml_collections reads sys.argv here (to register the --config.* overrides), so a mistyped key
  # fails here, before absl parses anything.
  config_flags.DEFINE_config_file("config", DEFAULT_CONFIG, "Experiment config file.",
                                  lock_config=True)
  flags.DEFINE_string("workdir", None, "Run folder; running again with it resumes. Default: a new "
                      "folder under ./runs.")


def parse_flags(argv: list[str]) -> list[str]:
  try:
    return FLAGS(argv)
  except Exception as e:  # noqa: BLE001 - flags and config files fail in many ways; all are input
    cli.fail(cli.flag_error(e, argv))


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


if __name__ == "__main__":
  for signum in (signal.SIGTERM, signal.SIGINT):
    signal.signal(signum, stop_while_starting)
  try:
    define_flags()
  except Exception as e:  # noqa: BLE001 - see define_flags
    cli.fail(cli.flag_error(e, sys.argv))
  app.run(main, flags_parser=parse_flags)
