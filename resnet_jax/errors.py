"""Errors in what the user gave: config values, flags, paths, data, weights, storage.

The commands print such an error's message (one line, two at most) and exit with status 2; every
other exception is a bug or an unexpected failure and keeps its traceback. Each class also derives
from the built-in exception a caller would expect (ValueError, FileNotFoundError, ...).
"""


class InputError(Exception):
  """A mistake in the user's input; the message names the value and what to do about it."""


class InvalidInputError(InputError, ValueError):
  """A value, name, size or file content that cannot be used."""


class InputNotFoundError(InputError, FileNotFoundError):
  """A path, dataset file or checkpoint that is not there."""


class MissingDependencyError(InputError, ImportError):
  """An optional package that this input needs is not installed."""


class MissingSetupError(InputError, RuntimeError):
  """The calling program lacks a setup that this input needs."""


class StorageError(InputError, OSError):
  """A folder that cannot be written: read-only, full, or in use by another run."""


def check(ok: bool, message: str) -> None:
  """Raises InvalidInputError(message) unless `ok`."""
  if not ok:
    raise InvalidInputError(message)


def check_divisible(size: int, count: int, what: str, among: str) -> None:
  """Refuses a batch `size` that does not split evenly into `count` parts.

  Args:
    size: the global batch size.
    count: how many share it (devices, processes).
    what: the setting's name, e.g. "train.batch_size".
    among: what shares it, e.g. "device count".
  """
  if size <= 0 or size % count:
    suggestion = max(1, size // count) * count
    raise InvalidInputError(f"{what}={size} must be a positive multiple of the {among} ({count}); "
                            f"pick e.g. {suggestion}.")


def mismatch_error(subject: str, problems: dict[str, list[str]], hint: str,
                   limit: int = 10) -> InvalidInputError:
  """One error listing what does not match, by kind ("missing", "wrong shape", ...).

  Args:
    subject: what does not match, e.g. "The weights do not match resnet18".
    problems: kind -> the keys (and details) of that kind; empty kinds are left out.
    hint: what to do.
    limit: keys shown per kind (the rest are counted).
  """
  parts = []
  for kind, keys in problems.items():
    if keys:
      shown = ", ".join(keys[:limit]) + (f", ... ({len(keys) - limit} more)" if len(keys) > limit
                                         else "")
      parts.append(f"{len(keys)} {kind}: {shown}")
  return InvalidInputError(f"{subject}: {'; '.join(parts)}. {hint}")


def causes(error: BaseException | None) -> list[BaseException]:
  """`error` and what caused it, outermost first (`__cause__`, else `__context__`)."""
  chain: list[BaseException] = []
  while error is not None and all(error is not seen for seen in chain):
    chain.append(error)
    error = error.__cause__ or error.__context__
  return chain
