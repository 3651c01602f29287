"""Model zoo: shapes, dtypes, published parameter counts and FLOPs, BatchNorm and block invariants."""

import functools

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import resnet_jax
from resnet_jax import create_model
from resnet_jax.errors import InvalidInputError
from resnet_jax.models import blocks
from tests.conftest import ONE_PER_FAMILY, every_model_nightly

ALL_MODELS = resnet_jax.list_models()
assert set(ONE_PER_FAMILY) <= set(ALL_MODELS)

# torchvision's published counts at 1000 classes.
TORCHVISION_PARAMS = {
    "resnet18": 11_689_512, "resnet34": 21_797_672, "resnet50": 25_557_032,
    "resnet101": 44_549_160, "resnet152": 60_192_808, "resnext50_32x4d": 25_028_904,
    "resnext101_32x8d": 88_791_336, "resnext101_64x4d": 83_455_272,
    "wide_resnet50_2": 68_883_240, "wide_resnet101_2": 126_886_696,
}
# He et al. 2015 table 6 and He et al. 2016 table 2 (CIFAR-10, 10 classes), in millions.
PAPER_PARAMS_M = {
    "resnet20": 0.27, "resnet32": 0.46, "resnet44": 0.66, "resnet56": 0.85, "resnet110": 1.7,
    "resnet1202": 19.4, "preact_resnet164": 1.7,
}


def smallest_input(model, channels=3, batch=2):
  return jnp.zeros((batch, model.total_stride, model.total_stride, channels))


def num_params(model, channels=3):
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), smallest_input(model, channels)))
  return sum(x.size for x in jax.tree.leaves(variables["params"]))


@pytest.mark.parametrize("name", every_model_nightly(ALL_MODELS))
def test_every_model_shapes_and_dtypes(name):
  model = resnet_jax.create_model(name, num_classes=7, dtype=jnp.bfloat16)
  x = jnp.zeros((2, 2 * model.total_stride, 2 * model.total_stride, 3))
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x))
  assert set(variables) == {"params", "batch_stats"}
  chex.assert_trees_all_equal_dtypes(variables, jax.tree.map(lambda _: jnp.zeros((), jnp.float32),
                                                             variables))
  logits = jax.eval_shape(lambda v: model.apply(v, x), variables)
  chex.assert_shape(logits, (2, 7))
  assert logits.dtype == jnp.float32
  logits, updates = jax.eval_shape(
      lambda v: model.apply(v, x, train=True, mutable=["batch_stats"]), variables)
  chex.assert_shape(logits, (2, 7))
  chex.assert_trees_all_equal_shapes_and_dtypes(updates["batch_stats"], variables["batch_stats"])


@pytest.mark.parametrize("name", sorted(TORCHVISION_PARAMS))
def test_torchvision_parameter_counts(name):
  assert num_params(resnet_jax.create_model(name)) == TORCHVISION_PARAMS[name]


@pytest.mark.parametrize("name", sorted(PAPER_PARAMS_M))
def test_paper_parameter_counts(name):
  count = num_params(resnet_jax.create_model(name, num_classes=10))
  assert round(count / 1e6, 2 if count < 1e6 else 1) == PAPER_PARAMS_M[name], count


def test_resnet50_flops_match_published_macs():
  model = resnet_jax.create_model("resnet50")
  x = jnp.zeros((1, 224, 224, 3))
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x))
  compiled = jax.jit(model.apply).lower(variables, x).compile()
  analysis = compiled.cost_analysis()
  analysis = analysis[0] if isinstance(analysis, list) else analysis
  gmacs = analysis["flops"] / 2 / 1e9  # XLA counts a multiply-add as two FLOPs
  assert abs(gmacs - 4.1) / 4.1 < 0.05, gmacs


@pytest.mark.parametrize("name", ["preact_resnet1001", "resnet1202"])
def test_thousand_layer_networks_build_and_their_gradient_compiles(name):
  # Compile-only (the scanned blocks compute what unscanned ones do:
  # test_scanned_stages_compute_the_same_function; remat keeps their memory bounded).
  model = resnet_jax.create_model(name, num_classes=10, remat=True)
  x = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
  variables = jax.eval_shape(model.init, jax.random.key(0), x)

  def loss(params, batch_stats, x):
    logits, _ = model.apply({"params": params, "batch_stats": batch_stats}, x,
                            train=True, mutable=["batch_stats"])
    return jnp.mean(logits**2)

  compiled = jax.jit(jax.grad(loss)).lower(variables["params"], variables["batch_stats"],
                                           x).compile()
  chex.assert_trees_all_equal_shapes_and_dtypes(compiled.out_info, variables["params"])


