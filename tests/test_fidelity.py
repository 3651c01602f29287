"""Training dynamics equal PyTorch's, recipe by recipe (each config's recipe on a small network,
small images and a few steps): teacher-forced float64 single steps agree to 1e-5 relative and the
float32 loss curve follows PyTorch's float64 curve as long as PyTorch's own float32 run does; a
deliberate semantic difference is detected. Also: PyTorch's schedulers follow the same learning
rates, and the initialisation has torchvision's distributions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import resnet_jax
from resnet_jax.configs import (cifar10_resnet20, cifar10_resnet110, default,
                                 fashion_mnist_resnet18, finetune, imagenet_resnet50)
from resnet_jax.data.transforms import Preprocessing
from resnet_jax import pretrained
from resnet_jax.train import optim

torch = pytest.importorskip("torch")
from resnet_jax.interop import fidelity  # noqa: E402

STEPS = 12  # free-running steps; the schedules below end at step 16
DROP_PATH = {"name": "resnet8", "drop_path_rate": 0.5}  # blocks drop at 0, 0.25 and 0.5
SMALL_BOTTLENECK = {"name": "resnet50", "stage_sizes": (1, 1, 1, 1), "num_filters": 8}


def small(config, tfds_dir, *, model=None, image_size=8, **optim_overrides):
  """A config's recipe on the digits, a small network and a 16-step schedule (float32)."""
  config.model.update(model or {"name": "resnet8"})
  config.data.update(name="digits", data_dir=tfds_dir, image_size=image_size, num_workers=0)
  config.train.update(batch_size=32, eval_batch_size=32, num_steps=16, num_epochs=0.0,
                      precision="float32")
  config.optim.update(optim_overrides)
  return config


def mixed(config, mode):
  """`config` with Mixup 0.2 or CutMix 1.0 (half each) on every batch or image."""
  config.data.update(mixup_alpha=0.2, cutmix_alpha=1.0, mix_mode=mode)
  return config


def warmup(steps):  # the digits at batch 32: 44 steps per epoch
  return steps / 44


RECIPES = {
    # He et al. 2015: SGD momentum 0.9, wd 1e-4 on every weight, /10 at two boundaries.
    "cifar10_resnet20": lambda d: small(cifar10_resnet20.get_config(), d, boundaries=(5, 10)),
    # ... with the paper's warm-up at a tenth of the rate.
    "cifar10_resnet110": lambda d: small(cifar10_resnet110.get_config(), d, boundaries=(6, 10),
                                         warmup_epochs=warmup(3)),
    # Nesterov, warm-up from 0 + cosine, weight decay on the kernels only.
    "default": lambda d: small(default.get_config(), d, warmup_epochs=warmup(3)),
    # Goyal et al.: lr x batch/256, warm-up from the small-batch rate, /10 steps, label smoothing
    # 0.1, zero-init last BN, kernel-only decay; on a small bottleneck network.
    "imagenet_resnet50": lambda d: small(imagenet_resnet50.get_config(), d,
                                         model=SMALL_BOTTLENECK, image_size=32,
                                         warmup_epochs=warmup(4), boundaries=(8, 12),
                                         boundaries_unit="steps"),
    # d2l's Fashion-MNIST ResNet-18 as configured: SGD Nesterov, cosine with warm-up.
    "fashion_mnist_resnet18": lambda d: small(
        fashion_mnist_resnet18.get_config(), d, image_size=32, warmup_epochs=warmup(2),
        model={"name": "resnet18", "stage_sizes": (1, 1, 1, 1), "num_filters": 8}),
    # AdamW, decoupled decay on the kernels, cosine.
    "adamw": lambda d: small(default.get_config(), d, name="adamw", learning_rate=1e-3,
                             weight_decay=0.05, warmup_epochs=warmup(3)),
    # An EMA of the weights (and BatchNorm statistics).
    "ema": lambda d: small(default.get_config(), d, ema_decay=0.9, warmup_epochs=warmup(3)),
    # Today's step: stochastic depth, two micro-batches per update, label smoothing, Mixup or
    # CutMix on the batch, and torchvision's EMA (every second step, its decay adjusted, copying
    # the weights until the first update after the warm-up).
    "modern": lambda d: mixed(small(default.get_config(), d, model=DROP_PATH, accumulate_steps=2,
                                    label_smoothing=0.1, ema_decay=0.999, ema_every_steps=2,
                                    ema_adjust=True, warmup_epochs=warmup(3)), "batch"),
    # timm's ResNet-strikes-back optimisation: LAMB (trust ratios on the decayed kernels), binary
    # cross-entropy with a target threshold, gradients clipped at norm 1; with Mixup or CutMix
    # per image (both sides mixing with the project's draws).
    "lamb_bce": lambda d: mixed(small(default.get_config(), d, name="lamb", learning_rate=5e-3,
                                      weight_decay=0.02, eps=1e-6, clip_norm=1.0,
                                      loss="binary_cross_entropy(target_threshold=0.2)",
                                      label_smoothing=0.1, warmup_epochs=warmup(3)), "elem"),
}


