"""Weight conversion: PyTorch equivalence, file formats, and errors that name the bad keys."""

import json
import pathlib
import pickle
import re
import struct
import sys
import warnings

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import resnet_jax
from resnet_jax.errors import InputNotFoundError, InvalidInputError
from resnet_jax.interop import convert
from tests.conftest import every_model_nightly

torch = pytest.importorskip("torch")
from resnet_jax.interop.torch_reference import TorchResNet  # noqa: E402

# Logits against PyTorch for one depth of each family (block type, groups, width per group, stem,
# shortcut), scanned stages included; deeper members of a family differ only in block counts, which
# test_every_registry_entry_maps_every_key_and_shape checks for all of them.
PARITY = [("resnet18", {}), ("resnet50", {}), ("resnext50_32x4d", {}), ("resnext101_32x8d", {}),
          ("resnext101_64x4d", {}), ("wide_resnet50_2", {}), ("resnet20", {}),
          ("resnet20", {"scan_blocks": True}), ("resnet18_cifar", {}), ("preact_resnet18", {}),
          ("preact_resnet50", {}), ("preact_resnet164", {"scan_blocks": True}),
          ("resnet50", {"stride_in_1x1": True})]
PARITY_IDS = [name + "".join(f"_{k}" for k in options) for name, options in PARITY]


def random_torch_model(model, in_channels=3, seed=0):
  """A torch twin with random weights and random BatchNorm statistics (eval mode)."""
  torch.manual_seed(seed)
  net = TorchResNet(model, in_channels)
  with torch.no_grad():
    for module in net.modules():
      if isinstance(module, torch.nn.BatchNorm2d):
        module.weight.uniform_(0.5, 1.5)
        module.bias.normal_(0.0, 0.1)
        module.running_mean.normal_(0.0, 0.1)
        module.running_var.uniform_(0.5, 1.5)
  return net.eval()


def torch_forward(net, x):
  with torch.no_grad():
    return net(torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))).numpy()


def relative_error(a, b):
  return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.mark.parametrize("name,overrides", PARITY, ids=PARITY_IDS)
def test_flax_logits_equal_pytorch(name, overrides):
  model = resnet_jax.create_model(name, num_classes=10, **overrides)
  channels = 1 if name == "resnet20" else 3  # grayscale stems convert too
  net = random_torch_model(model, channels)
  variables = convert.from_torchvision(model, net.state_dict())
  size = 64 if model.stem == "imagenet" else 32
  x = np.random.RandomState(0).randn(2, size, size, channels).astype(np.float32)
  logits = np.asarray(jax.jit(model.apply)(variables, x))
  assert relative_error(logits, torch_forward(net, x)) < 1e-4
  # And back: the reverse conversion reproduces torch's state dict exactly.
  back = convert.to_torchvision(variables)
  expected = net.state_dict()
  assert set(back) == set(expected)
  for key, value in expected.items():
    np.testing.assert_array_equal(back[key], value.numpy(), err_msg=key)


@pytest.mark.parametrize("name", every_model_nightly(resnet_jax.list_models()))
def test_every_registry_entry_maps_every_key_and_shape(name):
  """Each registered network (as the registry builds it, scanned stages included) and its torch
  twin have the same tensors under the converter's names, both ways; shapes only, nothing runs."""
  model = resnet_jax.create_model(name, num_classes=10)
  with torch.device("meta"):  # shapes without allocating or initialising weights
    twin = TorchResNet(model).state_dict()
  zeros = {key: np.zeros(tuple(value.shape), np.float32) for key, value in twin.items()}
  variables = convert.from_torchvision(model, zeros)  # raises naming any unmapped key or shape
  back = convert.to_torchvision(variables, model)
  assert {k: v.shape for k, v in back.items()} == {k: tuple(v.shape) for k, v in twin.items()}


def test_training_mode_matches_pytorch():
  model = resnet_jax.create_model("resnet18_cifar", num_classes=10)
  net = random_torch_model(model).train()
  variables = convert.from_torchvision(model, net.state_dict())
  x = np.random.RandomState(1).randn(4, 32, 32, 3).astype(np.float32)
  logits, updates = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))(
      variables, x)
  assert relative_error(np.asarray(logits), torch_forward(net, x)) < 1e-4
  # The running statistics follow PyTorch's: the same momentum, the unbiased batch variance.
  after = convert.to_torchvision({"params": variables["params"], **updates})
  for key, value in net.state_dict().items():
    if key.endswith(("running_mean", "running_var")):
      np.testing.assert_allclose(after[key], value.numpy(), rtol=1e-4, atol=1e-5, err_msg=key)


def test_name_reads_head_size_and_files_load_without_pickle(tmp_path):
  model = resnet_jax.create_model("resnet18", num_classes=3)
  state = random_torch_model(model).state_dict()
  from safetensors.numpy import save_file
  save_file({k: v.numpy() for k, v in state.items()}, str(tmp_path / "w.safetensors"))
  torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "w.pth")
  expected = convert.from_torchvision(model, state)
  for filename in ("w.safetensors", "w.pth"):
    variables = convert.from_torchvision("resnet18", convert.load_state_dict(tmp_path / filename))
    chex.assert_trees_all_equal(variables, expected)
    assert variables["params"]["fc"]["kernel"].shape == (512, 3)


