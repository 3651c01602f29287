"""The reference implementations the recipes' parts are tested against: torchvision and timm, from
the dev extra.

torchvision's wheel on the package index is built for CUDA torch: with the CPU torch build the
development machines install, its compiled operators (detection ops such as nms) do not load, and
its fake-tensor registrations then fail at import ("operator torchvision::nms does not exist").
The transforms, StochasticDepth and timm do not use those operators, so their schemas are declared
and the import is retried; nothing of theirs is replaced.
"""

import sys

import pytest

_DECLARED = []  # a torch.library.Library must stay alive for its definitions to stay


def torchvision():
  """torchvision, imported (skips the test where the dev extra is not installed)."""
  torch = pytest.importorskip("torch")
  try:
    import torchvision as module
  except RuntimeError as e:
    if "torchvision::nms" not in str(e):
      raise
    for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
      del sys.modules[name]
    library = torch.library.Library("torchvision", "DEF")
    for op in ("nms", "qnms"):
      library.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _DECLARED.append(library)
    import torchvision as module
  return module


def timm():
  """timm, imported after torchvision (which it imports)."""
  torchvision()
  return pytest.importorskip("timm")


def transforms_v2():
  """torchvision.transforms.v2."""
  torchvision()
  import torchvision.transforms.v2 as v2
  return v2
