"""Models leave as StableHLO, SavedModel, ONNX and torchvision state dicts: each reloaded in its own
runtime at two batch sizes (the batch dimension is symbolic) and compared with the project's
logits; what a format cannot hold is refused in one line."""

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import references
import resnet_jax
from resnet_jax.commands import export as export_command
from resnet_jax import export, pretrained
from resnet_jax.data.transforms import Preprocessing
from resnet_jax.export import stablehlo
from tests.conftest import ONE_PER_FAMILY

BATCHES = (1, 5)


def weights_of(name, image_size=32, channels=3, seed=0):
  """A network with random weights, and BatchNorm statistics of a random batch (so that even the
  1001-layer networks keep their activations' scale in inference mode)."""
  model = resnet_jax.create_model(name, num_classes=10, bn_momentum=0.0)
  images = jnp.asarray(np.random.RandomState(seed).randn(8, image_size, image_size, channels),
                       jnp.float32)
  variables = model.init(jax.random.key(seed), images[:1])
  rng = np.random.RandomState(seed)  # no two scales or biases alike either
  variables["params"] = jax.tree.map(lambda x: x * (1 + 0.1 * rng.randn(*x.shape)).astype(x.dtype)
                                     + 0.01 * rng.randn(*x.shape).astype(x.dtype),
                                     variables["params"])
  _, stats = model.apply(variables, images, train=True, mutable=["batch_stats"])
  variables = jax.device_get({"params": variables["params"], **stats})
  return pretrained.Pretrained(variables, name, 10, Preprocessing(
      image_size, channels, 1.0, (120.0,) * channels, (60.0,) * channels))


# Every family nightly; one network, with and without the preprocessing, on every run.
CASES = [(name, False) if name == "resnet20" else pytest.param(name, False,
                                                                marks=pytest.mark.slow)
         for name in sorted(ONE_PER_FAMILY)] + [("resnet20", True)]


@pytest.mark.parametrize("name, with_preprocessing", CASES)
def test_stablehlo_reloads_bitwise_equal(name, with_preprocessing, tmp_path):
  weights = weights_of(name)
  program = export.export(weights, "stablehlo", str(tmp_path / "out"),
                          with_preprocessing=with_preprocessing)
  reloaded = stablehlo.load(str(tmp_path / "out"))
  model = weights.create_model()
  for batch in BATCHES:
    images = program.example(batch, seed=batch)
    normalised = (images.astype(np.float32) - 120.0) / 60.0 if with_preprocessing else images
    expected = jax.jit(lambda v, x: model.apply(v, x, train=False))(weights.variables, normalised)
    got = np.asarray(reloaded(images))
    assert got.shape == (batch, 10)
    if with_preprocessing:  # the normalisation is fused into the program's first convolution
      np.testing.assert_array_equal(got, np.asarray(program(images)))
      np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    else:
      np.testing.assert_array_equal(got, np.asarray(expected))


def test_stablehlo_computes_in_the_chosen_dtype(tmp_path):
  weights = weights_of("resnet20")
  program = export.export(weights, "stablehlo", str(tmp_path / "bf16"), dtype="bfloat16")
  images = program.example(5)
  got = np.asarray(stablehlo.load(str(tmp_path / "bf16"))(images))
  model = weights.create_model(dtype=jnp.bfloat16)
  expected = jax.jit(lambda v, x: model.apply(v, x, train=False))(weights.variables, images)
  np.testing.assert_array_equal(got, np.asarray(expected, np.float32))
  assert got.dtype == np.float32  # logits in float32 whatever the compute dtype
  float32 = np.asarray(export.inference_fn(weights)(images))
  assert 0 < relative(got, float32) < 0.1  # bfloat16 rounding, not another network


@pytest.mark.parametrize("suffix", [".pth", pytest.param(".safetensors", marks=pytest.mark.slow)])
def test_a_torch_export_loads_into_torchvision(suffix, tmp_path):
  tv = references.torchvision()
  import torch
  weights = weights_of("resnet18")
  out = str(tmp_path / f"resnet18{suffix}")
  program = export.export(weights, "torch", out)
  net = tv.models.resnet18(num_classes=10).eval()
  if suffix == ".pth":
    state = torch.load(out, weights_only=True)
  else:
    import safetensors.torch
    state = safetensors.torch.load_file(out)
  net.load_state_dict(state)  # strict: every key, every shape
  for batch in BATCHES:
    images = program.example(batch, seed=batch)
    with torch.no_grad():
      got = net(torch.from_numpy(images.transpose(0, 3, 1, 2))).numpy()
    expected = np.asarray(program(images))
    assert np.abs(got - expected).max() <= 1e-4 * np.abs(expected).max()


