"""Run folders: one run at a time (a lock), the saved config, and what a resumed run must share.

Nothing the user already has is deleted or overwritten because a new command differs: config.json
is written (atomically) only once a run is accepted, and a refused run removes only what it created
itself (an empty new folder and its lock file). A folder holding files this project did not write
is refused, naming them, and nothing is written through a symlink that leads out of it.

A run folder may be local or in a bucket (gs://). A local folder is locked with flock; a bucket,
which has no locks, holds a lease object instead: the holder and a heartbeat that the holder
renews, taken over once it is stale.
"""

import datetime
import fcntl
import json
import logging
import os
import re
import socket
import threading
import time
import uuid
from typing import Any

from etils import epath

from resnet_jax import files
from resnet_jax.saved import CHECKPOINTS_DIR
from resnet_jax.data import identity_name
from resnet_jax.errors import InvalidInputError, StorageError
from resnet_jax.train.profiling import PROFILE_DIR

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
WANDB_DIR = "wandb"  # Weights & Biases' own files for the run, and the run's id
LOCK_FILE = ".lock"
RUN_ENTRIES = (CONFIG_FILE, METRICS_FILE, CHECKPOINTS_DIR, TENSORBOARD_DIR, LOCK_FILE)
CORRUPT_SUFFIX = ".corrupt"
# What a checkpoints folder holds: finished saves (N), saves a kill cut short (orbax's temporary
# N.orbax-checkpoint-tmp-*), and unreadable ones moved aside (N.corrupt, N.corrupt-2, ...).
_CHECKPOINT_ENTRY = re.compile(r"\d+(\.orbax-checkpoint-tmp.*|" + re.escape(CORRUPT_SUFFIX) +
                               r"(-\d+)?)?")
# The temporary files of this project's atomic writes into a run folder (files.atomic_writer).
_CUT_WRITES = tuple(f"{files.TEMP_PREFIX}{name}." for name in (CONFIG_FILE, METRICS_FILE))
# The lock holder is written in one block of this size: a reader sees the old holder or the new.
_HOLDER_BYTES = 512
# Where orbax-checkpoint writes checkpoints: local folders and gs:// (its tensorstore drivers).
CHECKPOINT_SCHEMES = ("gs",)
# A bucket run folder's lease, renewed every quarter of this, is stale (its run gone) after it.
LEASE_STALE_S = 60.0


def default_workdir(model_name: str, data_name: str) -> str:
  """runs/<date>-<model>-<data>, a new folder for a run given no --workdir."""
  stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
  return os.path.join("runs", f"{stamp}-{model_name}-{data_name}".replace(":", "_").replace(
      "/", "_"))


# Identity values that a run resumed with train.elastic=true may change.
ELASTIC_KEYS = ("train.batch_size",)


def run_identity(config: Any) -> dict[str, Any]:
  """The config values that make a run what it is; a resumed run must share them."""
  return {
      "model": config.model.to_dict(), "data.name": identity_name(config.data.name),
      "data.image_size": config.data.image_size, "optim.name": config.optim.name,
      "train.batch_size": config.train.batch_size, "train.precision": config.train.precision,
      "ema": config.optim.ema_decay > 0, "seed": config.seed,
      "init.checkpoint": config.init.checkpoint, "init.freeze": config.init.freeze,
  }


def _jsonable(value: Any) -> Any:
  if isinstance(value, (list, tuple)):
    return [_jsonable(v) for v in value]
  if isinstance(value, dict):
    return {k: _jsonable(v) for k, v in value.items()}
  return value


