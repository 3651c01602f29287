"""Files the project writes: atomically (a temporary file in the same folder, fsync, rename), and
never through a symlink that leaves the folder they belong to.

A reader sees either the old file or the new one, whatever stops the writer (a signal, a full disk,
a crash): the temporary file is the only thing a failed write can leave behind, and it is removed
when the failure is an exception.
"""

import contextlib
import os
import tempfile
from collections.abc import Iterator
from typing import IO

from resnet_jax.errors import InvalidInputError, StorageError

TEMP_PREFIX = ".tmp-"


def check_inside(path: str, root: str) -> None:
  """Refuses `path` when it (or a symlink on the way to it) leads out of the folder `root`.

  Raises:
    InvalidInputError: naming the path and where it leads.
  """
  real_root, real = os.path.realpath(root), os.path.realpath(path)
  if os.path.commonpath([real_root, real]) != real_root:
    raise InvalidInputError(f"{path} is a link to {real}, outside {root}; resnet_jax writes "
                            "nothing through it. Remove the link, or choose another folder.")


@contextlib.contextmanager
def atomic_writer(path: str, mode: str = "w", *, root: str | None = None) -> Iterator[IO]:
  """A file object whose contents replace `path` in one rename when the block ends without error.

  Args:
    path: the file to (re)place.
    mode: "w" (text) or "wb".
    root: the folder `path` must stay inside (default: its own folder); see `check_inside`.

  Raises:
    StorageError: the folder cannot be written (read-only, full, ...).
    InvalidInputError: `path` is a symlink leading out of `root`.
  """
  folder = os.path.dirname(os.path.abspath(path))
  check_inside(path, root or folder)
  try:
    fd, temp = tempfile.mkstemp(prefix=TEMP_PREFIX + os.path.basename(path) + ".", dir=folder)
  except OSError as e:
    raise _write_error(path, e) from e
  try:
    with os.fdopen(fd, mode) as f:
      yield f
      f.flush()
      os.fsync(f.fileno())
    os.chmod(temp, 0o644)
    os.replace(temp, path)
  except BaseException as e:
    with contextlib.suppress(OSError):
      os.remove(temp)
    if isinstance(e, OSError) and not isinstance(e, StorageError):
      raise _write_error(path, e) from e
    raise
  _fsync_folder(folder)


def write_atomic(path: str, content: str | bytes, *, root: str | None = None) -> None:
  """Replaces `path` with `content` atomically (see `atomic_writer`)."""
  with atomic_writer(path, "wb" if isinstance(content, bytes) else "w", root=root) as f:
    f.write(content)


def append_line(path: str, line: str, *, root: str | None = None) -> None:
  """Appends one line (and fsyncs it): a stop mid-write damages at most this last line."""
  check_inside(path, root or os.path.dirname(os.path.abspath(path)))
  try:
    with open(path, "a") as f:
      f.write(line + "\n")
      f.flush()
      os.fsync(f.fileno())
  except OSError as e:
    raise _write_error(path, e) from e


def _write_error(path: str, error: OSError) -> StorageError:
  return StorageError(f"Cannot write {path}: {error.strerror or error}; free space or choose a "
                      "writable folder, then run the same command again.")


def _fsync_folder(folder: str) -> None:
  # The rename itself is durable only once the folder's entry is on disk.
  with contextlib.suppress(OSError):
    fd = os.open(folder, os.O_RDONLY)
    try:
      os.fsync(fd)
    finally:
      os.close(fd)
