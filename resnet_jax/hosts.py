"""What the processes of a multi-process run share outside the compiled steps: waiting for one
another, with a bound and a message that says what is awaited; and watching that none is lost."""

import logging
import os
import sys
import threading
import time

import jax
from jax._src import distributed  # the coordination service's client (as orbax uses it)

from resnet_jax.errors import MissingSetupError, causes


def wait_for_all(name: str, what: str, timeout_s: int) -> None:
  """Blocks until every process of the run reaches the barrier `name`; nothing in one process.

  Args:
    name: the barrier's id, the same in every process (and used once per run).
    what: what the processes wait for, for the log and the error ("process 0 to prepare ...").
    timeout_s: how long to wait.

  Raises:
    MissingSetupError: the others did not arrive within `timeout_s` (one failed or is gone).
  """
  if jax.process_count() == 1:
    return
  logging.info("Process %d waits (at most %d s) for %s.", jax.process_index(), timeout_s, what)
  try:
    distributed.global_state.client.wait_at_barrier(name, timeout_in_ms=timeout_s * 1000)
  except jax.errors.JaxRuntimeError as e:
    raise MissingSetupError(f"Process {jax.process_index()} waited {timeout_s} s for {what}, in "
                            f"vain ({_first_line(e)[:200]}); see that process's log, or raise "
                            "the timeout.") from e


def _first_line(error: BaseException) -> str:
  """What the runtime says, in one line (its messages run over several)."""
  return (str(error).strip().splitlines() or [type(error).__name__])[0]


# What the runtime raises in a collective or a barrier whose peer is gone.
PEER_FAILURES = ("Gloo", "Connection reset by peer", "heartbeat", "Barrier failed", "UNAVAILABLE",
                 "unhealthy")
LOST_EXIT_CODE = 75  # EX_TEMPFAIL: start every process again


class LifeWatch:
  """Signs of life between the processes of a run, so that one that dies or is stopped ends the
  others at once in one line, rather than in the distributed runtime's abort (or a hang).

  A thread in each process adds 1 to its own counter in the coordination service's key-value
  store every `lost_after_s / 10` seconds and reads everyone's. A process whose counter stood still
  for `lost_after_s` (by this process's clock: hosts' clocks may differ), or a coordinator that no
  longer answers for as long, is lost: this process writes one line naming it to stderr and exits
  with LOST_EXIT_CODE at once (the runtime's own shutdown would wait for the lost one). Set
  `lost_after_s` below the runtime's heartbeat timeout, which aborts every process.
  """

  KEY, DONE = "resnet_jax/alive/", "done"  # each process's counter, or DONE

  def __init__(self, lost_after_s: float):
    self.lost_after_s = lost_after_s
    self._stop = threading.Event()
    self._thread: threading.Thread | None = None

  def __enter__(self) -> "LifeWatch":
    if jax.process_count() > 1:
      self._thread = threading.Thread(target=self._watch, daemon=True, name="life watch")
      self._thread.start()
    return self

  def __exit__(self, *exc) -> None:
    self._stop.set()
    if self._thread is not None:
      self._thread.join()

  def done(self) -> None:
    """Stops watching, and tells the others that this process ends as planned (finished, or
    stopped with them by a signal): its silence from now on is not a loss."""
    if self._thread is not None:
      self.__exit__()
      distributed.global_state.client.key_value_set(f"{self.KEY}{jax.process_index()}",
                                                    self.DONE, allow_overwrite=True)

  def wait_if_lost(self, error: BaseException) -> None:
    """After `error` in the main thread: when it says a peer is gone, waits for the watch to name
    it and end the process; returns when it is not such an error, or no peer was found lost."""
    if self._thread is not None and peer_failure(error) is not None:
      self._thread.join(timeout=2 * self.lost_after_s)

  def _watch(self) -> None:
    client, me = distributed.global_state.client, jax.process_index()
    others = [i for i in range(jax.process_count()) if i != me]
    start = time.monotonic()
    seen = {i: (None, start) for i in others}  # the last counter value, and when it changed
    answered = start
    while not self._stop.wait(self.lost_after_s / 10):
      now = time.monotonic()
      try:
        client.key_value_increment(f"{self.KEY}{me}", 1)
        values = {key.rsplit("/", 1)[-1]: value for key, value in
                  client.key_value_dir_get(self.KEY)}
        answered = now
      except jax.errors.JaxRuntimeError as e:
        if now - answered > self.lost_after_s:
          _lost(0, f"the coordinator on it stopped answering: {_first_line(e)[:160]}",
                now - answered)
        continue
      for i in others:
        value = values.get(str(i))
        if value == self.DONE:
          continue
        if value != seen[i][0]:
          seen[i] = (value, now)
        elif now - seen[i][1] > self.lost_after_s:
          _lost(i, "no sign of life", now - seen[i][1])


def _lost(index: int, how: str, silent_s: float) -> None:
  """Ends this process at once, in one line (the runtime's shutdown would wait for the lost one)."""
  print(f"error: Process {index} of the {jax.process_count()} processes of this run is lost "
        f"({how} for {silent_s:.0f} s): it died, failed or was stopped (see its log). The last "
        "checkpoint is intact: start every process again with the same command to resume from "
        "it.", file=sys.stderr, flush=True)
  os._exit(LOST_EXIT_CODE)


def peer_failure(error: BaseException) -> BaseException | None:
  """The runtime error, in `error` or what caused it (a failed checkpoint save wraps one), that
  says a peer of this multi-process run is gone; None when there is none."""
  return next((cause for cause in causes(error)
               if any(failure in str(cause) for failure in PEER_FAILURES)), None)
