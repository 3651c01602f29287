"""Optimisers and schedules: values checked numerically, weight-decay masking, PyTorch SGD semantics."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from resnet_jax.configs import default
from resnet_jax.errors import InvalidInputError
from resnet_jax.train import optim


def optim_config(**overrides):
  config = default.get_config().optim
  config.update(overrides)
  return config


def values(schedule, steps):
  return np.array([float(schedule(s)) for s in steps])


def test_he_et_al_piecewise_schedule_in_steps():
  config = optim_config(schedule="piecewise", learning_rate=0.1, warmup_epochs=0,
                        boundaries=(32000, 48000), boundaries_unit="steps")
  schedule = optim.make_schedule(config, steps_per_epoch=391, total_steps=64000, batch_size=128)
  np.testing.assert_allclose(values(schedule, [0, 31999, 32000, 47999, 48000, 63999]),
                             [0.1, 0.1, 0.01, 0.01, 0.001, 0.001], rtol=1e-6)


def test_piecewise_in_epochs_with_warmup_keeps_absolute_boundaries():
  # Goyal et al.: 5 warmup epochs, /10 at epochs 30, 60, 80; lr 0.1 per 256 images.
  config = optim_config(schedule="piecewise", learning_rate=0.1, lr_batch_base=256,
                        warmup_epochs=5, boundaries=(30, 60, 80), boundaries_unit="epochs")
  schedule = optim.make_schedule(config, steps_per_epoch=100, total_steps=9000, batch_size=1024)
  np.testing.assert_allclose(
      values(schedule, [0, 250, 500, 2999, 3000, 6000, 8000]),
      [0.0, 0.2, 0.4, 0.4, 0.04, 0.004, 0.0004], rtol=1e-5)


def test_warmup_cosine():
  config = optim_config(schedule="cosine", learning_rate=0.2, warmup_epochs=1)
  schedule = optim.make_schedule(config, steps_per_epoch=10, total_steps=110, batch_size=128)
  np.testing.assert_allclose(values(schedule, [0, 5, 10, 60, 110]), [0.0, 0.1, 0.2, 0.1, 0.0],
                             atol=1e-7)


def test_onecycle_and_constant():
  config = optim_config(schedule="onecycle", learning_rate=1.0)
  schedule = optim.make_schedule(config, steps_per_epoch=10, total_steps=100, batch_size=128)
  got = values(schedule, [0, 30, 100])
  np.testing.assert_allclose(got, [1.0 / 25, 1.0, 1.0 / 25 / 1e4], rtol=1e-4)
  config = optim_config(schedule="constant", learning_rate=0.3, warmup_epochs=0)
  assert float(optim.make_schedule(config, steps_per_epoch=1, total_steps=5, batch_size=1)(4)) \
      == pytest.approx(0.3)


def test_weight_decay_applies_to_kernels_only():
  params = {"conv1": {"kernel": jnp.ones((3, 3, 1, 2))}, "bn1": {"scale": jnp.ones(2),
            "bias": jnp.ones(2)}, "fc": {"kernel": jnp.ones((2, 3)), "bias": jnp.ones(3)}}
  assert optim.decay_mask(params) == {"conv1": {"kernel": True}, "bn1": {"scale": False,
                                      "bias": False}, "fc": {"kernel": True, "bias": False}}
  config = optim_config(learning_rate=1.0, momentum=0.0, nesterov=False, weight_decay=0.1,
                        schedule="constant", warmup_epochs=0)
  tx, _ = optim.make_optimizer(config, steps_per_epoch=1, total_steps=1, batch_size=1)
  zero = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zero, tx.init(params), params)
  assert float(updates["conv1"]["kernel"][0, 0, 0, 0]) == pytest.approx(-0.1)
  assert float(updates["bn1"]["scale"][0]) == 0.0 and float(updates["fc"]["bias"][0]) == 0.0


def test_sgd_matches_pytorch_semantics():
  torch = pytest.importorskip("torch")
  config = optim_config(learning_rate=0.1, momentum=0.9, nesterov=True, weight_decay=1e-2,
                        decay_all=True, schedule="constant", warmup_epochs=0)
  tx, _ = optim.make_optimizer(config, steps_per_epoch=1, total_steps=3, batch_size=1)
  rng = np.random.RandomState(0)
  p0 = rng.randn(5).astype(np.float32)
  grads = [rng.randn(5).astype(np.float32) for _ in range(3)]
  params, state = {"w": {"kernel": jnp.asarray(p0)}}, None
  state = tx.init(params)
  for g in grads:
    updates, state = tx.update({"w": {"kernel": jnp.asarray(g)}}, state, params)
    params = optax.apply_updates(params, updates)
  w = torch.nn.Parameter(torch.from_numpy(p0.copy()))
  opt = torch.optim.SGD([w], lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-2)
  for g in grads:
    w.grad = torch.from_numpy(g)
    opt.step()
  np.testing.assert_allclose(params["w"]["kernel"], w.detach().numpy(), rtol=1e-6)


@pytest.mark.parametrize("name", optim.OPTIMIZERS.names())
def test_every_optimizer_reduces_a_quadratic(name):
  config = optim_config(name=name, learning_rate=0.05, schedule="constant", warmup_epochs=0,
                        weight_decay=0.0, clip_norm=1.0)
  if name == "lars":
    config.learning_rate = 5.0
  tx, _ = optim.make_optimizer(config, steps_per_epoch=1, total_steps=50, batch_size=1)
  params = {"dense": {"kernel": jnp.full((4, 4), 3.0)}}
  loss = lambda p: jnp.sum(p["dense"]["kernel"] ** 2)
  state = tx.init(params)
  for _ in range(50):
    updates, state = tx.update(jax.grad(loss)(params), state, params)
    params = optax.apply_updates(params, updates)
  assert float(loss(params)) < 0.5 * 16 * 9


@pytest.mark.parametrize("name,clip_norm,decay_all", [("sgd", 0.0, False), ("sgd", 1.0, True),
                                                     ("adamw", 0.5, False)])
def test_the_flat_update_is_the_per_leaf_update(name, clip_norm, decay_all):
  # A ResNet's parameters (kernels decayed, BatchNorm and biases exempt), 5 steps of gradients of
  # every scale: the packed update gives the per-leaf one's numbers, leaf for leaf; the same bits
  # where no global norm sums the leaves in another order.
  from resnet_jax import create_model
  model = create_model("resnet8", num_classes=10)
  params = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)["params"]
  config = optim_config(name=name, learning_rate=0.1, weight_decay=5e-4, decay_all=decay_all,
                        clip_norm=clip_norm, schedule="cosine", warmup_epochs=1)
  run = {}
  for flat in (False, True):
    config.flat_update = flat
    tx, _ = optim.make_optimizer(config, steps_per_epoch=2, total_steps=5, batch_size=128)
    p, state = params, tx.init(params)
    for i in range(5):
      grads = jax.tree.map(lambda x, i=i: jax.random.normal(jax.random.key(i), x.shape) * 10.0 ** (
          i - 2), p)
      updates, state = jax.jit(tx.update)(grads, state, p)
      p = optax.apply_updates(p, updates)
    run[flat] = p
  leaves = jax.tree.leaves(jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), *run.values()))
  assert len(leaves) == len(jax.tree.leaves(params))
  assert max(leaves) < 1e-6 if clip_norm else max(leaves) == 0.0
  assert max(jax.tree.leaves(jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), params,
                                          run[True]))) > 1e-3  # the steps did move them


def test_the_flat_update_is_refused_for_an_optimizer_with_per_layer_norms():
  config = optim_config(name="lars", flat_update=True)
  with pytest.raises(InvalidInputError, match="optim.flat_update=True.*'lars'.*sgd"):
    optim.make_optimizer(config, steps_per_epoch=1, total_steps=1, batch_size=1)


def test_unknown_names_are_rejected():
  with pytest.raises(ValueError, match="Unknown optimizer 'adam'.*sgd"):
    optim.make_optimizer(optim_config(name="adam"), steps_per_epoch=1, total_steps=1, batch_size=1)
  with pytest.raises(ValueError, match="Unknown schedule 'linear'"):
    optim.make_schedule(optim_config(schedule="linear"), steps_per_epoch=1, total_steps=1,
                        batch_size=1)


@pytest.mark.parametrize("kwargs,expected", [
    ("", {}), ("  ", {}), ("b1=0.95", {"b1": 0.95}),
    ("b1=0.95, nesterov=True", {"b1": 0.95, "nesterov": True}),
    (" b1 = 0.95 ,nesterov= True ", {"b1": 0.95, "nesterov": True}),
    ("b1=0.95,", {"b1": 0.95}), ("eps=-1.5e-3", {"eps": -0.0015}),
    ("mask=None, flag=False", {"mask": None, "flag": False}),
    ("s='a b', e=''", {"s": "a b", "e": ""}),
    ("t=(), l=[1], d={'a': 1}", {"t": (), "l": [1], "d": {"a": 1}}),
    ("t=(0.9, 0.99), s='x,y'", {"t": (0.9, 0.99), "s": "x,y"}),  # commas inside a value
    ("b1=0.9, b1=0.8", {"b1": 0.8}),  # the last of a repeated name, as before
])
def test_optim_kwargs_is_the_argument_list_of_a_call(kwargs, expected):
  assert optim.optax_kwargs(optim_config(kwargs=kwargs)) == expected


@pytest.mark.parametrize("kwargs,item", [
    ("b1", "'b1'"), ("b1=x", "'b1=x'"), ("b1=1+2", "'b1=1+2'"), ("b1=f()", "'b1=f()'"),
    ("b1=0.95 nesterov=True", "'0.95 nesterov'"), ("b1=0.9,,b2=0.99", "','"), (", b1=1", "','"),
    ("=5", "'='"), ("**{'b1': 1}", "\"**{'b1': 1}\""), ("*a", "'*a'"),
    ("d={[1]: 2}", "'d={[1]: 2}'"), ("b1=1) or f(b2=2", "'b1=1) or f(b2=2'"),
])
def test_optim_kwargs_that_are_not_literal_keywords_are_refused_naming_the_item(kwargs, item):
  with pytest.raises(InvalidInputError) as refused:
    optim.optax_kwargs(optim_config(kwargs=kwargs))
  message = str(refused.value)
  assert message.startswith(f"optim.kwargs={kwargs!r}: {item} is not name=value with a Python "
                            "literal value (") and message.endswith("e.g. b1=0.95, nesterov=True).")
  assert "\n" not in message
