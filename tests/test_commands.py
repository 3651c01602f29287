"""The five commands as a user meets them: a mistake in the input prints one line and exits 2,
files that cannot be read are named and skipped, and unexpected errors keep their traceback."""

import os
import re
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

import resnet_jax
from resnet_jax.commands import benchmark, convert, predict
from resnet_jax.data.transforms import Preprocessing
from resnet_jax import pretrained

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def start(module, *args):
  return subprocess.Popen([sys.executable, "-m", module, *map(str, args)], cwd=REPO,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def catches(pid, signum):
  """Whether process `pid` has a handler installed for `signum` (Linux's /proc)."""
  with open(f"/proc/{pid}/status") as f:
    mask = next(line.split()[1] for line in f if line.startswith("SigCgt:"))
  return bool(int(mask, 16) >> (signum - 1) & 1)


def lines(text):
  return [line for line in text.splitlines() if line.strip()]


def test_each_command_reports_an_input_mistake_in_one_line_and_exits_2(tmp_path):
  # experiments.train, evaluate, predict, convert, compare_torch and benchmark.
  cases = [
      ("experiments.train", ["--config.train.batchsize=3"],
       r"error: unknown config key config\.train\.batchsize \(did you mean batch_size\?\)"),
      ("experiments.train", ["--config.model.name=resnet5", f"--workdir={tmp_path / 'w'}"],
       r"error: Unknown model\.name 'resnet5'; valid names: .*resnet50"),
      ("experiments.evaluate", [f"--workdir={tmp_path / 'absent'}"],
       r"error: .*absent is not a run folder \(no config\.json\)"),
      ("experiments.predict", [f"--checkpoint={tmp_path / 'absent'}", "x.png"],
       r"error: .*absent is neither an exported model"),
      ("experiments.convert", ["--model=resnet18", f"--from={tmp_path / 'absent.pth'}",
                               f"--out={tmp_path / 'out'}"],
       r"error: No weights file at .*absent\.pth"),
      ("experiments.compare_torch", ["--config.optim.nme=sgd"],
       r"error: unknown config key config\.optim\.nme \(did you mean name\?\)"),
      ("experiments.benchmark", ["--model=resnet5"],
       r"error: Unknown model 'resnet5'; valid names: .*resnet50"),
  ]
  processes = [start(module, *args) for module, args, _ in cases]  # side by side: import-bound
  for process, (module, args, pattern) in zip(processes, cases):
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 2, (module, args, stderr[-3000:])
    assert len(lines(stderr)) == 1 and re.match(pattern, lines(stderr)[0]), (module, stderr)
    assert not os.path.exists(tmp_path / "w")  # the refused run left no folder


def test_a_signal_while_the_train_command_starts_stops_it_with_a_message():
  process = start("experiments.train")
  # The moment the command catches SIGTERM (its first statement) it is still importing the trainer:
  # a fixed delay raced with a warm compilation cache, which reaches the first step in seconds.
  deadline = time.monotonic() + 60
  while not catches(process.pid, signal.SIGTERM) and time.monotonic() < deadline:
    time.sleep(0.005)
  process.send_signal(signal.SIGTERM)
  _, stderr = process.communicate(timeout=60)
  assert process.returncode == 143, stderr[-3000:]
  assert "Stopped by SIGTERM while starting, before the first step; nothing was saved" in stderr


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
  """A resnet8 with 3 classes, and a headless one, exported as experiments.convert does."""
  root = tmp_path_factory.mktemp("exported")
  prep = Preprocessing(image_size=16, channels=3, crop_ratio=1.0, mean=(127.0,) * 3,
                                  std=(64.0,) * 3)
  for name, classes in (("model", 3), ("headless", 0)):
    model = resnet_jax.create_model("resnet8", num_classes=classes)
    variables = jax.device_get(model.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3))))
    pretrained.export(str(root / name), pretrained.Pretrained(
        variables=variables, model="resnet8", num_classes=classes, preprocessing=prep,
        class_names=("a", "b", "c") if classes else None))
  return root


def exit_code(main, argv):
  with pytest.raises(SystemExit) as info:
    main(argv)
  return info.value.code


def test_predict_skips_unreadable_and_oversized_images_and_predicts_the_rest(exported, tmp_path,
                                                                             monkeypatch, capsys):
  rng = np.random.RandomState(0)
  Image.fromarray(rng.randint(0, 256, (20, 24, 3), np.uint8)).save(tmp_path / "ok.png")
  Image.fromarray(rng.randint(0, 256, (40, 40, 3), np.uint8)).save(tmp_path / "big.png")
  (tmp_path / "broken.jpg").write_bytes(b"not an image")
  monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)  # 40x40 stands for 15000x15000
  code = predict.main([f"--checkpoint={exported / 'model'}", "--top=2", str(tmp_path / "ok.png"),
                       str(tmp_path / "big.png"), str(tmp_path / "broken.jpg")])
  out, err = capsys.readouterr()
  assert code == 1  # some files skipped, the rest predicted
  assert lines(out)[0] == str(tmp_path / "ok.png") and len(lines(out)) == 3  # path + top 2
  assert re.search(r"skipped: Cannot read image .*big.png: DecompressionBombError", err)
  assert re.search(r"skipped: Cannot read image .*broken.jpg", err)
  assert "read only" not in err  # no library chatter
  code = predict.main([f"--checkpoint={exported / 'model'}", "--labels=none", "--top=3",
                       str(tmp_path / "ok.png")])
  out, _ = capsys.readouterr()
  assert code == 0 and sorted(line.split()[-1] for line in lines(out)[1:]) == ["0", "1", "2"]


@pytest.mark.parametrize("flag, message", [
    ("--top=0", "--top must be positive, got 0"),
    ("--batch-size=0", "--batch-size must be positive, got 0")])
