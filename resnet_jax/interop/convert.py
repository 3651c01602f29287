"""PyTorch (torchvision/timm layout) state dicts <-> Flax variables, and safe weight-file readers.

Names map mechanically, with the renamings the network declares (`ResNet.torch_names` and its
block's `torch_names`): Flax `layer2_0/downsample_conv/kernel` is torch
`layer2.0.downsample.0.weight`; a scanned stage `layer3_scan/block/...` holds blocks 1..n-1 of
`layer3` stacked on a leading axis. Convolution kernels are HWIO in Flax and OIHW in torch; dense
kernels are transposed.
"""

import os
import re
from collections.abc import Mapping
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np

from resnet_jax.errors import (InputNotFoundError, InvalidInputError, MissingDependencyError,
                               mismatch_error)
from resnet_jax.models import ResNet, create_model
from resnet_jax.models.blocks import BasicBlock

_LEAF = {  # (collection, Flax leaf name) -> torch suffix
    ("params", "kernel"): "weight",
    ("params", "scale"): "weight",
    ("params", "bias"): "bias",
    ("batch_stats", "mean"): "running_mean",
    ("batch_stats", "var"): "running_var",
}
_LAYER = re.compile(r"^layer(\d+)_(\d+|scan)$")
_IGNORED_SUFFIXES = ("num_batches_tracked",)


def _renamings(model: Any) -> dict[str, str]:
  """Flax module name -> torch name, as the network and its block declare them."""
  block = getattr(model, "block_cls", BasicBlock)
  return {**getattr(block, "torch_names", {}), **getattr(model, "torch_names", {})}


def _torch_prefix(path: tuple[str, ...], index: int | None, renamings: dict[str, str]) -> str:
  parts = []
  for name in path:
    m = _LAYER.match(name)
    if m:
      block = 1 + index if m.group(2) == "scan" else int(m.group(2))
      parts.append(f"layer{m.group(1)}.{block}")
    elif name != "block":  # the scan adapter's level
      parts.append(renamings.get(name, name))
  return ".".join(parts)


def _is_scanned(path: tuple[str, ...]) -> bool:
  return any(_LAYER.match(p) and p.endswith("_scan") for p in path)


def _torch_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
  if len(shape) == 4:
    return (shape[3], shape[2], shape[0], shape[1])
  return tuple(reversed(shape)) if len(shape) == 2 else tuple(shape)


def torch_layout(x: np.ndarray) -> np.ndarray:
  """A Flax array in torch's layout: HWIO kernels as OIHW, dense kernels transposed."""
  if x.ndim == 4:
    return np.transpose(x, (3, 2, 0, 1))
  if x.ndim == 2:
    return np.transpose(x)
  return x


def _to_flax_layout(x: np.ndarray) -> np.ndarray:
  if x.ndim == 4:
    return np.transpose(x, (2, 3, 1, 0))
  if x.ndim == 2:
    return np.transpose(x)
  return x


def _entries(tree: Mapping[str, Any], renamings: dict[str, str]):
  """Yields (collection, path, leaf, torch_key, scan_index) for every leaf of a variables tree."""
  for collection in ("params", "batch_stats"):
    flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(tree.get(collection, {})))
    for path, leaf in flat.items():
      suffix = _LEAF.get((collection, path[-1]))
      if suffix is None:
        raise ValueError(f"Cannot map {collection}/{'/'.join(path)} to a torch name.")
      for index in range(leaf.shape[0]) if _is_scanned(path) else (None,):
        yield collection, path, leaf, f"{_torch_prefix(path[:-1], index, renamings)}.{suffix}", index


def torch_keys(variables: Mapping[str, Any], model: Any = None) -> dict[str, str]:
  """The torch name of every leaf: "params/layer1_0/conv1/kernel" -> "layer1.0.conv1.weight".

  Args:
    variables: {"params", "batch_stats"} (or a tree shaped like them, e.g. optimizer moments).
    model: the network, whose declared torch names are used (default: the built-in blocks').

  Raises:
    ValueError: a scanned stage (one Flax leaf holds several torch tensors).
  """
  keys = {}
  for collection, path, _, key, index in _entries(variables, _renamings(model)):
    if index is not None:
      raise ValueError(f"{'/'.join(path)} holds a scanned stage; unscan it (scan_blocks=False).")
    keys["/".join((collection, *path))] = key
  return keys


def to_torchvision(variables: Mapping[str, Any], model: Any = None) -> dict[str, np.ndarray]:
  """Flax variables -> a torch-layout state dict of numpy arrays (loadable with `strict=True`).

  Args:
    variables: {"params", "batch_stats"}.
    model: the network, whose declared torch names are used (default: the built-in blocks').
  """
  state_dict, norms = {}, set()
  for collection, _, leaf, key, index in _entries(variables, _renamings(model)):
    value = np.asarray(jax.device_get(leaf))
    state_dict[key] = torch_layout(value if index is None else value[index])
    if collection == "batch_stats":
      norms.add(key.rsplit(".", 1)[0])
  for norm in norms:
    state_dict[f"{norm}.num_batches_tracked"] = np.zeros((), np.int64)
  return state_dict


