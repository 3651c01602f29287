"""Nothing lost (README "Reliability"): a stop signal, a full disk or a damaged file at any moment
of the commands leaves every checkpoint and metrics record that existed; run files are written
atomically; an evaluation that fails cannot throw training away; a dataset keeps its identity; every
reader verifies checksums. Faults are made as a user meets them: a real signal sent when a given
file is opened, a real size limit (ulimit -f)."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys

import chex
import pytest
from PIL import Image

from resnet_jax import errors, pretrained
from resnet_jax.data import folder as folder_lib
from resnet_jax.train import checkpoint, evaluate, loop, metrics
from test_reliability import (REPO, assert_same_run, comparable_metrics, copy_run, final_state,
                              no_compiling, no_compiling_after_first_run, snapshot)  # noqa: F401

SMALL = ["--config.model.name=resnet8", "--config.data.image_size=8",
         "--config.data.crop_padding=1", "--config.optim.warmup_epochs=0",
         "--config.optim.schedule=constant", "--config.train.batch_size=64",
         "--config.train.eval_batch_size=128", "--config.train.progress_bar=no",
         "--config.train.log_every_steps=2", "--config.train.eval_every_epochs=0",
         "--config.train.checkpoint_every_steps=2"]  # small_config's step: compiled once

# Runs a command module with an audit hook that sends FAULT_SIGNAL to the process when the
# FAULT_NTH-th file whose path matches FAULT_OPEN is opened (for writing, with FAULT_WRITE=1).
# The signal is sent from the hook, so its handler runs before the file is opened; or, with
# FAULT_WRITE=1, 2 ms later from a thread the hook starts, so that it lands while a large file is
# being written.
FAULT_HOOK = """
import os, re, runpy, sys, threading
pattern, signum = re.compile(os.environ["FAULT_OPEN"]), int(os.environ["FAULT_SIGNAL"])
nth, writes_only, seen = int(os.environ["FAULT_NTH"]), os.environ["FAULT_WRITE"] == "1", []
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT
def writes(mode, flags):
  return any(c in mode for c in "wax+") if isinstance(mode, str) else bool(flags & WRITE_FLAGS)
def hook(event, args):
  if event == "open" and isinstance(args[0], str) and len(seen) < nth and pattern.search(args[0]) \\
      and (not writes_only or writes(args[1], args[2])):
    seen.append(args[0])
    if len(seen) == nth:
      print("fault: signal", signum, "at", args[0], file=sys.stderr, flush=True)
      if writes_only:  # a moment later: while the file is written
        threading.Timer(0.002, os.kill, (os.getpid(), signum)).start()
      else:
        os.kill(os.getpid(), signum)
sys.addaudithook(hook)
module, sys.argv = sys.argv[1], sys.argv[1:]
runpy.run_module(module, run_name="__main__", alter_sys=True)
"""


def command(module, *args, fault=None, file_size=None, cwd=REPO):
  """Runs `python -m module args`; `fault`: (path pattern, signal, nth open, writes only);
  `file_size`: the largest file it may write, in bytes (`ulimit -f`)."""
  env = dict(os.environ)
  head = [sys.executable, "-m", module]
  if fault:
    pattern, signum, nth, writes_only = fault
    env.update(FAULT_OPEN=pattern, FAULT_SIGNAL=str(int(signum)), FAULT_NTH=str(nth),
               FAULT_WRITE="1" if writes_only else "0")
    head = [sys.executable, "-c", FAULT_HOOK, module]
  argv = [*head, *map(str, args)]
  if file_size:  # in 1024-byte blocks, as bash counts them
    argv = ["bash", "-c", f"ulimit -f {file_size // 1024} && exec \"$@\"", "bash", *argv]
  return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def train(workdir, tfds_dir, *flags, **kwargs):
  return command("experiments.train", f"--workdir={workdir}",
                 f"--config.data.data_dir={tfds_dir}", *SMALL, *flags, **kwargs)


def error_lines(result):
  return [line for line in result.stderr.splitlines() if line.startswith("error:")]


def assert_one_line_error(result, pattern):
  assert result.returncode == 2, result.stderr[-3000:]
  assert "Traceback" not in result.stderr, result.stderr[-3000:]
  assert len(error_lines(result)) == 1 and re.search(pattern, error_lines(result)[0]), \
      result.stderr[-3000:]


@pytest.fixture(scope="module")
def finished_runs(small_config, finished_run, tmp_path_factory):
  """The finished 4-step run (checkpoints 2 and 4), and a copy of it continued to 6 steps; made
  in-process with the command runs' config (SMALL), so the commands resume them bitwise."""
  continued = str(tmp_path_factory.mktemp("continued") / "run")
  shutil.copytree(finished_run, continued)
  loop.train_and_evaluate(small_config(num_steps=6), continued)
  return finished_run, continued


