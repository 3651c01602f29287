"""Run records: the step's metrics summed over each logging window (in the train state),
WORKDIR/metrics.jsonl, TensorBoard event files, and a progress display."""

import functools
import io
import json
import logging
import math
import os
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

import jax.numpy as jnp
import tqdm
from etils import epath

from resnet_jax import files
from resnet_jax.errors import InvalidInputError, MissingDependencyError
from resnet_jax.train.workdir import METRICS_FILE, TENSORBOARD_DIR, WANDB_DIR


def summed_over_windows(step_fn: Callable, log_every_steps: int) -> Callable:
  """`step_fn` whose metrics are also added to `state.metric_sums`, restarted every
  `log_every_steps` steps, so the host reads them once per window (no per-step transfer) and a
  resumed run logs exactly what an uninterrupted one logs. Steps with a non-finite metric count
  as skipped ("steps" counts the others).

  Args:
    step_fn: (state, batch, rng) -> (state, metrics of scalars).
    log_every_steps: the window length.
  """
  def step(state, batch, rng):
    new, metrics = step_fn(state, batch, rng)
    finite = functools.reduce(jnp.logical_and, [jnp.isfinite(v) for v in metrics.values()])
    start = state.step % log_every_steps == 0
    sums = {k: (jnp.where(start, 0.0, state.metric_sums[k]) + jnp.where(finite, v, 0.0)).astype(
        state.metric_sums[k].dtype) for k, v in metrics.items()}
    sums["steps"] = jnp.where(start, 0.0, state.metric_sums["steps"]) + finite
    return new.replace(metric_sums=sums), metrics
  return step


def window_means(sums: dict[str, Any]) -> dict[str, float]:
  """The mean of each metric over a window, from its sums (NaN when every step was skipped)."""
  steps = float(sums["steps"])
  return {k: float(v) / steps if steps else float("nan") for k, v in sums.items() if k != "steps"}


def read_metrics(workdir: str) -> list[dict[str, Any]]:
  """All records of WORKDIR/metrics.jsonl, in order; a damaged last line (a write cut short by a
  stop or a full disk) is left out with a warning.

  Raises:
    InvalidInputError: any other line is not a record of this project (naming the line).
  """
  path = os.path.join(workdir, METRICS_FILE)
  records, damaged_line, _ = _parse(path)
  if damaged_line:
    logging.warning("%s: leaving out its damaged last line %d (a write cut short?).", path,
                    damaged_line)
  return records


def _parse(path: str) -> tuple[list[dict[str, Any]], int | None, bool]:
  """(the records of `path`, the number of its damaged last line or None, whether its last line
  lacks its newline)."""
  if not epath.Path(path).exists():
    return [], None, False
  content = epath.Path(path).read_bytes()
  lines = content.splitlines()
  last = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
  records = []
  for index, line in enumerate(lines):
    if not line.strip():
      continue
    try:
      record = json.loads(line)
    except ValueError:
      record = None
    if isinstance(record, dict) and isinstance(record.get("step"), int):
      records.append(record)
    elif index == last:
      return records, index + 1, True
    else:
      raise InvalidInputError(f"{path} line {index + 1} is not a resnet_jax metrics record (a JSON "
                              "object with an integer \"step\"); repair or remove that line, or "
                              "choose a new --workdir.")
  return records, None, bool(content) and not content.endswith(b"\n")


class MetricsWriter:
  """Appends records to metrics.jsonl and TensorBoard; a no-op on processes other than 0.

  Records are appended, never rewritten in place. On resume from step S, records after S
  (written after the checkpoint the run resumes from) and a damaged last line are dropped from
  both, so the files read as if the run had never stopped: the kept records go to a new file that
  replaces the old one in one rename.
  """

  def __init__(self, workdir: str, *, enabled: bool = True, resume_step: int = 0,
               config: dict[str, Any] | None = None, wandb_project: str = ""):
    """Opens the records of the run in `workdir`.

    Args:
      workdir: the run folder.
      enabled: whether this process writes (process 0).
      resume_step: the step the run resumes from (0: a new run).
      config: the run's config, logged as TensorBoard hyperparameters and to Weights & Biases.
      wandb_project: also log to this Weights & Biases project ("": not), resuming the same run.
    """
    self.enabled = enabled
    self.workdir, self.path = workdir, os.path.join(workdir, METRICS_FILE)
    self._tb = self._wandb = None
    if not enabled:
      return
    records, _, cut_short = _parse(self.path)
    kept = [r for r in records if r["step"] <= resume_step]
    if cut_short or len(kept) < len(records):
      files.write_atomic(self.path, "".join(json.dumps(r) + "\n" for r in kept), root=workdir)
    from tensorboardX import SummaryWriter, record_writer
    if files.is_remote(workdir):  # through the path layer, not tensorboardX's own bucket clients
      record_writer.register_writer_factory(workdir.split("://")[0], _BucketEventsFactory())
    self._tb = SummaryWriter(os.path.join(workdir, TENSORBOARD_DIR),
                             purge_step=resume_step + 1 if resume_step else None)
    if config is not None and not resume_step:  # once: TensorBoard reads a run's event files
      from tensorboardX.summary import hparams  # in this run's own event file, not a sub-run's
      for summary in hparams(_hyperparameters(config), {}):
        self._tb.file_writer.add_summary(summary)
    if wandb_project:
      self._wandb = _open_wandb(workdir, wandb_project, config or {})

  def write(self, step: int, metrics: dict[str, Any]) -> None:
    if not self.enabled:
      return
    record = {"step": int(step), **{k: _plain(v) for k, v in metrics.items()}}
    files.append_line(self.path, json.dumps(record), root=self.workdir)
    scalars = {k: v for k, v in record.items()
               if k != "step" and isinstance(v, (int, float)) and math.isfinite(v)}
    for key, value in scalars.items():
      self._tb.add_scalar(key, value, step)
    self._tb.flush()
    if self._wandb is not None:
      self._wandb.log(scalars, step=int(step))

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()
    if self._wandb is not None:
      self._wandb.finish()
      self._wandb = None


