"""What a run leaves to look at: a profiler trace of chosen steps, TensorBoard (with the config as
hyperparameters), Weights & Biases (offline), and plots of one or several runs."""

import glob
import json
import os

import numpy as np
import pytest

from resnet_jax.train import loop
from resnet_jax.train.metrics import read_metrics

NUMBERS = ("train_loss", "train_accuracy", "grad_norm", "learning_rate", "eval_loss",
           "eval_accuracy")


def numbers(workdir):
  return [{k: r[k] for k in NUMBERS if k in r} for r in read_metrics(workdir)]


@pytest.mark.slow  # a run of its own: the default tier's budget
def test_profile_steps_write_a_trace_and_change_no_number(small_config, finished_run, tmp_path):
  # finished_run is the same 4-step run without a trace.
  workdir = str(tmp_path / "run")
  loop.train_and_evaluate(small_config(num_steps=4, train={"profile_steps": "1,3"}), workdir)
  traces = glob.glob(os.path.join(workdir, "profile", "plugins", "profile", "*", "*.xplane.pb"))
  assert len(traces) == 1 and os.path.getsize(traces[0]) > 1000
  assert numbers(workdir) == numbers(finished_run)


@pytest.mark.slow  # Weights & Biases starts its service process: 20 s
def test_weights_and_biases_offline_gets_the_records_and_config_and_resumes_the_run(
    small_config, tmp_path, monkeypatch):
  wandb = pytest.importorskip("wandb")
  monkeypatch.setenv("WANDB_MODE", "offline")
  monkeypatch.setenv("WANDB_SILENT", "true")
  workdir = str(tmp_path / "run")
  config = small_config(num_steps=4, log={"wandb": "resnet-jax-test"})
  loop.train_and_evaluate(small_config(num_steps=2, log={"wandb": "resnet-jax-test"}), workdir)
  run_id = (tmp_path / "run" / "wandb" / "resnet_jax_run_id").read_text().strip()
  loop.train_and_evaluate(config, workdir)  # resumed from step 2 to 4
  assert (tmp_path / "run" / "wandb" / "resnet_jax_run_id").read_text().strip() == run_id
  runs = sorted(glob.glob(str(tmp_path / "run" / "wandb" / f"offline-run-*-{run_id}")))
  assert len(runs) == 2  # both starts wrote into the same run id
  logged, config_logged = {}, None
  for run in runs:
    (data,) = glob.glob(os.path.join(run, f"run-{run_id}.wandb"))
    for record in wandb_records(data):
      if record.WhichOneof("record_type") == "history":
        logged[record.history.step.num] = {i.key or "/".join(i.nested_key): json.loads(
            i.value_json) for i in record.history.item}
      elif record.WhichOneof("record_type") == "run":
        config_logged = {i.key: json.loads(i.value_json) for i in record.run.config.update}
  expected = {r["step"]: r for r in read_metrics(workdir)}
  assert sorted(logged) == sorted(expected)
  for step, record in expected.items():
    for key, value in record.items():
      if key != "step" and isinstance(value, (int, float)):
        assert logged[step][key] == pytest.approx(value, rel=1e-9), (step, key)
  assert config_logged["model"]["name"] == "resnet8"
  assert config_logged["log"]["wandb"] == "resnet-jax-test"


def wandb_records(path):
  """The protobuf records of a Weights & Biases run file: a 7-byte header, then LevelDB's log
  format (32 KiB blocks of chunks: crc32, length, type; FULL or FIRST/MIDDLE/LAST)."""
  from wandb.proto import wandb_internal_pb2
  with open(path, "rb") as f:
    data = f.read()
  assert data[:4] == b":W&B"
  records, pending, pos, block = [], b"", 7, 32768
  while pos + 7 <= len(data):
    if block - pos % block < 7:  # a block's tail too short for a chunk header is padding
      pos += block - pos % block
      continue
    length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
    pending += data[pos + 7:pos + 7 + length]
    pos += 7 + length
    if kind in (1, 4):  # FULL, LAST
      record = wandb_internal_pb2.Record()
      record.ParseFromString(pending)
      records.append(record)
      pending = b""
  return records


def test_tensorboard_gets_the_config_as_hyperparameters(finished_run):
  from tensorboardX.proto import event_pb2
  (events,) = glob.glob(os.path.join(finished_run, "tensorboard", "events.out.tfevents.*"))
  with open(events, "rb") as f:
    data = f.read()
  tags, pos = {}, 0
  while pos < len(data):  # TFRecord frames: length, its crc, the event, its crc
    length = int.from_bytes(data[pos:pos + 8], "little")
    event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + length])
    pos += 16 + length
    for value in event.summary.value:
      tags[value.tag] = value
  start = tags["_hparams_/session_start_info"]
  assert start.metadata.plugin_data.plugin_name == "hparams"
  from tensorboardX.proto import plugin_hparams_pb2
  info = plugin_hparams_pb2.HParamsPluginData.FromString(start.metadata.plugin_data.content)
  hparams = info.session_start_info.hparams
  assert hparams["model.name"].string_value == "resnet8"
  assert hparams["train.batch_size"].number_value == 64
  assert "train_loss" in tags  # the scalars are in the same run


def test_plot_draws_each_runs_curves_in_every_panel(finished_run, tmp_path, capsys):
  from PIL import Image

  from resnet_jax.commands import plot
  import shutil
  other = tmp_path / "other"
  shutil.copytree(finished_run, other)
  out = tmp_path / "curves.png"
  assert plot.main([finished_run, str(other), f"--out={out}"]) == 0
  assert capsys.readouterr().out.strip() == f"Wrote {out}"
  image = np.asarray(Image.open(out).convert("RGB")).astype(int)
  assert image.shape == (400, 1500, 3)  # three 5x4-inch panels at 100 dpi
  colours = {"first run": (0x1f, 0x77, 0xb4), "second run": (0xff, 0x7f, 0x0e)}  # matplotlib's
  for panel in np.split(image, 3, axis=1):  # loss, accuracy, learning rate
    for run, colour in colours.items():
      pixels = (np.abs(panel - np.array(colour)).sum(-1) < 30).sum()
      assert pixels > 50, (run, pixels)  # its curve (and legend) is drawn in this panel


def test_plot_refuses_a_folder_without_records(tmp_path, capsys):
  from resnet_jax.commands import plot
  with pytest.raises(SystemExit) as exit_info:
    plot.main([str(tmp_path), f"--out={tmp_path / 'x.png'}"])
  assert exit_info.value.code == 2
  assert capsys.readouterr().err.strip() == (f"error: {tmp_path} holds no metrics.jsonl; give "
                                             "training run folders.")
  assert not (tmp_path / "x.png").exists()
