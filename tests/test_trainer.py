"""End-to-end runs of train_and_evaluate and of `python -m experiments.train`."""

import json
import os
import subprocess
import sys

import pytest
import tensorflow_datasets as tfds

from resnet_jax.configs import default
from resnet_jax import data
from resnet_jax.models import create_model
from resnet_jax.train import loop, metrics
from resnet_jax.train.experiment import model_architecture

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_FIELDS = {"step", "train_loss", "train_accuracy", "learning_rate", "images_per_sec"}
EVAL_FIELDS = {"eval_loss", "eval_accuracy", "eval_top5"}


def test_two_steps_on_mock_tfds_cifar10(tmp_path):
  config = default.get_config()
  config.model.name = "resnet8"
  config.data.update(name="cifar10", data_dir=str(tmp_path / "tfds"), image_size=0,
                     crop_padding=4, random_flip=True)
  config.train.update(batch_size=16, eval_batch_size=24, num_steps=2, log_every_steps=1,
                      progress_bar="no")
  with tfds.testing.mock_data(num_examples=40):
    final = loop.train_and_evaluate(config, str(tmp_path / "run"))
  records = metrics.read_metrics(str(tmp_path / "run"))
  assert [r["step"] for r in records] == [1, 2]
  assert TRAIN_FIELDS <= set(records[0])
  assert TRAIN_FIELDS | EVAL_FIELDS <= set(records[-1]) and records[-1]["final"]
  assert final["eval_accuracy"] == records[-1]["eval_accuracy"]
  assert 0.0 <= final["eval_accuracy"] <= final["eval_top5"] <= 1.0
  saved = json.load(open(tmp_path / "run" / "config.json"))
  assert saved["config"]["data"]["name"] == "cifar10"
  assert os.path.isdir(tmp_path / "run" / "checkpoints" / "2")
  assert any(n.startswith("events") for n in os.listdir(tmp_path / "run" / "tensorboard"))


def test_eval_is_exact_over_an_uneven_split(small_config, tmp_path):
  config = small_config(num_steps=2)
  num_eval = data.open(config.data).info.num_eval
  assert num_eval % config.train.eval_batch_size  # the last batch is padded and masked
  final = loop.train_and_evaluate(config, str(tmp_path))
  correct = final["eval_accuracy"] * num_eval
  assert abs(correct - round(correct)) < 1e-6


@pytest.mark.slow  # about a minute of training; the default tier runs the command's short runs
def test_default_command_reaches_97_percent_on_the_digits(tmp_path, tfds_dir):
  """The README's main job, as a user runs it (with a private tfds folder)."""
  result = subprocess.run(
      [sys.executable, "-m", "experiments.train", f"--workdir={tmp_path}",
       f"--config.data.data_dir={tfds_dir}"],
      cwd=REPO, capture_output=True, text=True, timeout=900,
      env={**os.environ, "XLA_FLAGS": ""})  # the user's machine: one CPU device
  assert result.returncode == 0, result.stderr[-3000:]
  final = metrics.read_metrics(str(tmp_path))[-1]
  assert final["final"] and final["eval_accuracy"] >= 0.97, final
  assert "Finished step 330" in result.stdout


def test_config_keeps_the_registry_choices_unless_set():
  config = default.get_config()
  config.model.name = "resnet1202"
  name, options = model_architecture(config, None)
  model = create_model(name, num_classes=10, **options)
  assert model.scan_blocks  # the registry scans the thousand-layer networks
  config.model.scan_blocks = False
  name, options = model_architecture(config, None)
  assert not create_model(name, num_classes=10, **options).scan_blocks