def test_features_and_headless_backbone():
  model = resnet_jax.create_model("resnet50", num_classes=0)
  x = jnp.zeros((2, 64, 64, 3))
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x))
  pooled = jax.eval_shape(lambda v: model.apply(v, x), variables)
  chex.assert_shape(pooled, (2, 2048))
  assert "fc" not in variables["params"]
  feats = jax.eval_shape(lambda v: model.apply(v, x, return_features=True), variables)
  assert set(feats) == {"stem", "stage1", "stage2", "stage3", "stage4", "pooled"}
  chex.assert_shape([feats["stem"], feats["stage1"], feats["stage2"], feats["stage3"],
                     feats["stage4"]],
                    [(2, 16, 16, 64), (2, 16, 16, 256), (2, 8, 8, 512), (2, 4, 4, 1024),
                     (2, 2, 2, 2048)])
  with_head = resnet_jax.create_model("resnet18", num_classes=5)
  variables = jax.eval_shape(lambda: with_head.init(jax.random.key(0), x))
  feats = jax.eval_shape(lambda v: with_head.apply(v, x, return_features=True), variables)
  chex.assert_shape(feats["logits"], (2, 5))


def test_v1_puts_stride_on_first_1x1():
  x = jnp.zeros((1, 64, 64, 3))
  shapes = {}
  for v1 in (False, True):
    model = resnet_jax.create_model("resnet50", stride_in_1x1=v1)
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x))
    _, state = jax.eval_shape(
        lambda v: model.apply(v, x, capture_intermediates=True, mutable=["intermediates"]),
        variables)
    block = state["intermediates"]["layer2_0"]
    shapes[v1] = (block["conv1"]["__call__"][0].shape, block["conv2"]["__call__"][0].shape)
  assert shapes[False] == ((1, 16, 16, 128), (1, 8, 8, 128))
  assert shapes[True] == ((1, 8, 8, 128), (1, 8, 8, 128))


def _block(cls, features, **kwargs):
  conv = functools.partial(nn.Conv, use_bias=False)
  norm = functools.partial(nn.BatchNorm, use_running_average=False, momentum=0.9, epsilon=1e-5)
  return cls(num_filters=features, conv=conv, norm=norm, zero_init_last=True, **kwargs)


@pytest.mark.parametrize("cls,features,channels", [
    (blocks.BasicBlock, 8, 8), (blocks.Bottleneck, 4, 16),
    (blocks.PreActBasicBlock, 8, 8), (blocks.PreActBottleneck, 4, 16)])
def test_zero_init_last_makes_block_identity(cls, features, channels):
  x = jax.random.normal(jax.random.key(0), (4, 8, 8, channels))
  block = _block(cls, features)
  variables = block.init(jax.random.key(1), x)
  y, _ = block.apply(variables, x, mutable=["batch_stats"])
  expected = x if cls.preactivation else nn.relu(x)
  chex.assert_trees_all_equal(y, expected)  # exactly, not approximately
  # Without zero-init the branch contributes.
  plain = cls(num_filters=features, conv=block.conv, norm=block.norm)
  y, _ = plain.apply(plain.init(jax.random.key(1), x), x, mutable=["batch_stats"])
  assert not np.allclose(y, expected)


def test_zero_pad_shortcut_option_a():
  x = jnp.arange(2 * 4 * 4 * 2, dtype=jnp.float32).reshape(2, 4, 4, 2)
  y = blocks.zero_pad_shortcut(x, 4, 2)
  chex.assert_shape(y, (2, 2, 2, 4))
  chex.assert_trees_all_equal(y[..., 1:3], x[:, ::2, ::2, :])
  assert float(jnp.abs(y[..., 0]).sum() + jnp.abs(y[..., 3]).sum()) == 0.0


