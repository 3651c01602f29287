"""Weight conversion: PyTorch equivalence, file formats, and errors that name the bad keys."""

import pathlib
import pickle

import chex
import jax
import numpy as np
import pytest

import resnet_jax
from resnet_jax.interop import convert

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


@pytest.mark.parametrize("name", resnet_jax.list_models())
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
  with pytest.raises(pickle.UnpicklingError):
    convert.load_state_dict(path)
  assert not marker.exists()


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
