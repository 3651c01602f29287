"""Two processes x two CPU devices through jax.distributed on 127.0.0.1: same numbers as one
process, and preemption that every process agrees on."""

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
import orbax.checkpoint as ocp
import pytest
from etils import epath

from resnet_jax.configs import default
from resnet_jax import saved
from resnet_jax.train import loop, metrics, parallel

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def launch(workdir, tfds_dir, *flags, processes=2, devices=2, cluster="", hosts=None):
  """`processes` trainers on 127.0.0.1, told of one another by flags, or by the variables that a
  `cluster` ("kubernetes": an indexed Job's pods; "slurm": srun's tasks on one node; "openmpi":
  Open MPI 4's mpirun) gives them (README, Running on a pod). With `hosts` (a folder), each
  process is a host of its own: its own copy of the data (`tfds_dir`, copied), home and temporary
  folder under hosts/host<i>; the run folder is then the only storage they share."""
  port = free_port()
  env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
         "JAX_PLATFORMS": "cpu"}
  # A schedule that does not depend on the run's length: the launches of every test share one
  # compiled step (the compilation cache).
  common = [f"--workdir={workdir}", f"--config.data.data_dir={tfds_dir}",
            "--config.model.name=resnet8", "--config.data.image_size=8",
            "--config.train.batch_size=64", "--config.train.eval_batch_size=64",
            "--config.train.log_every_steps=2", "--config.optim.schedule=constant",
            "--config.optim.warmup_epochs=0", "--config.train.progress_bar=no", *flags]
  own = lambda i: ({}, [f"--config.distributed.process_id={i}"] if processes > 1 else [])
  if cluster == "kubernetes":
    env.update(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES=str(processes))
    own = lambda i: ({"JOB_COMPLETION_INDEX": str(i)}, [])
  elif cluster == "slurm":  # jax derives the coordinator from the node list (and the port)
    env.update(SLURM_JOB_ID="4242", SLURM_STEP_NODELIST="127.0.0.1", SLURM_NTASKS=str(processes),
               JAX_COORDINATOR_PORT=str(port))
    own = lambda i: ({"SLURM_PROCID": str(i), "SLURM_LOCALID": str(i)}, [])
  elif cluster == "openmpi":  # jax reads the launcher's address from mpirun's URI
    env.update(OMPI_MCA_orte_hnp_uri="1531576320.0;tcp://127.0.0.1:1",
               OMPI_COMM_WORLD_SIZE=str(processes), JAX_COORDINATOR_PORT=str(port))
    own = lambda i: ({"OMPI_COMM_WORLD_RANK": str(i), "OMPI_COMM_WORLD_LOCAL_RANK": str(i)}, [])
  elif processes > 1:
    common += [f"--config.distributed.coordinator_address=127.0.0.1:{port}",
               f"--config.distributed.num_processes={processes}"]
  def private(i):
    if hosts is None:
      return {}, []
    home = os.path.join(hosts, f"host{i}")
    os.makedirs(os.path.join(home, "tmp"), exist_ok=True)
    if not os.path.isdir(os.path.join(home, "data")):
      shutil.copytree(tfds_dir, os.path.join(home, "data"))
    return ({"HOME": home, "TMPDIR": os.path.join(home, "tmp")},
            [f"--config.data.data_dir={os.path.join(home, 'data')}"])
  return [subprocess.Popen(
      [sys.executable, "-m", "experiments.train", *common, *own(i)[1], *private(i)[1]],
      cwd=REPO, env={**env, **own(i)[0], **private(i)[0]}, stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT, text=True) for i in range(processes)]


def finish(procs, timeout=600):
  outputs = [p.communicate(timeout=timeout)[0] for p in procs]
  return [p.returncode for p in procs], outputs


