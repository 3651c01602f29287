"""The layers depend one way: every module of a layer is imported in a fresh interpreter, and what
the rule keeps out of it (heavy libraries, the package's other layers) must not be loaded."""

import importlib
import json
import os
import re
import subprocess
import sys
import traceback

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHECKPOINTS_AND_DATA = ("orbax", "grain", "tensorflow_datasets", "tensorflow", "cv2", "PIL")
TORCH = ("torch",)
MODELS_KEEP_OUT = ("resnet_jax.data", "resnet_jax.train", "resnet_jax.interop",
                   "optax") + CHECKPOINTS_AND_DATA + TORCH
# Every module found under each folder (the package's own __init__ included) keeps these out, so a
# module added to a layer is checked without editing this file.
LAYERS = {
    # Data: no model, training or torch code; no flax, no optax.
    "resnet_jax.data": ("resnet_jax.models", "resnet_jax.train", "resnet_jax.interop",
                        "flax", "optax") + TORCH,
    # Models and their layers: flax only; no optimiser, checkpoint, data or torch library.
    "resnet_jax.models": MODELS_KEEP_OUT,
    "resnet_jax.layers": MODELS_KEEP_OUT,
    # Training: torch only through interop.
    "resnet_jax.train": ("resnet_jax.interop",) + TORCH,
    # Weights by name and exports: no training, data pipeline or torch until a file needs one
    # (a .pth to read or write, a TensorFlow or ONNX export).
    "resnet_jax.hub": ("resnet_jax.train", "optax", "grain", "tensorflow_datasets", "tensorflow")
                      + TORCH,
    "resnet_jax.export": ("resnet_jax.train", "optax", "grain", "tensorflow_datasets",
                          "tensorflow", "onnx") + TORCH,
}
# Stricter rules for single modules, added to their layer's; each must name a module that exists.
RULES = {
    # Resolving a name loads nothing heavy.
    "resnet_jax.hub": ("jax", "flax", "optax") + CHECKPOINTS_AND_DATA + TORCH,
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
    # Reading saved weights needs no training, data or torch library; converting weights needs
    # no checkpoint library until it exports.
    "resnet_jax.saved": ("flax", "optax", "grain", "tensorflow_datasets", "tensorflow") + TORCH,
    "resnet_jax.pretrained": ("optax", "grain", "tensorflow_datasets", "tensorflow") + TORCH,
    "resnet_jax.interop.convert": ("optax",) + CHECKPOINTS_AND_DATA[:-1] + TORCH,
}
# A child's traceback is cut to this: its reply stays well under a pipe's 64 KiB buffer, so no child
# blocks writing while the parent waits for another.
MAX_ERROR_CHARS = 4000


def module_file(module):
  """The source file of one of the package's modules, or None where there is none."""
  path = os.path.join(REPO, *module.split("."))
  for candidate in (path + ".py", os.path.join(path, "__init__.py")):
    if os.path.isfile(candidate):
      return candidate
  return None


def layer_modules(layer):
  """Every module under a layer's folder, found by walking it."""
  folder = os.path.join(REPO, *layer.split("."))
  modules = []
  for root, _, names in os.walk(folder):
    for name in names:
      if name.endswith(".py"):
        parts = os.path.relpath(os.path.join(root, name[:-3]), REPO).split(os.sep)
        modules.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
  return sorted(modules)


def rules():
  """What each checked module keeps out: its layer's rule and its own, together."""
  keep_out = {module: set(banned) for module, banned in RULES.items()}
  for layer, banned in LAYERS.items():
    for module in layer_modules(layer):
      keep_out.setdefault(module, set()).update(banned)
  return {module: sorted(banned) for module, banned in sorted(keep_out.items())}


# Frames of the import system itself, passed over to find the module whose code asked for an import.
IMPORT_SYSTEM = ("importlib", "importlib._bootstrap", "importlib._bootstrap_external")


