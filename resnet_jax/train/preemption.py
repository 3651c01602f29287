"""SIGTERM/SIGINT handling: finish the step, checkpoint, exit; every process stops at the same step."""

import logging
import os
import signal

import jax
from jax.experimental import multihost_utils


class Preempted(BaseException):
  """A stop signal: raised during setup at once, and by the training loop after it checkpointed.

  A BaseException, like KeyboardInterrupt: code that catches a reader's failures (`except
  Exception`, in this project or a library) must never take a stop for a damaged file.
  """

  def __init__(self, signum: int, step: int | None):
    name = signal.Signals(signum).name
    if step is None:
      message = (f"Stopped by {name} during setup, before the first step; nothing was trained, "
                 "and no checkpoint or metrics record was lost: run the same command to start or "
                 "resume the run.")
    else:
      message = (f"Stopped by {name} after step {step}; the run resumes from this checkpoint when "
                 "started again with the same --workdir.")
    super().__init__(message)
    self.signum, self.step = signum, step

  @property
  def exit_code(self) -> int:
    return 128 + self.signum  # what a shell reports for a process the signal ended: 143, 130


class PreemptionWatcher:
  """Context manager noting SIGTERM/SIGINT; a second signal ends the process at once.

  Single process: during setup (until `start_training`) the first signal raises `Preempted` at
  once, as nothing needs saving; afterwards Python handlers note it. Several processes: SIGTERM
  goes to JAX's preemption service, whose protocol makes every process report the same stopping
  step from `should_stop`; a SIGINT is turned into a SIGTERM to join that protocol.
  """

  def __init__(self):
    self.signum = None
    self._multiprocess = jax.process_count() > 1
    self._previous = {}
    self._training = False

  def start_training(self) -> None:
    """From now on a signal is only noted: the loop checkpoints, then stops."""
    self._training = True

  def __enter__(self) -> "PreemptionWatcher":
    signums = [signal.SIGINT] if self._multiprocess else [signal.SIGTERM, signal.SIGINT]
    for signum in signums:
      self._previous[signum] = signal.signal(signum, self._handle)
    return self

  def __exit__(self, *exc) -> None:
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)

  def _handle(self, signum: int, frame) -> None:
    del frame
    if self.signum is not None:  # the second signal: stop now, without a checkpoint
      logging.warning("Second %s: exiting immediately.", signal.Signals(signum).name)
      os._exit(128 + signum)
    self.signum = signum
    if not self._training and not self._multiprocess:
      raise Preempted(signum, None)
    logging.warning("%s received: finishing this step, then saving a checkpoint and exiting "
                    "(send it again to exit at once).", signal.Signals(signum).name)
    if self._multiprocess:
      os.kill(os.getpid(), signal.SIGTERM)

  def should_stop(self, step: int) -> bool:
    """Whether to checkpoint and stop after `step`; the same answer on every process."""
    if self._multiprocess:
      if multihost_utils.reached_preemption_sync_point(step):
        self.signum = self.signum or signal.SIGTERM
        return True
      return False
    return self.signum is not None
