"""Compares a config's training dynamics with PyTorch's:
`python -m experiments.compare_torch [--config=FILE] [--steps=N] [--config.section.key=value ...]`.

Both sides start from the same weights and see the same batches (augmentation off): the project's
own train step, and the same recipe in torch.optim / torch schedulers / nn.CrossEntropyLoss. It
prints the per-step losses and their differences, the teacher-forced float64 single steps (at the
start, around each schedule boundary, at the end) and whether both checks pass (exit status 0, else
1). `--control=decay_all` (or biased_running_var) changes the project's side only: the check must
fail.
Without a download, point it at the embedded digits: `--config.data.name=digits`.
"""

import json
import sys

from absl import flags

from resnet_jax.commands import cli

FLAGS = flags.FLAGS


def define_flags() -> None:
  cli.define_config_flag()
  flags.DEFINE_integer("steps", 20, "Free-running steps on each side.", lower_bound=1)
  flags.DEFINE_string("control", "", "A deliberate semantic difference on the project's side "
                      "only (resnet_jax.interop.fidelity.CONTROLS), which the check must catch.")
  flags.DEFINE_string("json", "", "Also write every number to this file.")


def main(argv):
  with cli.command():
    config = cli.config_from_flags(argv)
    from resnet_jax.interop import fidelity
    report = fidelity.compare(config, steps=FLAGS.steps, control=FLAGS.control)
  print(fidelity.format_report(report))
  if FLAGS.json:
    from resnet_jax import files
    with cli.command():
      files.write_atomic(FLAGS.json, json.dumps(report, indent=2, default=float))
  sys.exit(0 if report["passed"] else 1)


def console() -> None:
  """The console script resnet-jax-compare-torch."""
  cli.run(main, define_flags)


if __name__ == "__main__":
  console()