def test_the_export_command_takes_a_runs_final_best_or_ema_weights(finished_run, tmp_path,
                                                                   capsys):
  assert export_command.main([f"--checkpoint={finished_run}", "--format=stablehlo",
                              f"--out={tmp_path / 'final'}", "--with-preprocessing"]) == 0
  line = capsys.readouterr().out.strip()
  assert line == (f"Wrote resnet8 (final weights) as stablehlo to {tmp_path / 'final'}: batch x "
                  "8x8x1 uint8 in, batch x 10 float32 logits out")
  description = json.loads((tmp_path / "final" / "model.json").read_text())
  assert description["input"] == {"shape": ["batch", 8, 8, 1], "dtype": "uint8",
                                  "layout": "NHWC", "normalised_inside": True}
  final = pretrained.load(finished_run)
  images = np.random.RandomState(0).randint(0, 256, (3, 8, 8, 1)).astype(np.uint8)
  expected = export.inference_fn(final, with_preprocessing=True)(images)
  np.testing.assert_array_equal(stablehlo.load(str(tmp_path / "final"))(images), expected)
  # best: the evaluated checkpoint with the best accuracy (the run evaluated its last one).
  assert export_command.main([f"--checkpoint={finished_run}", "--format=stablehlo",
                              f"--out={tmp_path / 'best'}", "--weights=best"]) == 0
  with pytest.raises(SystemExit) as exit_info:
    export_command.main([f"--checkpoint={finished_run}", "--format=stablehlo",
                         f"--out={tmp_path / 'ema'}", "--weights=ema"])
  assert exit_info.value.code == 2
  assert capsys.readouterr().err.strip().endswith(
      "kept no EMA of its weights (optim.ema_decay was 0); export its final or best weights.")


@pytest.mark.parametrize("args, message", [
    (["--format=torch", "--out={tmp}/x.pth"], "torchvision has no resnet8; --format=torch covers "
                                              "resnet18, "),
    (["--format=tflite", "--out={tmp}/x"], "Unknown --format 'tflite'; valid names: "),
    (["--format=stablehlo", "--out={tmp}/x", "--dtype=int8"], "--dtype='int8' is not one of "
                                                             "float32, bfloat16, float16."),
    (["--format=stablehlo", "--out={tmp}/x", "--weights=worst"], "--weights='worst' is not one "
                                                                "of final, best, ema."),
    (["--format=stablehlo", "--out={tmp}"], "{tmp} already exists; choose a new --out folder."),
])
def test_what_an_export_cannot_do_is_refused_in_one_line(args, message, finished_run, tmp_path,
                                                         capsys):
  (tmp_path / "taken").write_text("the user's file")
  args = [a.format(tmp=tmp_path) for a in args]
  with pytest.raises(SystemExit) as exit_info:
    export_command.main([f"--checkpoint={finished_run}", *args])
  assert exit_info.value.code == 2
  err = capsys.readouterr().err.strip()
  assert err.startswith("error: " + message.format(tmp=tmp_path)) and "\n" not in err
  assert (tmp_path / "taken").read_text() == "the user's file"


def test_torch_refuses_options_torchvision_lacks_and_the_preprocessing(tmp_path):
  # Refused before any weight is read: no variables needed.
  weights = pretrained.Pretrained({}, "resnet18", 10, Preprocessing(32, 3, 1.0, (0.0,) * 3,
                                                                    (1.0,) * 3))
  weights.options = {"bn_epsilon": 1e-3}
  with pytest.raises(ValueError, match=r"^This resnet18 differs from torchvision's in "
                                       r"bn_epsilon=0.001; export it as stablehlo"):
    export.export(weights, "torch", str(tmp_path / "x.pth"))
  with pytest.raises(ValueError, match="^--format=torch writes float32 weights only"):
    export.export(dataclasses.replace(weights, options={}), "torch", str(tmp_path / "x.pth"),
                  with_preprocessing=True)
  assert not os.listdir(tmp_path)