def test_batchnorm_train_uses_batch_statistics_and_eval_uses_running_ones():
  model = resnet_jax.create_model("resnet20", num_classes=10)
  x = jax.random.normal(jax.random.key(0), (8, 32, 32, 3)) * 3 + 1
  variables = model.init(jax.random.key(1), x)
  # Momentum 0.9 in Flax terms: running = 0.9 * running + 0.1 * batch (PyTorch's momentum 0.1);
  # the running variance averages the unbiased batch variance, as PyTorch's does.
  conv_out = nn.Conv(16, (3, 3), padding=((1, 1), (1, 1)), use_bias=False).apply(
      {"params": variables["params"]["conv1"]}, x)
  apply = jax.jit(model.apply, static_argnames=("train", "mutable"))
  _, updates = apply(variables, x, train=True, mutable=("batch_stats",))
  new = updates["batch_stats"]["bn1"]
  np.testing.assert_allclose(new["mean"], 0.1 * conv_out.mean((0, 1, 2)), rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(new["var"], 0.9 + 0.1 * conv_out.var((0, 1, 2), ddof=1), rtol=1e-4)
  biased = resnet_jax.create_model("resnet20", num_classes=10, bn_unbiased_var=False)
  _, updates = jax.jit(biased.apply, static_argnames=("train", "mutable"))(
      variables, x, train=True, mutable=("batch_stats",))
  np.testing.assert_allclose(updates["batch_stats"]["bn1"]["var"],
                             0.9 + 0.1 * conv_out.var((0, 1, 2)), rtol=1e-4)
  # Eval: each example's output is independent of the rest of the batch; train: it is not.
  eval_full = apply(variables, x)
  eval_half = apply(variables, x[:4])
  np.testing.assert_allclose(eval_full[:4], eval_half, rtol=1e-5, atol=1e-5)
  train_full, _ = apply(variables, x, train=True, mutable=("batch_stats",))
  train_half, _ = apply(variables, x[:4], train=True, mutable=("batch_stats",))
  assert not np.allclose(train_full[:4], train_half, atol=1e-3)
  assert model.bn_momentum == 0.9 and model.bn_epsilon == 1e-5


def test_bfloat16_compute_keeps_float32_params_stats_and_logits():
  model = resnet_jax.create_model("resnet20", num_classes=10, dtype=jnp.bfloat16)
  x = jnp.ones((2, 32, 32, 3))
  variables = model.init(jax.random.key(0), x)
  logits, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
  assert logits.dtype == jnp.float32
  for leaf in jax.tree.leaves((variables, updates)):
    assert leaf.dtype == jnp.float32
  _, state = model.apply(variables, x, capture_intermediates=True, mutable=["intermediates"])
  assert state["intermediates"]["layer1_0"]["conv1"]["__call__"][0].dtype == jnp.bfloat16


def test_scanned_stages_compute_the_same_function():
  from resnet_jax.interop import convert
  plain = resnet_jax.create_model("resnet20", num_classes=10)
  scanned = resnet_jax.create_model("resnet20", num_classes=10, scan_blocks=True)
  x = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
  variables = plain.init(jax.random.key(1), x)
  restacked = convert.from_torchvision(scanned, convert.to_torchvision(variables))
  chex.assert_shape(restacked["params"]["layer2_scan"]["block"]["conv1"]["kernel"],
                    (2, 3, 3, 32, 32))
  np.testing.assert_allclose(scanned.apply(restacked, x), plain.apply(variables, x), rtol=1e-5,
                             atol=1e-5)


def test_apply_does_not_retrace():
  model = resnet_jax.create_model("resnet20", num_classes=10)
  x = jnp.zeros((2, 32, 32, 3))
  variables = model.init(jax.random.key(0), x)

  @jax.jit
  @chex.assert_max_traces(n=1)
  def forward(variables, x):
    return model.apply(variables, x, train=True, mutable=["batch_stats"])

  for seed in range(3):
    forward(variables, jax.random.normal(jax.random.key(seed), x.shape))


def test_bad_names_and_inputs_are_rejected_clearly():
  with pytest.raises(ValueError, match="Unknown model 'resnet51'.*resnet50"):
    resnet_jax.create_model("resnet51")
  with pytest.raises(ValueError, match="Unknown ResNet option.*'widht'"):
    resnet_jax.create_model("resnet18", widht=2)
  with pytest.raises(ValueError, match="num_classes"):
    resnet_jax.create_model("resnet18", num_classes=-1)
  model = resnet_jax.create_model("resnet50")
  with pytest.raises(ValueError, match="too small.*at least 32x32"):
    model.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)))
  with pytest.raises(ValueError, match="rank 4"):
    model.init(jax.random.key(0), jnp.zeros((16, 16, 3)))
  with pytest.raises(ValueError, match="groups=1"):
    bad = resnet_jax.create_model("resnet18", groups=32)
    bad.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))


def test_stochastic_depth_is_linear_over_blocks_random_in_training_and_off_in_evaluation():
  model = create_model("resnet8", num_classes=10, drop_path_rate=0.4)
  rates = []

  def record(next_fun, args, kwargs, context):
    if context.method_name == "__call__" and isinstance(context.module, blocks.BasicBlock):
      rates.append(context.module.drop_path_rate)
    return next_fun(*args, **kwargs)
  x = jax.random.normal(jax.random.key(0), (4, 16, 16, 3))
  variables = model.init(jax.random.key(1), x)
  with nn.intercept_methods(record):
    model.apply(variables, x, train=True, mutable=["batch_stats"],
                rngs={"dropout": jax.random.key(2)})
  np.testing.assert_allclose(rates, [0.0, 0.2, 0.4], rtol=1e-6)  # linear from 0: timm's
  train = lambda key: model.apply(variables, x, train=True, mutable=["batch_stats"],
                                  rngs={"dropout": jax.random.key(key)})[0]
  assert not np.allclose(train(2), train(3))  # other rows dropped
  plain = create_model("resnet8", num_classes=10)
  chex.assert_trees_all_equal(model.apply(variables, x, train=False),
                              plain.apply(variables, x, train=False))
  with pytest.raises(InvalidInputError, match="drop_path_rate needs model.scan_blocks=false"):
    model.clone(scan_blocks=True).init(jax.random.key(1), x)
