"""Open registries: one per family of choices (models, blocks, dataset sources, optimizers,
schedules, augmentations, runners). A fork adds to one with a decorator from its own file; every
name is listed once, and an unknown name is refused with the valid ones."""

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

