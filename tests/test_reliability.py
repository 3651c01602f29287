"""The reliability promises (README "Reliability"): exact resume, preemption, atomic and validated
checkpoints, numerical faults, bad input rejected before compiling, safe loading, determinism."""

import errno
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import chex
import jax
import numpy as np
import pytest

from resnet_jax import data, errors, saved
from resnet_jax.train import checkpoint, loop, metrics, step, workdir as workdir_lib
from resnet_jax.train.preemption import Preempted, PreemptionWatcher

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMING = ("images_per_sec",)


def final_state(workdir):
  return saved.read_checkpoint(os.path.join(workdir, "checkpoints"))


def comparable_metrics(workdir):
  return [{k: v for k, v in r.items() if k not in TIMING} for r in metrics.read_metrics(workdir)]


def assert_same_run(a, b):
  state_a, meta_a = final_state(a)
  state_b, meta_b = final_state(b)
  assert meta_a["step"] == meta_b["step"]
  chex.assert_trees_all_equal(state_a, state_b)  # bitwise: params, stats, optimizer, sums
  assert comparable_metrics(a) == comparable_metrics(b)


def stop_at(monkeypatch, step, signum=signal.SIGTERM):
  """Makes the run behave as if `signum` arrived during step `step`."""
  def should_stop(self, done):
    if done == step:
      self.signum = signum
    return self.signum is not None
  monkeypatch.setattr(PreemptionWatcher, "should_stop", should_stop)


# 1. Exact resume, under either runner (each turns its device state into the checkpoint's
# replicated arrays its own way; pmap in the slow tier, for the default tier's time).
@pytest.mark.parametrize("runner", ["mesh", pytest.param("pmap", marks=pytest.mark.slow)])
def test_interrupted_and_resumed_run_is_bitwise_identical(small_config, tmp_path, monkeypatch,
                                                          runner):
  config = small_config(num_steps=7, train={"runner": runner})
  loop.train_and_evaluate(config, str(tmp_path / "straight"))
  with monkeypatch.context() as patch:
    stop_at(patch, 3)  # between checkpoints and log steps
    with pytest.raises(Preempted) as info:
      loop.train_and_evaluate(config, str(tmp_path / "resumed"))
  assert info.value.step == 3 and info.value.exit_code == 143
  assert saved.read_checkpoint(str(tmp_path / "resumed" / "checkpoints"))[1]["step"] == 3
  loop.train_and_evaluate(config, str(tmp_path / "resumed"))
  assert_same_run(str(tmp_path / "straight"), str(tmp_path / "resumed"))


