"""Train/eval steps under both runners: device-count invariance, pmap == mesh, invariants."""

import dataclasses
import functools
import typing

import chex
import jax
import jax.numpy as jnp
import numpy as np

from resnet_jax.configs import default
from resnet_jax import benchmark, data
from resnet_jax.data.augment import normalize
from resnet_jax.train import parallel, state as state_lib, step as steps
from resnet_jax.train.experiment import assemble
from resnet_jax.train.metrics import summed_over_windows


def tiny_config(**train):
  config = default.get_config()
  config.model.name = "resnet8"
  config.data.update(image_size=16, crop_padding=2, random_flip=True)
  config.optim.update(learning_rate=0.05, warmup_epochs=0.0, schedule="constant")
  config.train.update(batch_size=16, **train)
  return config


INFO = benchmark.synthetic_info(num_classes=10, image_size=16, channels=3, num_train=16 * 10)


def build_step(config, runner):
  """The config's state parts and steps on a synthetic dataset (the host sends each batch)."""
  return assemble(config, dataset=data.Dataset(INFO, splits=None), runner=runner)


def host_batches(n, batch_size=16, seed=0):
  rng = np.random.RandomState(seed)
  return [{"image": rng.randint(0, 256, (batch_size, 16, 16, 3), dtype=np.uint8),
           "label": rng.randint(0, 10, (batch_size,)).astype(np.int32)} for _ in range(n)]


def run_steps(config, runner, batches):
  exp = build_step(config, runner)
  state, rng = runner.replicate(exp.parts.state), runner.replicate(exp.parts.rng)
  losses = []
  for batch in batches:
    state, metrics = exp.steps.train(state, runner.shard_batch(batch), rng, None)
    losses.append(float(jax.device_get(metrics["train_loss"]).reshape(-1)[0]))
  return runner.unreplicate(state), np.array(losses)


def assert_states_close(a, b, rtol=2e-5, atol=2e-6):
  chex.assert_trees_all_close(a.params, b.params, rtol=rtol, atol=atol)
  chex.assert_trees_all_close(a.batch_stats, b.batch_stats, rtol=rtol, atol=atol)
  chex.assert_trees_all_close(a.opt_state, b.opt_state, rtol=rtol, atol=atol)