# The default tier compares the default recipe and detects one control; the nightly slow tier adds
# every other recipe (the CIFAR paper's schedule boundaries and decay on every weight among them)
# and control.
FAST_RECIPES = ("default",)


@pytest.mark.parametrize("recipe", [
    r if r in FAST_RECIPES else pytest.param(r, marks=pytest.mark.slow) for r in sorted(RECIPES)])
def test_recipe_follows_pytorch(recipe, tfds_dir):
  report = fidelity.compare(RECIPES[recipe](tfds_dir), steps=STEPS)
  assert report["worst_teacher_forced"] <= fidelity.TOLERANCE, report["teacher_forced"]
  assert report["passed_free_running"], report["within"]
  assert len(report["teacher_forced"]) >= 4  # start, end and around the boundaries


@pytest.fixture(scope="module")
def exported_resnet8(tmp_path_factory):
  root = tmp_path_factory.mktemp("pretrained")
  model = resnet_jax.create_model("resnet8", num_classes=5)
  variables = jax.device_get(model.init(jax.random.key(3), jnp.zeros((1, 8, 8, 1))))
  prep = Preprocessing(image_size=8, channels=1, crop_ratio=1.0, mean=(100.0,), std=(80.0,))
  pretrained.export(str(root / "model"), pretrained.Pretrained(
      variables=variables, model="resnet8", num_classes=5, preprocessing=prep))
  return root / "model"


@pytest.mark.slow
def test_fine_tuning_with_a_frozen_stage_and_a_backbone_rate_follows_pytorch(tfds_dir,
                                                                           exported_resnet8):
  config = small(finetune.get_config(), tfds_dir, model={"name": ""}, warmup_epochs=warmup(3),
                 label_smoothing=0.1)
  config.init.update(checkpoint=str(exported_resnet8), freeze="stage1", backbone_lr_scale=0.1)
  config.data.update(random_resized_crop=False, eval_crop_ratio=1.0)
  report = fidelity.compare(config, steps=STEPS)
  assert report["worst_teacher_forced"] <= fidelity.TOLERANCE, report["teacher_forced"]
  assert report["passed_free_running"], report["within"]


@pytest.mark.parametrize("control", ["decay_all",
                                     pytest.param("biased_running_var", marks=pytest.mark.slow)])
def test_a_semantic_difference_is_detected(control, tfds_dir):
  report = fidelity.compare(RECIPES["default"](tfds_dir), steps=4, control=control)
  assert not report["passed_teacher_forced"]
  assert report["worst_teacher_forced"] > 10 * fidelity.TOLERANCE  # a clear margin


