"""PyTorch (torchvision/timm layout) state dicts <-> Flax variables, and safe weight-file readers.

Names map mechanically, with the renamings the network declares (`ResNet.torch_names` and its
block's `torch_names`): Flax `layer2_0/downsample_conv/kernel` is torch
`layer2.0.downsample.0.weight`; a scanned stage `layer3_scan/block/...` holds blocks 1..n-1 of
`layer3` stacked on a leading axis. Convolution kernels are HWIO in Flax and OIHW in torch; dense
kernels are transposed.
"""

import io
import os
import pickle
import re
import struct
import warnings
import zipfile
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
from etils import epath

from resnet_jax import files
from resnet_jax.data.transforms import IMAGENET_MEAN, IMAGENET_STD, Preprocessing
from resnet_jax.errors import (InputNotFoundError, InvalidInputError, MissingDependencyError,
                               mismatch_error)
from resnet_jax.inference import read_labels
from resnet_jax.models import ResNet, create_model
from resnet_jax.models.blocks import BasicBlock

if TYPE_CHECKING:
  from resnet_jax.pretrained import Pretrained

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


def _relaid(x: np.ndarray, kernel_axes: tuple[int, ...]) -> np.ndarray:
  """`x` with a convolution kernel's axes in `kernel_axes` order, a dense kernel transposed."""
  if x.ndim == 4:
    return np.transpose(x, kernel_axes)
  return np.transpose(x) if x.ndim == 2 else x


def torch_layout(x: np.ndarray) -> np.ndarray:
  """A Flax array in torch's layout: HWIO kernels as OIHW, dense kernels transposed."""
  return _relaid(x, (3, 2, 0, 1))


def _to_flax_layout(x: np.ndarray) -> np.ndarray:
  return _relaid(x, (2, 3, 1, 0))


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
  value = np.asarray(value)
  if jnp.issubdtype(value.dtype, jnp.floating) and not np.issubdtype(value.dtype, np.floating):
    return value.astype(np.float32)  # bfloat16/float8 (safetensors, jax): exact in float32
  return value


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


# safetensors dtype -> numpy dtype. numpy has no bfloat16 or float8; jax's (from ml_dtypes) hold
# them exactly, and `_as_numpy` widens them to float32, as the torch reader does for .pth files.
_SAFETENSORS_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": jnp.bfloat16,
    "F8_E4M3": jnp.float8_e4m3fn, "F8_E5M2": jnp.float8_e5m2, "C64": np.complex64,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U64": np.uint64,
    "U32": np.uint32, "U16": np.uint16, "U8": np.uint8, "BOOL": np.bool_,
}
# What torch.load raises for a file it cannot parse, found by truncating and corrupting files of
# both torch formats: its weights-only unpickler lets a broken stream surface as any of these.
# Only torch.load runs under them; a stop (KeyboardInterrupt) or a MemoryError passes through.
_TORCH_READ_ERRORS = (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, LookupError,
                      TypeError, AttributeError, AssertionError, struct.error)


def _reason(error: BaseException, limit: int = 150) -> str:
  """A library's error as a short clause on one line (torch's run to paragraphs)."""
  text = " ".join(re.sub(r"\x1b\[[0-9;]*m", "", str(error)).split())
  text = f"{type(error).__name__}: {text}" if text else type(error).__name__
  return text if len(text) <= limit else text[:limit - 3].rstrip() + "..."


def _unreadable(path: str, error: OSError) -> InvalidInputError:
  return InvalidInputError(f"Cannot read {path!r}: {error.strerror or _reason(error)}; check that "
                           "you may read it (permissions) and that its disk is mounted.")


def _read_safetensors(path: str) -> dict[str, np.ndarray]:
  """Every tensor of a .safetensors file, in its stored dtype (bfloat16/float8 as jax's types)."""
  import safetensors
  try:
    data = epath.Path(path).read_bytes()  # a local file or an object in a bucket
    # safetensors validates the header (size, JSON, offsets covering the data) and hands back raw
    # bytes; safetensors.numpy would fail on bfloat16, which numpy lacks.
    tensors = safetensors.deserialize(data)
  except OSError as e:
    raise _unreadable(path, e) from e
  except safetensors.SafetensorError as e:
    raise InvalidInputError(f"{path!r} is not a valid .safetensors file ({_reason(e)}); it may be "
                            "truncated or corrupt: download or export it again.") from e
  del data  # the tensors hold copies; drop the file's bytes before the arrays are built
  state = {}
  for key, view in tensors:
    dtype = _SAFETENSORS_DTYPES.get(view["dtype"])
    if dtype is None:
      raise InvalidInputError(f"{path!r}: tensor {key} has dtype {view['dtype']}, which "
                              "resnet_jax cannot read; save the weights as float32, float16 or "
                              "bfloat16.")
    state[key] = np.frombuffer(view["data"], dtype).reshape(view["shape"])
  return state