def test_two_processes_equal_one_process(tfds_dir, tmp_path, monkeypatch):
  # Launched as a Kubernetes indexed Job's pods, on a data_dir where the digits are not prepared
  # yet: process 0 prepares them once while process 1 waits, then both train.
  flags = ["--config.train.num_steps=1"]
  codes, outputs = finish(launch(tmp_path / "multi", tmp_path / "fresh_data_dir", *flags,
                                 cluster="kubernetes"))
  assert codes == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
  assert [o.count("Preparing digits in ") for o in outputs] == [1, 0], outputs
  assert all("over 4 cpu device(s)" in o for o in outputs)  # one run of both processes' devices
  assert "Process 1 waits (at most 86400 s) for process 0 to prepare digits" in outputs[1]
  # The same run in this process, on 4 of its 8 devices.
  config = default.get_config()
  config.model.name = "resnet8"
  config.data.update(data_dir=str(tfds_dir), image_size=8)
  config.optim.update(schedule="constant", warmup_epochs=0.0)
  config.train.update(batch_size=64, eval_batch_size=64, progress_bar="no", num_steps=1,
                      log_every_steps=2)
  make_runner = parallel.make_runner
  monkeypatch.setattr(parallel, "make_runner",
                      lambda name, _=None: make_runner(name, jax.devices()[:4]))
  loop.train_and_evaluate(config, str(tmp_path / "single"))
  multi, _ = saved.read_checkpoint(str(tmp_path / "multi" / "checkpoints"))
  single, _ = saved.read_checkpoint(str(tmp_path / "single" / "checkpoints"))
  for key in ("params", "batch_stats", "opt_state"):
    chex.assert_trees_all_close(multi[key], single[key], rtol=1e-5, atol=1e-6)
  a, b = metrics.read_metrics(str(tmp_path / "multi"))[-1], \
      metrics.read_metrics(str(tmp_path / "single"))[-1]
  assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-6)
  assert a["eval_accuracy"] == pytest.approx(b["eval_accuracy"], abs=1e-9)


# In the slow tier for the default tier's time budget only (about 12 s each): the launch recipes
# that the default tier's two multi-process tests do not use.
@pytest.mark.slow
@pytest.mark.parametrize("cluster", ["openmpi", ""])  # "": the distributed.* flags
def test_launched_processes_form_one_run(cluster, tfds_dir, tmp_path):
  codes, outputs = finish(launch(tmp_path, tfds_dir, "--config.train.num_steps=1",
                                 cluster=cluster))
  assert codes == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
  assert all("over 4 cpu device(s)" in o for o in outputs)  # one run of both processes' devices
  assert metrics.read_metrics(str(tmp_path))[-1]["step"] == 1


def copy_objects(source, target):
  """A copy of a run folder in the emulated bucket (each resume below starts from the same one)."""
  fs = epath.Path(source)._backend.fs(source)  # epath's gcsfs: the bucket's own copy requests
  fs.copy(source.removeprefix("gs://"), target.removeprefix("gs://"), recursive=True)


# A checkpoint saved by 2 processes of 2 devices, each writing its part of every array into the
# bucket (no shared disk: each process has its own data, home and temporary folders), resumes on
# 1 process of 4 devices and on 4 processes of 1 device; each ends bitwise equal to the
# uninterrupted run (on 1 x 4), its replica means exact (train.exact_reduction): an all-reduce's
# last bits change with the topology.
@pytest.mark.slow
def test_a_checkpoint_of_two_hosts_resumes_on_one_host_and_on_four(bucket, tfds_dir, tmp_path):
  steps = lambda n: [f"--config.train.num_steps={n}", "--config.train.checkpoint_every_steps=2",
                     "--config.train.eval_every_epochs=0",
                     "--config.train.exact_reduction=true"]
  codes, outputs = finish(launch(tmp_path / "straight", tfds_dir, *steps(4), processes=1,
                                 devices=4))
  assert codes == [0], outputs[0][-3000:]
  saved_by_two = f"{bucket}/two_hosts"
  codes, outputs = finish(launch(saved_by_two, tfds_dir, *steps(2), hosts=tmp_path / "hosts"))
  assert codes == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
  parts = {p.name for p in epath.Path(saved_by_two, "checkpoints", "2", "state").iterdir()}
  assert {"ocdbt.process_0", "ocdbt.process_1"} <= parts  # each process wrote its part
  straight, _ = saved.read_checkpoint(str(tmp_path / "straight" / "checkpoints"))
  for processes, devices in ((1, 4), (4, 1)):
    resumed = f"{bucket}/resumed_on_{processes}x{devices}"
    copy_objects(saved_by_two, resumed)
    codes, outputs = finish(launch(resumed, tfds_dir, *steps(4), processes=processes,
                                   devices=devices, hosts=tmp_path / f"hosts{processes}"))
    assert codes == [0] * processes, "".join(o[-2000:] for o in outputs)
    assert "Resumed from step 2" in outputs[0]
    state, meta = saved.read_checkpoint(f"{resumed}/checkpoints")
    assert meta["step"] == 4
    chex.assert_trees_all_equal(state, straight)


