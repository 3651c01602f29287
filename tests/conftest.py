"""Test setup: eight fake CPU devices, configured before jax is first imported."""

import os

_flags = [os.environ.get("XLA_FLAGS", ""), "--xla_force_host_platform_device_count=8"]
# The suite is bound by XLA's compile time, most of it LLVM optimising generated elementwise code:
# level 0 compiles the suite's programs in about half the time. Neither level uses fast-math, and
# convolutions and matrix products are the same precompiled kernels; generated code may round
# differently in the last bit, which no test compares across levels. The nightly workflow runs both
# tiers again at XLA's default level (set XLA_FLAGS=--xla_backend_optimization_level=2 to do so).
if "xla_backend_optimization_level" not in _flags[0]:
  _flags.append("--xla_backend_optimization_level=0")
os.environ["XLA_FLAGS"] = " ".join(_flags).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# One persistent compilation cache for the whole run, its xdist workers and the command-line
# subprocesses the tests start (they inherit the environment): an identical step compiles once.
# JAX keys each entry by the program, the compile options and the jax/jaxlib versions.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".pytest_cache", "jax"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import jax  # noqa: E402  (must follow the flags above)
import pytest  # noqa: E402
from absl import flags  # noqa: E402

# grain's worker processes read absl flags, which only an absl app parses (as experiments/* do).
flags.FLAGS.mark_as_parsed()


@pytest.fixture(scope="session", autouse=True)
def _eight_devices():
  assert jax.device_count() == 8, "tests expect 8 fake CPU devices; was jax imported before conftest?"


@pytest.fixture(scope="session")
def tfds_dir(tmp_path_factory):
  """A tfds data_dir holding the prepared digits dataset, shared by the session."""
  from resnet_jax.configs import default
  from resnet_jax import data
  path = str(tmp_path_factory.mktemp("tfds"))
  config = default.get_config().data
  config.data_dir = path
  data.open(config).info
  return path


@pytest.fixture(scope="session")
def small_config(tfds_dir):
  """A factory of quick configs: resnet8 on the digits at 8x8, batch 64, a few steps."""
  from resnet_jax.configs import default

  def make(num_steps=6, **sections):
    config = default.get_config()
    config.model.name = "resnet8"
    config.data.update(data_dir=tfds_dir, image_size=8, crop_padding=1)
    # A schedule that does not depend on num_steps: runs of any length compile the same step, which
    # the compilation cache then serves to every other test (the schedules have their own tests).
    config.optim.update(warmup_epochs=0.0, schedule="constant")
    config.train.update(batch_size=64, eval_batch_size=128, num_steps=num_steps,
                        log_every_steps=2, eval_every_epochs=0.0, checkpoint_every_steps=2,
                        progress_bar="no")
    for section, values in sections.items():
      config[section].update(values)
    return config

  return make


@pytest.fixture(scope="session")
def finished_run(small_config, tmp_path_factory):
  """A finished 4-step run with checkpoints at steps 2 and 4 (tests change copies of it)."""
  from resnet_jax.train import loop
  workdir = str(tmp_path_factory.mktemp("finished") / "run")
  loop.train_and_evaluate(small_config(num_steps=4), workdir)
  return workdir


@pytest.fixture(scope="session")
def bucket():
  """gs://runs on a GCS emulator served from this process; the variables that point gcsfs
  (epath's file system) and tensorstore (orbax's) at it are inherited by the commands started."""
  import socket
  from resnet_jax import files
  from gcp_storage_emulator import server as emulator
  from gcp_storage_emulator.handlers import objects
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  # Cloud Storage sends an object's generation with its bytes, and tensorstore's conditional
  # writes (the checkpoints' OCDBT manifests) depend on it; the emulator leaves the header out.
  download = objects.download

  def download_with_generation(request, response, storage, *args, **kwargs):
    download(request, response, storage, *args, **kwargs)
    if response.status.value in (200, 206):
      obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
      response["x-goog-generation"] = str(obj["generation"])
      response["x-goog-metageneration"] = str(obj["metageneration"])

  routes = [handlers for _, handlers in emulator.HANDLERS if download in handlers.values()]
  objects.download = download_with_generation
  for handlers in routes:
    handlers.update({k: download_with_generation for k, v in handlers.items() if v is download})
  server = emulator.create_server("127.0.0.1", port, in_memory=True, default_bucket="runs")
  server.start()
  url = f"http://127.0.0.1:{port}"
  # The emulator has no storage-control API, which gcsfs would ask for each bucket's layout.
  env = {"STORAGE_EMULATOR_HOST": url, "TENSORSTORE_GCS_HTTP_URL": url,
         "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false"}
  before = {k: os.environ.get(k) for k in env}
  os.environ.update(env)
  yield files.resolve("gs://runs")  # as the commands do, before anything reads the bucket
  for k, v in before.items():
    os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
  server.stop()
  objects.download = download
  for handlers in routes:
    handlers.update({k: download for k, v in handlers.items() if v is download_with_generation})


# One registered network per family (block, stem, shortcut, groups, width, scanned stages): the
# default tier's sample of checks that the nightly tier runs on every registry entry.
ONE_PER_FAMILY = ("resnet18", "resnet50", "resnext50_32x4d", "wide_resnet50_2", "resnet20",
                  "resnet18_cifar", "resnet50_cifar", "preact_resnet18", "preact_resnet164",
                  "resnet1202", "preact_resnet1001")


def every_model_nightly(names):
  """`names` as parameters: those of ONE_PER_FAMILY in every tier, the others in the slow one."""
  return [name if name in ONE_PER_FAMILY else pytest.param(name, marks=pytest.mark.slow)
          for name in names]
