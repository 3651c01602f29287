"""The benchmark command runs end to end and reports every field (no timing assertions)."""

import functools
import json

import jax
import jax.numpy as jnp
import pytest

from resnet_jax.commands import benchmark as command
from resnet_jax import benchmark
from resnet_jax.layers import conv
from resnet_jax.models import create_model

TIMING = ("images_per_sec", "images_per_sec_min", "images_per_sec_max", "step_time_ms")
STEP = TIMING + ("compile_time_s", "flops_per_image", "peak_memory_bytes", "peak_memory_kind",
                 "num_devices", "achieved_flops_per_sec_per_device",
                 "peak_flops_per_sec_per_device", "mfu")


def run(tmp_path, *flags):
  path = tmp_path / "results.json"
  command.main([*flags, "--steps=2", "--warmup=1", f"--json={path}"])
  return json.loads(path.read_text())


def assert_positive(section, keys):
  for key in keys:
    assert section[key] > 0, (key, section)


def test_benchmark_reports_every_field_with_input_and_torch(tmp_path, capsys):
  # One invocation for every timing field: the JPEG pipeline (a generated folder at 64 pixels,
  # decoded and cropped on the host) alone and feeding the step, the pmap runner, PyTorch's twin.
  results = run(tmp_path, "--model=resnet8", "--batch-size=8", "--image-size=64",
                "--dtype=bfloat16", "--input", "--runner=pmap", "--compare-torch",
                "--set", "data.erasing_prob=0.5", "--set", "data.erasing_value=random")
  for key in ("synthetic", "with_input"):
    assert set(STEP) <= set(results[key]), results[key]
    assert_positive(results[key], TIMING + ("compile_time_s", "flops_per_image",
                                            "peak_memory_bytes",
                                            "achieved_flops_per_sec_per_device"))
    assert results[key]["num_devices"] == jax.device_count()
    assert results[key]["images_per_sec_min"] <= results[key]["images_per_sec"] \
        <= results[key]["images_per_sec_max"]
  assert results["synthetic"]["mfu"] is None  # no published peak for a CPU
  assert results["with_input"]["device_resident"] is False  # JPEGs: decoded on the host
  assert_positive(results["input_only"], TIMING + ("images_per_sec_per_worker",))
  assert_positive(results["torch"], TIMING + ("compile_time_s",))
  assert results["torch"]["torch_compile"] is False  # auto: eager on CPU
  assert results["input_vs_synthetic"] > 0 and results["jax_vs_torch"] > 0
  assert results["runner"] == "pmap" and results["dtype"] == "bfloat16"
  assert results["settings"] == {"data.erasing_prob": 0.5, "data.erasing_value": "random"}
  for key in ("model", "batch_size", "image_size", "device", "platform", "jax_version"):
    assert key in results
  out = capsys.readouterr().out
  for label in ("synthetic", "with_input", "torch", "FLOPs/image", "MFU", "peak memory",
                "input-fed / synthetic", "JAX / PyTorch"):
    assert label in out, out


@pytest.mark.slow  # every part of the step compiled and timed alone, twice over: a diagnosis tool
def test_profile_layers_times_every_part_of_the_step_in_both_frameworks(tmp_path, capsys):
  results = run(tmp_path, "--model=resnet8", "--batch-size=8", "--image-size=16",
                "--dtype=float32", "--compare-torch", "--profile-layers")
  for framework in ("jax", "torch"):  # resnet8: the stem and two convolutions per block
    profile = results["convolutions"][framework]
    assert_positive(profile, ("forward_ms", "input_gradient_ms", "weight_gradient_ms"))
    assert sum(row["count"] for row in profile["shapes"]) == 7
  # resnet8 (CIFAR stem, no max-pool): 7 BatchNorms, 3 residual joins.
  parts = results["layers"]
  assert_positive(parts, ("batchnorm_ms", "residual_ms", "head_ms", "optimizer_ms"))
  assert {row["part"] for row in parts["rows"]} == {"batchnorm", "residual", "head", "optimizer"}
  assert sum(row["count"] for row in parts["rows"] if row["part"] == "batchnorm") == 7
  assert sum(row["count"] for row in parts["rows"] if row["part"] == "residual") == 3
  assert "unaccounted_ms" in parts
  out = capsys.readouterr().out
  assert "torch convolutions alone" in out and "jax other parts alone" in out, out


@pytest.mark.parametrize("name, overrides, count", [
    ("resnet18", {}, 20),  # the stem, 16 in blocks, 3 projection shortcuts
    ("resnet110", {"scan_blocks": True}, 109),  # scanned stages counted block by block
    ("resnext50_32x4d", {}, 53)])