def wait_for_checkpoint(workdir, procs, after=0):
  """Until the run in `workdir` has committed a checkpoint past step `after`."""
  deadline = time.time() + 300
  while max(ocp.utils.checkpoint_steps(epath.Path(workdir, "checkpoints")), default=0) <= after:
    assert all(p.poll() is None for p in procs), [p.stdout.read()[-2000:] for p in procs]
    assert time.time() < deadline
    time.sleep(0.2)


# Launched as srun's two tasks on one node (jax finds the coordinator in SLURM's variables): a
# process killed mid-run (not
# process 0, which hosts the runtime's coordination service: the runtime itself ends the others at
# once when it dies) ends the other within half of distributed.heartbeat_timeout_s, in one line
# naming it. Both started again resume from the last checkpoint; then SIGTERM to one process stops
# both at the same step, checkpointed.
@pytest.mark.slow  # two pairs of real processes and a dead one's timeout: 34 s, checked nightly
def test_a_killed_process_ends_the_other_and_sigterm_to_one_stops_both(tfds_dir, tmp_path):
  flags = ["--config.train.num_steps=100000", "--config.train.checkpoint_every_steps=4",
           "--config.train.eval_every_epochs=0", "--config.distributed.heartbeat_timeout_s=6"]
  procs = launch(tmp_path, tfds_dir, *flags, cluster="slurm")
  wait_for_checkpoint(tmp_path, procs)
  procs[1].kill()
  killed_at = time.time()
  output = procs[0].communicate(timeout=120)[0]
  assert procs[0].returncode == 75, output[-3000:]
  assert time.time() - killed_at < 6  # before the runtime's own end, at the heartbeat timeout
  last = output.strip().splitlines()[-1]
  assert re.fullmatch(r"error: Process 1 of the 2 processes of this run is lost \(no sign of life "
                      r"for \d s\): it died, failed or was stopped \(see its log\)\. The last "
                      r"checkpoint is intact: start every process again with the same command to "
                      r"resume from it\.", last), last
  procs[1].communicate()
  stopped_at = saved.read_checkpoint(str(tmp_path / "checkpoints"))[1]["step"]
  procs = launch(tmp_path, tfds_dir, *flags, cluster="slurm")
  wait_for_checkpoint(tmp_path, procs, after=stopped_at)  # the restarted run's own
  procs[1].send_signal(signal.SIGTERM)
  codes, outputs = finish(procs, timeout=300)
  assert codes == [143, 143], outputs[0][-3000:] + outputs[1][-3000:]
  assert f"Resumed from step {stopped_at}" in outputs[0]
  assert all("over 4 cpu device(s)" in o for o in outputs)  # one run of both processes' devices
  steps = [int(o.split("Stopped by SIGTERM after step ")[1].split(";")[0]) for o in outputs]
  assert steps[0] == steps[1] > stopped_at
  assert saved.read_checkpoint(str(tmp_path / "checkpoints"))[1]["step"] == steps[0]