def run_command(workdir, tfds_dir, *flags):
  return subprocess.Popen(
      [sys.executable, "-m", "experiments.train", f"--workdir={workdir}",
       f"--config.data.data_dir={tfds_dir}", "--config.model.name=resnet8",
       "--config.data.image_size=8", "--config.data.crop_padding=1",
       "--config.optim.warmup_epochs=0", "--config.optim.schedule=constant",
       "--config.train.batch_size=64", "--config.train.eval_batch_size=128",
       "--config.train.progress_bar=no", *flags],  # small_config's step: compiled once
      cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_for(ready, process, what, timeout=300):
  """Polls `ready()` until it is true; fails if `process` exits or `timeout` passes first."""
  deadline = time.time() + timeout
  while not ready():
    assert process.poll() is None, process.stdout.read()[-3000:]
    assert time.time() < deadline, f"{what} in time"
    time.sleep(0.2)


def has_checkpoint(workdir):
  try:
    final_state(workdir)
  except FileNotFoundError:
    return False
  return True


SIGNAL_RUN_FLAGS = ["--config.train.num_steps=40", "--config.train.log_every_steps=2",
                    "--config.train.checkpoint_every_steps=4", "--config.train.eval_every_epochs=0"]


@pytest.fixture(scope="module")
def straight_command_run(small_config, tmp_path_factory):
  """The uninterrupted run both signals are compared with (run once, in-process: the config of
  `run_command` with SIGNAL_RUN_FLAGS)."""
  workdir = str(tmp_path_factory.mktemp("straight"))
  loop.train_and_evaluate(small_config(num_steps=40, train={"checkpoint_every_steps": 4}),
                          workdir)
  return workdir


# 1 and 2. Real signals: SIGTERM checkpoints and exits 143; a crash (SIGKILL) loses only the work
# since the last checkpoint; both resume to the uninterrupted result. Slow-marked for the default
# tier's time: there test_multiprocess sends a real SIGTERM (exit 143, checkpoint at the stopped
# step) and a real SIGKILL (the restart resumes), and
# test_interrupted_and_resumed_run_is_bitwise_identical resumes bitwise from a stop.
@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL])
def test_killed_command_resumes_to_the_uninterrupted_result(tfds_dir, tmp_path, signum,
                                                           straight_command_run):
  interrupted = run_command(tmp_path / "run", tfds_dir, *SIGNAL_RUN_FLAGS)
  wait_for(lambda: len(metrics.read_metrics(tmp_path / "run")) >= 3, interrupted,
           "the run did not log 3 records")
  # Saves are asynchronous: a logged step may not have a committed checkpoint yet.
  wait_for(lambda: has_checkpoint(tmp_path / "run"), interrupted, "no checkpoint was committed")
  interrupted.send_signal(signum)
  output = interrupted.communicate(timeout=120)[0]
  if signum == signal.SIGTERM:
    assert interrupted.returncode == 143, output[-3000:]
    assert "SIGTERM received" in output and "resumes from this checkpoint" in output
  else:
    assert interrupted.returncode == -signal.SIGKILL
  stopped_at = final_state(tmp_path / "run")[1]["step"]
  assert stopped_at < 40
  resumed = run_command(tmp_path / "run", tfds_dir, *SIGNAL_RUN_FLAGS)
  output = resumed.communicate(timeout=600)[0]
  assert resumed.returncode == 0, output[-3000:]
  assert f"Resumed from step {stopped_at}" in output
  assert_same_run(straight_command_run, str(tmp_path / "run"))


# 2. A second signal stops at once, without a checkpoint.
def test_second_signal_exits_immediately(tmp_path):
  script = (
      "import os, signal, time\n"
      "from resnet_jax.train.preemption import PreemptionWatcher\n"
      "with PreemptionWatcher() as w:\n"
      "  w.start_training()\n"
      "  os.kill(os.getpid(), signal.SIGINT)\n"
      # Delivery is asynchronous: the handler runs in the main thread at its next check.
      "  deadline = time.time() + 10\n"
      "  while w.signum is None and time.time() < deadline:\n"
      "    time.sleep(0.01)\n"
      "  assert w.should_stop(1) and w.signum == signal.SIGINT\n"
      "  print('first noted', flush=True)\n"
      "  os.kill(os.getpid(), signal.SIGINT)\n"
      "  time.sleep(30)\n"
      "print('not reached')\n")
  start = time.time()
  result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60, cwd=REPO)
  assert result.returncode == 130 and time.time() - start < 20
  assert "first noted" in result.stdout and "not reached" not in result.stdout
  assert "exiting immediately" in result.stderr


# 3. Atomic, validated checkpoints.
def test_unfinished_and_corrupt_checkpoints_are_reported_and_skipped(small_config, tmp_path,
                                                                     caplog):
  config = small_config(num_steps=6)
  loop.train_and_evaluate(config, str(tmp_path / "straight"))
  workdir = str(tmp_path / "run")
  loop.train_and_evaluate(small_config(num_steps=6), workdir)
  ckpts = os.path.join(workdir, "checkpoints")
  # A save killed half-way leaves a temporary folder; a damaged disk leaves a broken checkpoint.
  os.makedirs(os.path.join(ckpts, "8.orbax-checkpoint-tmp-1234"))
  for root, _, files in os.walk(os.path.join(ckpts, "6", "state")):
    for name in files:
      with open(os.path.join(root, name), "wb") as f:
        f.write(b"\0garbage")
  config.train.num_steps = 6
  with caplog.at_level("WARNING"):
    loop.train_and_evaluate(config, workdir)
  text = caplog.text
  assert "unfinished checkpoint" in text and "8.orbax-checkpoint-tmp-1234" in text
  assert "Checkpoint 6" in text and "corrupt or incomplete" in text and "6.corrupt" in text
  assert "Resuming from checkpoint 4, not the newest (6)" in text
  state, _ = final_state(workdir)
  chex.assert_trees_all_equal(state, final_state(str(tmp_path / "straight"))[0])


