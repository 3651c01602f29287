"""PyTorch export (`--format=torch`): a torchvision-layout state dict, `.pth` (torch.save) or
`.safetensors`, that `torchvision.models.<name>().load_state_dict` accepts. Only for networks
torchvision has, with torchvision's own architecture; weights only (no preprocessing), float32."""

import io

import numpy as np

from resnet_jax import files
from resnet_jax.errors import InvalidInputError, MissingDependencyError
from resnet_jax.export import Program, new_file, register_format
from resnet_jax.interop.convert import to_torchvision
from resnet_jax.models import create_model
from resnet_jax.models.registry import describe_architecture

# The registry names of torchvision.models' ResNets (torchvision's own names).
TORCHVISION_MODELS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
                      "resnext50_32x4d", "resnext101_32x8d", "resnext101_64x4d",
                      "wide_resnet50_2", "wide_resnet101_2")
SUFFIXES = (".pth", ".pt", ".safetensors")


def check_torchvision_architecture(program: Program) -> None:
  """Refuses a network torchvision lacks, or one whose options differ from torchvision's."""
  weights = program.weights
  if weights.model not in TORCHVISION_MODELS:
    raise InvalidInputError(f"torchvision has no {weights.model}; --format=torch covers "
                            f"{', '.join(TORCHVISION_MODELS)}. Export this network as stablehlo, "
                            "savedmodel or onnx.")
  ours = describe_architecture(weights.create_model())
  theirs = describe_architecture(create_model(weights.model))
  differ = sorted(k for k in ours if ours[k] != theirs.get(k) and k != "scan_blocks")
  if differ:
    raise InvalidInputError(f"This {weights.model} differs from torchvision's in "
                            f"{', '.join(f'{k}={ours[k]!r}' for k in differ)}; export it as "
                            "stablehlo, savedmodel or onnx.")
  if program.with_preprocessing or program.dtype != "float32":
    raise InvalidInputError("--format=torch writes float32 weights only: drop "
                            "--with-preprocessing and --dtype (torchvision's transforms "
                            "normalise, and torch casts with .to(dtype)).")


@register_format("torch")
def write(program: Program, out: str) -> None:
  check_torchvision_architecture(program)
  if not out.endswith(SUFFIXES):
    raise InvalidInputError(f"--out={out} must end with {', '.join(SUFFIXES)} for --format=torch.")
  out = new_file(out)
  weights = program.weights
  state = {k: np.ascontiguousarray(v) for k, v in
           to_torchvision(program.variables, weights.create_model()).items()}
  if out.endswith(".safetensors"):
    import safetensors.numpy
    files.write_atomic(out, safetensors.numpy.save(state))
    return
  try:
    import torch
  except ImportError as e:
    raise MissingDependencyError("A .pth file is written with torch: pip install torch, or "
                                 "choose --out=....safetensors (no torch needed).") from e
  buffer = io.BytesIO()
  torch.save({k: torch.from_numpy(np.array(v)) for k, v in state.items()}, buffer)
  files.write_atomic(out, buffer.getvalue())