class _Payload:
  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return (pathlib.Path.touch, (self.marker,))


def test_pth_with_pickled_code_is_refused(tmp_path):
  path, marker = tmp_path / "evil.pth", tmp_path / "code-ran"
  with open(path, "wb") as f:
    pickle.dump({"conv1.weight": _Payload(marker)}, f, protocol=2)
  with pytest.raises(InvalidInputError, match="holds pickled Python objects besides tensors"):
    convert.load_state_dict(path)
  assert not marker.exists()


@pytest.mark.parametrize("dtype", ["bfloat16", "float8_e4m3fn", "float8_e5m2"])
def test_narrow_float_safetensors_convert_as_the_same_pth_does(tmp_path, dtype):
  """numpy has no bfloat16 or float8: both readers widen them to float32, exactly."""
  from safetensors.torch import save_file
  model = resnet_jax.create_model("resnet8", num_classes=10)
  state = random_torch_model(model).state_dict()
  narrow = {k: v.to(getattr(torch, dtype)) if v.is_floating_point() else v
            for k, v in state.items()}
  save_file(narrow, str(tmp_path / "w.safetensors"))
  torch.save(narrow, tmp_path / "w.pth")
  # The float32 weights rounded by ml_dtypes (jax's), not by torch, which wrote the files.
  rounded = {k: v.numpy().astype(getattr(jnp, dtype)).astype(np.float32)
             if v.is_floating_point() else v.numpy() for k, v in state.items()}
  expected = convert.from_torchvision(model, rounded)
  for filename in ("w.safetensors", "w.pth"):
    variables = convert.from_torchvision("resnet8", convert.load_state_dict(tmp_path / filename))
    chex.assert_trees_all_equal(variables, expected)
  assert not np.array_equal(expected["params"]["fc"]["kernel"], state["fc.weight"].numpy().T)


class _Options:  # stands in for the argparse.Namespace or config object of a training checkpoint
  pass


def _safetensors(tmp_path):
  from safetensors.torch import save_file
  path = tmp_path / "w.safetensors"
  save_file({"fc.weight": torch.ones(2, 2)}, str(path))
  return path


def _pth(tmp_path, content=None, name="w.pth", **options):
  path = tmp_path / name
  torch.save({"fc.weight": torch.ones(2, 2)} if content is None else content, path, **options)
  return path


def _edit(path, edit):
  path.write_bytes(edit(path.read_bytes()))
  return path


def _header(tmp_path, header, data):
  path = tmp_path / "w.safetensors"
  text = json.dumps(header).encode()
  path.write_bytes(struct.pack("<Q", len(text)) + text + data)
  return path


def _torchscript(tmp_path):
  path = tmp_path / "w.pth"
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit: still what old files are
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(path))
  return path


