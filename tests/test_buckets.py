"""Run folders, image folders and models in a bucket (README, Running on a pod): a real local
GCS server (gcp-storage-emulator) stands in for Cloud Storage; nothing of the project's path layer
is replaced."""

import io
import os
import re
import signal
import socket

import chex
import numpy as np
import orbax.checkpoint as ocp
import pytest
from etils import epath
from PIL import Image

from resnet_jax import errors
from resnet_jax.train import loop, metrics, workdir as workdir_lib
from resnet_jax.train.preemption import Preempted
from tests.test_reliability import (assert_same_run, final_state, run_command, stop_at,
                                    wait_for)


def write_images(root, classes=("cat", "dog"), count=8, size=8):
  rng = np.random.RandomState(0)
  for split in ("train", "test"):
    for name in classes:
      for i in range(count):
        png = io.BytesIO()
        Image.fromarray(rng.randint(0, 256, (size, size, 3), np.uint8)).save(png, format="PNG")
        epath.Path(f"{root}/{split}/{name}/{i}.png").write_bytes(png.getvalue())


def bucket_config(small_config, images, num_steps):
  return small_config(num_steps=num_steps, data={"name": f"folder:{images}",
                                                 "verify_images": "no"},
                      train={"batch_size": 8, "eval_batch_size": 8, "checkpoint_every_steps": 4})


@pytest.fixture(scope="module")
def images(bucket):
  write_images(f"{bucket}/images")
  return f"{bucket}/images"


@pytest.fixture(scope="module")
def straight(bucket, images, small_config):
  """An uninterrupted 8-step run with its run folder and images in the bucket."""
  loop.train_and_evaluate(bucket_config(small_config, images, 8), f"{bucket}/straight")
  return f"{bucket}/straight"


def test_a_bucket_run_stopped_and_resumed_equals_the_uninterrupted_run(bucket, images, straight,
                                                                      small_config, monkeypatch):
  config, folder = bucket_config(small_config, images, 8), f"{bucket}/stopped"
  with monkeypatch.context() as patch:
    stop_at(patch, 6)
    with pytest.raises(Preempted):
      loop.train_and_evaluate(config, folder)
  assert final_state(folder)[1]["step"] == 6
  loop.train_and_evaluate(config, folder)
  assert not os.path.exists("gs:")  # no local folder named after the URL
  assert_same_run(straight, folder)
  events = list(epath.Path(folder, "tensorboard").iterdir())
  assert len(events) == 2 and all(e.name.startswith("events.out.tfevents") for e in events)
  assert not epath.Path(folder, workdir_lib.LOCK_FILE).exists()  # released at the end


def test_evaluate_predict_and_export_read_and_write_the_bucket(bucket, images, straight, capsys):
  from resnet_jax.commands import evaluate, predict
  from resnet_jax import pretrained
  model = pretrained.load(straight)  # what init.checkpoint and predict --checkpoint read
  pretrained.export(f"{bucket}/exported", model)  # what convert --out writes
  chex.assert_trees_all_equal(pretrained.load(f"{bucket}/exported").variables, model.variables)
  assert evaluate.main([f"--workdir={straight}"]) == 0
  assert "step 8 on default: top-1" in capsys.readouterr().out
  paths = [f"{images}/test/cat/0.png", f"{images}/test/dog/1.png"]
  assert predict.main([f"--checkpoint={straight}", "--top=2", *paths]) == 0
  out = capsys.readouterr().out
  assert all(f"{image}\n" in out for image in paths)
  assert sorted(re.findall(r"^ +[01]\.\d{4}  (cat|dog)$", out, re.M)) == ["cat", "cat", "dog", "dog"]


