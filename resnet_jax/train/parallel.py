"""Data-parallel runners that wrap the per-replica steps: `jax.pmap`, or `jax.jit` + `shard_map`.

Both run the same per-replica function with the same named-axis collectives, so they compute the
same numbers; they differ only in how arrays are placed. A runner is the one place where steps are
transformed and compiled (with the platform's `compiler.options()`) and where host data becomes
device data.
"""

import os
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from flax import jax_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from resnet_jax import compiler
from resnet_jax.errors import InvalidInputError, check_divisible
from resnet_jax.registry import Registry

AXIS = "batch"  # the data-parallel axis: gradients and BatchNorm statistics are averaged on it
RUNNERS: Registry[type] = Registry("runner", "train.runner")


def register_runner(name: str, runner_cls: type | None = None, *, replace: bool = False) -> Any:
  """Registers a `Runner` subclass as `name` and sets its `name` attribute to it.

  Args:
    name: the train.runner value that selects it.
    runner_cls: the class; without it, a decorator that registers what it decorates.
    replace: replace a runner already registered as `name`.

  Returns:
    The class, or the decorator.
  """
  def add(cls: type) -> type:
    RUNNERS.register(name, cls, replace=replace)
    cls.name = name
    return cls
  return add if runner_cls is None else add(runner_cls)


def initialize_distributed(coordinator_address: str = "", num_processes: int = 0,
                           process_id: int = -1, heartbeat_timeout_s: int = 100) -> None:
  """Joins a multi-process run: explicit arguments; JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES
  and JAX_PROCESS_ID from the environment (a Kubernetes indexed Job's manifest sets the first two,
  and Kubernetes gives each pod its JOB_COMPLETION_INDEX, read when JAX_PROCESS_ID is not set);
  or jax's auto-detection (Cloud TPU, SLURM, Open MPI).

  Call before any other JAX call. With no arguments it initialises only when a cluster
  environment is detected, so a single-process run is untouched. The runtime ends every process
  when one was silent for `heartbeat_timeout_s` (see `hosts.LifeWatch`, which acts first).
  """
  environ = os.environ
  if not (coordinator_address or num_processes) and "JAX_NUM_PROCESSES" in environ:
    index = environ.get("JAX_PROCESS_ID", environ.get("JOB_COMPLETION_INDEX", ""))
    try:
      coordinator_address, num_processes, process_id = (
          environ.get("JAX_COORDINATOR_ADDRESS", ""), int(environ["JAX_NUM_PROCESSES"]),
          int(index))
    except ValueError:
      raise InvalidInputError(f"JAX_NUM_PROCESSES={environ['JAX_NUM_PROCESSES']!r} needs a "
                              "number of processes and, in JAX_PROCESS_ID or Kubernetes' "
                              f"JOB_COMPLETION_INDEX, this one's index (got {index!r}).") from None
  if coordinator_address or num_processes:
    if not (coordinator_address and num_processes > 0 and 0 <= process_id < num_processes):
      raise InvalidInputError("A multi-process run needs distributed.coordinator_address "
                              "(host:port), distributed.num_processes (> 0) and "
                              "distributed.process_id (0..num_processes-1), or the variables "
                              "JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID; got "
                              f"{coordinator_address!r}, {num_processes}, {process_id}.")
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id,
                               heartbeat_timeout_seconds=heartbeat_timeout_s)
  elif any(k in os.environ for k in ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE", "TPU_WORKER_ID",
                                     "MEGASCALE_COORDINATOR_ADDRESS")):
    jax.distributed.initialize(heartbeat_timeout_seconds=heartbeat_timeout_s)


