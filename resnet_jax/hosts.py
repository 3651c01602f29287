"""What the processes of a multi-process run share outside the compiled steps: waiting for one
another, with a bound and a message that says what is awaited."""

import logging

import jax
from jax._src import distributed  # the coordination service's client (as orbax uses it)

from resnet_jax.errors import MissingSetupError


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
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise MissingSetupError(f"Process {jax.process_index()} waited {timeout_s} s for {what}, in "
                            f"vain ({first[:200]}); see that process's log, or raise the "
                            "timeout.") from e