def resume(small_config, workdir):
  """The plain rerun, in-process (SMALL's config). Then `assert_same_run` against the continued
  run proves it resumed from step 4: a fresh start would have dropped the final record of step 4."""
  loop.train_and_evaluate(small_config(num_steps=6), workdir)


def steps_of(workdir):
  folder = os.path.join(workdir, "checkpoints")
  return sorted(os.listdir(folder)) if os.path.isdir(folder) else []


def newest_step(workdir):
  return max([0] + [int(n) for n in steps_of(workdir) if n.isdigit()])


# 2. A stop signal during restore is not a read error: every checkpoint stays as it was.
@pytest.mark.parametrize("signum", [signal.SIGINT, pytest.param(signal.SIGTERM,
                                                                  marks=pytest.mark.slow)])
def test_a_stop_while_restoring_leaves_every_checkpoint(small_config, tfds_dir, finished_runs,
                                                       tmp_path, signum):
  four, continued = finished_runs
  workdir = copy_run(four, tmp_path)
  before = snapshot(workdir)
  stopped = train(workdir, tfds_dir, "--config.train.num_steps=6",
                  fault=("checkpoints/4/", signum, 2, False))  # reading its metadata
  assert stopped.returncode == 128 + signum, stopped.stderr[-3000:]
  assert "fault: signal" in stopped.stderr and "Stopped by" in stopped.stderr
  assert "corrupt" not in stopped.stderr and snapshot(workdir) == before
  resume(small_config, workdir)
  assert_same_run(continued, workdir)


# 1. metrics.jsonl is never rewritten in place: a stop while it is truncated keeps every record.
def test_a_stop_while_metrics_are_truncated_keeps_every_record(small_config, tfds_dir,
                                                               finished_runs, tmp_path):
  continued = finished_runs[1]
  workdir = copy_run(continued, tmp_path)
  shutil.rmtree(os.path.join(workdir, "checkpoints", "6"))  # killed before save 6 committed
  path = os.path.join(workdir, "metrics.jsonl")
  lines = open(path).read().splitlines()
  with open(path, "w") as f:  # the report's 20,002 records: a rewrite that takes a while
    f.write("\n".join([lines[0]] * 20_000 + lines) + "\n")
  kept = [r for r in metrics.read_metrics(workdir) if r["step"] <= 4]
  stopped = train(workdir, tfds_dir, "--config.train.num_steps=6",
                  fault=(r"metrics\.jsonl", signal.SIGINT, 1, True))
  assert stopped.returncode == 130, stopped.stderr[-3000:]
  assert metrics.read_metrics(workdir)[:len(kept)] == kept  # records past step 4 may be gone
  assert not [n for n in os.listdir(workdir) if ".tmp" in n]
  resume(small_config, workdir)
  after = metrics.read_metrics(workdir)
  assert after[:len(kept)] == kept
  assert [r["step"] for r in after[len(kept):]] == [6]  # the records after step 4, written again
  chex.assert_trees_all_equal(final_state(workdir)[0], final_state(continued)[0])


# 1. A full disk: while config.json is rewritten (it is written atomically, so the old one stays)
# or while a checkpoint is saved (one line, no tracebacks from orbax's threads).
@pytest.mark.parametrize("file_size,message", [
    (2048, r"Cannot write .*config\.json: File too large"),  # ulimit -f 2
    pytest.param(65536, r"Saving a checkpoint to .*checkpoints failed \(.*(File too large|"
                 r"Failed writing)", marks=pytest.mark.slow)],
    ids=["config", "checkpoint"])
