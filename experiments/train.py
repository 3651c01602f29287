"""Trains and evaluates a ResNet: `python -m experiments.train [--config=FILE] [--workdir=DIR]`.

Intentionally kept short: flags in, `resnet_jax.trainer.train_and_evaluate` out.
"""

import logging
import os
import sys

from absl import app, flags
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", os.path.join(os.path.dirname(__file__), "configs",
                                                       "default.py"),
                                "Experiment config file.", lock_config=True)
flags.DEFINE_string("workdir", None, "Run folder; running again with it resumes. Default: a new "
                    "folder under ./runs.")


def _quiet_libraries(record: logging.LogRecord) -> bool:
  # Orbax and tfds log every save/read at INFO; keep their warnings, drop the chatter.
  return record.levelno >= logging.WARNING or not any(
      f"/{lib}/" in record.pathname for lib in ("orbax", "tensorflow_datasets", "etils"))


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  for handler in logging.getLogger().handlers:
    handler.addFilter(_quiet_libraries)
  from resnet_jax.preemption import Preempted
  from resnet_jax.trainer import train_and_evaluate
  try:
    final = train_and_evaluate(FLAGS.config, FLAGS.workdir)
  except Preempted as e:
    logging.warning("%s", e)
    sys.exit(e.exit_code)
  summary = ", ".join(f"{k} {final[k]:.4f}" for k in ("eval_accuracy", "eval_top5", "eval_loss")
                      if k in final)
  print(f"Finished step {final['step']}: {summary}. Run folder: {final['workdir']}")


if __name__ == "__main__":
  app.run(main)