def _as_numpy(value: Any) -> np.ndarray:
  if hasattr(value, "detach"):  # a torch tensor; bfloat16 has no numpy dtype, so widen first
    value = value.detach().cpu()
    if value.is_floating_point():
      value = value.float()
    return value.numpy()
  return np.asarray(value)


def from_torchvision(model: str | ResNet, state_dict: Mapping[str, Any],
                     **overrides: Any) -> dict[str, Any]:
  """Torch-layout state dict (numpy arrays or torch tensors) -> Flax `{params, batch_stats}`.

  Args:
    model: a registry name or a `ResNet`; its `num_classes` must match the head in `state_dict`
      unless `model` is a name, in which case the head size is read from `state_dict`.
    state_dict: torchvision- or timm-style names; `num_batches_tracked` entries are ignored.
    **overrides: `ResNet` options when `model` is a name (e.g. `scan_blocks=True`).

  Returns:
    Variables to pass to `model.apply`, in the model's `param_dtype`.

  Raises:
    InvalidInputError: naming every missing, unexpected or mis-shaped key.
  """
  state_dict = {k: v for k, v in state_dict.items() if not k.endswith(_IGNORED_SUFFIXES)}
  if isinstance(model, str):
    model = create_model(model, **overrides)
    if "num_classes" not in overrides:
      head = state_dict.get(f"{model.head}.weight")
      model = model.clone(num_classes=0 if head is None else int(head.shape[0]))
  stem = state_dict.get(f"{model.input_conv}.weight")
  in_channels = 3 if stem is None else int(stem.shape[1])
  size = model.total_stride
  template = jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.zeros((1, size, size, in_channels)), train=False))

  missing, mismatched, not_float, not_finite, used = [], [], [], [], set()
  stacked: dict[tuple, list] = {}
  for collection, path, leaf, key, index in _entries(template, _renamings(model)):
    used.add(key)
    if key not in state_dict:
      missing.append(key)
      continue
    value = _to_flax_layout(_as_numpy(state_dict[key]))
    want = leaf.shape if index is None else leaf.shape[1:]
    if tuple(value.shape) != tuple(want):
      mismatched.append(f"{key}: file {_torch_shape(value.shape)}, model {_torch_shape(want)}")
    elif not np.issubdtype(value.dtype, np.floating):
      not_float.append(f"{key} ({value.dtype})")
    elif not np.isfinite(value).all():
      not_finite.append(key)
    else:
      stacked.setdefault((collection, path), []).append(value.astype(leaf.dtype))
  unexpected = sorted(set(state_dict) - used)
  if missing or unexpected or mismatched or not_float or not_finite:
    raise mismatch_error(
        f"The weights do not match {getattr(model, 'name', None) or 'the model'}",
        {"missing": missing, "unexpected": unexpected, "wrong shape": mismatched,
         "not floating point": not_float, "with NaN or infinite values": not_finite},
        "Check the model name and its options (e.g. num_classes, stride_in_1x1), and that the "
        "file holds trained weights.")

  out: dict[str, dict] = {}
  for (collection, path), values in stacked.items():
    out.setdefault(collection, {})[path] = np.stack(values) if _is_scanned(path) else values[0]
  return {c: flax.traverse_util.unflatten_dict(t) for c, t in out.items()}


def load_state_dict(path: str | os.PathLike) -> dict[str, Any]:
  """Reads a torch-layout state dict without executing code from the file.

  `.safetensors` files are read with numpy alone. `.pth`/`.pt`/`.bin` files need torch and are read
  with `torch.load(weights_only=True)`, which refuses pickled code. A checkpoint wrapping the weights
  under "state_dict", "model" or "model_state" is unwrapped and a DataParallel "module." prefix
  stripped.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise InputNotFoundError(f"No weights file at {path!r}.")
  if path.endswith(".safetensors"):
    from safetensors.numpy import load_file
    state = load_file(path)
  elif path.endswith((".pth", ".pt", ".bin")):
    try:
      import torch
    except ImportError as e:
      raise MissingDependencyError(f"Reading {path!r} needs torch (pip install torch), or convert "
                                   "the file to .safetensors, which needs only numpy.") from e
    state = torch.load(path, map_location="cpu", weights_only=True)
  else:
    raise InvalidInputError(f"Unknown weights format {path!r}: expected .safetensors, .pth, .pt "
                            "or .bin.")
  if not isinstance(state, Mapping):
    raise InvalidInputError(f"{path!r} holds a {type(state).__name__}, not a state dict (a "
                            "mapping of parameter names to tensors); save model.state_dict().")
  for wrapper in ("state_dict", "model", "model_state"):
    if isinstance(state.get(wrapper), Mapping):
      state = state[wrapper]
  if not all(isinstance(k, str) for k in state):
    raise InvalidInputError(f"{path!r} does not hold a mapping of parameter names to tensors.")
  return {k.removeprefix("module."): v for k, v in state.items()}