def test_the_twins_unsynchronised_batchnorm_is_the_step_s_on_four_devices():
  # Each device normalises its rows by its own statistics; the step averages the replicas'
  # running averages (train/step.py). The twin's chunks must give the same, in float64.
  from resnet_jax.interop.torch_reference import ReplicaBatchNorm2d
  from resnet_jax.layers.batchnorm import BatchNorm
  from resnet_jax.layers.replicas import replica_mean
  x = np.random.RandomState(0).randn(8, 5, 5, 3) * 2 + 1
  module = BatchNorm(momentum=0.9, unbiased_running_var=True, dtype=jnp.float64,
                     param_dtype=jnp.float64)
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:4]), ("batch",))

  def per_device(x):
    y, updates = module.apply(variables, x, use_running_average=False, mutable=["batch_stats"])
    return y, replica_mean(updates["batch_stats"], "batch")
  with jax.enable_x64(True):
    variables = jax.tree.map(lambda v: v + 0.5, module.init(jax.random.key(0), x[:2], False))
    y, stats = jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=jax.P("batch"),
                                     out_specs=(jax.P("batch"), jax.P()), check_vma=False))(x)
  twin = ReplicaBatchNorm2d(3, momentum=0.1, replicas=4).double()
  with torch.no_grad():
    for name, value in (("weight", "scale"), ("bias", "bias")):
      getattr(twin, name).copy_(torch.tensor(np.array(variables["params"][value])))
    twin.running_mean.copy_(torch.tensor(np.array(variables["batch_stats"]["mean"])))
    twin.running_var.copy_(torch.tensor(np.array(variables["batch_stats"]["var"])))
  out = twin(torch.from_numpy(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).detach().numpy()
  np.testing.assert_allclose(out, y, rtol=1e-12, atol=1e-12)
  np.testing.assert_allclose(twin.running_mean.numpy(), stats["mean"], rtol=1e-12)
  np.testing.assert_allclose(twin.running_var.numpy(), stats["var"], rtol=1e-12)
  # Not what one BatchNorm over the whole batch gives.
  whole = torch.nn.functional.batch_norm(torch.from_numpy(x).permute(0, 3, 1, 2), None, None,
                                         twin.weight, twin.bias, True, 0.0, twin.eps)
  assert not np.allclose(whole.permute(0, 2, 3, 1).detach().numpy(), y, atol=1e-3)


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_pytorch_schedulers_follow_the_same_learning_rates(recipe, tfds_dir):
  config = RECIPES[recipe](tfds_dir)
  o, total = config.optim, 40
  ours = optim.make_schedule(o, steps_per_epoch=44, total_steps=total,
                             batch_size=config.train.batch_size)
  param = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))
  peak = optim.peak_learning_rate(o, config.train.batch_size)
  opt = torch.optim.SGD([param], lr=peak)
  scheduler = fidelity.torch_scheduler(o, opt, steps_per_epoch=44, total_steps=total)
  theirs = []
  for _ in range(total):
    theirs.append(opt.param_groups[0]["lr"])
    opt.step()
    scheduler.step()
  # optax computes in float32: equal to its rounding of the peak rate (the cosine's tail, near 0,
  # is where float32's cancellation shows).
  np.testing.assert_allclose([float(ours(k)) for k in range(total)], theirs, rtol=1e-6,
                             atol=1e-6 * peak)


def test_initialisation_has_torchvisions_distributions():
  # Convolutions: kaiming_normal_(mode="fan_out", nonlinearity="relu"); BatchNorm: 1 and 0; the
  # classifier: nn.Linear's uniform(+-1/sqrt(fan_in)) for kernel and bias.
  model = resnet_jax.create_model("resnet50", num_classes=1000)
  params = model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)))["params"]
  for path, kernel in jax.tree_util.tree_flatten_with_path(params)[0]:
    names = [k.key for k in path]
    value = np.asarray(kernel)
    if names[-1] == "kernel" and value.ndim == 4 and value.size >= 16384:
      kh, kw, _, out = value.shape
      expected = np.sqrt(2.0 / (kh * kw * out))
      assert abs(value.std() / expected - 1) < 0.03, (names, value.std(), expected)
      assert abs(value.mean()) < 0.03 * expected, names
      assert np.abs(value).max() > 3.5 * expected, names  # untruncated normal tails
    elif names[-2:] in (["bn1", "scale"], ["bn2", "scale"]):
      assert (value == 1).all(), names
    elif names[-1] == "bias" and names[0] != "fc":
      assert (value == 0).all(), names
  bound = 1 / np.sqrt(2048)
  for leaf in (params["fc"]["kernel"], params["fc"]["bias"]):
    leaf = np.asarray(leaf)
    assert leaf.min() >= -bound and leaf.max() <= bound
    assert abs(leaf.std() / (bound / np.sqrt(3)) - 1) < 0.1


def test_what_the_twin_does_not_follow_is_refused_in_one_line(tfds_dir):
  config = RECIPES["default"](tfds_dir)
  config.optim.name = "lars"
  with pytest.raises(ValueError, match="^optim.name='lars' has no torch.optim counterpart here; "
                                       "compare adamw, lamb, sgd.$"):
    fidelity.compare(config, steps=2)


@pytest.mark.slow
def test_stochastic_depth_with_other_masks_is_detected(tfds_dir, monkeypatch):
  # The twin must drop exactly the rows the project's blocks drop: masks from other keys fail.
  same_masks = fidelity.drop_masks
  monkeypatch.setattr(fidelity, "drop_masks", lambda model, variables, key, shape: same_masks(
      model, variables, jax.random.fold_in(key, 7), shape))
  report = fidelity.compare(RECIPES["modern"](tfds_dir), steps=4)
  assert report["worst_teacher_forced"] > 10 * fidelity.TOLERANCE