def test_predict_refuses_non_positive_counts(exported, flag, message, capsys):
  assert exit_code(predict.main, [f"--checkpoint={exported / 'model'}", flag, "x.png"]) == 2
  assert message in capsys.readouterr().err


def test_predict_with_a_headless_model_says_what_to_use_instead(exported, tmp_path, capsys):
  assert exit_code(predict.main, [f"--checkpoint={exported / 'headless'}", "x.png"]) == 2
  err = lines(capsys.readouterr().err)
  assert len(err) == 1 and re.fullmatch(
      r"error: This resnet8 has no classifier head \(num_classes=0\), so it cannot predict "
      r"classes; use resnet_jax\.inference\.feature_fn .*", err[0]), err


def test_unexpected_errors_keep_their_traceback(exported, monkeypatch):
  def broken(path):
    raise RuntimeError("a bug, not a mistake of the user")
  monkeypatch.setattr(pretrained, "load", broken)
  with pytest.raises(RuntimeError, match="a bug"):
    predict.main([f"--checkpoint={exported / 'model'}", "x.png"])


torch = pytest.importorskip("torch")


def resnet8_state_dict(num_classes):
  from resnet_jax.interop.torch_reference import TorchResNet
  torch.manual_seed(0)
  return TorchResNet(resnet_jax.create_model("resnet8", num_classes=num_classes)).state_dict()


@pytest.mark.parametrize("what, content, message", [
    ("tensor", lambda: torch.zeros(3), r"holds a Tensor, not a state dict"),
    ("list", lambda: [1, 2], r"holds a list, not a state dict"),
    ("nan", lambda: {**resnet8_state_dict(10), "fc.bias": torch.full((10,), float("nan"))},
     r"1 with NaN or infinite values: fc\.bias"),
    ("int", lambda: {**resnet8_state_dict(10), "conv1.weight": torch.zeros((16, 3, 3, 3),
                                                                         dtype=torch.int64)},
     r"1 not floating point: conv1\.weight \(int64\)"),
])
def test_convert_refuses_files_that_hold_no_usable_weights(tmp_path, capsys, what, content,
                                                           message):
  torch.save(content(), tmp_path / "w.pth")
  code = exit_code(convert.main, ["--model=resnet8", f"--from={tmp_path / 'w.pth'}",
                                  f"--out={tmp_path / 'out'}"])
  err = lines(capsys.readouterr().err)
  assert code == 2 and len(err) == 1 and re.search(message, err[0]), err
  assert not os.path.exists(tmp_path / "out")


@pytest.mark.parametrize("num_classes", [10, 0])
def test_convert_takes_weights_of_any_head_without_a_labels_flag(tmp_path, capsys, num_classes):
  torch.save(resnet8_state_dict(num_classes), tmp_path / "w.pth")
  assert convert.main(["--model=resnet8", f"--from={tmp_path / 'w.pth'}",
                       f"--out={tmp_path / 'out'}"]) == 0
  assert f"({num_classes} classes, 3-channel input)" in capsys.readouterr().out
  assert pretrained.load(str(tmp_path / "out")).class_names is None


@pytest.mark.parametrize("flag", ["--steps=0", "--batch-size=0", "--warmup=-1",
                                  "--num-devices=-1", "--lower-only=gpu"])
def test_benchmark_refuses_counts_that_measure_nothing(flag, capsys):
  assert exit_code(benchmark.main, ["--model=resnet8", flag]) == 2
  assert flag.split("=")[0] in capsys.readouterr().err


@pytest.mark.parametrize("flags, message", [
    (["--num-devices=9"], "--num-devices=9, but this machine has 8 devices."),
    (["--lower-only=cuda", "--runner=pmap"], "Lowering for cuda needs --runner=mesh"),
    (["--set", "data.nonesuch=1"], "--set data.nonesuch=...: no such config key"),
    (["--set", "data.mix_mode=pair"], "Unknown data.mix_mode 'pair'; valid names: batch, elem."),
    (["--set", "data.mixup_alpha"], "--set 'data.mixup_alpha' is not SECTION.KEY=VALUE")])
def test_benchmark_refuses_what_this_machine_cannot_lower_or_run(flags, message, capsys):
  assert exit_code(benchmark.main, ["--model=resnet8", *flags]) == 2
  assert message in capsys.readouterr().err


def test_console_scripts_are_the_commands_and_configs_resolve_by_name_from_anywhere(tmp_path):
  import importlib
  import tomllib
  with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
    scripts = tomllib.load(f)["project"]["scripts"]
  assert sorted(scripts) == sorted(f"resnet-jax-{name.replace('_', '-')}" for name in (
      "train", "evaluate", "predict", "convert", "export", "benchmark", "compare_torch", "plot"))
  for target in scripts.values():
    module, function = target.split(":")
    assert callable(getattr(importlib.import_module(module), function))
  # From a folder outside the repository: a config by name, read before anything compiles (the
  # model it is given is refused by name), and the repository's experiments package is not there.
  run = lambda *args: subprocess.run([sys.executable, *args], cwd=tmp_path, capture_output=True,
                                     text=True, timeout=300)
  done = run("-m", "resnet_jax.commands.train", "--config=imagenet_resnet50",
             "--config.model.name=resnet5")
  assert done.returncode == 2
  assert done.stderr.strip().splitlines()[-1].startswith("error: Unknown model.name 'resnet5'")
  done = run("-m", "resnet_jax.commands.train", "--config=imagenet_resnet51")
  assert done.returncode == 2 and "error: unknown config 'imagenet_resnet51'; name one of " \
      "cifar10_resnet110," in done.stderr
  assert run("-c", "import experiments").returncode != 0