def _is_torchscript(path: str) -> bool:
  """Whether `path` is a torch.jit.save archive: a zip whose top folder holds constants.pkl."""
  try:
    with zipfile.ZipFile(path) as archive:
      return any(name.count("/") == 1 and name.endswith("/constants.pkl")
                 for name in archive.namelist())
  except (zipfile.BadZipFile, OSError, ValueError, NotImplementedError, EOFError, struct.error):
    return False  # what zipfile raises for a damaged archive: then it is no TorchScript either


def _read_torch(path: str) -> Any:
  """A .pth/.pt/.bin file's object, through torch's weights-only unpickler (no code runs)."""
  try:
    import torch
  except ImportError as e:
    raise MissingDependencyError(f"Reading {path!r} needs torch (pip install torch), or convert "
                                 "the file to .safetensors, which needs only numpy.") from e
  resave = ("If you trust its source, load it in Python with torch.load(weights_only=False), "
            "save only the weights with torch.save(model.state_dict(), 'weights.pth') or "
            "safetensors.torch.save_file, and convert that file.")
  # torch warns before some of the refusals below (a TorchScript archive, a pickle protocol other
  # than 2), which the error then says in one line; the warnings of a file that loads are kept.
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    try:
      source = path if not files.is_remote(path) else io.BytesIO(epath.Path(path).read_bytes())
      state = torch.load(source, map_location="cpu", weights_only=True)
    except OSError as e:
      raise _unreadable(path, e) from e
    except pickle.UnpicklingError as e:
      # torch's weights-only unpickler raises this both for an object it refuses and for an
      # opcode it cannot parse (a damaged stream, or a protocol other than 2 that uses one).
      broken = re.search(r"Unsupported operand \S+|String is too long", str(e))
      if not broken:
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        what = f" ({found.group(1)})" if found else ""
        raise InvalidInputError(f"{path!r} holds pickled Python objects besides tensors{what}, "
                                "and loading those would run code from the file, so it is not "
                                "read. " + resave) from e
      protocols = [m.group(1) for w in caught
                   if (m := re.search(r"Detected pickle protocol (\d+)", str(w.message)))]
      if protocols:
        raise InvalidInputError(f"{path!r} was pickled with protocol {protocols[0]}, which "
                                f"torch.load(weights_only=True) cannot parse ({broken.group(0)}); "
                                "if you trust its source, save it again with torch.save's default "
                                "protocol (2) or with safetensors.torch.save_file.") from e
      raise InvalidInputError(f"{path!r} is not a readable PyTorch file ({broken.group(0)}): it is "
                              "truncated or corrupt, or pickled with protocol 0 or 1, which "
                              "torch.load(weights_only=True) cannot parse; download it again or "
                              "save it with torch.save's defaults.") from e
    except _TORCH_READ_ERRORS as e:
      if isinstance(e, RuntimeError) and ("TorchScript" in str(e) or _is_torchscript(path)):
        raise InvalidInputError(f"{path!r} is a TorchScript archive (torch.jit.save), which holds "
                                "code, so it is not read. If you trust its source, save "
                                "torch.jit.load(path).state_dict() with torch.save or "
                                "safetensors.torch.save_file and convert that file.") from e
      raise InvalidInputError(f"{path!r} is not a readable PyTorch file ({_reason(e)}); it may be "
                              "truncated or corrupt: download or export it again.") from e
  for w in caught:
    if "Detected pickle protocol" not in str(w.message):  # protocol 3 loads: no news
      warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
  return state


def _is_tensor(value: Any) -> bool:
  return isinstance(value, np.ndarray) or hasattr(value, "detach")  # numpy or torch


