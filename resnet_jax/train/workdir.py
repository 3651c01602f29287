"""Run folders: one run at a time (a lock), the saved config, and what a resumed run must share.

Nothing the user already has is deleted or overwritten because a new command differs: config.json
is written only once a run is accepted, and a refused run removes only what it created itself (an
empty new folder and its lock file).
"""

import datetime
import fcntl
import json
import logging
import os
import socket
from typing import Any

from resnet_jax.errors import InvalidInputError, StorageError

CONFIG_FILE = "config.json"
LOCK_FILE = ".lock"


def default_workdir(model_name: str, data_name: str) -> str:
  """runs/<date>-<model>-<data>, a new folder for a run given no --workdir."""
  stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
  return os.path.join("runs", f"{stamp}-{model_name}-{data_name}".replace(":", "_").replace(
      "/", "_"))


def run_identity(config: Any) -> dict[str, Any]:
  """The config values that make a run what it is; a resumed run must share them."""
  return {
      "model": config.model.to_dict(), "data.name": config.data.name,
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


def identity_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
  """"key: saved X, now Y" for every identity value a resumed run does not share. Keys of a
  section that the saved run did not have (settings added by a later version) are not compared."""
  def comparable(now, then):
    if isinstance(now, dict) and isinstance(then, dict):
      return {k: comparable(v, then.get(k)) for k, v in now.items() if k in then}
    return _jsonable(now)
  return [f"{k}: saved {saved.get(k)!r}, now {v!r}" for k, v in current.items()
          if _jsonable(saved.get(k)) != comparable(v, saved.get(k))]


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


class Workdir:
  """A run folder held by one run: created if needed, locked, and checked against the saved run.

  Use as a context manager. On entry the folder is created (when new) and locked; a second run on
  the same folder stops at once naming the holder; a lock left by a process that is gone is taken
  over with a warning. A folder holding another run's config is refused. `accept` writes
  config.json; leaving without accepting removes what entering created.
  """

  def __init__(self, path: str, config: Any, *, is_main: bool = True):
    self.path = os.path.abspath(os.path.expanduser(path))
    self.config, self.is_main = config, is_main
    self.saved_config: dict[str, Any] | None = None  # the config.json of the run being resumed
    self._created, self._accepted, self._lock_fd = False, False, None

  def __enter__(self) -> "Workdir":
    if os.path.exists(self.path) and not os.path.isdir(self.path):
      raise InvalidInputError(f"--workdir {self.path} is a file; give a folder (new, or of this "
                              "same run to resume it).")
    saved_path = os.path.join(self.path, CONFIG_FILE)
    if os.path.exists(saved_path):
      with open(saved_path) as f:
        saved = json.load(f)
      diffs = identity_differences(saved.get("identity", {}), run_identity(self.config))
      if diffs:
        raise InvalidInputError(f"--workdir {self.path} holds a run of another config ("
                                f"{'; '.join(diffs)}); choose a new --workdir, or the same config "
                                "to resume it.")
      self.saved_config = saved.get("config")
    if self.is_main:
      self._create_and_lock()
    return self

  def _create_and_lock(self) -> None:
    try:
      if not os.path.isdir(self.path):
        os.makedirs(self.path)
        self._created = True
      fd = os.open(os.path.join(self.path, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
      raise StorageError(f"Cannot write to --workdir {self.path}: {e.strerror}; choose a "
                         "writable folder.") from e
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = _read_holder(fd)
      os.close(fd)
      raise StorageError(
          f"--workdir {self.path} is in use by another run (pid {holder.get('pid', '?')} on "
          f"{holder.get('host', '?')}, since {holder.get('since', '?')}); wait for it to finish, "
          "or choose another --workdir.") from None
    previous = _read_holder(fd)
    if previous:
      logging.warning("Taking over the lock of %s: pid %s on %s (since %s) ended without "
                      "releasing it.", self.path, previous.get("pid"), previous.get("host"),
                      previous.get("since"))
    holder = {"pid": os.getpid(), "host": socket.gethostname(),
              "since": datetime.datetime.now().isoformat(timespec="seconds")}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(holder).encode(), 0)
    self._lock_fd = fd

  def accept(self) -> None:
    """Records the run's config (config.json): the folder now holds this run."""
    self._accepted = True
    if not self.is_main:
      return
    config = self.config
    with open(os.path.join(self.path, CONFIG_FILE), "w") as f:
      json.dump({"config": json.loads(config.to_json_best_effort()),
                 "identity": run_identity(config)}, f, indent=2)

  def __exit__(self, *exc) -> None:
    if self._lock_fd is not None:
      # Emptied, not removed: a run that opened the file just before would otherwise lock a
      # removed file while a third run locks a new one.
      os.ftruncate(self._lock_fd, 0)
      os.close(self._lock_fd)
      self._lock_fd = None
    if self._created and not self._accepted:
      _remove_empty_tree(self.path, also=LOCK_FILE)


def _read_holder(fd: int) -> dict[str, Any]:
  try:
    return json.loads(os.pread(fd, 4096, 0).decode() or "{}")
  except (ValueError, UnicodeDecodeError):
    return {"pid": "?"}


def _remove_empty_tree(path: str, also: str) -> None:
  """Removes `path` if it holds nothing but empty folders and the file `also`."""
  for root, dirs, files in os.walk(path, topdown=False):
    if set(files) - {also} or any(os.path.exists(os.path.join(root, d)) for d in dirs):
      return
    if also in files:
      os.remove(os.path.join(root, also))
    os.rmdir(root)