def test_checkpoint_of_another_model_or_config_is_refused(small_config, tmp_path):
  workdir = str(tmp_path)
  loop.train_and_evaluate(small_config(num_steps=2), workdir)
  other = small_config(num_steps=2)
  other.model.name = "resnet20"
  with pytest.raises(ValueError, match=r"another config \(model: saved .*resnet8.*resnet20"):
    loop.train_and_evaluate(other, workdir)
  os.remove(os.path.join(workdir, "config.json"))  # the checkpoint itself still knows
  with pytest.raises(checkpoint.CheckpointMismatchError,
                     match=r"different run \(model: saved .*resnet8.*, now .*resnet20"):
    loop.train_and_evaluate(other, workdir)
  assert saved.read_checkpoint(os.path.join(workdir, "checkpoints"))[1]["identity"]["model"][
      "name"] == "resnet8"  # never overwritten


# 4. Numerical faults.
def test_nonfinite_loss_stops_with_the_step_and_saves_nothing_poisoned(small_config, tmp_path):
  config = small_config(num_steps=40, optim={"learning_rate": 1e30, "schedule": "constant"})
  # An input error: the commands print it in one line, naming the settings to lower.
  with pytest.raises(errors.InputError, match=r"Non-finite (loss|gradient) at step \d+; .* Lower "
                     r"optim\.learning_rate, set optim\.clip_norm") as info:
    loop.train_and_evaluate(config, str(tmp_path))
  assert isinstance(info.value, loop.NonFiniteError)
  ckpts = os.path.join(str(tmp_path), "checkpoints")
  if os.path.isdir(ckpts) and os.listdir(ckpts):
    state, _ = saved.read_checkpoint(ckpts)
    chex.assert_tree_all_finite(state["params"])
    assert int(state["first_nonfinite_step"]) == -1


# 5. Bad input, rejected before anything is compiled.
LOWERING_EVENTS = ("/jax/core/compile/jaxpr_to_mlir_module_duration",
                   "/jax/core/compile/backend_compile_duration")


@pytest.fixture
def no_compiling_after_first_run():
  """Call it to fail the test if anything is lowered for XLA from then on (the first step of
  every compilation, also of one the persistent cache then serves)."""
  lowered, listening = [], []
  listen = lambda event, duration, **kwargs: lowered.append(event) \
      if event in LOWERING_EVENTS else None

  def start():
    jax.monitoring.register_event_duration_secs_listener(listen)
    listening.append(True)

  yield start
  if listening:
    jax.monitoring.unregister_event_duration_listener(listen)
  assert not lowered, "compiled before rejecting the input"


@pytest.fixture
def no_compiling(no_compiling_after_first_run):
  """Fails the test if anything is lowered for XLA in it."""
  no_compiling_after_first_run()


BAD_INPUTS = [
    ("model", {"model": {"name": "resnet5"}}, "Unknown model.name 'resnet5'.*resnet50"),
    ("dataset", {"data": {"name": "cifar11"}}, "Unknown dataset 'cifar11'.*cifar10.*folder:DIR"),
    ("optimizer", {"optim": {"name": "adam"}}, "Unknown optim.name 'adam'.*adamw"),
    ("batch", {"train": {"batch_size": 60}}, "multiple of the device count \\(8\\)"),
    ("stem", {"model": {"name": "resnet18"}}, "too small.*at least 32x32.*image_size"),
    ("steps", {"train": {"num_steps": -1}}, "must be >= 0"),
    ("no_steps", {"train": {"num_steps": 0, "num_epochs": 0.0}}, "positive value"),
    ("lr", {"optim": {"learning_rate": 0.0}}, "learning_rate must be positive"),
    ("lr_inf", {"optim": {"learning_rate": float("inf")}}, "learning_rate=inf must be a finite"),
    ("workers", {"data": {"num_workers": -1}}, "num_workers must be >= 0"),
    ("precision", {"train": {"precision": "fp8"}}, "Unknown train.precision"),
]


