"""What every command shares: one-line errors for the user's mistakes, and quiet library logs.

A mistake in the user's input (`resnet_jax.errors.InputError`: config, flags, paths, data,
weights) prints `error: <what is wrong and what to do>` and exits with status 2, as argparse does
for a bad flag; any other exception is unexpected and keeps its traceback.
"""

import contextlib
import logging
import os
import re
import sys
import traceback
from collections.abc import Callable
from typing import Any

from absl import app, flags
from ml_collections import config_flags

from resnet_jax import configs

DEFAULT_CONFIG = configs.path_of("default")


def _quiet_libraries(record: logging.LogRecord) -> bool:
  # Orbax and tfds log every save/read at INFO (and orbax warns about read-only opens); keep their
  # errors, drop the chatter. Orbax's errors come from its background threads with tracebacks;
  # the failure itself reaches the command, which reports it in one line, so they keep one line.
  if record.name == "asyncio" and record.exc_info and any(
      "/orbax/" in frame.filename for frame in traceback.extract_tb(record.exc_info[2])):
    return False  # an orbax write task that failed ("never retrieved"): the save reports it
  chatty = any(f"/{lib}/" in record.pathname for lib in ("orbax", "tensorflow_datasets", "etils"))
  if "/orbax/" in record.pathname and record.exc_info:
    record.exc_info, record.exc_text = None, None
  return not chatty or record.levelno >= (logging.ERROR if "/orbax/" in record.pathname
                                          else logging.WARNING)


def _drop_closed_loop_callbacks(unraisable: Any) -> None:
  # When an asynchronous checkpoint save fails, orbax closes its asyncio loop while tensorstore's
  # threads still hand it completions: each raises "Event loop is closed" where nothing can catch
  # it, and Python would print dozens of tracebacks burying the command's one-line error.
  error = unraisable.exc_value
  if isinstance(error, RuntimeError) and str(error) == "Event loop is closed":
    return
  sys.__unraisablehook__(unraisable)


def fail(message: str) -> None:
  """Prints `error: message` (whitespace folded onto one line) and exits with status 2."""
  print("error: " + " ".join(str(message).split()), file=sys.stderr)
  sys.exit(2)


@contextlib.contextmanager
def command():
  """The context of a command's work: input errors become one line and exit status 2.

  It also quiets library logs (and the teardown noise of a failed asynchronous save), and marks
  absl flags parsed for commands that parse their own (argparse): grain's worker processes read
  its absl flags and refuse unparsed ones.
  """
  # orbax and tfds log via absl; asyncio reports the write tasks of a failed orbax save
  for logger in (logging.getLogger(), logging.getLogger("absl"), logging.getLogger("asyncio")):
    if _quiet_libraries not in logger.filters:
      logger.addFilter(_quiet_libraries)
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()
  sys.unraisablehook = _drop_closed_loop_callbacks
  from resnet_jax.errors import InputError
  try:
    yield
  except InputError as e:
    fail(str(e))


def config_from_flags(argv: list[str]) -> Any:
  """The absl command's `--config` value, after its parse: stray arguments and a config file
  that did not load fail in one line. Call it inside `command()`."""
  if len(argv) > 1:
    fail(f"unexpected arguments {argv[1:]}; flags take the form --name=value.")
  try:
    config = flags.FLAGS.config
    config.to_dict()  # a file that did not load fails on first use
  except Exception as e:  # noqa: BLE001 - a missing or broken config file
    fail(flag_error(e, sys.argv))
  return config


def flag_error(error: BaseException, argv: list[str]) -> str:
  """A one-line account of a command-line flag that could not be parsed."""
  raw = str(error).replace("\\n", " ").replace("\\", "")  # ml_collections quotes its messages
  if isinstance(error, (AttributeError, KeyError)):  # ml_collections: an unknown config key
    names = re.findall(r"'([^']+)'", raw)
    given = [a.split("=")[0].lstrip("-") for a in argv
             if a.startswith("--config.") and names and names[0] in a]
    hint = re.search(r'Did you mean "([^"]+)"', raw)
    return (f"unknown config key {given[0] if given else names[0] if names else raw}"
            + (f" (did you mean {hint.group(1)}?)" if hint else "")
            + "; resnet_jax/configs/default.py lists every key.")
  if "Failed loading config file" in raw:
    path = [a.split("=", 1)[1] for a in argv if a.startswith("--config=")]
    reason = raw.strip().splitlines()[-1].strip()
    return f"cannot load the config file {path[0] if path else ''}: {reason}"
  return " ".join(raw.split())


def configs_by_name(argv: list[str]) -> list[str]:
  """`argv` with `--config=NAME` (a config's name, not a path) replaced by that config's file."""
  out = list(argv)
  for i, arg in enumerate(out):
    if not arg.startswith("--config="):
      continue
    value = arg.split("=", 1)[1]
    if value.endswith(".py") or os.sep in value or ":" in value:
      continue  # a file (ml_collections reads "FILE:ARGS" too)
    path = configs.path_of(value)
    if path is None:
      fail(f"unknown config {value!r}; name one of {', '.join(configs.names())}, or give a "
           "path to a .py config file.")
    out[i] = f"--config={path}"
  return out


def define_config_flag() -> None:
  """`--config=FILE` (default: configs/default.py) and its `--config.section.key=value` overrides,
  locked: a mistyped key is refused."""
  # ml_collections reads sys.argv here (to register the overrides), so a mistyped key fails here,
  # before absl parses anything: `run` reports it in one line.
  sys.argv[:] = configs_by_name(sys.argv)
  config_flags.DEFINE_config_file("config", DEFAULT_CONFIG, "Experiment config file.",
                                  lock_config=True)


def run(main: Callable[[list[str]], Any], define_flags: Callable[[], None]) -> None:
  """Defines an absl command's flags and runs `main` as an absl app; a flag that cannot be
  defined or parsed fails in one line."""
  try:
    define_flags()
  except Exception as e:  # noqa: BLE001 - flags and config files fail in many ways; all are input
    fail(flag_error(e, sys.argv))
  app.run(main, flags_parser=_parse_flags)


def _parse_flags(argv: list[str]) -> list[str]:
  try:
    return flags.FLAGS(argv)
  except Exception as e:  # noqa: BLE001 - see `run`
    fail(flag_error(e, argv))