def identity_differences(saved: dict[str, Any], current: dict[str, Any], *,
                         elastic: bool = False) -> list[str]:
  """"key: saved X, now Y" for every identity value a resumed run does not share. Keys of a
  section that the saved run did not have (settings added by a later version) are not compared;
  a located dataset's saved name (folder:DIR, as earlier versions saved it) counts by its source
  alone; the batch size may change with `elastic` (train.elastic), and its difference says so."""
  if "data.name" in saved:
    saved = {**saved, "data.name": identity_name(saved["data.name"])}

  def comparable(now, then):
    if isinstance(now, dict) and isinstance(then, dict):
      return {k: comparable(v, then.get(k)) for k, v in now.items() if k in then}
    return _jsonable(now)
  return [f"{k}: saved {saved.get(k)!r}, now {v!r}" + (
      ", which only train.elastic=true allows" if k in ELASTIC_KEYS else "")
          for k, v in current.items()
          if _jsonable(saved.get(k)) != comparable(v, saved.get(k))
          and not (elastic and k in ELASTIC_KEYS)]


def flat_config(config: Any) -> dict[str, Any]:
  """A config (ConfigDict or its JSON dict) as {"section.key": value}, lists for sequences."""
  config = config.to_dict() if hasattr(config, "to_dict") else config
  out = {}
  for key, value in config.items():
    if isinstance(value, dict):
      out.update({f"{key}.{k}": v for k, v in flat_config(value).items()})
    else:
      out[key] = list(value) if isinstance(value, tuple) else value
  return out


def config_differences(saved: dict[str, Any], config: Any) -> list[tuple[str, Any, Any]]:
  """(key, saved value, new value) for every setting that differs from the saved config."""
  saved, now = flat_config(saved), flat_config(config)
  return [(k, saved.get(k), now.get(k)) for k in sorted(set(saved) | set(now))
          if saved.get(k) != now.get(k)]


def read_saved(workdir: str) -> dict[str, Any] | None:
  """WORKDIR/config.json as saved ({"config", "identity", "dataset"}), or None when absent.

  Raises:
    InvalidInputError: the file is damaged or was not written by resnet_jax.
  """
  path = os.path.join(workdir, CONFIG_FILE)
  if not (files.is_link(path) or epath.Path(path).exists()):
    return None
  files.check_inside(path, workdir)
  try:
    saved = json.loads(epath.Path(path).read_text())
  except (OSError, ValueError) as e:
    saved = e
  if not isinstance(saved, dict) or not {"config", "identity"} <= set(saved):
    reason = f" ({str(saved).splitlines()[0]})" if isinstance(saved, Exception) else ""
    raise InvalidInputError(f"{path} is damaged or was not written by resnet_jax{reason}. Move it "
                            "out of the folder (the checkpoints carry the run's identity) and run "
                            "the same command again, or choose a new --workdir.")
  return saved


def foreign_entries(workdir: str, *, has_config: bool) -> list[str]:
  """What in a run folder this project did not write (relative paths).

  Without config.json (which a run writes before anything else) the folder may hold only the
  checkpoints of a run whose config.json was moved away, with that run's metrics and TensorBoard.
  """
  foreign = []
  checkpoints = epath.Path(workdir) / CHECKPOINTS_DIR
  steps = []
  if checkpoints.is_dir():
    for entry in sorted(checkpoints.iterdir()):
      path = os.fspath(entry)
      if _CHECKPOINT_ENTRY.fullmatch(entry.name) and entry.is_dir() and not files.is_link(path):
        steps += [entry.name] if entry.name.isdigit() else []
      else:
        foreign.append(os.path.join(CHECKPOINTS_DIR, entry.name))
  if not has_config:
    records = {METRICS_FILE, TENSORBOARD_DIR, PROFILE_DIR, WANDB_DIR}
    allowed = {LOCK_FILE, CHECKPOINTS_DIR} | (records if steps else set())
    foreign += [n for n in sorted(e.name for e in epath.Path(workdir).iterdir())
                if n not in allowed and not n.startswith(_CUT_WRITES)]
  return foreign


