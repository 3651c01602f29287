"""Transfer learning and inference: convert, fine-tune with frozen stages, predict, features."""

import os
import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

import resnet_jax
from resnet_jax.commands import convert as convert_command, evaluate as evaluate_command
from resnet_jax.commands import predict as predict_command
from resnet_jax import inference, pretrained, saved
from resnet_jax.train import loop, metrics

torch = pytest.importorskip("torch")
from resnet_jax.interop.torch_reference import TorchResNet  # noqa: E402


def run(command, capsys, *args):
  """The command's main in this process (tests/test_commands.py starts each as a real process):
  (exit code, stdout, stderr)."""
  capsys.readouterr()
  try:
    code = command.main([str(a) for a in args])
  except SystemExit as e:
    code = e.code
  out, err = capsys.readouterr()
  return code, out, err


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
  """A resnet18 with random PyTorch weights, saved as .pth and converted by the command."""
  tmp = tmp_path_factory.mktemp("converted")
  torch.manual_seed(0)
  net = TorchResNet(resnet_jax.create_model("resnet18", num_classes=1000))
  torch.save(net.state_dict(), tmp / "resnet18.pth")
  assert convert_command.main(["--model=resnet18", f"--from={tmp / 'resnet18.pth'}",
                               f"--out={tmp / 'model'}", "--labels=imagenet"]) == 0
  return tmp / "model"


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
  """Two classes told apart by colour; JPEG and PNG, grayscale and RGB, assorted sizes."""
  root = tmp_path_factory.mktemp("images")
  rng = np.random.RandomState(0)
  for split, count in (("train", 12), ("test", 4)):
    for label, colour in (("red", (200, 30, 30)), ("blue", (30, 30, 200))):
      os.makedirs(root / split / label)
      for i in range(count):
        size = (int(rng.randint(24, 60)), int(rng.randint(24, 60)))
        pixels = np.clip(np.array(colour) + rng.randint(-20, 20, size[::-1] + (3,)), 0, 255)
        image = Image.fromarray(pixels.astype(np.uint8))
        image.save(root / split / label / f"{i}.{'png' if i % 2 else 'jpg'}")
  return root