class ImportRecorder:
  """A meta path finder that finds nothing: it notes which module first asked for each module."""

  def __init__(self):
    self.importers = {}

  def find_spec(self, name, path, target=None):
    frame = sys._getframe(1)
    while frame is not None and frame.f_globals.get("__name__") in IMPORT_SYSTEM:
      frame = frame.f_back
    self.importers.setdefault(name, frame.f_globals.get("__name__") if frame else None)
    return None  # the usual finders find it

  def chain(self, name):
    """The imports that led to `name`, from the module under test to it."""
    links = [name]
    while self.importers.get(links[-1]) in self.importers and len(links) <= len(self.importers):
      links.append(self.importers[links[-1]])
    return links[::-1]


def banned_loaded(banned, asked_for):
  """The banned modules loaded: a library by its top-level name, a layer by its modules."""
  # A library's submodules cannot load without its top-level package, so that name alone tells (in
  # sys.modules, as a successful import leaves it). A module of this package counts once it was
  # asked for and exists, even if its import then failed: a layer importing back into the one that
  # imports it usually fails on the cycle, and that import is the one to name.
  ours = [name for name in asked_for if name.startswith("resnet_jax.") and module_file(name)]
  found = {name for name in set(sys.modules).union(ours) for keep_out in banned
           if name == keep_out or (keep_out.startswith("resnet_jax.") and
                                   name.startswith(keep_out + "."))}
  # A layer's package is loaded with any of its modules: name the module, not also the package.
  return sorted(name for name in found if not any(other.startswith(name + ".") for other in found))


def banned_among(banned, names):
  """Whether `names` (loaded modules) hold one that `banned` keeps out."""
  return any(name == keep_out or name.startswith(keep_out + ".") for name in names
             for keep_out in banned)


def import_in_child(module, banned, reply_fd):
  """In a forked child: import one module, write what it loaded of `banned` and any error."""
  recorder = ImportRecorder()
  sys.meta_path.insert(0, recorder)
  reply = {}
  try:
    importlib.import_module(module)
  except BaseException:  # noqa: BLE001 - any failure, SystemExit included, is this module's result
    reply["error"] = traceback.format_exc()[-MAX_ERROR_CHARS:]
  loaded = banned_loaded(banned, recorder.importers)
  reply["loaded"] = {name: recorder.chain(name) for name in loaded}
  os.write(reply_fd, json.dumps(reply).encode())
  # No atexit handlers or buffered output of a half-initialised library: leave at once.
  os._exit(0)


# Libraries a child may find already loaded, in tiers: a module whose rule keeps out nothing that
# tier loads (checked by a probe child, the libraries' own imports included) is forked after the
# parent imported them, and pays only its own imports.
PRELOAD_TIERS = (("numpy", "jax"), ("flax.linen",))


def probe_tiers():
  """The modules loaded once each tier of `PRELOAD_TIERS` is imported (cumulatively), found in a
  child so that this parent stays bare until its bare children are forked."""
  read_fd, write_fd = os.pipe()
  pid = os.fork()
  if pid == 0:
    loaded = []
    for tier in PRELOAD_TIERS:
      for name in tier:
        importlib.import_module(name)
      loaded.append(sorted(sys.modules))
    os.write(write_fd, json.dumps(loaded).encode())
    os._exit(0)
  os.close(write_fd)
  with os.fdopen(read_fd) as reply:
    text = reply.read()
  os.waitpid(pid, 0)
  return [set(names) for names in json.loads(text)]


