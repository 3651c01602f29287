"""The experiment configs (ml_collections files, each deriving from default.py). A command's
`--config=NAME` names one of them from any directory; `--config=PATH.py` reads any file."""

import os

FOLDER = os.path.dirname(os.path.abspath(__file__))


def names() -> list[str]:
  """The configs' names: default, cifar10_resnet20, imagenet_resnet50, ..."""
  return sorted(f[:-3] for f in os.listdir(FOLDER)
                if f.endswith(".py") and not f.startswith("_"))


def path_of(name: str) -> str | None:
  """The file of config `name`, or None when there is no such config."""
  return os.path.join(FOLDER, name + ".py") if name in names() else None