def test_a_full_disk_while_resuming_keeps_every_checkpoint_and_record(
    small_config, tfds_dir, finished_runs, tmp_path, file_size, message):
  four, continued = finished_runs
  workdir = copy_run(four, tmp_path)
  before = snapshot(workdir)
  assert len(before["config.json"]) > 2048
  full = train(workdir, tfds_dir, "--config.train.num_steps=6", file_size=file_size)
  assert_one_line_error(full, message)
  after = snapshot(workdir)
  if file_size > 2048:  # config.json was written, with the new num_steps
    assert after.pop("config.json") != before.pop("config.json")
  kept = lambda files: {k: v for k, v in files.items()  # not the save cut short, nor TensorBoard
                        if "orbax-checkpoint-tmp" not in k and not k.startswith("tensorboard")}
  assert kept(after) == kept(before)
  resume(small_config, workdir)
  assert not [n for n in os.listdir(workdir) if n.startswith(".tmp-")]  # the cut file is gone
  assert_same_run(continued, workdir)


# "Done when": a resumed run interrupted at any moment by SIGINT, SIGTERM or a full disk keeps
# every checkpoint and record that existed, and then ends where an uninterrupted one ends.
@pytest.mark.slow
@pytest.mark.parametrize("fault", [
    *[dict(fault=("/run/", signum, nth, False)) for nth, signum in zip(
        range(1, 27, 2), [signal.SIGINT, signal.SIGTERM] * 7)],
    *[dict(file_size=size) for size in (1024, 4096, 65536)]], ids=lambda f: str(list(f.values())))
def test_a_run_interrupted_at_any_moment_loses_nothing(tfds_dir, finished_runs, tmp_path,
                                                      fault):
  four, continued = finished_runs
  workdir = copy_run(four, tmp_path)
  before = comparable_metrics(workdir)
  result = train(workdir, tfds_dir, "--config.train.num_steps=6", **fault)
  assert "Traceback" not in result.stderr, result.stderr[-3000:]
  assert result.returncode in (0, 2, 130, 143), result.stderr[-3000:]
  assert not [n for n in steps_of(workdir) if "corrupt" in n] and newest_step(workdir) >= 4
  assert comparable_metrics(workdir)[:len(before)] == before
  finished = train(workdir, tfds_dir, "--config.train.num_steps=6")
  assert finished.returncode == 0, finished.stderr[-3000:]
  assert_same_run(continued, workdir)


def write_images(root, classes, count=4, size=8, seed=0):
  import numpy as np
  rng = np.random.RandomState(seed)
  for split in ("train", "test"):
    for name in classes:
      (root / split / name).mkdir(parents=True, exist_ok=True)
      for i in range(count):
        Image.fromarray(rng.randint(0, 256, (size, size, 3), np.uint8)).save(
            root / split / name / f"{i}.png")


