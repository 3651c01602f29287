"""The default layers (fused-gradient BatchNorm, CPU-gradient Conv) compute what flax's compute."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resnet_jax.batchnorm import BatchNorm


def modules(**kwargs):
  common = dict(momentum=0.9, epsilon=1e-5, **kwargs)
  return nn.BatchNorm(**common), BatchNorm(**common)


def loss_and_grads(module, variables, x, w):
  def loss(params, x):
    y, updates = module.apply({"params": params, "batch_stats": variables["batch_stats"]}, x,
                              use_running_average=False, mutable=["batch_stats"])
    return jnp.sum(jnp.sin(y.astype(jnp.float32)) * w), updates
  (value, updates), grads = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(
      variables["params"], x)
  return value, updates, grads


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_same_outputs_statistics_and_gradients_as_flax(dtype):
  x = (jax.random.normal(jax.random.key(0), (4, 5, 5, 6)) * 3 + 1).astype(dtype)
  w = jax.random.normal(jax.random.key(1), x.shape)
  reference, fused = modules(dtype=dtype)
  variables = reference.init(jax.random.key(2), x, use_running_average=False)
  variables = jax.tree.map(lambda v: v + 0.1 * jax.random.normal(jax.random.key(3), v.shape),
                           variables)
  assert jax.tree.structure(variables) == jax.tree.structure(
      fused.init(jax.random.key(2), x, use_running_average=False))
  tol = 1e-5 if dtype == jnp.float32 else 2e-2
  ref, mine = (loss_and_grads(m, variables, x, w) for m in (reference, fused))
  chex.assert_trees_all_close(mine[0], ref[0], rtol=tol)
  chex.assert_trees_all_close(mine[1], ref[1], rtol=1e-6, atol=1e-6)  # running statistics
  chex.assert_trees_all_close(mine[2], ref[2], rtol=tol, atol=tol)    # d params, d x
  eval_ref = reference.apply(variables, x, use_running_average=True)
  eval_mine = fused.apply(variables, x, use_running_average=True)
  assert eval_mine.dtype == eval_ref.dtype == dtype
  chex.assert_trees_all_close(eval_mine.astype(jnp.float32), eval_ref.astype(jnp.float32),
                              rtol=tol, atol=tol)


def test_synchronised_statistics_and_gradients_across_devices():
  x = jax.random.normal(jax.random.key(0), (8, 2, 3, 3, 4)) * 2 - 1
  w = jax.random.normal(jax.random.key(1), x.shape)
  reference, fused = modules(axis_name="batch")
  variables = nn.BatchNorm(momentum=0.9).init(jax.random.key(2), x[0], use_running_average=False)
  results = [jax.pmap(lambda x, w, m=m: loss_and_grads(m, variables, x, w), axis_name="batch")(x, w)
             for m in (reference, fused)]
  chex.assert_trees_all_close(results[1], results[0], rtol=1e-5, atol=1e-6)
  # Synchronised: every replica saw the global statistics.
  np.testing.assert_allclose(results[1][1]["batch_stats"]["mean"][0],
                             0.1 * np.asarray(x).reshape(-1, 4).mean(0), rtol=1e-5, atol=1e-6)


def test_conv_computes_what_flax_conv_computes_gradients_included():
  from resnet_jax.conv import Conv
  x = jax.random.normal(jax.random.key(0), (4, 9, 9, 32))
  for strides, kernel, padding in ((1, 3, ((1, 1), (1, 1))), (2, 3, ((1, 1), (1, 1))),
                                   (2, 1, "VALID"), (1, 3, "SAME")):
    reference = nn.Conv(64, (kernel, kernel), strides=strides, padding=padding, use_bias=False)
    mine = Conv(64, (kernel, kernel), strides=strides, padding=padding, use_bias=False)
    variables = reference.init(jax.random.key(1), x)
    assert jax.tree.structure(variables) == jax.tree.structure(mine.init(jax.random.key(1), x))
    grads = [jax.jit(jax.grad(lambda v, x, m=m: jnp.sum(jnp.sin(m.apply(v, x))), argnums=(0, 1)))(
        variables, x) for m in (reference, mine)]
    chex.assert_trees_all_close(mine.apply(variables, x), reference.apply(variables, x),
                                rtol=1e-6, atol=1e-6)
    chex.assert_trees_all_close(grads[1], grads[0], rtol=1e-5, atol=1e-4)  # sums of ~300 terms