def test_converted_model_matches_pytorch_and_lists_imagenet_labels(converted):
  weights = pretrained.load(str(converted))
  assert weights.model == "resnet18" and weights.num_classes == 1000
  assert len(weights.class_names) == 1000  # the ImageNet-1k names (test_hub checks the list)
  assert weights.class_names[0] == "tench" and weights.class_names[281] == "tabby"
  assert weights.preprocessing.image_size == 224 and weights.preprocessing.crop_ratio == 0.875
  torch.manual_seed(0)
  net = TorchResNet(resnet_jax.create_model("resnet18", num_classes=1000)).eval()
  x = np.random.RandomState(0).randn(1, 64, 64, 3).astype(np.float32)
  with torch.no_grad():
    expected = net(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
  got = weights.create_model().apply(weights.variables, x)
  np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def finetune_config(tfds_dir, checkpoint_dir, folder, **init):
  from resnet_jax.configs import finetune
  config = finetune.get_config()
  config.init.update(checkpoint=str(checkpoint_dir), **init)
  config.data.update(name=f"folder:{folder}", data_dir=tfds_dir, image_size=32, num_workers=0,
                     random_resized_crop=False, eval_crop_ratio=1.0, crop_padding=2)
  config.optim.update(learning_rate=0.05, warmup_epochs=0.0, label_smoothing=0.0)
  config.train.update(batch_size=8, eval_batch_size=8, num_steps=12, log_every_steps=4,
                      eval_every_epochs=0.0, progress_bar="no")
  return config


@pytest.mark.slow  # 50 s: a ResNet-18 fine-tuned, then predict and evaluate compile their own
# programs; the default tier checks the fine-tuning step against PyTorch (frozen stages too,
# test_fidelity.py) and a fork's frozen stem (test_extension.py)
def test_finetune_freezes_stages_bitwise_and_the_head_learns(converted, image_folder, tfds_dir,
                                                              tmp_path, monkeypatch, capsys):
  config = finetune_config(tfds_dir, converted, image_folder, freeze="stage2",
                           backbone_lr_scale=0.1)
  monkeypatch.chdir(tmp_path)
  final = loop.train_and_evaluate(config)  # no workdir: a new folder named after the model
  run_dir = final["workdir"]
  assert re.fullmatch(rf"{tmp_path}/runs/\d{{8}}-\d{{6}}-resnet18-folder_.*images\d*", run_dir)
  state, _ = saved.read_checkpoint(os.path.join(run_dir, "checkpoints"))
  weights = pretrained.load(str(converted))
  frozen = ("conv1", "bn1", "layer1_0", "layer1_1", "layer2_0", "layer2_1")
  for name in frozen:
    chex.assert_trees_all_equal(state["params"][name], weights.variables["params"][name])
    if name in weights.variables["batch_stats"]:
      chex.assert_trees_all_equal(state["batch_stats"][name],
                                  weights.variables["batch_stats"][name])
  for name in ("layer3_0", "layer4_1"):  # trained, at a tenth of the head's rate
    assert not np.array_equal(state["params"][name]["conv1"]["kernel"],
                              weights.variables["params"][name]["conv1"]["kernel"])
  assert state["params"]["fc"]["kernel"].shape == (512, 2)  # the head was replaced
  records = metrics.read_metrics(run_dir)
  assert records[-1]["train_loss"] < records[0]["train_loss"]
  assert final["eval_accuracy"] == 1.0  # red vs blue
  # ... and the run folder predicts, with the folder's class names.
  images = sorted(str(p) for p in (image_folder / "test").rglob("*.*"))
  (tmp_path / "broken.jpg").write_bytes(b"not an image")
  code, out, err = run(predict_command, capsys, f"--checkpoint={run_dir}", "--top=2", *images,
                       tmp_path / "broken.jpg")
  assert code == 1, err[-3000:]  # one file skipped, the rest predicted
  assert "skipped" in err and "broken.jpg" in err
  lines = out.splitlines()
  for path in images:
    best = lines[lines.index(path) + 1].split()[-1]
    assert best == os.path.basename(os.path.dirname(path))
  code, out, _ = run(evaluate_command, capsys, f"--workdir={run_dir}")
  assert code == 0 and '"eval_accuracy": 1.0' in out


def test_grayscale_finetuning_sums_the_stem_over_colours(converted):
  weights = pretrained.load(str(converted))
  gray = resnet_jax.create_model("resnet18", num_classes=1000)
  shapes = jax.eval_shape(lambda: gray.init(jax.random.key(0), jnp.zeros((1, 32, 32, 1))))
  variables = pretrained.adapt(weights.variables, shapes, replace_head=False)
  x = np.random.RandomState(1).randn(2, 64, 64, 1).astype(np.float32)
  np.testing.assert_allclose(gray.apply(variables, x),
                             weights.create_model().apply(weights.variables, np.repeat(x, 3, -1)),
                             rtol=1e-4, atol=1e-4)


def test_mismatched_checkpoints_and_labels_are_refused(converted, image_folder, tfds_dir,
                                                       tmp_path, capsys):
  config = finetune_config(tfds_dir, converted, image_folder)
  config.model.name = "resnet34"
  with pytest.raises(ValueError, match="holds a resnet18, but model.name is 'resnet34'"):
    loop.train_and_evaluate(config, str(tmp_path / "a"))
  config = finetune_config(tfds_dir, converted, image_folder, head="keep")
  with pytest.raises(ValueError, match=r"params/fc/kernel: checkpoint \(512, 1000\), model "
                                       r"\(512, 2\) \(a different number of classes"):
    loop.train_and_evaluate(config, str(tmp_path / "b"))
  weights = pretrained.load(str(converted))
  other = resnet_jax.create_model("resnet34", num_classes=1000)
  with pytest.raises(ValueError, match="80 missing: batch_stats/layer1_2/bn1/mean"):
    pretrained.adapt(weights.variables, jax.eval_shape(
        lambda: other.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))), replace_head=False)
  labels = tmp_path / "labels.txt"
  labels.write_text("cat\ndog\n")
  image = tmp_path / "x.png"
  Image.new("RGB", (40, 30)).save(image)
  code, _, err = run(predict_command, capsys, f"--checkpoint={converted}", f"--labels={labels}",
                     image)
  assert code == 2
  assert "names 2 classes, but the network's head has 1000 outputs" in err


def test_feature_function_gives_pooled_features_and_stage_maps(converted):
  weights = pretrained.load(str(converted))
  model = weights.create_model()
  features = inference.feature_fn(model)(weights.variables, jnp.zeros((2, 64, 64, 3)))
  chex.assert_shape([features["pooled"], features["stage1"], features["stage4"]],
                    [(2, 512), (2, 16, 16, 64), (2, 2, 2, 512)])