@pytest.mark.parametrize("what,sections,message", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_is_rejected_before_compiling(small_config, tmp_path, no_compiling, what,
                                                sections, message):
  config = small_config()
  for section, values in sections.items():
    config[section].update(values)
  with pytest.raises(errors.InvalidInputError, match=message):
    loop.train_and_evaluate(config, str(tmp_path / "run"))
  assert not os.path.exists(tmp_path / "run")  # a refused run leaves no folder behind


def test_bad_paths_are_rejected_before_compiling(small_config, tmp_path, no_compiling):
  from PIL import Image
  file = tmp_path / "a_file"
  file.write_text("x")
  with pytest.raises(ValueError, match="is a file"):
    loop.train_and_evaluate(small_config(), str(file))
  config = small_config()
  config.data.name = "imagenet2012"
  config.data.data_dir = str(tmp_path / "tfds")
  with pytest.raises(FileNotFoundError, match="ILSVRC2012_img_train.tar.*downloads/manual"):
    loop.train_and_evaluate(config, str(tmp_path / "imagenet"))
  empty = tmp_path / "empty"
  (empty / "train").mkdir(parents=True)
  config.data.name = f"folder:{empty}"
  with pytest.raises(ValueError, match="no class subfolders"):
    loop.train_and_evaluate(config, str(tmp_path / "run_empty"))
  folder = tmp_path / "images"
  for split in ("train", "test"):
    for label in ("cat", "dog"):
      (folder / split / label).mkdir(parents=True)
      Image.new("RGB", (8, 8)).save(folder / split / label / "ok.png")
  (folder / "train" / "cat" / "broken.jpg").write_bytes(b"not an image")
  config.data.name = f"folder:{folder}"
  with pytest.raises(ValueError, match="Cannot read image .*broken.jpg"):
    loop.train_and_evaluate(config, str(tmp_path / "run_broken"))


# 7. Determinism.
def test_same_config_and_seed_give_identical_runs(small_config, tmp_path):
  for name in ("a", "b"):
    loop.train_and_evaluate(small_config(num_steps=4), str(tmp_path / name))
  assert_same_run(str(tmp_path / "a"), str(tmp_path / "b"))
  other = small_config(num_steps=4)
  other.seed = 1
  loop.train_and_evaluate(other, str(tmp_path / "c"))
  assert not np.array_equal(final_state(str(tmp_path / "a"))[0]["params"]["fc"]["kernel"],
                            final_state(str(tmp_path / "c"))[0]["params"]["fc"]["kernel"])


# 8. Resume never destroys anything: a changed setting that alters the train state is refused
# before compiling, and nothing in the run folder changes.
# (`finished_run`, in conftest.py: a finished 4-step run; tests change copies of it.)
def copy_run(source, tmp_path):
  target = str(tmp_path / "run")
  shutil.copytree(source, target)
  return target


def snapshot(workdir):
  """Every file of a run folder (checkpoints, config.json, metrics, TensorBoard) and its bytes."""
  files = {}
  for root, _, names in os.walk(workdir):
    for name in names:
      if name != workdir_lib.LOCK_FILE:
        path = os.path.join(root, name)
        with open(path, "rb") as f:
          files[os.path.relpath(path, workdir)] = f.read()
  return files


STATE_CHANGES = [("optim.weight_decay", 0.0, 0.0005), ("optim.clip_norm", 1.0, 0.0),
                 ("optim.momentum", 0.0, 0.9), ("init.backbone_lr_scale", 0.5, 1.0)]


@pytest.mark.parametrize("key,value,saved", STATE_CHANGES, ids=[c[0] for c in STATE_CHANGES])
def test_a_setting_that_changes_the_state_is_refused_and_nothing_is_touched(
    small_config, finished_run, tmp_path, no_compiling, key, value, saved):
  workdir = copy_run(finished_run, tmp_path)
  before = snapshot(workdir)
  config = small_config(num_steps=6)
  section, field = key.split(".")
  config[section][field] = value
  with pytest.raises(errors.InvalidInputError,
                     match=rf": {re.escape(key)} \(saved {saved}, now {value}\) changes the "
                           r"structure of the train state in its checkpoint 4 \(opt_state/.*\)\. "
                           r"Resume with the saved values"):
    loop.train_and_evaluate(config, workdir)
  assert snapshot(workdir) == before  # no checkpoint moved, config.json and metrics as they were


def test_repeating_a_refused_resume_leaves_the_first_run_in_place(small_config, finished_run,
                                                                  tmp_path, no_compiling):
  # The four commands of the report: run, resume changed, rerun, resume changed again.
  workdir = copy_run(finished_run, tmp_path)
  before = snapshot(workdir)
  for _ in range(2):
    with pytest.raises(errors.InvalidInputError, match="optim.weight_decay"):
      loop.train_and_evaluate(small_config(num_steps=6, optim={"weight_decay": 0.0}), workdir)
    final = loop.train_and_evaluate(small_config(num_steps=4), workdir)  # finished: reported
    assert final["final"] and final["step"] == 4
  assert snapshot(workdir) == before  # one final record, every checkpoint, nothing moved aside
  assert [r["step"] for r in metrics.read_metrics(workdir) if r.get("final")] == [4]


def test_a_state_written_by_another_version_is_reported_as_such(small_config, finished_run,
                                                                tmp_path, monkeypatch,
                                                                no_compiling):
  workdir = copy_run(finished_run, tmp_path)
  names = step.metric_names
  monkeypatch.setattr(step, "metric_names", lambda config: names(config) + ("new",))
  with pytest.raises(errors.InvalidInputError,
                     match=r"no setting explains the structure of the train state in its "
                           r"checkpoint 4 \(metric_sums/new only in this run\), so another "
                           r"version of resnet_jax wrote it"):
    loop.train_and_evaluate(small_config(num_steps=6), workdir)


def flip_bytes(path, count=4096):
  """XORs `count` bytes in the middle of a file, as a failing disk or a bad copy would."""
  with open(path, "r+b") as f:
    data = bytearray(f.read())
    middle = len(data) // 2
    for i in range(middle, min(len(data), middle + count)):
      data[i] ^= 0xFF
    f.seek(0)
    f.write(data)


def test_a_bit_flip_is_caught_and_the_run_falls_back_to_the_newest_intact_checkpoint(
    small_config, finished_run, tmp_path, caplog):
  workdir = copy_run(finished_run, tmp_path)
  state_dir = os.path.join(workdir, "checkpoints", "4", "state")
  files = [os.path.join(root, n) for root, _, names in os.walk(state_dir) for n in names]
  flip_bytes(max(files, key=os.path.getsize))
  # A run killed before it could release its lock leaves the lock file behind.
  with open(os.path.join(workdir, workdir_lib.LOCK_FILE), "w") as f:
    f.write('{"pid": 999999, "host": "gone-host", "since": "2026-01-01T00:00:00"}')
  with caplog.at_level("WARNING"):
    loop.train_and_evaluate(small_config(num_steps=4), workdir)
  text = caplog.text
  assert "Taking over the lock" in text and "999999" in text and "gone-host" in text
  # A flipped byte in a compressed chunk fails to decode; in a plain one, the checksum differs.
  assert re.search(r"Checkpoint 4 in .* is corrupt or incomplete \((checksum mismatch|.*Error)",
                   text) and "moved to" in text and "4.corrupt" in text
  assert "Resuming from checkpoint 2, not the newest (4)" in text
  assert os.path.isdir(os.path.join(workdir, "checkpoints", "4.corrupt"))  # kept, not deleted
  chex.assert_trees_all_equal(final_state(workdir)[0], final_state(finished_run)[0])


def test_arrays_that_read_but_differ_from_their_checksums_are_caught(small_config, finished_run,
                                                                     tmp_path, caplog):
  # Values that decode but are not what was saved: their stored checksum no longer matches.
  workdir = copy_run(finished_run, tmp_path)
  meta_file = os.path.join(workdir, "checkpoints", "4", "meta", "metadata")
  with open(meta_file) as f:
    meta = json.load(f)
  meta["checksums"]["params/fc/kernel"] = "00000000"
  with open(meta_file, "w") as f:
    json.dump(meta, f)
  with caplog.at_level("WARNING"):
    loop.train_and_evaluate(small_config(num_steps=4), workdir)
  assert "Checkpoint 4" in caplog.text and "checksum mismatch in params/fc/kernel" in caplog.text
  assert os.path.isdir(os.path.join(workdir, "checkpoints", "4.corrupt"))
  chex.assert_trees_all_equal(final_state(workdir)[0], final_state(finished_run)[0])


def test_a_second_command_on_the_same_workdir_stops_at_once_naming_the_holder(small_config,
                                                                           tfds_dir, tmp_path):
  config, workdir = small_config(num_steps=2), str(tmp_path / "run")
  with workdir_lib.Workdir(workdir, config):  # a run holding the folder (its flock), in this process
    second = run_command(workdir, tfds_dir, "--config.train.num_steps=2")
    refused = second.communicate(timeout=300)[0]
  assert second.returncode == 2, refused[-3000:]
  assert (f"error: --workdir {workdir} is in use by another run (pid {os.getpid()} on "
          f"{socket.gethostname()}, since ") in refused, refused[-3000:]
  assert loop.train_and_evaluate(config, workdir)["step"] == 2  # released: the folder is usable


def test_a_full_disk_is_reported_at_the_save_that_cannot_be_made(small_config, tmp_path,
                                                                 monkeypatch):
  usage = shutil.disk_usage(tmp_path)
  monkeypatch.setattr(checkpoint.shutil, "disk_usage", lambda path: usage._replace(free=1024))
  with pytest.raises(checkpoint.CheckpointSaveError,
                     match=r"No room to save checkpoint 2 in .*checkpoints: it needs about \d+ MiB, "
                           r"0 MiB are free"):
    loop.train_and_evaluate(small_config(num_steps=4), str(tmp_path / "run"))
  assert not os.listdir(tmp_path / "run" / "checkpoints")  # nothing half-written


def test_a_failed_asynchronous_save_is_reported_once_with_its_cause(small_config, tmp_path,
                                                                    monkeypatch):
  def no_space(self):
    raise OSError(errno.ENOSPC, "No space left on device")
  monkeypatch.setattr(checkpoint.ocp.CheckpointManager, "check_for_errors", no_space)
  with pytest.raises(checkpoint.CheckpointSaveError,
                     match=r"Saving a checkpoint to .*checkpoints failed \(OSError: \[Errno 28\] "
                           r"No space left on device\)"):
    loop.train_and_evaluate(small_config(num_steps=4), str(tmp_path / "run"))


def test_a_read_only_workdir_is_refused_in_one_sentence(small_config, tmp_path, monkeypatch,
                                                        no_compiling):
  def read_only(path, *args, **kwargs):
    raise OSError(errno.EROFS, "Read-only file system", path)
  monkeypatch.setattr(workdir_lib.os, "makedirs", read_only)
  with pytest.raises(errors.StorageError,
                     match=r"Cannot write to --workdir .*run: Read-only file system; choose a "
                           r"writable folder"):
    loop.train_and_evaluate(small_config(), str(tmp_path / "run"))


def test_a_signal_during_setup_stops_at_once_and_leaves_nothing(small_config, tmp_path,
                                                                monkeypatch):
  open_dataset = data.open

  def interrupted(config):
    os.kill(os.getpid(), signal.SIGTERM)  # arrives while the dataset is being opened
    return open_dataset(config)

  monkeypatch.setattr(data, "open", interrupted)
  with pytest.raises(Preempted, match="Stopped by SIGTERM during setup, before the first step; "
                                      "nothing was trained, and no checkpoint or metrics record was "
                                      "lost") as info:
    loop.train_and_evaluate(small_config(), str(tmp_path / "run"))
  assert info.value.exit_code == 143 and not os.path.exists(tmp_path / "run")


def test_a_dataset_whose_classes_changed_is_named_on_resume(small_config, tmp_path,
                                                            no_compiling_after_first_run):
  from PIL import Image
  folder = tmp_path / "images"
  rng = np.random.RandomState(0)
  def add_class(name):
    for split in ("train", "test"):
      (folder / split / name).mkdir(parents=True)
      for i in range(4):
        Image.fromarray(rng.randint(0, 256, (8, 8, 3), np.uint8)).save(
            folder / split / name / f"{i}.png")
  add_class("cat")
  add_class("dog")
  config = small_config(num_steps=2, data={"name": f"folder:{folder}"},
                        train={"batch_size": 8, "eval_batch_size": 8})
  loop.train_and_evaluate(config, str(tmp_path / "run"))
  add_class("eel")
  no_compiling_after_first_run()
  config.train.num_steps = 4
  with pytest.raises(errors.InvalidInputError, match=r"folder:.* now has 3 classes, but its "
                                                     r"checkpoint 2 was trained on 2"):
    loop.train_and_evaluate(config, str(tmp_path / "run"))