def test_the_convolution_census_counts_every_layer(name, overrides, count):
  shapes = benchmark.convolutions(create_model(name, **overrides), (32, 32, 3), batch_size=4)
  assert sum(n for _, n in shapes) == count
  first = shapes[0][0]
  assert first.input_shape == (4, 32, 32, 3) and first.strides in ((1, 1), (2, 2))
  assert len({shape for shape, _ in shapes}) == len(shapes)


# torchvision's published forward GMACs at 224x224 (its "GFLOPS" column).
@pytest.mark.parametrize("name, gmacs", [("resnet18", 1.81), ("resnet50", 4.09),
                                         ("resnext50_32x4d", 4.23), ("wide_resnet50_2", 11.40)])
def test_flops_per_image_are_three_forward_passes_of_torchvisions_published_count(name, gmacs):
  # Forward, input gradient and weight gradient each do the forward's multiply-adds, 2 FLOPs each.
  counted = benchmark.train_flops_per_image(create_model(name), (224, 224, 3))
  assert round(counted / 6e9, 2) == gmacs, counted
  # A configured convolution (a partial of ours) is counted the same, without space-to-depth taps.
  model = create_model(name).clone(conv=functools.partial(conv.Conv, space_to_depth=True))
  assert benchmark.train_flops_per_image(model, (224, 224, 3)) == counted
  # Stochastic depth draws its rows from the step's key and adds no multiply-add.
  model = create_model(name, drop_path_rate=0.1)
  assert round(benchmark.train_flops_per_image(model, (224, 224, 3)) / 6e9, 2) == gmacs


def test_flops_per_image_count_what_xla_counts_except_padding_taps():
  # XLA's CPU cost analysis skips kernel taps over padding and adds elementwise work: for a CIFAR
  # ResNet-8 those two differ by a few percent.
  model = create_model("resnet8", num_classes=10)
  counted = benchmark.train_flops_per_image(model, (32, 32, 3))
  x = jnp.zeros((2, 32, 32, 3))
  variables = model.init(jax.random.key(0), x)

  def loss(params):
    logits, _ = model.apply({**variables, "params": params}, x, train=True,
                            mutable=["batch_stats"])
    return jnp.mean(logits ** 2)

  analysis = jax.jit(jax.grad(loss)).lower(variables["params"]).compile().cost_analysis()
  xla = (analysis[0] if isinstance(analysis, list) else analysis)["flops"] / x.shape[0]
  assert 0.9 * counted <= xla <= counted, (counted, xla)


def test_the_resnet50_bfloat16_step_lowered_for_cuda_wastes_nothing(tmp_path, capsys):
  # The GPU program, lowered on this CPU machine: the default model, batch 256, bfloat16.
  census = run(tmp_path, "--lower-only=cuda", "--num-devices=1")["census"]
  assert "lowered for cuda" in capsys.readouterr().out
  assert census["conditionals"] == 0  # nothing left of a choice between platforms
  assert census["collectives"] == 0  # one device: no all-reduce
  # 53 forward convolutions, 53 weight gradients, 52 input gradients (none for the image).
  assert census["convolution_types"] == {"bf16": 158}
  assert census["ops"].get("transpose", 0) <= 4  # the space-to-depth stem's regrouping only
  # Every leaf of the train state is donated and aliased to its updated self; the batch's images
  # and labels and the step key are not.
  assert census["aliased_arguments"] == census["arguments"] - 3 > 400
  # Over 8 devices the same step averages gradients and BatchNorm statistics: the census sees it.
  census = run(tmp_path, "--lower-only=cuda", "--batch-size=64")["census"]
  assert census["collectives"] > 0 and census["conditionals"] == 0


@pytest.mark.slow  # four compilations of the step; a tool for lent GPUs, checked nightly
def test_tuning_times_each_setting_of_the_platform_against_the_default(tmp_path, capsys):
  results = run(tmp_path, "--model=resnet8", "--batch-size=8", "--image-size=16", "--tuning",
                "--num-devices=1")
  tuning = results["tuning"]
  assert set(tuning) == {"default", *benchmark.TUNING["cpu"]}
  assert tuning["default"]["vs_default"] == 1.0 and tuning["batch_x2"]["batch_size"] == 16
  for name, tried in tuning.items():  # every setting accepted by this jaxlib, and timed
    assert "error" not in tried and tried["images_per_sec"] > 0 and tried["vs_default"] > 0, (name, tried)
  assert "tuning ynn_convolutions:" in capsys.readouterr().out
