"""Means over the data-parallel replicas: `jax.lax.pmean`, or an exact mean that gives the same
bits on any topology of the same devices (1 process x 4 devices, 2 x 2, 4 x 1).

An all-reduce adds the replicas' values in an order set by the topology (within a process, then
across processes), so its last bits change with it. The exact mean gathers every replica's value
(moving bytes, adding nothing) and adds them in replica order on each device: the same program on
every topology. It holds every replica's value at once, so it costs that memory for the gradients
(their size times the device count) and more communication; it is off by default
(train.exact_reduction).

Over an axis of one replica both are the identity, and no collective is emitted: a one-device
program carries no all-reduce (tested on the CUDA lowering of the train step).
"""

from typing import Any

import jax


def replica_mean(tree: Any, axis_name: str, exact: bool = False) -> Any:
  """The mean of each leaf of `tree` over the replicas of `axis_name` (exact: see above)."""
  if jax.lax.axis_size(axis_name) == 1:
    return tree
  if not exact:
    return jax.lax.pmean(tree, axis_name)
  return jax.tree.map(lambda x: jax.lax.all_gather(x, axis_name).mean(0), tree)


def replica_sum(tree: Any, axis_name: str) -> Any:
  """The sum of each leaf of `tree` over the replicas of `axis_name` (`jax.lax.psum`)."""
  return tree if jax.lax.axis_size(axis_name) == 1 else jax.lax.psum(tree, axis_name)