class Runner:
  """Places arrays and transforms per-replica steps for data parallelism over all devices."""

  name = ""  # set by register_runner

  def __init__(self, devices: list | None = None):
    self.devices = devices or jax.devices()
    self.local_devices = [d for d in self.devices if d.process_index == jax.process_index()]
    # The train state as checkpoints hold it: one jax.Array per leaf, replicated over every
    # device of every process; orbax has each process write a part of it.
    self.state_sharding = NamedSharding(Mesh(np.array(self.devices), (AXIS,)), P())

  @property
  def num_replicas(self) -> int:
    return len(self.devices)

  def global_state(self, tree: Any) -> Any:
    """A replicated device tree as jax.Arrays with `state_sharding` (no copy to the host)."""
    raise NotImplementedError

  def placed(self, abstract: Any) -> Any:
    """Abstract arrays (shapes and dtypes) with `state_sharding`: a checkpoint's restore target,
    whatever the topology that saved it."""
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype,
                                                       sharding=self.state_sharding), abstract)

  def check_batch_size(self, global_batch_size: int, what: str = "train.batch_size") -> None:
    """Raises InvalidInputError unless the global batch splits evenly over every device."""
    check_divisible(global_batch_size, self.num_replicas, what, "device count")

  def replicate(self, tree: Any) -> Any:
    raise NotImplementedError

  def shard_batch(self, batch: dict[str, np.ndarray]) -> Any:
    raise NotImplementedError

  def unreplicate(self, tree: Any) -> Any:
    """One host copy (numpy) of a replicated tree."""
    raise NotImplementedError

  def train_step(self, step_fn: Callable, batches: Any, exact: bool = False) -> Callable:
    """The compiled train step, fed from the data side, in one program.

    Args:
      step_fn: (state, batch, rng) -> (state, metrics), per replica.
      batches: the data side's device functions (`resnet_jax.data.DeviceBatches`): its
        `train(inputs, arrays, step, rng)` builds each replica's batch.
      exact: compile for the same bits on any topology (`compiler.options`; the step's own
        replica means must be exact too: train.exact_reduction).

    Returns:
      (state, inputs, rng, arrays) -> (state, metrics): `inputs` sharded over the devices (this
      step's rows from the host, or nothing for a device-resident dataset), `arrays` replicated
      (a device-resident dataset, or None); the state is donated.
    """
    def per_replica(state, inputs, rng, arrays):
      # Two streams from the run's key: the data side's (augmentations, per example) and the
      # step's (stochastic layers, per replica), so no example's key equals a replica's.
      data_rng, step_rng = jax.random.fold_in(rng, 0), jax.random.fold_in(rng, 1)
      batch = batches.train(inputs, arrays, state.step, data_rng)
      return step_fn(state, batch, jax.random.fold_in(step_rng, state.step))
    return self._map(per_replica, in_specs=(P(), P(AXIS), P(), P()), out_specs=(P(), P()),
                     train=True, exact=exact)

  def eval_step(self, eval_fn: Callable, batches: Any) -> Callable:
    """The compiled eval step: (variables, inputs, arrays) -> metrics summed over the devices.

    Args:
      eval_fn: (variables, batch) -> summed metrics, per replica (a psum inside).
      batches: the data side's device functions; `eval(inputs, arrays)` builds each batch.
    """
    def per_replica(variables, inputs, arrays):
      return eval_fn(variables, batches.eval(inputs, arrays))
    return self._map(per_replica, in_specs=(P(), P(AXIS), P()), out_specs=P(), train=False,
                     exact=False)

  def _map(self, fn: Callable, *, in_specs: tuple, out_specs: Any, train: bool,
           exact: bool) -> Callable:
    """`fn` mapped over the devices and compiled: the one place steps are transformed. A train
    step donates its state (first argument); an eval step returns one copy of its sums."""
    raise NotImplementedError


@register_runner("pmap")
class PmapRunner(Runner):
  """`jax.pmap` over the local devices; collectives span every process's devices."""

  def __init__(self, devices: list | None = None):
    super().__init__(devices)
    self._local_mesh = Mesh(np.array(self.local_devices), (AXIS,))

  def replicate(self, tree):
    return jax_utils.replicate(tree, self.local_devices)

  def shard_batch(self, batch):
    n = len(self.local_devices)
    sharding = NamedSharding(self._local_mesh, P(AXIS))
    return {k: jax.device_put(v.reshape((n, v.shape[0] // n) + v.shape[1:]), sharding)
            for k, v in batch.items()}

  def unreplicate(self, tree):
    return jax.device_get(jax.tree.map(lambda x: x[0], tree))

  def global_state(self, tree):
    # Each local device holds its copy as a row of a pmapped array: the rows, on their devices,
    # become the shards of one replicated array (every process's devices together).
    def whole(x):
      rows = [shard.data.reshape(x.shape[1:]) for shard in x.addressable_shards]
      return jax.make_array_from_single_device_arrays(x.shape[1:], self.state_sharding, rows)
    return jax.tree.map(whole, tree)

  def _map(self, fn, *, in_specs, out_specs, train, exact):
    del in_specs, out_specs  # pmap maps every argument's leading axis (replicated ones: copies)
    mapped = compiler.WithOptions(jax.pmap(fn, axis_name=AXIS, devices=self.local_devices,
                                           donate_argnums=(0,) if train else ()), exact)
    if train:
      return mapped
    return lambda *args: jax.tree.map(lambda x: x[0], mapped(*args))  # equal on every device


@register_runner("mesh")
class MeshRunner(Runner):
  """`jax.jit` of a `shard_map` over a one-axis device `Mesh`; the batch is sharded, state replicated."""

  def __init__(self, devices: list | None = None):
    super().__init__(devices)
    self.mesh = Mesh(np.array(self.devices), (AXIS,))
    self._replicated = NamedSharding(self.mesh, P())
    self._sharded = NamedSharding(self.mesh, P(AXIS))

  def replicate(self, tree):
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(self._replicated, np.asarray(x)), tree)

  def shard_batch(self, batch):
    return {k: jax.make_array_from_process_local_data(self._sharded, v) for k, v in batch.items()}

  def unreplicate(self, tree):
    return jax.tree.map(lambda x: np.asarray(x.addressable_data(0)), tree)

  def global_state(self, tree):
    return tree  # already replicated over the mesh of every device

  # check_vma=False gives the per-replica function pmap's semantics: with varying-manual-axes
  # checking on, the gradient of a replicated parameter is already summed over the axis (the
  # transpose of its implicit broadcast), and the step's explicit pmean would be redundant.
  def _map(self, fn, *, in_specs, out_specs, train, exact):
    mapped = jax.shard_map(fn, mesh=self.mesh, in_specs=in_specs, out_specs=out_specs,
                           check_vma=False)
    return compiler.jit(mapped, exact=exact, donate_argnums=(0,) if train else ())


def make_runner(name: str, devices: list | None = None) -> Runner:
  """The registered runner called `name` ("mesh", "pmap", ...) over `devices` (default: all)."""
  return RUNNERS[name](devices)
