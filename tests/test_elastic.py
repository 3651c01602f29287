"""Elastic resume (README "Elastic resume"): with train.elastic=true a run resumes with another
batch size, reading every example of the interrupted epoch once and its schedule at the new batch
size's rate; without the flag that resume is refused, naming it; another device count needs no
flag.

The training data here encodes each example's index in its image, so the tests read what the
steps were fed (`record_feed`): the host's batches, or the rows the device function
(`DeviceBatches._rows`) slices from the order the feed sends.
"""

import os
import shutil
import signal
import subprocess
import sys

import chex
import jax
import numpy as np
import optax
import pytest

from resnet_jax.configs import default
from resnet_jax import data, saved
from resnet_jax.data import Splits, register_source
from resnet_jax.errors import InvalidInputError
from resnet_jax.train import checkpoint, loop, metrics, optim, parallel, resume
from resnet_jax.train.preemption import Preempted, PreemptionWatcher

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_TRAIN = 384  # whole batches of 32, 64 and 96: an epoch drops no remainder at these sizes
LR, LR_BATCH_BASE = 0.1, 64


def indexed(n, offset):
  """8x8 images whose first two pixels hold the example's index; rows or columns by label."""
  records = []
  for i in range(n):
    image = np.tile((np.arange(8) % 2 * 200)[:, None], (1, 8)).astype(np.uint8)
    image = image if i % 2 == 0 else image.T.copy()
    image[0, 0], image[0, 1] = i % 256, i // 256 + offset
    records.append({"image": image[..., None], "label": i % 2})
  return records


@register_source("indexed", usage="indexed (a test dataset: each image holds its index)")
def open_indexed(data_config):
  del data_config
  return Splits(train=indexed(NUM_TRAIN, 0), eval=indexed(64, 100), class_names=("rows", "cols"),
                native_shape=lambda: (8, 8, 1), mean=(100.0,), std=(90.0,))


def index_of(images):
  images = np.asarray(images)
  return images[:, 0, 0, 0].astype(np.int64) + 256 * images[:, 0, 1, 0].astype(np.int64)


def elastic_config(batch_size, *, resident, elastic=False):
  config = default.get_config()
  config.model.name = "resnet8"
  config.data.update(name="indexed", image_size=0, crop_padding=0,
                     device_resident="yes" if resident else "no")
  # A warm-up over the first epoch: the rate differs at every step, and scales with the batch.
  config.optim.update(learning_rate=LR, lr_batch_base=LR_BATCH_BASE, schedule="constant",
                      warmup_epochs=1.0, warmup_start_factor=0.0)
  config.train.update(batch_size=batch_size, eval_batch_size=64, num_epochs=2.0, num_steps=0,
                      log_every_steps=2, eval_every_epochs=0.0, checkpoint_every_steps=0,
                      progress_bar="no", elastic=elastic)
  return config


def stop_at(monkeypatch, step):
  """Makes the run behave as if SIGTERM arrived during step `step`."""
  def should_stop(self, done):
    if done == step:
      self.signum = signal.SIGTERM
    return self.signum is not None
  monkeypatch.setattr(PreemptionWatcher, "should_stop", should_stop)


def record_feed(monkeypatch, fed):
  """Appends to `fed` the example indices of each global batch the loop takes from the feed."""
  original = data.Pipeline.train_feed

  def train_feed(self, start_step, placement, steps=None):
    feed = original(self, start_step, placement, steps)
    rows = None
    try:
      for step, (inputs, arrays) in enumerate(feed, start_step):
        if arrays is None:  # host-fed: the images themselves
          fed.append(index_of(jax.device_get(inputs["image"])))
        else:  # resident: what the steps' device function slices from the order sent
          batches = self.device_batches("batch")
          rows = rows or jax.pmap(lambda order, s: batches._rows({"order": order}, s),
                                  axis_name="batch", in_axes=(None, 0))
          fed.append(np.asarray(rows(np.asarray(jax.device_get(arrays["order"])),
                                     np.full(jax.device_count(), step))).reshape(-1))
        yield inputs, arrays
    finally:
      feed.close()
  monkeypatch.setattr(data.Pipeline, "train_feed", train_feed)


def interrupted(config, workdir, step, monkeypatch):
  """Trains `config` in `workdir` until SIGTERM stops it after `step` (checkpointing there)."""
  with monkeypatch.context() as patch:
    stop_at(patch, step)
    with pytest.raises(Preempted) as info:
      loop.train_and_evaluate(config, workdir)
  assert info.value.step == step


def learning_rates(workdir, after):
  return {r["step"]: (r["learning_rate"], r["epoch"]) for r in metrics.read_metrics(workdir)
          if "learning_rate" in r and r["step"] > after}