# The commands themselves: a real SIGTERM, and a second trainer started at the same moment.
@pytest.mark.slow
def test_bucket_commands_stop_resume_and_refuse_a_second_trainer(bucket, images, small_config,
                                                                  tfds_dir):
  flags = [f"--config.data.name=folder:{images}", "--config.data.verify_images=no",
           "--config.train.batch_size=8", "--config.train.eval_batch_size=8",
           "--config.train.num_steps=60", "--config.train.log_every_steps=2",
           "--config.train.checkpoint_every_steps=4", "--config.train.eval_every_epochs=0"]
  straight, stopped = f"{bucket}/straight60", f"{bucket}/stopped60"
  loop.train_and_evaluate(bucket_config(small_config, images, 60), straight)
  both = [run_command(stopped, tfds_dir, *flags) for _ in range(2)]
  wait_for(lambda: any(p.poll() is not None for p in both), both[0], "one trainer was refused")
  second = next(p for p in both if p.poll() is not None)
  first = both[1 - both.index(second)]
  refused = second.communicate()[0]
  assert second.returncode == 2, refused[-3000:]
  assert (f"--workdir {stopped} is in use by another run (pid {first.pid} on "
          f"{socket.gethostname()}") in refused, refused[-3000:]
  wait_for(lambda: len(metrics.read_metrics(stopped)) >= 3, first, "the run did not log 3 records")
  # Listed, not read: the run deletes older checkpoints as it goes.
  wait_for(lambda: ocp.utils.checkpoint_steps(epath.Path(stopped, "checkpoints")), first,
           "no checkpoint was committed")
  first.send_signal(signal.SIGTERM)
  output = first.communicate(timeout=120)[0]
  assert first.returncode == 143, output[-3000:]
  assert final_state(stopped)[1]["step"] < 60
  resumed = run_command(stopped, tfds_dir, *flags)
  output = resumed.communicate(timeout=600)[0]
  assert resumed.returncode == 0 and "Resumed from step" in output, output[-3000:]
  assert_same_run(straight, stopped)


def test_a_stale_lease_is_taken_over_and_a_live_one_refused(bucket, small_config, caplog):
  folder = f"{bucket}/leased"
  lease = epath.Path(folder, workdir_lib.LOCK_FILE)
  lease.write_text('{"pid": 4321, "host": "gone", "since": "then", "heartbeat": 0}')
  config = small_config()
  with caplog.at_level("WARNING"), workdir_lib.Workdir(folder, config):
    assert "Taking over the lock of gs://runs/leased: pid 4321 on gone" in caplog.text
    with pytest.raises(errors.StorageError, match=r"^--workdir gs://runs/leased is in use by "
                       rf"another run \(pid {os.getpid()} on "):
      workdir_lib.Workdir(folder, config).__enter__()
  assert not lease.exists()


def test_paths_of_an_unknown_scheme_or_a_store_orbax_cannot_write_are_refused(small_config):
  from resnet_jax import data
  config = small_config()
  for workdir in ("ftp://x/run", "s3://x/run"):
    with pytest.raises(errors.InvalidInputError, match=rf"^--workdir {workdir}: orbax-checkpoint "
                       "writes checkpoints to local folders and gs:// buckets only"):
      loop.train_and_evaluate(config, workdir)
  config.data.name = "folder:ftp://x/images"
  with pytest.raises(errors.InvalidInputError, match=r"^ftp://x/images: resnet_jax reads and "
                     "writes local paths and gs://, s3:// URLs; give one of those.$"):
    data.open(config.data)


def test_a_tfds_dataset_in_a_bucket_is_prepared_once_and_copied_to_each_host(bucket, small_config,
                                                                            tmp_path, caplog):
  from resnet_jax import data
  config = small_config().data
  config.data_dir = f"{bucket}/tfds"
  infos = []
  for host in ("host0", "host1"):  # each with its own copy, which tfds reads
    config.mirror_dir = str(tmp_path / host)
    with caplog.at_level("INFO"):
      dataset = data.open(config)
    infos.append(dataset.info)
    assert 0 <= int(dataset.splits.train[len(dataset.splits.train) - 1]["label"]) < 10
  assert caplog.text.count("Preparing digits in") == 1  # by the first; the second copies it
  assert f"Copying {bucket}/tfds/digits/1.0.0 to {tmp_path / 'host1'}" in caplog.text
  assert epath.Path(bucket, "tfds", "digits", "1.0.0", "dataset_info.json").exists()
  assert infos[0].identity == infos[1].identity and infos[0].num_train > 1000
