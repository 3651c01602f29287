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
import os
import sys

from absl import app, flags
from ml_collections import config_flags

from experiments import cli

FLAGS = flags.FLAGS
DEFAULT_CONFIG = os.path.join(os.path.dirname(__file__), "configs", "default.py")


def define_flags() -> None:
  config_flags.DEFINE_config_file("config", DEFAULT_CONFIG, "Experiment config file.",
                                  lock_config=True)
  flags.DEFINE_integer("steps", 20, "Free-running steps on each side.", lower_bound=1)
  flags.DEFINE_enum("control", "", ["", "decay_all", "biased_running_var"],
                    "A deliberate semantic difference on the project's side only.")
  flags.DEFINE_string("json", "", "Also write every number to this file.")


def parse_flags(argv: list[str]) -> list[str]:
  try:
    return FLAGS(argv)
  except Exception as e:  # noqa: BLE001 - flags and config files fail in many ways; all are input
    cli.fail(cli.flag_error(e, argv))


def format_report(report: dict) -> str:
  """The per-step losses, the teacher-forced rows and the verdicts, as text."""
  curves = report["losses"]
  rows = ["step  jax_float32     torch_float64   torch_float32   jax rel.diff   torch32 rel.diff"]
  for i, (mine, ref, theirs) in enumerate(zip(curves["jax_float32"], curves["torch_float64"],
                                              curves["torch_float32"])):
    rows.append(f"{i + 1:4d}  {mine:.9f}  {ref:.9f}  {theirs:.9f}  "
                f"{abs(mine - ref) / abs(ref):.3e}      {abs(theirs - ref) / abs(ref):.3e}")
  rows.append("teacher-forced float64 steps (relative differences):")
  for row in report["teacher_forced"]:
    rows.append("  step " + str(row["step"]) + ": " + ", ".join(
        f"{k} {v:.2e}" for k, v in row.items() if k != "step"))
  within = report["within"]
  for threshold in within["jax_float32"]:
    rows.append(f"steps within {threshold:.1%} of PyTorch float64: project float32 "
                f"{within['jax_float32'][threshold]}, PyTorch float32 "
                f"{within['torch_float32'][threshold]} (of {report['steps']})")
  rows.append(f"worst teacher-forced relative difference: {report['worst_teacher_forced']:.2e} "
              f"({'pass' if report['passed_teacher_forced'] else 'FAIL'}); free-running: "
              f"{'pass' if report['passed_free_running'] else 'FAIL'}")
  return "\n".join(rows)


def main(argv):
  with cli.command():
    config = cli.config_from_flags(argv)
    from resnet_jax.interop import fidelity
    from resnet_jax.train.config import validate_config
    validate_config(config)
    report = fidelity.compare(config, steps=FLAGS.steps, control=FLAGS.control)
  print(format_report(report))
  if FLAGS.json:
    from resnet_jax import files
    with cli.command():
      files.write_atomic(FLAGS.json, json.dumps(report, indent=2, default=float))
  sys.exit(0 if report["passed"] else 1)


if __name__ == "__main__":
  try:
    define_flags()
  except Exception as e:  # noqa: BLE001 - see experiments/train.py
    cli.fail(cli.flag_error(e, sys.argv))
  app.run(main, flags_parser=parse_flags)