def schedule_count(workdir):
  """The optimizer's schedule count (optax's ScaleByScheduleState) in the newest checkpoint."""
  state, _ = saved.read_checkpoint(os.path.join(workdir, "checkpoints"))
  counts = [v for path, v in jax.tree_util.tree_leaves_with_path(state["opt_state"])
            if "count" in jax.tree_util.keystr(path)]
  assert len(counts) == 1, counts  # sgd: the schedule's count only
  return int(counts[0])


@pytest.mark.parametrize("old,stop,new,resident,devices", [
    (64, 2, 32, False, 4),  # host-fed; resumed on 4 of the 8 devices
    pytest.param(32, 3, 96, True, 8, marks=pytest.mark.slow),  # device-resident, nightly
])
def test_an_elastic_resume_reads_each_example_of_the_epoch_once_at_the_new_rate(
    tmp_path, monkeypatch, old, stop, new, resident, devices):
  workdir = str(tmp_path / "run")
  fed = []
  record_feed(monkeypatch, fed)
  interrupted(elastic_config(old, resident=resident), workdir, stop, monkeypatch)
  assert [len(f) for f in fed] == [old] * stop

  # Resumed with the new batch size until the end of the interrupted epoch: its remaining
  # examples fill whole batches of the new size.
  consumed = stop * old
  remaining = (NUM_TRAIN - consumed) // new
  make_runner = parallel.make_runner
  monkeypatch.setattr(parallel, "make_runner",
                      lambda name, _=None: make_runner(name, jax.devices()[:devices]))
  interrupted(elastic_config(new, resident=resident, elastic=True), workdir, stop + remaining,
              monkeypatch)
  assert [len(f) for f in fed] == [old] * stop + [new] * remaining
  seen = np.concatenate(fed)
  np.testing.assert_array_equal(np.sort(seen), np.arange(NUM_TRAIN))  # each exactly once
  np.testing.assert_array_equal(seen, data.pipeline.epoch_permutation(0, 0, NUM_TRAIN))

  # The schedule stands where the examples do: `consumed` examples are consumed / new steps of
  # the new batch size, whose warm-up lasts NUM_TRAIN / new steps up to LR * new / LR_BATCH_BASE.
  steps_per_epoch = NUM_TRAIN // new
  logged = learning_rates(workdir, after=stop)
  assert logged, "no record after the resume"
  for step, (rate, epoch) in logged.items():
    schedule_step = consumed // new + step - stop
    assert epoch == schedule_step / steps_per_epoch
    assert rate == pytest.approx(LR * new / LR_BATCH_BASE * (schedule_step - 1) / steps_per_epoch,
                                 rel=1e-6)
  assert logged[max(logged)][1] == 1.0  # the epoch ended where it ends at the new batch size
  assert schedule_count(workdir) == steps_per_epoch  # what the optimizer's schedule reads


def test_at_the_end_of_the_resumed_epoch_only_what_fills_no_new_batch_is_dropped():
  """Resumed at example 64 of 384 with batch 96: three batches (288 examples) fill the epoch,
  the last 32 of its order are dropped, as every epoch's remainder is, and the next epoch is an
  uninterrupted batch-96 run's; host-fed and device-resident runs read the same examples."""
  config = elastic_config(96, resident=False).data
  dataset = data.open(config)
  host = data.Pipeline(config, dataset, global_batch_size=96, eval_batch_size=64, seed=0)
  resident = data.Pipeline(elastic_config(96, resident=True).data, dataset, global_batch_size=96,
                           eval_batch_size=64, seed=0)
  steps = data.EpochSteps.resume(data.EpochPosition(epoch=0, examples=64), 2, num_train=NUM_TRAIN,
                                 global_batch_size=96)
  assert steps.schedule_step(2) == 1  # three steps left in the epoch, as from 96 of 384
  batches = host.train_batches(2, steps)
  fed = [index_of(next(batches)["image"]) for _ in range(3 + 4)]
  order = [data.pipeline.epoch_permutation(0, epoch, NUM_TRAIN) for epoch in (0, 1)]
  np.testing.assert_array_equal(np.concatenate(fed[:3]), order[0][64:352])
  np.testing.assert_array_equal(np.concatenate(fed[3:]), order[1])  # the whole next epoch
  assert steps.position(5) == data.EpochPosition(epoch=1, examples=0)
  # Resumed again within that epoch, at the same batch size: the same steps.
  assert data.EpochSteps.resume(steps.position(3), 3, num_train=NUM_TRAIN,
                                global_batch_size=96) == steps
  fresh = host.train_batches(4)  # an uninterrupted run's next epoch, from its step 4
  np.testing.assert_array_equal(np.concatenate(fed[3:]),
                                np.concatenate([index_of(next(fresh)["image"]) for _ in range(4)]))
  rows = jax.pmap(lambda order, s: resident.device_batches("batch")._rows({"order": order}, s),
                  axis_name="batch", in_axes=(None, 0))
  on_device = [np.asarray(rows(resident.epoch_order(steps.epoch(s), steps),
                               np.full(jax.device_count(), s))).reshape(-1) for s in range(2, 9)]
  np.testing.assert_array_equal(np.concatenate(on_device), np.concatenate(fed))