def load_state_dict(path: str | os.PathLike) -> dict[str, Any]:
  """Reads a torch-layout state dict without executing code from the file.

  `.safetensors` files are read with numpy alone (bfloat16 and float8 tensors as jax's dtypes).
  `.pth`/`.pt`/`.bin` files need torch and are read with `torch.load(weights_only=True)`, which
  refuses pickled code. A checkpoint wrapping the weights under "state_dict", "model" or
  "model_state" is unwrapped and a DataParallel "module." prefix stripped.

  Raises:
    InputNotFoundError: nothing at `path`.
    InvalidInputError: a folder, an unknown suffix, or a file that is empty, truncated, corrupt,
      holds code (pickled objects, TorchScript) or holds no state dict; the message names the file.
    MissingDependencyError: a torch file without torch installed.
  """
  path = os.fspath(path)
  if files.is_remote(path):
    path = files.resolve(path)
  if not epath.Path(path).exists():
    raise InputNotFoundError(f"No weights file at {path!r}.")
  if epath.Path(path).is_dir():
    raise InvalidInputError(f"{path!r} is a folder, not a weights file; give the .safetensors or "
                            ".pth file inside it.")
  if not path.endswith((".safetensors", ".pth", ".pt", ".bin")):
    raise InvalidInputError(f"Unknown weights format {path!r}: expected .safetensors, .pth, .pt "
                            "or .bin.")
  try:
    empty = epath.Path(path).stat().length == 0
  except OSError as e:
    raise _unreadable(path, e) from e
  if empty:
    raise InvalidInputError(f"{path!r} is empty (0 bytes): it was not fully written or "
                            "downloaded; download or export it again.")
  state = _read_safetensors(path) if path.endswith(".safetensors") else _read_torch(path)
  if not isinstance(state, Mapping):
    raise InvalidInputError(f"{path!r} holds a {type(state).__name__}, not a state dict (a "
                            "mapping of parameter names to tensors); save model.state_dict().")
  for wrapper in ("state_dict", "model", "model_state"):
    if isinstance(state.get(wrapper), Mapping):
      state = state[wrapper]
  if not all(isinstance(k, str) for k in state):
    raise InvalidInputError(f"{path!r} does not hold a mapping of parameter names to tensors.")
  others = [k for k, v in state.items() if not _is_tensor(v)]
  if others:
    shown = ", ".join(others[:5]) + (f", ... ({len(others) - 5} more)" if len(others) > 5 else "")
    raise InvalidInputError(f"{path!r} holds values that are not tensors under {shown}; save "
                            "model.state_dict().")
  return {k.removeprefix("module."): v for k, v in state.items()}


def converted_model(model: str, path: str | os.PathLike, *, image_size: int, crop_ratio: float,
                    labels: str = "auto") -> "Pretrained":
  """PyTorch weights as a model `pretrained.export` writes: the network, its classes' names and
  how its images are prepared.

  Args:
    model: the registry name the weights belong to.
    path: a .pth/.pt/.bin or .safetensors file (`load_state_dict`).
    image_size, crop_ratio: the evaluation crop (224 and 0.875: torchvision's V1 weights).
    labels: "auto" (the ImageNet-1k class names for a 1000-class head, else none), "imagenet", a
      text file with one name per line, or "none".

  Returns:
    A `Pretrained`; ImageNet's normalisation for three input channels, 127.5 +- 64 otherwise.

  Raises:
    InvalidInputError: the file does not hold these weights, or the labels do not fit them.
  """
  from resnet_jax.pretrained import Pretrained  # orbax: only for exporting
  variables = from_torchvision(model, load_state_dict(path))
  network = create_model(model)
  head = variables["params"].get(network.head)
  num_classes = int(head["kernel"].shape[1]) if head else 0
  channels = int(variables["params"][network.input_conv]["kernel"].shape[2])
  if labels == "auto":
    labels = "imagenet" if num_classes == 1000 else "none"
  names = None
  if labels != "none":
    if not num_classes:
      raise InvalidInputError(f"These {model} weights have no classifier head, so they take no "
                              "labels; use --labels=none.")
    names = tuple(read_labels(labels, num_classes, None))
  mean, std = (IMAGENET_MEAN, IMAGENET_STD) if channels == 3 else ((127.5,) * channels,
                                                                   (64.0,) * channels)
  return Pretrained(variables=variables, model=model, num_classes=num_classes,
                    preprocessing=Preprocessing(image_size, channels, crop_ratio, mean, std),
                    class_names=names)
