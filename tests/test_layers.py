"""The default layers (fused-gradient BatchNorm, space-to-depth Conv, max-pool) compute what
flax's compute, gradients included."""

import functools

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resnet_jax.layers.batchnorm import BatchNorm, batch_norm_train


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


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_relu_inside_batchnorm_gives_the_same_bits_as_relu_after_it(dtype):
  # Integer inputs and a zero bias put many outputs at exactly zero, where ReLU's gradient (0 at
  # 0) is decided; the two must agree there too.
  x = jnp.round(jax.random.normal(jax.random.key(0), (4, 5, 5, 6)) * 2).astype(dtype)
  w = jax.random.normal(jax.random.key(1), x.shape)
  scale, bias = 1 + jax.random.normal(jax.random.key(2), (6,)) / 4, jnp.zeros(6)

  def loss(relu_inside, x, scale, bias):
    y, mean, var = batch_norm_train(x, scale, bias, 1e-5, None, dtype, relu=relu_inside)
    y = y if relu_inside else nn.relu(y)
    return jnp.sum(jnp.sin(y.astype(jnp.float32)) * w), (y, mean, var)

  results = [jax.value_and_grad(functools.partial(loss, inside), argnums=(0, 1, 2),
                                has_aux=True)(x, scale, bias) for inside in (True, False)]
  assert np.sum(np.asarray(results[0][0][1][0], np.float32) == 0) > 100
  chex.assert_trees_all_equal(*results)  # outputs, statistics, loss and gradients: every bit
  variables = {"params": {"scale": scale, "bias": bias},
               "batch_stats": {"mean": jnp.ones(6), "var": jnp.full(6, 2.0)}}
  chex.assert_trees_all_equal(
      BatchNorm(relu=True).apply(variables, x, use_running_average=True),
      nn.relu(BatchNorm().apply(variables, x, use_running_average=True)))


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
  from resnet_jax.layers.conv import Conv
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


@pytest.mark.parametrize("channels, kernel, padding, size", [
    (3, 7, ((3, 3), (3, 3)), (20, 20)),   # the ImageNet stem, as torchvision pads it
    (3, 7, "SAME", (21, 18)),             # odd sizes, uneven padding
    (1, 3, ((1, 0), (2, 1)), (9, 10)),
    (4, 4, "VALID", (12, 11)),
])
def test_few_channel_stride_two_conv_runs_as_space_to_depth_with_the_same_sums(
    channels, kernel, padding, size):
  from resnet_jax.layers import conv
  x = jax.random.normal(jax.random.key(0), (2, *size, channels))
  kwargs = dict(features=16, kernel_size=(kernel, kernel), strides=2, padding=padding,
                use_bias=False)
  reference, mine = nn.Conv(**kwargs), conv.Conv(**kwargs)
  variables = reference.init(jax.random.key(1), x)
  # The blocked form is what runs: a stride-1 convolution over 4x the channels (rounded up to 8).
  jaxpr = str(jax.make_jaxpr(lambda v, x: mine.apply(v, x))(variables, x))
  assert "window_strides=(1, 1)" in jaxpr and "window_strides=(2, 2)" not in jaxpr, jaxpr
  assert f"{-(-4 * channels // 8) * 8},16]" in jaxpr, jaxpr  # the regrouped HWIO kernel
  grads = [jax.jit(jax.grad(lambda v, x, m=m: jnp.sum(jnp.sin(m.apply(v, x))), argnums=(0, 1)))(
      variables, x) for m in (reference, mine)]
  chex.assert_trees_all_close(mine.apply(variables, x), reference.apply(variables, x),
                              rtol=1e-5, atol=1e-5)
  chex.assert_trees_all_close(grads[1], grads[0], rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("window, strides, padding, size", [
    ((3, 3), (2, 2), ((1, 1), (1, 1)), (12, 11)),  # the ImageNet stem's pool
    ((2, 2), (2, 2), ((0, 0), (0, 0)), (7, 7)),
    ((3, 2), (1, 2), ((1, 0), (0, 1)), (10, 6)),
    ((2, 2), (3, 3), ((0, 0), (0, 0)), (8, 9)),    # stride > window: positions no window sees
    ((5, 5), (2, 2), ((2, 2), (2, 2)), (9, 9)),
    ((12, 12), (1, 1), ((0, 0), (0, 0)), (13, 14)),  # 144 taps: winners beyond int8
])
def test_max_pool_has_flax_values_and_autodiff_gradients_ties_included(
    window, strides, padding, size, dtype):
  from resnet_jax.layers.pooling import max_pool2d
  # Rectified integers: most windows hold several equal maxima (zeros above all), so the test
  # fails unless each window's gradient goes to the same (first) winner as autodiff's.
  x = jnp.maximum(jax.random.randint(jax.random.key(0), (2, *size, 3), -3, 4), 0).astype(dtype)
  reference = lambda x: nn.max_pool(x, window, strides, padding)
  mine = lambda x: max_pool2d(x, window, strides, padding)
  y = reference(x)
  chex.assert_trees_all_equal(mine(x), y)
  dy = jax.random.normal(jax.random.key(1), y.shape).astype(dtype)
  expected = jax.vjp(reference, x.astype(jnp.float32))[1](dy.astype(jnp.float32))[0]
  got = jax.jit(jax.vjp(mine, x)[1])(dy)[0]
  assert got.dtype == dtype
  tol = 1e-6 if dtype == jnp.float32 else 1e-2  # bfloat16: the rounding of sums of 1-4 terms
  chex.assert_trees_all_close(got.astype(jnp.float32), expected, rtol=tol, atol=tol)


def test_stochastic_depth_drops_whole_rows_and_scales_the_kept_ones():
  from resnet_jax.layers.drop_path import drop_path, keep_rows
  x = jax.random.normal(jax.random.key(0), (6, 3, 3, 4))
  keep = jnp.array([True, False, True, True, False, True])
  y = drop_path(x, 0.25, keep)
  np.testing.assert_array_equal(y[~keep], 0.0)
  np.testing.assert_allclose(y[keep], x[keep] / 0.75, rtol=1e-6)
  # The kept fraction over 10,000 draws: within 4 standard deviations of 1 - rate.
  for rate in (0.1, 0.5):
    kept = np.asarray(keep_rows(jax.random.key(1), rate, 10_000)).mean()
    assert abs(kept - (1 - rate)) < 4 * np.sqrt(rate * (1 - rate) / 10_000), (rate, kept)
