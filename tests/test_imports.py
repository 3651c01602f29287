"""The layers depend one way: each is imported in a fresh interpreter, and the heavy libraries the
rule keeps out of it must not be loaded."""

import json
import os
import re
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHECKPOINTS_AND_DATA = ("orbax", "grain", "tensorflow_datasets", "tensorflow", "cv2", "PIL")
TORCH = ("torch",)
RULES = {
    # The public face: names load on first use.
    "resnet_jax": ("jax", "flax", "optax") + CHECKPOINTS_AND_DATA + TORCH,
    # Models: flax only; no optimiser, checkpoint, data or torch library.
    "resnet_jax.models": ("optax",) + CHECKPOINTS_AND_DATA + TORCH,
    "resnet_jax.layers.conv": ("optax",) + CHECKPOINTS_AND_DATA + TORCH,
    "resnet_jax.layers.batchnorm": ("optax",) + CHECKPOINTS_AND_DATA + TORCH,
    "resnet_jax.layers.pooling": ("optax",) + CHECKPOINTS_AND_DATA + TORCH,
    # Data: no flax, no optax.
    "resnet_jax.data.sources": ("flax", "optax") + TORCH,
    "resnet_jax.data.pipeline": ("flax", "optax") + TORCH,
    "resnet_jax.data.device": ("flax", "optax") + TORCH,
    "resnet_jax.data.decode": ("jax", "flax", "optax") + TORCH,
    # The step knows no pipeline.
    "resnet_jax.train.step": CHECKPOINTS_AND_DATA + TORCH,
    # Training, evaluation, benchmarking: torch only through interop.
    "resnet_jax.train.loop": TORCH,
    "resnet_jax.train.evaluate": TORCH,
    "resnet_jax.benchmark": TORCH,
    # A backbone inside other JAX code loads no data or checkpoint library.
    "resnet_jax.inference": ("optax",) + CHECKPOINTS_AND_DATA + TORCH,
}
PROBE = ("import importlib, json, sys; importlib.import_module({module!r}); "
         "print(json.dumps(sorted(set({banned!r}) & set(sys.modules))))")


def test_each_layer_imports_none_of_the_libraries_its_rule_keeps_out():
  env = {**os.environ, "PYTHONPATH": REPO}
  processes = {module: subprocess.Popen(
      [sys.executable, "-c", PROBE.format(module=module, banned=list(banned))], cwd=REPO,
      env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
      for module, banned in RULES.items()}
  loaded = {}
  for module, process in processes.items():
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, err[-2000:]
    loaded[module] = json.loads(out.splitlines()[-1])
  assert loaded == {module: [] for module in RULES}


def test_torch_is_imported_only_in_interop():
  importing_torch = re.compile(r"^\s*(import torch|from torch\b)", re.M)
  offenders = []
  for folder in ("resnet_jax", "experiments"):
    for root, _, names in os.walk(os.path.join(REPO, folder)):
      for name in names:
        path = os.path.join(root, name)
        if name.endswith(".py") and os.sep + "interop" + os.sep not in path:
          with open(path) as f:
            if importing_torch.search(f.read()):
              offenders.append(os.path.relpath(path, REPO))
  assert not offenders
