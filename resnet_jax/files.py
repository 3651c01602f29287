"""The path layer: every path a user gives is a local path or a bucket URL (gs://, s3://), read
and written through etils.epath, as orbax and tfds read and write them.

Files the project writes are replaced atomically: on a local disk a temporary file in the same
folder is fsynced and renamed, and nothing is written through a symlink that leaves the folder it
belongs to; in a bucket one object upload replaces the object whole. A reader sees either the old
file or the new one, whatever stops the writer (a signal, a full disk, a crash).
"""

import contextlib
import importlib.util
import io
import os
import shutil
import tempfile
from collections.abc import Iterator
from typing import IO

from etils import epath

from resnet_jax.errors import InputError, InvalidInputError, StorageError

TEMP_PREFIX = ".tmp-"
# The bucket schemes epath reads and writes, and the fsspec package each needs (without
# TensorFlow, whose gfile epath would use instead).
BUCKET_SCHEMES = {"gs": "gcsfs", "s3": "s3fs"}


def is_remote(path: str | os.PathLike) -> bool:
  """Whether `path` is a bucket URL (scheme://...), not a local path."""
  return "://" in os.fspath(path)


def resolve(path: str | os.PathLike) -> str:
  """A local path made absolute (~ expanded), or a bucket URL as given (trailing / removed).

  Raises:
    InvalidInputError: an unsupported scheme, or a bucket whose file-system package is missing.
  """
  text = os.fspath(path)
  if not is_remote(text):
    return os.path.abspath(os.path.expanduser(text))
  scheme = text.split("://", 1)[0]
  if scheme not in BUCKET_SCHEMES:
    raise InvalidInputError(f"{text}: resnet_jax reads and writes local paths and "
                            f"{', '.join(s + '://' for s in BUCKET_SCHEMES)} URLs; give one of "
                            "those.")
  package = BUCKET_SCHEMES[scheme]
  if not any(importlib.util.find_spec(p) for p in (package, "tensorflow")):
    raise InvalidInputError(f"{text} needs the package {package}: pip install {package} (or "
                            "pip install 'resnet_jax[cloud]'), then run the same command again.")
  _fresh_listings(scheme)
  return text.rstrip("/")


def _fresh_listings(scheme: str) -> None:
  """Makes fsspec list a bucket anew at each request. It caches listings by default, and a
  process would then miss what another one wrote since (a pod's other hosts, a run resumed while
  it was being watched); a user's own fsspec setting is kept."""
  import fsspec
  fsspec.config.conf.setdefault(scheme, {}).setdefault("use_listings_cache", False)


def is_link(path: str) -> bool:
  """Whether a local `path` is a symlink (objects in a bucket never are)."""
  return not is_remote(path) and os.path.islink(path)


def check_inside(path: str, root: str) -> None:
  """Refuses `path` when it (or a symlink on the way to it) leads out of the folder `root`.

  Raises:
    InvalidInputError: naming the path and where it leads.
  """
  if is_remote(path):
    return  # a bucket has no links
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
  if is_remote(path):
    with _bucket_writer(path, mode) as f:
      yield f
    return
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
    if isinstance(e, OSError) and not isinstance(e, InputError):  # the block's own errors stay
      raise _write_error(path, e) from e
    raise
  _fsync_folder(folder)


@contextlib.contextmanager
def atomic_folder(path: str) -> Iterator[str]:
  """A temporary local folder beside `path`, renamed to `path` (new, or an empty folder) when the
  block ends without error, and removed otherwise: a reader never sees half of it.

  Raises:
    OSError: `path` is a folder that is not empty (another writer finished first).
  """
  parent = os.path.dirname(os.path.abspath(path))
  os.makedirs(parent, exist_ok=True)
  temp = tempfile.mkdtemp(prefix=TEMP_PREFIX + os.path.basename(path) + ".", dir=parent)
  try:
    yield temp
    os.rename(temp, path)
  finally:
    shutil.rmtree(temp, ignore_errors=True)
  _fsync_folder(parent)


def write_atomic(path: str, content: str | bytes, *, root: str | None = None) -> None:
  """Replaces `path` with `content` atomically (see `atomic_writer`)."""
  with atomic_writer(path, "wb" if isinstance(content, bytes) else "w", root=root) as f:
    f.write(content)


def append_line(path: str, line: str, *, root: str | None = None) -> None:
  """Appends one line (and fsyncs it): a stop mid-write damages at most this last line. An object
  in a bucket cannot be appended to: it is replaced whole, with the line added."""
  if is_remote(path):
    target = epath.Path(path)
    with _bucket_writer(path, "wb") as f:
      f.write((target.read_bytes() if target.exists() else b"") + line.encode() + b"\n")
    return
  check_inside(path, root or os.path.dirname(os.path.abspath(path)))
  try:
    with open(path, "a") as f:
      f.write(line + "\n")
      f.flush()
      os.fsync(f.fileno())
  except OSError as e:
    raise _write_error(path, e) from e


@contextlib.contextmanager
def _bucket_writer(path: str, mode: str) -> Iterator[IO]:
  """A buffer uploaded as the object `path` in one request when the block ends without error."""
  buffer = io.BytesIO() if "b" in mode else io.StringIO()
  yield buffer
  content = buffer.getvalue()
  try:
    target = epath.Path(path)
    target.write_bytes(content) if isinstance(content, bytes) else target.write_text(content)
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
