"""Every config key has a documented range (resnet_jax.train.config.RANGES), and a value out of it
is refused in one line that names the key, before anything is written."""

import importlib
import os
import pkgutil
import subprocess
import sys

import jax
import pytest

from resnet_jax import configs
from resnet_jax.configs import default
from resnet_jax.errors import InvalidInputError
from resnet_jax.train.config import RANGES, flatten, validate_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = sorted(key for key, value_range in RANGES.items() if value_range.bad is not None)
EXPERIMENTS = sorted(m.name for m in pkgutil.iter_modules(configs.__path__)
                     if not m.name.startswith("_"))


def default_with(values: dict) -> object:
  """The default config with dotted keys set to `values`."""
  config = default.get_config()
  for key, value in values.items():
    *sections, field = key.split(".")
    section = config
    for name in sections:
      section = section[name]
    section[field] = value
  return config


def refusal(config) -> str:
  with pytest.raises(InvalidInputError) as refused:
    validate_config(config)
  return str(refused.value)


def test_every_default_key_has_a_documented_range():
  keys = set(flatten(default.get_config()))
  assert not keys - set(RANGES), "document these keys in RANGES (resnet_jax/train/config.py)"
  assert not set(RANGES) - keys, "these RANGES keys are not in resnet_jax/configs/default.py"


@pytest.mark.parametrize("key", EXAMPLES)
def test_an_out_of_range_value_is_refused_in_one_line_naming_its_key(key):
  message = refusal(default_with({key: RANGES[key].bad}))
  assert key in message and "\n" not in message, message


@pytest.mark.parametrize("key,value", [("seed", -1), ("optim.momentum", 1.5),
                                       ("optim.decay_factor", 10.0)])
def test_the_values_of_the_issue_are_refused_with_their_range(key, value):
  assert refusal(default_with({key: value})) == f"{key} must be {RANGES[key].text}, got {value}."


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_config_is_in_range(name):
  config = importlib.import_module(f"resnet_jax.configs.{name}").get_config()
  if not config.model.name:  # finetune.py: its command names the checkpoint
    config.init.checkpoint = "/weights"
  validate_config(config)


CROSS_KEY = [
    ("boundaries_without_piecewise", {"optim.boundaries": (30, 60)},
     r"optim.boundaries=\(30, 60\) is read only by optim.schedule=piecewise, not 'cosine'"),
    ("descending_boundaries", {"optim.schedule": "piecewise", "optim.boundaries": (60, 30)},
     r"optim.boundaries must be ascending numbers > 0"),
    ("no_length", {"train.num_steps": 0, "train.num_epochs": 0.0},
     r"Set train.num_steps or train.num_epochs to a positive value"),
    ("no_model", {"model.name": ""}, r"model.name='' .*init.checkpoint, which is not set"),
]


@pytest.mark.parametrize("values,message", [case[1:] for case in CROSS_KEY],
                         ids=[case[0] for case in CROSS_KEY])
def test_keys_that_only_fit_other_keys_are_refused(values, message):
  with pytest.raises(InvalidInputError, match=message):
    validate_config(default_with(values))


def test_boundaries_ascending_with_piecewise_are_accepted():
  validate_config(default_with({"optim.schedule": "piecewise", "optim.boundaries": (30, 60.5)}))


@pytest.mark.skipif(jax.config.jax_enable_x64, reason="64-bit JAX is on")
def test_float64_needs_64_bit_jax():
  with pytest.raises(InvalidInputError, match="float64 needs 64-bit JAX: set JAX_ENABLE_X64=1"):
    validate_config(default_with({"train.precision": "float64"}))


def test_the_train_command_refuses_an_out_of_range_seed_in_one_line(tmp_path):
  # The environment is inherited, as in test_commands.py: conftest's 8 CPU devices and cache.
  result = subprocess.run([sys.executable, "-m", "experiments.train", "--config.seed=-1",
                           f"--workdir={tmp_path / 'run'}"], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
  lines = [line for line in result.stderr.splitlines() if line.strip()]
  assert result.returncode == 2, result.stderr[-3000:]
  assert len(lines) == 1 and lines[0].startswith("error: seed must be in [0, 2**32)"), lines
  assert not (tmp_path / "run").exists()
