"""Models leave as StableHLO, SavedModel, ONNX and torchvision state dicts: each reloaded in its own
runtime at two batch sizes (the batch dimension is symbolic) and compared with the project's
logits; what a format cannot hold is refused in one line."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import references
import resnet_jax
from experiments import export as export_command
from resnet_jax import export, pretrained
from resnet_jax.data.transforms import Preprocessing
from resnet_jax.export import stablehlo
from tests.conftest import ONE_PER_FAMILY

BATCHES = (1, 5)


def weights_of(name, image_size=32, channels=3, seed=0):
  """A network with random weights and BatchNorm statistics other than 0 and 1."""
  model = resnet_jax.create_model(name, num_classes=10)
  variables = jax.device_get(model.init(jax.random.key(seed),
                                        jnp.zeros((1, image_size, image_size, channels))))
  rng = np.random.RandomState(seed)
  variables = jax.tree.map(lambda x: x + 0.01 * rng.randn(*x.shape).astype(x.dtype), variables)
  variables["batch_stats"] = jax.tree.map(np.abs, variables["batch_stats"])
  return pretrained.Pretrained(variables, name, 10, Preprocessing(
      image_size, channels, 1.0, (120.0,) * channels, (60.0,) * channels))


# Every family nightly; post- and pre-activation and the preprocessing on every run.
FAST = ("resnet20", "preact_resnet18")
CASES = [(name, False) if name in FAST else pytest.param(name, False, marks=pytest.mark.slow)
         for name in sorted(set(ONE_PER_FAMILY) | set(FAST))] + [("resnet20", True)]


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


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
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
  weights = weights_of("resnet18")
  weights.options = {"bn_epsilon": 1e-3}
  with pytest.raises(ValueError, match=r"^This resnet18 differs from torchvision's in "
                                       r"bn_epsilon=0.001; export it as stablehlo"):
    export.export(weights, "torch", str(tmp_path / "x.pth"))
  with pytest.raises(ValueError, match="^--format=torch writes float32 weights only"):
    export.export(weights_of("resnet18"), "torch", str(tmp_path / "x.pth"),
                  with_preprocessing=True)
  assert not os.listdir(tmp_path)