def truncate(path):
  """Cuts an image file in half: its header reads, its pixels do not decode."""
  data = path.read_bytes()
  path.write_bytes(data[:len(data) // 2])


# 3. An unreadable evaluation image stops the run only after its state is saved, and the rerun
# evaluates that saved state without training again.
def test_an_unreadable_evaluation_image_keeps_the_training(small_config, tmp_path, caplog):
  images = tmp_path / "images"
  write_images(images, ("cat", "dog"))
  truncate(images / "test" / "dog" / "1.png")
  config = small_config(num_steps=4, data={"name": f"folder:{images}", "verify_images": "no",
                                           "device_resident": "no"},  # the test split read last
                        train={"batch_size": 8, "eval_batch_size": 8, "checkpoint_every_steps": 0})
  workdir = str(tmp_path / "run")
  with pytest.raises(errors.InputError, match=r"Cannot read image .*test/dog/1\.png"):
    loop.train_and_evaluate(config, workdir)
  assert final_state(workdir)[1]["step"] == 4  # saved before the evaluation
  assert [r["step"] for r in metrics.read_metrics(workdir)] == [2]
  write_images(images, ("cat", "dog"))  # the file replaced
  with caplog.at_level("INFO"):
    final = loop.train_and_evaluate(config, workdir)
  assert "Resumed from step 4" in caplog.text and final["step"] == 4 and final["final"]
  finals = [r for r in metrics.read_metrics(workdir) if r.get("final")]
  assert [r["step"] for r in finals] == [4]
  assert {"train_loss", "learning_rate", "eval_accuracy"} <= set(finals[0])  # nothing missing


def test_the_best_checkpoint_is_kept_by_the_accuracy_recorded_after_its_save(tmp_path):
  import numpy as np
  saver = checkpoint.Checkpointer(str(tmp_path), identity={}, keep=1, async_save=False)
  for step, accuracy in ((1, 0.5), (2, 0.9), (3, 0.4), (4, None)):
    saver.save(step, {"w": np.full(3, step, np.float32)}, {})  # saved before its evaluation
    if accuracy is not None:
      saver.record_evaluation(step, accuracy)
  saver.close()
  assert sorted(os.listdir(tmp_path)) == ["2", "4"]  # the best evaluated, and the latest


def test_the_folder_check_decodes_the_evaluation_split_of_a_large_folder(tmp_path, monkeypatch):
  images = tmp_path / "images"
  write_images(images, ("cat", "dog"), count=6)
  for i in range(6, 10):
    shutil.copy(images / "train" / "cat" / "0.png", images / "train" / "cat" / f"{i}.png")
  truncate(images / "test" / "cat" / "2.png")
  monkeypatch.setattr(folder_lib, "VERIFY_LIMIT", 12)  # train (16 files) is "large", test is not
  with pytest.raises(errors.InvalidInputError, match=r"Cannot read image .*test/cat/2\.png"):
    train_records, eval_records, _ = folder_lib.open_folder(str(images))
    folder_lib.native_shape([train_records, eval_records], 8, "auto")


# 4. A folder dataset's identity: its absolute path and classes, checked on resume and evaluate.
@pytest.fixture
def folder_run(small_config, tmp_path, monkeypatch):
  images = tmp_path / "images"
  write_images(images, ("cat", "dog"))
  monkeypatch.chdir(tmp_path)
  config = small_config(num_steps=2, data={"name": "folder:images"},
                        train={"batch_size": 8, "eval_batch_size": 8})
  loop.train_and_evaluate(config, str(tmp_path / "run"))
  return config, images, str(tmp_path / "run")


def test_evaluate_from_another_directory_reads_the_runs_own_folder(folder_run, tmp_path,
                                                                   monkeypatch):
  _, images, workdir = folder_run
  elsewhere = tmp_path / "elsewhere"
  write_images(elsewhere / "images", ("ant", "bee", "cow"), count=2)
  monkeypatch.chdir(elsewhere)  # where folder:images is another dataset
  result = evaluate.evaluate_run(workdir)
  assert result["num_examples"] == 8  # the run's 2 x 4 test images, not the other 3 x 2
  saved = json.loads(open(os.path.join(workdir, "config.json")).read())["dataset"]
  assert saved == {"name": f"folder:{images}", "classes": ["cat", "dog"], "num_train": 8,
                   "num_eval": 8}


def test_a_renamed_class_is_refused_on_resume_and_evaluate(folder_run,
                                                          no_compiling_after_first_run):
  config, images, workdir = folder_run
  no_compiling_after_first_run()
  for split in ("train", "test"):
    os.rename(images / split / "cat", images / split / "zebra")
  before = snapshot(workdir)
  config.train.num_steps = 4
  with pytest.raises(errors.InvalidInputError, match=r"Cannot resume .*run: folder:images has "
                     r"other classes than its checkpoint 2 was trained on \(removed cat; added "
                     r"zebra\); restore the dataset's classes"):
    loop.train_and_evaluate(config, workdir)
  with pytest.raises(errors.InvalidInputError, match=r"Cannot evaluate .*removed cat; added zebra"):
    evaluate.evaluate_run(workdir)
  assert snapshot(workdir) == before
  meta_file = os.path.join(workdir, "checkpoints", "2", "meta", "metadata")
  meta = json.loads(open(meta_file).read())
  del meta["dataset"]  # as an earlier version saved it: the model's class names still tell
  with open(meta_file, "w") as f:
    json.dump(meta, f)
  with pytest.raises(errors.InvalidInputError, match=r"removed cat; added zebra"):
    loop.train_and_evaluate(config, workdir)


def test_a_moved_folder_is_named_again(folder_run, tmp_path, caplog):
  config, images, workdir = folder_run
  moved = tmp_path / "moved"
  os.rename(images, moved)
  with pytest.raises(errors.InvalidInputError, match="does not exist"):
    evaluate.evaluate_run(workdir)
  result = evaluate.evaluate_run(workdir, data_name=f"folder:{moved}")
  assert result["num_examples"] == 8 and result["step"] == 2
  config.data.name = f"folder:{moved}"
  config.train.num_steps = 4
  with caplog.at_level("WARNING"):
    assert loop.train_and_evaluate(config, workdir)["step"] == 4
  assert f"name was 'folder:{images}' when its checkpoint 2 was saved, now 'folder:{moved}'" \
      in caplog.text


def test_a_tfds_dataset_records_its_version_and_split_sizes(finished_runs):
  four = finished_runs[0]
  saved = json.loads(open(os.path.join(four, "config.json")).read())["dataset"]
  assert saved["name"] == "digits" and re.fullmatch(r"\d+\.\d+\.\d+", saved["version"])
  assert saved["classes"] == [str(i) for i in range(10)]
  assert saved["num_train"] + saved["num_eval"] == 1797  # scikit-learn's digits
  assert final_state(four)[1]["dataset"] == saved


# 5. One verification for every reader: evaluate, predict, fine-tuning and exported models.
def tamper_classifier(workdir, step=4):
  meta_file = os.path.join(workdir, "checkpoints", str(step), "meta", "metadata")
  meta = json.loads(open(meta_file).read())
  meta["checksums"]["params/fc/kernel"] = "00000000"
  with open(meta_file, "w") as f:
    json.dump(meta, f)


def test_every_reader_refuses_a_checkpoint_that_fails_its_checksums(
    small_config, finished_runs, tmp_path, capsys):
  from resnet_jax.commands import evaluate as evaluate_command, predict
  workdir = copy_run(finished_runs[0], tmp_path)
  tamper_classifier(workdir)
  damaged = r"Checkpoint 4 in .*checkpoints is damaged: checksum mismatch in params/fc/kernel"
  image = tmp_path / "x.png"
  Image.new("L", (8, 8)).save(image)
  for main, argv in ((evaluate_command.main, [f"--workdir={workdir}"]),
                     (predict.main, [f"--checkpoint={workdir}", str(image)])):
    with pytest.raises(SystemExit) as info:
      main(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2 and re.fullmatch(f"error: {damaged}.*\n", err), err
  with pytest.raises(errors.InvalidInputError, match=damaged):
    pretrained.load(workdir)
  tuned = small_config(num_steps=2, init={"checkpoint": workdir})
  with pytest.raises(errors.InvalidInputError, match=damaged):
    loop.train_and_evaluate(tuned, str(tmp_path / "tuned"))
  assert evaluate.evaluate_run(workdir, step=2)["step"] == 2  # the intact one still reads


def test_an_exported_model_is_verified_when_loaded(finished_runs, tmp_path):
  weights = pretrained.load(finished_runs[0])
  pretrained.export(str(tmp_path / "model"), weights)
  chex.assert_trees_all_equal(pretrained.load(str(tmp_path / "model")).variables,
                              weights.variables)
  description = json.loads((tmp_path / "model" / "model.json").read_text())
  description["checksums"]["params/fc/bias"] = "00000000"
  (tmp_path / "model" / "model.json").write_text(json.dumps(description))
  with pytest.raises(errors.InvalidInputError, match=r"The model in .*model is damaged: checksum "
                                                     r"mismatch in params/fc/bias"):
    pretrained.load(str(tmp_path / "model"))
  with pytest.raises(errors.InvalidInputError, match="already holds variables and model.json"):
    pretrained.export(str(tmp_path / "model"), weights)


# 6. Smaller ones, each one line through the command line.
def test_fewer_steps_than_the_latest_checkpoint_are_refused(tfds_dir, finished_runs,
                                                            tmp_path):
  workdir = copy_run(finished_runs[0], tmp_path)
  before = snapshot(workdir)
  result = train(workdir, tfds_dir, "--config.train.num_steps=2")
  assert_one_line_error(result, r"holds checkpoint 4, past this run's 2 steps; give "
                                r"train.num_steps >= 4")
  assert snapshot(workdir) == before and "Finished" not in result.stdout


@pytest.mark.slow  # worker processes take seconds to start
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_stop_sent_to_the_decoding_workers_too_prints_no_traceback(tmp_path, signum):
  images = tmp_path / "images"
  write_images(images, ("cat", "dog"), count=40, size=12)
  process = subprocess.Popen(
      [sys.executable, "-m", "experiments.train", f"--workdir={tmp_path / 'run'}", *SMALL,
       f"--config.data.name=folder:{images}", "--config.data.num_workers=2",
       "--config.data.device_resident=no", "--config.train.batch_size=16",
       "--config.train.num_steps=100000"],
      cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
      start_new_session=True)  # its own process group, as a terminal's job
  output = []
  for line in process.stdout:
    output.append(line)
    if "step 4/" in line:
      os.killpg(process.pid, signum)  # Ctrl-C, or a scheduler: the whole group, workers too
      break
  output += process.stdout.readlines()
  text = "".join(output)
  assert process.wait(timeout=120) == 128 + signum, text[-3000:]
  assert f"Stopped by {signal.Signals(signum).name} after step" in text
  assert "Traceback" not in text and "KeyboardInterrupt" not in text, text[-3000:]


# 1. metrics.jsonl: a damaged last line is tolerated; other damage and foreign files are refused.
def test_a_damaged_last_metrics_line_is_left_out_with_a_warning(small_config, finished_runs,
                                                                tmp_path, caplog):
  workdir = copy_run(finished_runs[0], tmp_path)
  path = os.path.join(workdir, "metrics.jsonl")
  kept = open(path).read()
  with open(path, "a") as f:
    f.write('{"step": 6, "train_lo')  # a write cut short
  with caplog.at_level("WARNING"):
    assert metrics.read_metrics(workdir) == [json.loads(line) for line in kept.splitlines()]
    loop.train_and_evaluate(small_config(num_steps=6), workdir)
  assert "damaged last line 3" in caplog.text
  assert open(path).read().startswith(kept + '{"step": 6, ')  # the cut line replaced
  assert [(r["step"], r.get("final")) for r in metrics.read_metrics(workdir)] == [
      (2, None), (4, True), (6, True)]


def test_a_damaged_metrics_record_is_refused_naming_its_line(small_config, finished_runs,
                                                            tmp_path, no_compiling):
  for name, line in (("garbage", "not json"), ("no_step", '{"loss": 1.0}')):
    workdir = copy_run(finished_runs[0], tmp_path / name)
    path = os.path.join(workdir, "metrics.jsonl")
    content = open(path).read().splitlines()
    open(path, "w").write("\n".join([content[0], line, *content[1:]]) + "\n")
    before = snapshot(workdir)
    with pytest.raises(errors.InvalidInputError, match=r"metrics\.jsonl line 2 is not a "
                                                       "resnet_jax metrics record"):
      loop.train_and_evaluate(small_config(num_steps=6), workdir)
    assert snapshot(workdir) == before


def test_a_workdir_with_files_this_project_did_not_write_is_refused(small_config, tmp_path,
                                                                    no_compiling):
  theirs = tmp_path / "theirs"
  theirs.mkdir()
  (theirs / "metrics.jsonl").write_text('{"step": 1, "loss": 3.0}\n')  # another tool's
  with pytest.raises(errors.InvalidInputError, match=r"holds metrics\.jsonl, which resnet_jax did "
                                                     "not write"):
    loop.train_and_evaluate(small_config(), str(theirs))
  assert (theirs / "metrics.jsonl").read_text() == '{"step": 1, "loss": 3.0}\n'
  assert os.listdir(theirs) == ["metrics.jsonl"]
  strange = tmp_path / "strange"
  (strange / "checkpoints" / "notes").mkdir(parents=True)
  (strange / "config.json").write_text("{ cut sho")
  with pytest.raises(errors.InvalidInputError, match=r"config\.json is damaged or was not written "
                                                     "by resnet_jax"):
    loop.train_and_evaluate(small_config(), str(strange))
  (strange / "config.json").unlink()
  with pytest.raises(errors.InvalidInputError, match=r"holds checkpoints/notes, which"):
    loop.train_and_evaluate(small_config(), str(strange))
  (strange / "checkpoints" / "notes").rmdir()
  os.symlink(tmp_path, strange / "checkpoints" / "7")  # a step that lies elsewhere
  with pytest.raises(errors.InvalidInputError, match=r"holds checkpoints/7, which"):
    loop.train_and_evaluate(small_config(), str(strange))


def test_nothing_is_written_through_a_symlink_that_leaves_the_run_folder(
    small_config, finished_runs, tmp_path, no_compiling):
  workdir = copy_run(finished_runs[0], tmp_path)
  outside = tmp_path / "precious.txt"
  outside.write_text("keep me\n")
  os.remove(os.path.join(workdir, "metrics.jsonl"))
  os.symlink(outside, os.path.join(workdir, "metrics.jsonl"))
  with pytest.raises(errors.InvalidInputError, match=r"metrics\.jsonl is a link to .*precious\.txt"
                                                     ", outside .*run"):
    loop.train_and_evaluate(small_config(num_steps=6), workdir)
  assert outside.read_text() == "keep me\n"