ONNX_CASES = [("resnet18", True)] + [  # the ImageNet stem and the preprocessing on every run
    pytest.param(name, False, marks=pytest.mark.slow) for name in sorted(ONE_PER_FAMILY)]


@pytest.mark.parametrize("name, with_preprocessing", ONNX_CASES)
def test_onnx_reloads_in_onnxruntime(name, with_preprocessing, tmp_path):
  pytest.importorskip("onnx")
  ort = pytest.importorskip("onnxruntime")
  weights = weights_of(name)
  program = export.export(weights, "onnx", str(tmp_path / "model.onnx"),
                          with_preprocessing=with_preprocessing)
  session = ort.InferenceSession(str(tmp_path / "model.onnx"))
  (images_input,) = session.get_inputs()
  assert images_input.name == "images" and images_input.shape[0] == "batch"
  for batch in BATCHES:
    images = program.example(batch, seed=batch)
    got = session.run(["logits"], {"images": images})[0]
    expected = np.asarray(program(images))
    assert got.shape == (batch, 10)
    # Within 1e-4 of the project's float32 logits; or, where float32 rounding alone is larger
    # (1001 layers of random weights: the project's own float32 logits are 3e-3 from float64's),
    # at most twice as far from the float64 logits as the project's own float32 ones are.
    if relative(got, expected) > 1e-4:
      exact = float64_logits(program, images)
      assert relative(got, exact) <= 2 * relative(expected, exact)


def relative(a, b):
  return np.abs(a - b).max() / np.abs(b).max()


def float64_logits(program, images):
  """The program's logits computed in float64 (its PyTorch twin in float64)."""
  import copy

  import torch

  from resnet_jax.interop.onnx_export import twin
  net = copy.deepcopy(twin(program)).double()
  with torch.no_grad():
    return net(torch.from_numpy(images).double()).numpy()


@pytest.mark.slow
@pytest.mark.parametrize("name, with_preprocessing", [("resnet18", True)] + [
    (name, False) for name in sorted(ONE_PER_FAMILY)])
def test_savedmodel_reloads_in_tensorflow(name, with_preprocessing, tmp_path):
  pytest.importorskip("tensorflow")  # the [export] extra
  from resnet_jax.export import savedmodel
  weights = weights_of(name)
  program = export.export(weights, "savedmodel", str(tmp_path / "model"),
                          with_preprocessing=with_preprocessing)
  for batch in BATCHES:
    images = program.example(batch, seed=batch)
    got = savedmodel.call(str(tmp_path / "model"), images)
    expected = np.asarray(program(images))
    assert got.shape == (batch, 10)
    if relative(got, expected) > 1e-4:  # as for ONNX: float32 rounding through 1001 layers
      exact = float64_logits(program, images)
      assert relative(got, exact) <= 2 * relative(expected, exact)
  assert not [p for p in os.listdir(tmp_path) if p.startswith(".tmp-")]


@pytest.mark.slow
def test_a_savedmodel_serves_without_jax(tmp_path):
  pytest.importorskip("tensorflow")
  import subprocess
  import sys
  program = export.export(weights_of("resnet20"), "savedmodel", str(tmp_path / "model"),
                          with_preprocessing=True)
  images = program.example(3)
  np.save(tmp_path / "images.npy", images)
  code = ("import sys, numpy as np\n"
          "for name in ('jax', 'jaxlib', 'flax', 'resnet_jax'):\n"
          "  sys.modules[name] = None  # importing any of them fails\n"
          "import tensorflow as tf\n"
          f"serve = tf.saved_model.load({str(tmp_path / 'model')!r}).signatures['serving_default']\n"
          f"images = np.load({str(tmp_path / 'images.npy')!r})\n"
          f"np.save({str(tmp_path / 'logits.npy')!r}, serve(images=tf.constant(images))['logits'])\n")
  subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
  got = np.load(tmp_path / "logits.npy")
  assert relative(got, np.asarray(program(images))) <= 1e-4
