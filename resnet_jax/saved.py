"""What every reader of a saved checkpoint or model shares: leaf names, checksums and their
verification, the errors a damaged file raises, and reading a run's checkpoint as saved.

Training writes checkpoints (`train.checkpoint`), fine-tuning, evaluation and prediction read them
(`pretrained`, `train.evaluate`); all of them verify the same checksums.
"""

import logging
import os
import zlib
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from resnet_jax import files
from resnet_jax.errors import InputNotFoundError, InvalidInputError, causes

CHECKPOINTS_DIR = "checkpoints"  # a run folder's checkpoints: WORKDIR/checkpoints/<step>/
STATE, META = "state", "meta"
# What reading a damaged or incomplete checkpoint raises (orbax, tensorstore, json): the errors that
# move a checkpoint aside. Anything else (a stop signal above all) leaves it where it is.
READ_ERRORS = (OSError, ValueError, KeyError, TypeError, EOFError)


def read_error(error: Exception) -> BaseException | None:
  """The READ_ERRORS that made a read fail, in `error` or what caused it (orbax wraps what
  tensorstore raises in a plain Exception); None when the read failed for another reason.

  Raises:
    the stop signal (KeyboardInterrupt, Preempted: BaseExceptions) that orbax wrapped, as itself.
  """
  chain = causes(error)
  for cause in chain:
    if not isinstance(cause, Exception):
      raise cause
  return next((cause for cause in chain if isinstance(cause, READ_ERRORS)), None)


def leaf_name(path: tuple) -> str:
  """"params/conv1/kernel" for a tree path of dict keys, attribute names or sequence indices."""
  parts = []
  for key in path:
    for attr in ("key", "name", "idx"):
      if hasattr(key, attr):
        parts.append(str(getattr(key, attr)))
        break
  return "/".join(parts)


def named_leaves(tree: Any) -> dict[str, Any]:
  """The leaves of `tree` by `leaf_name` (None and empty containers have none)."""
  return {leaf_name(path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def local_copy(tree: Any) -> Any:
  """Numpy copies of a tree's leaves; of a replicated jax.Array, the copy on this process's first
  device (no transfer between processes)."""
  return jax.tree.map(lambda x: np.asarray(x.addressable_data(0)) if isinstance(x, jax.Array)
                      else np.asarray(x), tree)


def checksums(tree: Any) -> dict[str, str]:
  """CRC-32 of every leaf's bytes, by leaf name: stored with a save, compared after a restore.
  The leaves are numpy arrays or replicated jax.Arrays (see `local_copy`)."""
  return {name: f"{zlib.crc32(np.ascontiguousarray(leaf).view(np.uint8)):08x}"
          for name, leaf in named_leaves(local_copy(tree)).items()}


def damaged_leaves(state: Any, meta: dict[str, Any], what: str) -> list[str]:
  """The leaves of a read state whose bytes differ from the checksums saved with it; warns (and
  finds none) when `what` was saved without checksums, by an older version."""
  saved = meta.get("checksums")
  if saved is None:
    logging.warning("%s has no checksums (written by an older version); using it unverified.",
                    what)
    return []
  now = checksums(state)
  return [name for name in sorted(set(saved) | set(now)) if saved.get(name) != now.get(name)]


def verified(state: Any, meta: dict[str, Any], what: str) -> Any:
  """`state` when it matches its checksums (see `damaged_leaves`).

  Raises:
    InvalidInputError: naming the damaged leaves.
  """
  damaged = damaged_leaves(state, meta, what)
  if damaged:
    raise InvalidInputError(f"{what} is damaged: checksum mismatch in {summarize(damaged)}. Use "
                            "another checkpoint, or copy it again from its source.")
  return state


def summarize(items: list[str], limit: int = 3) -> str:
  """The first `limit` items joined, and how many more there are."""
  more = f"; and {len(items) - limit} more" if len(items) > limit else ""
  return "; ".join(items[:limit]) + more


def short(error: BaseException) -> str:
  """An error as "Type: message" on one line, cut at 300 characters."""
  text = f"{type(error).__name__}: {error}".replace("\n", " ")
  return text if len(text) < 300 else text[:300] + "..."


def checkpoint_steps(directory: str) -> list[int]:
  """The steps of the finished checkpoints in a run's checkpoints folder, in order."""
  # Finished saves only: an unfinished one is a temporary folder with a suffix (locally) or has
  # no commit marker (in a bucket), which orbax's step listing leaves out.
  folder = epath.Path(files.resolve(directory))
  return sorted(ocp.utils.checkpoint_steps(folder)) if folder.is_dir() else []


def read_checkpoint(directory: str,
                    step: int | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
  """Reads a checkpoint as saved (nested dicts of numpy arrays) and its metadata; no target needed.

  Args:
    directory: a run's checkpoints folder (WORKDIR/checkpoints), local or in a bucket.
    step: which checkpoint; None for the newest.

  Returns:
    (state, meta): the train state's fields by name, and the run metadata, verified against
    the checksums saved with them (as resume verifies them).

  Raises:
    InputNotFoundError: there is no such checkpoint.
    InvalidInputError: it cannot be read, or fails its checksums.
  """
  directory = files.resolve(directory)
  steps = checkpoint_steps(directory)
  if not steps or (step is not None and step not in steps):
    which = "checkpoint" if step is None else f"checkpoint {step}"
    raise InputNotFoundError(f"No {which} in {directory}; it has {steps or 'none'}.")
  step = steps[-1] if step is None else step
  path = os.path.join(directory, str(step))
  try:
    # The item handlers directly: a read-only CheckpointManager warns that it is read-only.
    with ocp.Checkpointer(ocp.StandardCheckpointHandler()) as reader:
      # Onto this process's first device, whatever topology saved it (a training run's arrays
      # are replicated over all of its devices).
      one = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
      target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=one),
                            reader.metadata(os.path.join(path, STATE)).item_metadata.tree)
      state = local_copy(reader.restore(os.path.join(path, STATE),
                                        args=ocp.args.StandardRestore(target)))
    with ocp.Checkpointer(ocp.JsonCheckpointHandler()) as reader:
      meta = reader.restore(os.path.join(path, META))
  except Exception as e:  # noqa: BLE001 - orbax wraps what tensorstore raises
    cause = read_error(e)
    if cause is None:
      raise
    raise InvalidInputError(f"Checkpoint {step} in {directory} cannot be read ({short(cause)}); "
                            "use another checkpoint (the newest intact one is what a resumed run "
                            "takes).") from e
  return verified(state, meta, f"Checkpoint {step} in {directory}"), meta