def import_each_in_fresh_children(keep_out, jobs):
  """Imports each module in its own child of this interpreter, `jobs` children at a time."""
  # Forking after this interpreter imported only the standard library (and, for the later tiers,
  # libraries their rules allow) gives each child the state of a fresh one without paying its
  # start again.
  assert not [name for name in sys.modules if name.split(".")[0] == "resnet_jax"]
  loaded = probe_tiers()
  tier_of = {module: sum(1 for names in loaded if not banned_among(banned, names))
             for module, banned in keep_out.items()}
  running, replies = {}, {}
  for tier in range(len(PRELOAD_TIERS) + 1):
    if tier:
      for name in PRELOAD_TIERS[tier - 1]:
        importlib.import_module(name)
    # Popped from the end: train's modules, the slowest to import, start first and the quick ones
    # fill in after, so the last to finish is short.
    pending = sorted(module for module in keep_out if tier_of[module] == tier)
    while pending or (running and tier == len(PRELOAD_TIERS)):
      while pending and len(running) < jobs:
        module = pending.pop()
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:
          os.close(read_fd)
          import_in_child(module, keep_out[module], write_fd)
        os.close(write_fd)
        running[pid] = (module, read_fd)
      pid, status = os.wait()
      module, read_fd = running.pop(pid)
      with os.fdopen(read_fd) as reply:
        text = reply.read()
      crashed = {"error": f"child exited with status {status}", "loaded": {}}
      replies[module] = json.loads(text) if text else crashed
  return replies


def report(offenders, errors, replies):
  """What broke the rule, how each banned module was reached, and which imports failed."""
  lines = ["modules that load what their rule keeps out (module: what it loaded):",
           json.dumps(offenders, indent=1, sort_keys=True), "through:"]
  lines += sorted({" -> ".join(chain) for reply in replies.values()
                   for chain in reply["loaded"].values()})
  if errors:
    lines.append("modules that fail to import (the first one's traceback below):")
    lines += [f"{module}: {errors[module].splitlines()[-1]}" for module in sorted(errors)]
    lines.append(errors[min(errors)])
  return "\n".join(lines)


def test_each_module_of_a_layer_imports_nothing_its_rule_keeps_out():
  empty = [layer for layer in LAYERS if not layer_modules(layer)]
  assert not empty, f"no modules found under {empty}: is REPO {REPO} right?"
  keep_out = rules()
  env = {**os.environ, "PYTHONPATH": REPO}
  # One bare parent that forks a child per module: a child is as fresh as a new interpreter, and
  # at most one per core runs, so the test costs about the imports' CPU time over the cores.
  parent = subprocess.run(
      [sys.executable, "-m", "tests.test_imports", json.dumps(keep_out), str(os.cpu_count() or 1)],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert parent.returncode == 0, parent.stderr[-MAX_ERROR_CHARS:]
  replies = json.loads(parent.stdout.splitlines()[-1])
  assert sorted(replies) == sorted(keep_out)
  offenders = {module: sorted(reply["loaded"]) for module, reply in replies.items()
               if reply["loaded"]}
  errors = {module: reply["error"] for module, reply in replies.items() if "error" in reply}
  assert not offenders and not errors, report(offenders, errors, replies)


def test_every_rule_names_a_module_that_exists():
  missing = [module for module in RULES if module_file(module) is None]
  assert not missing, f"RULES names modules that do not exist (list only existing ones): {missing}"


def files_importing(pattern, folders, allowed=None):
  """The .py files under `folders` with an import line matching `pattern`, but for `allowed`."""
  importing = re.compile(rf"^\s*(import|from) {pattern}\b", re.M)
  offenders = []
  for folder in folders:
    for root, _, names in os.walk(os.path.join(REPO, folder)):
      for name in names:
        path = os.path.join(root, name)
        if name.endswith(".py") and not (allowed and allowed in path):
          with open(path) as f:
            if importing.search(f.read()):
              offenders.append(os.path.relpath(path, REPO))
  return offenders


def test_torch_is_imported_only_in_interop():
  assert not files_importing("torch", ("resnet_jax", "experiments"), os.sep + "interop" + os.sep)


def test_the_library_imports_no_command():
  assert not files_importing(r"(experiments|resnet_jax\.commands)", ("resnet_jax",),
                             os.sep + "commands" + os.sep)


if __name__ == "__main__":
  # The parent the first test starts: argv holds each module's banned names and the job count.
  print(json.dumps(import_each_in_fresh_children(json.loads(sys.argv[1]), int(sys.argv[2]))))