class Workdir:
  """A run folder held by one run: created if needed, locked, and checked against the saved run.

  Use as a context manager. On entry the folder is created (when new) and locked; a second run on
  the same folder stops at once naming the holder; a lock left by a process that is gone is taken
  over with a warning (in a bucket: a lease whose heartbeat is older than LEASE_STALE_S). A
  folder holding another run's config is refused. `accept` writes config.json; leaving without
  accepting removes what entering created.
  """

  def __init__(self, path: str, config: Any, *, is_main: bool = True):
    if files.is_remote(path) and os.fspath(path).split("://")[0] not in CHECKPOINT_SCHEMES:
      raise InvalidInputError(f"--workdir {path}: orbax-checkpoint writes checkpoints to local "
                              "folders and gs:// buckets only; give one of those.")
    self.path = files.resolve(path)
    self.config, self.is_main = config, is_main
    self.saved_config: dict[str, Any] | None = None  # the config.json of the run being resumed
    self._saved: dict[str, Any] | None = None
    self._created, self._accepted, self._lock_fd, self._lease = False, False, None, None

  def __enter__(self) -> "Workdir":
    folder = epath.Path(self.path)
    if folder.exists() and not folder.is_dir():
      raise InvalidInputError(f"--workdir {self.path} is a file; give a folder (new, or of this "
                              "same run to resume it).")
    if folder.is_dir():
      for name in RUN_ENTRIES:
        files.check_inside(os.path.join(self.path, name), self.path)
      self._saved = read_saved(self.path)
      foreign = foreign_entries(self.path, has_config=self._saved is not None)
      if foreign:
        raise InvalidInputError(
            f"--workdir {self.path} holds {', '.join(foreign[:5])}"
            f"{f' and {len(foreign) - 5} more' if len(foreign) > 5 else ''}, which resnet_jax did "
            "not write; choose a new --workdir (or move them out of this one).")
    if self._saved is not None:
      diffs = identity_differences(self._saved["identity"], run_identity(self.config),
                                   elastic=self.config.train.elastic)
      if diffs:
        raise InvalidInputError(f"--workdir {self.path} holds a run of another config ("
                                f"{'; '.join(diffs)}); choose a new --workdir, or the same config "
                                "to resume it.")
      self.saved_config = self._saved["config"]
    if self.is_main:
      self._create_and_lock()
    return self

  def _create_and_lock(self) -> None:
    if files.is_remote(self.path):  # a bucket's folders exist only through their objects
      self._lease = _Lease(os.path.join(self.path, LOCK_FILE), self.path, stale_s=LEASE_STALE_S)
      self._lease.acquire()
      return
    try:
      if not os.path.isdir(self.path):
        os.makedirs(self.path)
        self._created = True
      fd = os.open(os.path.join(self.path, LOCK_FILE), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW,
                   0o644)
    except OSError as e:
      raise StorageError(f"Cannot write to --workdir {self.path}: {e.strerror}; choose a "
                         "writable folder.") from e
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = _read_holder(fd)
      os.close(fd)
      raise _in_use(self.path, holder) from None
    previous = _read_holder(fd)
    if previous:
      _warn_taking_over(self.path, previous)
    for name in os.listdir(self.path):  # what a write cut short (kill, full disk) left behind
      path = os.path.join(self.path, name)
      if name.startswith(_CUT_WRITES) and os.path.isfile(path) and not os.path.islink(path):
        os.remove(path)
    os.pwrite(fd, json.dumps(_holder()).encode().ljust(_HOLDER_BYTES), 0)
    self._lock_fd = fd

  def accept(self, dataset: dict[str, Any] | None = None) -> None:
    """Records the run's config and dataset (config.json): the folder now holds this run."""
    self._accepted = True
    if not self.is_main:
      return
    saved = {"config": json.loads(self.config.to_json_best_effort()),
             "identity": run_identity(self.config), "dataset": dataset}
    if json.loads(json.dumps(saved)) != self._saved:
      files.write_atomic(os.path.join(self.path, CONFIG_FILE), json.dumps(saved, indent=2),
                         root=self.path)

  def __exit__(self, *exc) -> None:
    if self._lease is not None:
      self._lease.release()
      self._lease = None
    if self._lock_fd is not None:
      # Emptied, not removed: a run that opened the file just before would otherwise lock a
      # removed file while a third run locks a new one.
      os.ftruncate(self._lock_fd, 0)
      os.close(self._lock_fd)
      self._lock_fd = None
    if self._created and not self._accepted:
      _remove_empty_tree(self.path, also=LOCK_FILE)