WANDB_RUN_ID = "resnet_jax_run_id"  # in WORKDIR/wandb: the Weights & Biases run to resume


def _hyperparameters(config: dict[str, Any]) -> dict[str, Any]:
  """The config as flat "section.key" values TensorBoard's hparams take (sequences as text)."""
  flat = {}
  for section, values in config.items():
    for key, value in (values.items() if isinstance(values, dict) else [("", values)]):
      name = f"{section}.{key}" if key else section
      flat[name] = value if isinstance(value, (bool, int, float, str)) else str(value)
  return flat


def _open_wandb(workdir: str, project: str, config: dict[str, Any]) -> Any:
  """A Weights & Biases run for this run folder: the same run again when the run resumes (its id
  is kept in WORKDIR/wandb/). WANDB_MODE=offline works without an account or a network."""
  try:
    import wandb
  except ImportError as e:
    raise MissingDependencyError("log.wandb needs the wandb package: pip install -e "
                                 "'.[wandb]' (or pip install wandb).") from e
  folder = os.path.join(workdir, WANDB_DIR)
  epath.Path(folder).mkdir(parents=True, exist_ok=True)
  id_file = epath.Path(folder, WANDB_RUN_ID)
  run_id = id_file.read_text().strip() if id_file.exists() else None
  if run_id is None:
    run_id = uuid.uuid4().hex[:8]  # the form Weights & Biases gives its own ids
    files.write_atomic(os.fspath(id_file), run_id + "\n", root=workdir)
  return wandb.init(project=project, id=run_id, resume="allow", dir=workdir, config=config,
                    name=os.path.basename(workdir.rstrip("/")))


class _BucketEvents:
  """A TensorBoard event file in a bucket: objects cannot be appended to, so each flush uploads
  the whole file again (as tensorboardX's own bucket writers do)."""

  def __init__(self, path: str):
    self.path, self._buffer = path, io.BytesIO()

  def write(self, data: bytes) -> None:
    self._buffer.write(data)

  def flush(self) -> None:
    files.write_atomic(self.path, self._buffer.getvalue())

  def close(self) -> None:
    self.flush()


class _BucketEventsFactory:
  """tensorboardX's hook for a URL scheme: opens `_BucketEvents`; a bucket needs no folders."""

  def open(self, path: str) -> _BucketEvents:
    return _BucketEvents(path)

  def directory_check(self, path: str) -> None:
    del path


def _plain(value: Any) -> Any:
  if hasattr(value, "item"):
    value = value.item()
  return value


class Progress:
  """A tqdm bar with step rate and ETA on a terminal; plain log lines otherwise."""

  def __init__(self, total: int, initial: int, *, mode: str = "auto", enabled: bool = True):
    interactive = {"auto": sys.stderr.isatty(), "yes": True, "no": False}[mode]
    self._bar = tqdm.tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True) \
        if enabled and interactive else None
    self.enabled, self.total, self._last = enabled, total, initial
    self._start = time.time()

  def update(self, step: int, metrics: dict[str, Any] | None = None) -> None:
    """Advances to `step`; shows `metrics` when given."""
    if self._bar is not None:
      self._bar.update(step - self._last)
      if metrics:
        self._bar.set_postfix({k: f"{_plain(v):.4g}" for k, v in metrics.items()
                               if isinstance(_plain(v), float)}, refresh=False)
    elif self.enabled and metrics:
      shown = " ".join(f"{k}={_plain(v):.4g}" for k, v in metrics.items()
                       if isinstance(_plain(v), float))
      logging.info("step %d/%d %s", step, self.total, shown)
    self._last = step

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()
