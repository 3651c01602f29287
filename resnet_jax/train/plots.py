"""Training curves of one or several runs from their metrics.jsonl: loss, accuracy and learning
rate (train and evaluation) against step or epoch, one colour per run (`python -m
experiments.plot RUN [RUN ...] --out=curves.png`; needs matplotlib)."""

import io
import os
from typing import Any

from resnet_jax import files
from resnet_jax.errors import InputNotFoundError, InvalidInputError, MissingDependencyError
from resnet_jax.train.metrics import read_metrics
from resnet_jax.train.workdir import METRICS_FILE

PANELS = (("loss", ("train_loss", "eval_loss")), ("accuracy", ("train_accuracy", "eval_accuracy")),
          ("learning rate", ("learning_rate",)))
AXES = ("step", "epoch")


def series(records: list[dict[str, Any]], key: str, x: str) -> tuple[list[float], list[float]]:
  """(x values, values) of `key` in a run's records, in order; an epoch axis takes each record's
  epoch, or (evaluations, which carry none) the epoch of the training record at its step."""
  epochs = {r["step"]: r["epoch"] for r in records if "epoch" in r}
  xs, ys = [], []
  for r in records:
    if key in r and (x == "step" or r["step"] in epochs):
      xs.append(r["step"] if x == "step" else epochs[r["step"]])
      ys.append(r[key])
  return xs, ys


def plot_runs(runs: list[str], out: str, *, x: str = "step", names: list[str] | None = None,
              dpi: int = 100) -> None:
  """Draws the curves of `runs` (run folders) into the image `out` (.png, .pdf or .svg).

  Raises:
    InputNotFoundError: a folder without metrics.jsonl.
    InvalidInputError: an unknown x axis, or runs that recorded nothing to draw.
    MissingDependencyError: matplotlib is not installed.
  """
  if x not in AXES:
    raise InvalidInputError(f"--x={x!r} is not one of {', '.join(AXES)}.")
  try:
    import matplotlib
    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt
  except ImportError as e:
    raise MissingDependencyError("Plots need matplotlib: pip install -e '.[plot]' (or pip "
                                 "install matplotlib).") from e
  records = {}
  for run in runs:
    path = files.resolve(run)
    if not files.is_remote(path) and not os.path.exists(os.path.join(path, METRICS_FILE)):
      raise InputNotFoundError(f"{run} holds no {METRICS_FILE}; give training run folders.")
    records[run] = read_metrics(path)
  if not any(series(r, key, x)[0] for r in records.values() for _, keys in PANELS
             for key in keys):
    raise InvalidInputError(f"{', '.join(runs)} recorded nothing to plot yet.")
  names = names or [os.path.basename(files.resolve(r).rstrip("/")) for r in runs]
  figure, axes = plt.subplots(1, len(PANELS), figsize=(5 * len(PANELS), 4), dpi=dpi)
  colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
  for (title, keys), axis in zip(PANELS, axes):
    for i, (run, name) in enumerate(zip(runs, names)):
      for key in keys:
        xs, ys = series(records[run], key, x)
        if xs:
          axis.plot(xs, ys, color=colours[i % len(colours)], marker="o" if len(xs) < 3 else None,
                    linestyle="--" if key.startswith("eval") else "-",
                    label=f"{name} {key.split('_')[0]}" if len(keys) > 1 else name)
    axis.set_title(title)
    axis.set_xlabel(x)
    axis.grid(alpha=0.3)
    if axis.lines:
      axis.legend(fontsize="small")
  figure.tight_layout()
  buffer = io.BytesIO()
  figure.savefig(buffer, format=os.path.splitext(out)[1].lstrip(".") or "png")
  plt.close(figure)
  files.write_atomic(files.resolve(out), buffer.getvalue())