def _holder() -> dict[str, Any]:
  return {"pid": os.getpid(), "host": socket.gethostname(),
          "since": datetime.datetime.now().isoformat(timespec="seconds")}


def _in_use(path: str, holder: dict[str, Any]) -> StorageError:
  return StorageError(
      f"--workdir {path} is in use by another run (pid {holder.get('pid', '?')} on "
      f"{holder.get('host', '?')}, since {holder.get('since', '?')}); wait for it to finish, "
      "or choose another --workdir.")


def _warn_taking_over(path: str, previous: dict[str, Any]) -> None:
  logging.warning("Taking over the lock of %s: pid %s on %s (since %s) ended without "
                  "releasing it.", path, previous.get("pid"), previous.get("host"),
                  previous.get("since"))


class _Lease:
  """A run folder's lock in a bucket: an object naming the holder, with a heartbeat (wall-clock
  seconds) that a thread renews every `stale_s / 4`. A lease whose heartbeat is older than
  `stale_s` belongs to a run that ended without releasing it, and is taken over. Two runs taking
  a stale lease at once both write theirs; after `settle_s` each reads it back, and the one whose
  write was overwritten stops."""

  def __init__(self, path: str, folder: str, *, stale_s: float, settle_s: float = 1.0):
    self.path, self.folder, self.stale_s, self.settle_s = epath.Path(path), folder, stale_s, settle_s
    self.token = uuid.uuid4().hex
    self._stop = threading.Event()
    self._thread: threading.Thread | None = None
    self._holder = {**_holder(), "token": self.token}

  def _read(self) -> dict[str, Any] | None:
    try:
      holder = json.loads(self.path.read_text())
    except FileNotFoundError:
      return None
    except (OSError, ValueError, UnicodeDecodeError):
      return {"pid": "?", "heartbeat": 0.0}
    return holder if isinstance(holder, dict) else {"pid": "?", "heartbeat": 0.0}

  def _write(self) -> None:
    files.write_atomic(os.fspath(self.path), json.dumps({**self._holder,
                                                         "heartbeat": time.time()}))

  def acquire(self) -> None:
    """Takes the lease, or raises StorageError naming its live holder."""
    current = self._read()
    if current is not None:
      if time.time() - float(current.get("heartbeat", 0.0)) < self.stale_s:
        raise _in_use(self.folder, current)
      _warn_taking_over(self.folder, current)
    self._write()
    time.sleep(self.settle_s)
    current = self._read()
    if (current or {}).get("token") != self.token:
      raise _in_use(self.folder, current or {})
    self._thread = threading.Thread(target=self._renew, daemon=True,
                                    name=f"lease {self.folder}")
    self._thread.start()

  def _renew(self) -> None:
    while not self._stop.wait(self.stale_s / 4):
      try:
        self._write()
      except StorageError as e:  # retried at the next beat; stale only after several misses
        logging.warning("Renewing the lease of %s failed: %s", self.folder, e)

  def release(self) -> None:
    """Stops renewing and removes the lease (when it is still this run's)."""
    self._stop.set()
    if self._thread is not None:
      self._thread.join()
    if (self._read() or {}).get("token") == self.token:
      self.path.unlink(missing_ok=True)


def _read_holder(fd: int) -> dict[str, Any]:
  try:
    return json.loads(os.pread(fd, 4096, 0).decode() or "{}")
  except (ValueError, UnicodeDecodeError):
    return {"pid": "?"}


def _remove_empty_tree(path: str, also: str) -> None:
  """Removes `path` if it holds nothing but empty folders and the file `also`."""
  for root, dirs, names in os.walk(path, topdown=False):
    if set(names) - {also} or any(os.path.exists(os.path.join(root, d)) for d in dirs):
      return
    if also in names:
      os.remove(os.path.join(root, also))
    os.rmdir(root)
