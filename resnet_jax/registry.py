"""Open registries: one per family of choices (models, blocks, dataset sources, optimizers,
schedules, augmentations, runners). A fork adds to one with a decorator from its own file; every
name is listed once, and an unknown name is refused with the valid ones. Also the one parser of
the entries that name one with its arguments, "name(key=value, ...)" (`parse_call`)."""

import ast
from collections.abc import Iterator
from typing import Any, Generic, TypeVar

from resnet_jax.errors import InvalidInputError

T = TypeVar("T")


class Registry(Generic[T]):
  """Names -> things of one family.

  Example:
    OPTIMIZERS = Registry("optimizer", "optim.name")

    @OPTIMIZERS.register("sgd")
    def sgd(...): ...
  """

  def __init__(self, family: str, setting: str = ""):
    """A new, empty registry.

    Args:
      family: what the entries are, for messages ("model", "dataset source", ...).
      setting: the config key that names an entry, for messages ("model.name", ...).
    """
    self.family, self.setting = family, setting
    self._entries: dict[str, T] = {}

  def register(self, name: str, entry: T | None = None, *, replace: bool = False) -> Any:
    """Adds `entry` as `name`; without `entry`, a decorator that adds what it decorates.

    Raises:
      ValueError: `name` is taken (pass replace=True to replace it on purpose).
    """
    def add(item: T) -> T:
      if name in self._entries and not replace:
        raise ValueError(f"A {self.family} named {name!r} is already registered; choose another "
                         "name, or pass replace=True.")
      self._entries[name] = item
      return item
    return add if entry is None else add(entry)

  def __getitem__(self, name: str) -> T:
    if name not in self._entries:
      what = f"{self.setting} {name!r}" if self.setting else f"{self.family} {name!r}"
      raise InvalidInputError(f"Unknown {what}; valid names: {', '.join(self.names())}.")
    return self._entries[name]

  def __contains__(self, name: object) -> bool:
    return name in self._entries

  def __iter__(self) -> Iterator[str]:
    return iter(self.names())

  def __len__(self) -> int:
    return len(self._entries)

  def names(self) -> list[str]:
    """The registered names, sorted."""
    return sorted(self._entries)

  def get(self, name: str, default: Any = None) -> Any:
    return self._entries.get(name, default)

  def items(self) -> list[tuple[str, T]]:
    return sorted(self._entries.items())



def parse_arguments(text: str, setting: str, example: str, entry: str | None = None
                    ) -> dict[str, Any]:
  """A call's argument list, "key=value, ..." with Python literal values, as keyword arguments.

  Args:
    text: what stands between the call's parentheses ("" for none; a trailing comma is allowed).
    setting: the config key it comes from, for messages ("optim.kwargs", ...).
    example: a valid value of that setting, for messages.
    entry: the whole entry when `text` is part of one (a "name(...)" of `parse_call`), for
      messages; None: `text` is the setting's whole value.

  Returns:
    name -> value; a repeated name keeps its last value.

  Raises:
    InvalidInputError: a positional argument, a value that is not a Python literal, or text that is
      not an argument list; the message names the setting, the entry and the item at fault.
  """
  where = f"{setting} entry {entry!r}" if entry is not None else f"{setting}={text!r}"
  code = f"f({text})"

  def refuse(item: str, detail: str = "") -> InvalidInputError:
    return InvalidInputError(f"{where}: {item!r} is not name=value with a Python literal value "
                             f"({detail}e.g. {example}).")

  try:
    call = ast.parse(code, mode="eval").body
  except SyntaxError as e:
    # The columns Python blames, less the "f(" around `text`.
    start = max(0, (e.offset or 1) - 3)
    end = (e.end_offset or 0) - 3 if (e.end_lineno or e.lineno) == e.lineno else len(text)
    raise refuse(text[start:end if end > start else len(text)].strip() or text,
                 f"{e.msg}; ") from None
  if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == "f"):
    raise refuse(text)  # e.g. "a=1) or (b=2": more than one argument list
  kwargs = {}
  for node in call.args + call.keywords:
    item = ast.get_source_segment(code, node)
    if isinstance(node, ast.keyword) and node.arg is not None:
      try:
        kwargs[node.arg] = ast.literal_eval(node.value)
        continue
      except (ValueError, TypeError):  # not a literal; an unhashable key or member
        pass
    raise refuse(item)
  return kwargs


def parse_call(entry: str, setting: str, example: str) -> tuple[str, dict[str, Any]]:
  """"name" or "name(key=value, ...)" (Python literal values) -> (name, keyword arguments).

  Args:
    entry: the entry, e.g. "pad_crop(padding=4)".
    setting: the config key it comes from, for messages ("data.augmentations", ...).
    example: a valid entry, for messages.

  Returns:
    The stripped name (not checked against any registry) and its arguments (see
    `parse_arguments`).

  Raises:
    InvalidInputError: a positional argument, a value that is not a Python literal, or text
      around the parentheses; the message names the setting and the entry.
  """
  name, paren, rest = entry.partition("(")
  if not paren:
    return name.strip(), {}
  arguments, close, after = rest.rpartition(")")
  if not close or after.strip():
    raise InvalidInputError(f"{setting} entry {entry!r} is not name or name(key=value, ...); "
                            f"e.g. {example}.")
  return name.strip(), parse_arguments(arguments, setting, example, entry=entry)