def test_a_checkpoint_saved_before_elastic_resumes_says_where_it_stood():
  meta = {"data_position": 25, "steps_per_epoch": 22, "identity": {"train.batch_size": 64}}
  assert resume.saved_position(meta, 25, 1438, 32) == (data.EpochPosition(1, 3 * 64), 25)
  meta = {"data_position": {"epoch": 1, "examples": 192}, "schedule_step": 30}
  assert resume.saved_position(meta, 25, 1438, 32) == (data.EpochPosition(1, 192), 30)


def test_the_moved_schedule_count_gives_the_new_steps_rate():
  config = elastic_config(32, resident=False).optim
  config.update(momentum=0.0, weight_decay=0.0)
  tx, schedule = optim.make_optimizer(config, steps_per_epoch=12, total_steps=24, batch_size=32)
  params = {"w": np.zeros(3, np.float32)}
  state = optim.move_schedule(tx.init(params), 7)
  updates, _ = tx.update({"w": np.ones(3, np.float32)}, state, params)
  np.testing.assert_allclose(updates["w"], -float(schedule(7)), rtol=1e-6)
  assert float(schedule(7)) == pytest.approx(LR * 32 / LR_BATCH_BASE * 7 / 12)
  with pytest.raises(InvalidInputError, match="saved train.batch_size"):
    optim.move_schedule(optax.scale(-1.0).init(params), 1)  # it keeps no schedule count


def test_a_changed_batch_size_is_refused_naming_the_flag_on_the_command_line(finished_run,
                                                                              tfds_dir):
  command = subprocess.run(
      [sys.executable, "-m", "experiments.train", "--config=experiments/configs/default.py",
       f"--workdir={finished_run}", f"--config.data.data_dir={tfds_dir}",
       "--config.model.name=resnet8", "--config.data.image_size=8",
       "--config.train.batch_size=32"], cwd=REPO, capture_output=True, text=True, timeout=300)
  assert command.returncode == 2, command.stderr[-3000:]
  lines = [line for line in command.stderr.splitlines() if line.strip()]
  assert len(lines) == 1, command.stderr[-3000:]
  assert lines[0] == (f"error: --workdir {finished_run} holds a run of another config "
                      "(train.batch_size: saved 64, now 32, which only train.elastic=true "
                      "allows); choose a new --workdir, or the same config to resume it.")


def test_the_checkpoint_refuses_it_too_and_elastic_runs_keep_their_length_in_epochs(
    small_config, finished_run, tmp_path):
  workdir = str(tmp_path / "run")
  shutil.copytree(finished_run, workdir)
  os.remove(os.path.join(workdir, "config.json"))  # the checkpoint itself still knows
  with pytest.raises(checkpoint.CheckpointMismatchError,
                     match=r"train\.batch_size: saved 64, now 32.*train\.elastic=true"):
    loop.train_and_evaluate(small_config(num_steps=4, train={"batch_size": 32}), workdir)
  # small_config counts its length in steps, which a new batch size would move to other epochs.
  elastic = small_config(num_steps=4, train={"batch_size": 32, "elastic": True})
  with pytest.raises(InvalidInputError, match=r"train\.num_steps=4 counts steps; set "
                     r"train\.num_steps=0 and train\.num_epochs=0\.181818"):
    loop.train_and_evaluate(elastic, workdir)
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2", "4"]  # untouched


def test_another_device_count_resumes_without_the_flag(small_config, finished_run, tmp_path,
                                                       monkeypatch):
  """The checkpoint holds one replica's state: written on 8 devices, it resumes on 4 and ends
  where the uninterrupted 8-device run ends, up to the order of the sums over devices."""
  workdir = str(tmp_path / "run")
  shutil.copytree(finished_run, workdir)
  shutil.rmtree(os.path.join(workdir, "checkpoints", "4"))  # as if stopped after step 2
  make_runner = parallel.make_runner
  monkeypatch.setattr(parallel, "make_runner",
                      lambda name, _=None: make_runner(name, jax.devices()[:4]))
  final = loop.train_and_evaluate(small_config(num_steps=4), workdir)
  assert final["step"] == 4
  resumed, _ = saved.read_checkpoint(os.path.join(workdir, "checkpoints"))
  straight, _ = saved.read_checkpoint(os.path.join(finished_run, "checkpoints"))
  chex.assert_trees_all_close(resumed["params"], straight["params"], rtol=1e-4, atol=1e-5)
  assert int(resumed["step"]) == 4