BAD_FILES = {  # name: (builder(tmp_path) -> path, the error, what its message says)
    "safetensors header too large": (
        lambda t: _edit(_safetensors(t), lambda b: struct.pack("<Q", 2**40) + b[8:]),
        InvalidInputError, r"not a valid \.safetensors file \(.*header too large\); it may be "
        r"truncated or corrupt"),
    "safetensors header corrupt": (
        lambda t: _edit(_safetensors(t), lambda b: b[:8] + b"#" * (len(b) - 8)),
        InvalidInputError, r"not a valid \.safetensors file \(.*invalid JSON"),
    "safetensors truncated": (
        lambda t: _edit(_safetensors(t), lambda b: b[:-3]), InvalidInputError,
        r"not a valid \.safetensors file"),
    "safetensors shorter than its header": (
        lambda t: _edit(_safetensors(t), lambda b: b[:5]), InvalidInputError,
        r"not a valid \.safetensors file"),
    "safetensors of an unreadable dtype": (
        lambda t: _header(t, {"fc.weight": {"dtype": "F8_E8M0", "shape": [2],
                                            "data_offsets": [0, 2]}}, b"\0\0"),
        InvalidInputError, r"tensor fc\.weight has dtype F8_E8M0, which resnet_jax cannot read"),
    "safetensors that is a pth": (
        lambda t: _pth(t, name="w.safetensors"), InvalidInputError,
        r"not a valid \.safetensors file"),
    "safetensors empty": (
        lambda t: _edit(_safetensors(t), lambda b: b""), InvalidInputError,
        r"is empty \(0 bytes\)"),
    "pth empty": (lambda t: _edit(_pth(t), lambda b: b""), InvalidInputError,
                  r"is empty \(0 bytes\)"),
    "pth with a pickled class": (
        lambda t: _pth(t, {"state_dict": {"fc.weight": torch.ones(2, 2)}, "args": _Options()}),
        InvalidInputError, r"holds pickled Python objects besides tensors \([\w.]*_Options\), "
        r"and loading those would run code.*torch\.save\(model\.state_dict\(\)"),
    "pth TorchScript archive": (
        _torchscript, InvalidInputError, r"is a TorchScript archive \(torch\.jit\.save\), which "
        r"holds code.*torch\.jit\.load\(path\)\.state_dict\(\)"),
    "pth pickle protocol 4": (
        lambda t: _pth(t, pickle_protocol=4), InvalidInputError,
        r"was pickled with protocol 4, which torch\.load\(weights_only=True\) cannot parse"),
    "pth truncated zip": (
        lambda t: _edit(_pth(t), lambda b: b[:len(b) // 2]), InvalidInputError,
        r"not a readable PyTorch file \(RuntimeError: PytorchStreamReader failed"),
    "pth truncated legacy pickle": (
        lambda t: _edit(_pth(t, _use_new_zipfile_serialization=False), lambda b: b[:-10]),
        InvalidInputError, r"not a readable PyTorch file \(.*\); it may be truncated or corrupt"),
    "pth of text": (
        lambda t: _edit(_pth(t), lambda b: b"not weights\n"), InvalidInputError,
        r"not a readable PyTorch file"),
    "pth holding a tensor": (
        lambda t: _pth(t, torch.zeros(3)), InvalidInputError, r"holds a Tensor, not a state dict"),
    "pth holding values besides tensors": (
        lambda t: _pth(t, {"fc.weight": torch.ones(2, 2), "epoch": 3}), InvalidInputError,
        r"holds values that are not tensors under epoch"),
    "pth that is a folder": (
        lambda t: (t / "w.pth").mkdir() or t / "w.pth", InvalidInputError, r"is a folder"),
    "pth missing": (lambda t: t / "w.pth", InputNotFoundError, r"No weights file at"),
}


@pytest.mark.parametrize("case", BAD_FILES)
def test_each_unreadable_weights_file_is_one_line_naming_it(tmp_path, case):
  build, error, message = BAD_FILES[case]
  path = build(tmp_path)
  with warnings.catch_warnings(record=True) as caught, pytest.raises(error) as info:
    warnings.simplefilter("always")
    convert.load_state_dict(path)
  text = str(info.value)
  assert re.search(message, text) and str(path) in text and "\n" not in text, text
  assert not caught, [str(w.message) for w in caught]  # torch's warnings would be more lines


@pytest.mark.parametrize("raised", [KeyboardInterrupt(), PermissionError(13, "Permission denied")])
def test_a_stop_while_reading_passes_and_an_os_error_names_the_file(tmp_path, monkeypatch, raised):
  import safetensors

  def fail(*args, **kwargs):
    raise raised
  paths = _pth(tmp_path), _safetensors(tmp_path)
  monkeypatch.setattr(torch, "load", fail)
  monkeypatch.setattr(safetensors, "deserialize", fail)
  for path in paths:
    if isinstance(raised, KeyboardInterrupt):
      with pytest.raises(KeyboardInterrupt):
        convert.load_state_dict(path)
    else:
      message = re.escape(f"Cannot read '{path}': Permission denied; ")
      with pytest.raises(InvalidInputError, match=message):
        convert.load_state_dict(path)


def test_convert_command_reports_a_torchscript_file_in_one_line(tmp_path, capsys):
  from resnet_jax.commands import convert as convert_command
  path = _torchscript(tmp_path)
  with pytest.raises(SystemExit) as info:
    convert_command.main(["--model=resnet8", f"--from={path}", f"--out={tmp_path / 'out'}"])
  lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
  assert info.value.code == 2
  assert len(lines) == 1 and lines[0].startswith(f"error: '{path}' is a TorchScript archive"), lines
  assert not (tmp_path / "out").exists()


def test_mismatched_weights_name_the_keys(tmp_path):
  model = resnet_jax.create_model("resnet18", num_classes=10)
  state = {k: v.numpy() for k, v in random_torch_model(model).state_dict().items()}
  del state["layer2.0.downsample.1.running_var"]
  state["layer9.0.conv1.weight"] = np.zeros((1,), np.float32)
  state["layer1.0.conv2.weight"] = np.zeros((64, 64, 1, 1), np.float32)
  with pytest.raises(ValueError) as info:
    convert.from_torchvision(model, state)
  message = str(info.value)
  assert "1 missing: layer2.0.downsample.1.running_var" in message
  assert "1 unexpected: layer9.0.conv1.weight" in message
  assert "layer1.0.conv2.weight: file (64, 64, 1, 1), model (64, 64, 3, 3)" in message
  with pytest.raises(ValueError, match="missing"):  # resnet18 weights are not a resnet34
    convert.from_torchvision("resnet34", state)
  with pytest.raises(ValueError, match="Unknown weights format"):
    convert.load_state_dict(__file__)
  with pytest.raises(FileNotFoundError):
    convert.load_state_dict(tmp_path / "absent.pth")
