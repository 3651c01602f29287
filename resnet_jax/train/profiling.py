"""A trace of chosen training steps (`train.profile_steps="START,END"`): steps START to END - 1,
written by `jax.profiler` into WORKDIR/profile/ (`tensorboard --logdir=WORKDIR`, its profile
plugin, or xprof). Tracing changes no number the run computes."""

import os

import jax

PROFILE_DIR = "profile"


def parse_steps(text: str) -> tuple[int, int] | None:
  """"START,END" as (START, END); "" as None (no trace). Raises ValueError on anything else."""
  if not text:
    return None
  start, end = (int(part) for part in text.split(","))
  if not 0 <= start < end:
    raise ValueError(text)
  return start, end


class StepProfiler:
  """Starts the trace before step START and stops it once step END - 1 has finished (this
  process's devices; each process of a pod writes its own file into the same folder)."""

  def __init__(self, steps: str, workdir: str):
    self.window, self.directory = parse_steps(steps), os.path.join(workdir, PROFILE_DIR)
    self.tracing = False

  def before(self, step: int) -> None:
    if self.window is not None and step == self.window[0]:
      jax.profiler.start_trace(self.directory)
      self.tracing = True

  def after(self, done: int, state: object) -> None:
    if self.tracing and done == self.window[1]:
      jax.block_until_ready(state)  # the traced steps' device work, not only their dispatch
      self.close()

  def close(self) -> None:
    if self.tracing:
      self.tracing = False
      jax.profiler.stop_trace()