def test_eight_devices_equal_one_device_on_the_same_global_batch():
  # One step to float32 rounding; later steps amplify rounding like any chaotic training run.
  batches = host_batches(1)
  one, loss_one = run_steps(tiny_config(), parallel.MeshRunner(jax.devices()[:1]), batches)
  eight, loss_eight = run_steps(tiny_config(), parallel.MeshRunner(jax.devices()), batches)
  assert_states_close(one, eight, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(loss_one, loss_eight, rtol=1e-6)
  assert int(eight.step) == 1


def test_pmap_and_mesh_runners_compute_the_same_numbers():
  batches = host_batches(3)
  mesh, loss_mesh = run_steps(tiny_config(), parallel.MeshRunner(), batches)
  pmap, loss_pmap = run_steps(tiny_config(), parallel.PmapRunner(), batches)
  assert_states_close(mesh, pmap)
  np.testing.assert_allclose(loss_mesh, loss_pmap, rtol=1e-5)


def test_unsynchronised_batchnorm_still_averages_running_statistics():
  batches = host_batches(2)
  state, _ = run_steps(tiny_config(sync_batchnorm=False), parallel.MeshRunner(), batches)
  chex.assert_tree_all_finite(state.batch_stats)


def test_loss_falls_on_a_fixed_small_batch():
  batch = host_batches(1)
  _, losses = run_steps(tiny_config(), parallel.MeshRunner(), batch * 40)
  assert losses[-1] < 0.3 * losses[0], losses


def test_train_step_is_traced_once():
  config = tiny_config()
  runner = parallel.MeshRunner()
  exp = build_step(config, runner)

  @chex.assert_max_traces(n=1)
  def step(state, batch, rng):
    return steps.train_step(state, batch, rng, model=exp.parts.model, tx=exp.parts.tx,
                            config=exp.parts.step_config)

  train_fn = runner.train_step(summed_over_windows(step, 1), data.DeviceBatches.unpipelined(
      config.data, INFO, parallel.AXIS))
  state, rng = runner.replicate(exp.parts.state), runner.replicate(exp.parts.rng)
  for batch in host_batches(3):
    state, _ = train_fn(state, runner.shard_batch(batch), rng, None)


def make_step(exp, runner, config, **step_overrides):
  step_config = dataclasses.replace(exp.parts.step_config, **step_overrides)
  train = functools.partial(steps.train_step, model=exp.parts.model, tx=exp.parts.tx,
                            config=step_config)
  return runner.train_step(summed_over_windows(train, config.train.log_every_steps),
                           data.DeviceBatches.unpipelined(config.data, INFO, parallel.AXIS))


def test_nonfinite_step_leaves_the_state_untouched():
  runner = parallel.MeshRunner(jax.devices()[:2])
  config = tiny_config()
  exp = build_step(config, runner)
  rng = runner.replicate(exp.parts.rng)
  batch = runner.shard_batch(host_batches(1)[0])
  for policy in ("stop", "skip"):
    good_fn = make_step(exp, runner, config, on_nonfinite=policy)
    bad_fn = make_step(exp, runner, config, on_nonfinite=policy, label_smoothing=float("nan"))
    state, _ = good_fn(runner.replicate(exp.parts.state), batch, rng, None)
    before = runner.unreplicate(state)
    state, metrics = bad_fn(state, batch, rng, None)
    after = runner.unreplicate(state)
    assert not np.isfinite(float(jax.device_get(metrics["train_loss"])))
    chex.assert_trees_all_equal(before.params, after.params)
    chex.assert_trees_all_equal(before.batch_stats, after.batch_stats)
    chex.assert_trees_all_equal(before.opt_state, after.opt_state)
    assert int(after.nonfinite_count) == 1 and int(after.first_nonfinite_step) == 1
    assert int(after.first_nonfinite_kind) == steps.NONFINITE_LOSS
    state, _ = good_fn(state, batch, rng, None)
    later = runner.unreplicate(state)
    changed = not np.array_equal(later.params["fc"]["kernel"], after.params["fc"]["kernel"])
    assert changed == (policy == "skip"), policy  # "stop" freezes the run until the host stops
    assert int(later.step) == 3


def test_dynamic_loss_scale():
  scale = state_lib.LossScale.create(initial=8.0, period=2)
  scale = scale.update(jnp.array(False))
  assert float(scale.scale) == 4.0 and int(scale.good_steps) == 0
  scale = scale.update(jnp.array(True))
  assert float(scale.scale) == 4.0 and int(scale.good_steps) == 1
  scale = scale.update(jnp.array(True))
  assert float(scale.scale) == 8.0 and int(scale.good_steps) == 0


def test_float16_run_with_loss_scaling_and_ema():
  config = tiny_config(precision="float16")
  config.optim.ema_decay = 0.5
  runner = parallel.MeshRunner()
  exp = build_step(config, runner)
  assert exp.parts.step_config.on_nonfinite == "skip" and exp.parts.state.loss_scale is not None
  state, rng = runner.replicate(exp.parts.state), runner.replicate(exp.parts.rng)
  state, metrics = exp.steps.train(state, runner.shard_batch(host_batches(1)[0]), rng, None)
  host = runner.unreplicate(state)
  assert "loss_scale" in metrics
  # EMA after one step: decay * initial + (1 - decay) * current.
  expected = jax.tree.map(lambda e, p: 0.5 * e + 0.5 * p, exp.parts.state.params, host.params)
  chex.assert_trees_all_close(host.ema_params, expected, rtol=1e-6)


def test_eval_step_counts_exactly_with_masks():
  config = tiny_config()
  runner = parallel.MeshRunner()
  exp = build_step(config, runner)
  variables = runner.replicate(exp.parts.state.variables())
  batch = host_batches(1)[0]
  batch["mask"] = np.arange(16) < 11
  sums = jax.device_get(exp.steps.eval(variables, runner.shard_batch(batch), None))
  assert float(sums["count"]) == 11.0
  logits = exp.parts.model.apply(exp.parts.state.variables(), normalize(
      batch["image"][:11], INFO.mean, INFO.std))
  assert float(sums["top1"]) == float(np.sum(np.argmax(logits, -1) == batch["label"][:11]))
  assert float(sums["top1"]) <= float(sums["top5"]) <= 11.0


def test_the_data_side_and_the_step_draw_from_separate_streams():
  # Example r's augmentation key must not be replica r's dropout key: the runner gives the data
  # side and the step two streams folded from the run's key.
  class Batches:
    def train(self, inputs, arrays, step, rng):
      return {"data_key": jax.random.key_data(rng)}

  def step_fn(state, batch, rng):
    return state, {"data_key": batch["data_key"], "step_key": jax.random.key_data(rng)}

  class State(typing.NamedTuple):
    step: jax.Array

  runner = parallel.make_runner("mesh", jax.devices()[:1])
  run_key = jax.random.PRNGKey(7)
  step = runner.train_step(step_fn, Batches())
  _, keys = step(State(jnp.int32(3)), {"x": jnp.zeros((1,))}, run_key, None)
  np.testing.assert_array_equal(keys["data_key"], jax.random.fold_in(run_key, 0))
  np.testing.assert_array_equal(keys["step_key"],
                                jax.random.fold_in(jax.random.fold_in(run_key, 1), 3))
