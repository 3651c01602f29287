"""The parts of today's recipes, each equal to its reference (timm, torchvision) given the same
input and the same sampled parameters, and its own draws following the reference distributions."""

import collections
import functools
import itertools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import stats

from resnet_jax.configs import default
from resnet_jax.data.mixing import MixParams, Mixing, mix, sample
from resnet_jax.errors import InvalidInputError
from resnet_jax.layers.drop_path import drop_path
from resnet_jax.train import loop, losses, optim, parallel, step
from resnet_jax.train.step import ema_update
from resnet_jax.train.state import create_train_state
from tests import references

torch = pytest.importorskip("torch")

NUM_CLASSES, SMOOTHING = 10, 0.1


def timm_draws(mixup, mode, batch_size, height, width):
  """The draws timm's Mixup makes in one call, replayed from numpy's global generator in the same
  order (`_params_per_batch` or `_params_per_elem`, then `rand_bbox`'s centre per CutMix)."""
  if mode == "batch":
    lam, cutmix = mixup._params_per_batch()
    lam, cutmix = np.full(batch_size, lam), np.full(batch_size, cutmix)
    centers = [(np.random.randint(0, height), np.random.randint(0, width))
               if cutmix[0] and lam[0] != 1.0 else (0, 0)] * batch_size
  else:
    lam, cutmix = mixup._params_per_elem(batch_size)
    centers = [(np.random.randint(0, height), np.random.randint(0, width))
               if cutmix[i] and lam[i] != 1.0 else (0, 0) for i in range(batch_size)]
  cy, cx = np.array(centers).T
  return MixParams(weight=jnp.asarray(lam, jnp.float32), cutmix=jnp.asarray(cutmix & (lam != 1.0)),
                   center_y=jnp.asarray(cy, jnp.int32), center_x=jnp.asarray(cx, jnp.int32))


@pytest.mark.parametrize("mode,prob", [("batch", 1.0), ("batch", 0.6), ("elem", 0.8)])
def test_mixup_and_cutmix_give_timms_images_and_targets(mode, prob):
  references.timm()
  from timm.data import Mixup
  rng = np.random.RandomState(0)
  b, h, w = 8, 12, 10
  images = rng.randn(b, h, w, 3).astype(np.float32)
  labels = rng.randint(0, NUM_CLASSES, b)
  kinds = set()
  for seed in range(12):
    mixup = Mixup(mixup_alpha=0.8, cutmix_alpha=1.0, prob=prob, switch_prob=0.5, mode=mode,
                  label_smoothing=SMOOTHING, num_classes=NUM_CLASSES)
    x = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())
    np.random.seed(seed)
    x, target = mixup(x, torch.from_numpy(labels))
    np.random.seed(seed)
    params = timm_draws(mixup, mode, b, h, w)
    out, partner, own = mix(jnp.asarray(images), jnp.asarray(labels), params)
    targets = losses.soft_targets(jnp.asarray(labels), NUM_CLASSES, SMOOTHING, partner, own)
    np.testing.assert_allclose(out, x.numpy().transpose(0, 2, 3, 1), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(targets, target.numpy(), rtol=1e-6, atol=1e-7)
    kinds |= {("cutmix" if c else "mixup" if wt != 1 else "none")
              for c, wt in zip(np.asarray(params.cutmix), np.asarray(params.weight))}
  assert {"cutmix", "mixup"} <= kinds and (prob == 1.0 or "none" in kinds), kinds


def test_the_mixing_draws_follow_timms_distributions():
  # 20,000 independent draws (elem mode draws per image).
  n, h, w = 20_000, 32, 24
  binomial = lambda hits, trials, q: stats.binomtest(int(hits), int(trials), q).pvalue
  mixing = Mixing(mixup_alpha=0.2, cutmix_alpha=1.0, prob=1.0, switch_prob=0.3, mode="elem")
  p = jax.tree.map(np.asarray, sample(jax.random.key(0), mixing, n, h, w))
  assert binomial(p.cutmix.sum(), n, 0.3) > 1e-3
  assert stats.kstest(p.weight[p.cutmix], stats.beta(1.0, 1.0).cdf).pvalue > 1e-3
  # Beta(0.2, 0.2) puts 2% of its draws within float32's last step below 1.0, where they round to
  # 1 (an unmixed image, as timm's float64 weight of 1 - 1e-8 nearly is): its tails are checked by
  # their mass, the rest by its shape.
  mixup, beta = p.weight[~p.cutmix].astype(np.float64), stats.beta(0.2, 0.2)
  low, high = mixup < 1e-3, mixup > 1 - 1e-3
  assert binomial(low.sum(), len(mixup), beta.cdf(1e-3)) > 1e-3
  assert binomial(high.sum(), len(mixup), beta.sf(1 - 1e-3)) > 1e-3
  inner = (beta.cdf(1e-3), beta.cdf(1 - 1e-3))
  assert stats.kstest(mixup[~low & ~high],
                      lambda v: (beta.cdf(v) - inner[0]) / (inner[1] - inner[0])).pvalue > 1e-3
  for centers, side in ((p.center_y, h), (p.center_x, w)):
    assert stats.chisquare(np.bincount(centers, minlength=side)).pvalue > 1e-3
  # Applied to each image with probability `prob`; not applied: weight 1, no CutMix.
  p = jax.tree.map(np.asarray, sample(jax.random.key(1), Mixing(cutmix_alpha=1.0, prob=0.8,
                                                                mode="elem"), n, h, w))
  applied = p.weight != 1.0
  assert binomial(applied.sum(), n, 0.8) > 1e-3 and (p.cutmix == applied).all()
  batch = jax.tree.map(np.asarray, sample(jax.random.key(2), Mixing(0.2, 1.0, mode="batch"),
                                          16, h, w))
  assert len(set(batch.weight)) == 1 and len(set(batch.cutmix)) == 1  # one draw per batch


def test_a_bad_mix_mode_is_refused_naming_the_choices():
  config = default.get_config().data
  config.mix_mode = "pair"
  with pytest.raises(InvalidInputError, match="data.mix_mode='pair'; choose one of batch, elem"):
    Mixing.from_config(config)


@pytest.mark.parametrize("value", ["0", "random"])
def test_random_erasing_gives_torchvisions_pixels_for_the_same_rectangle(value):
  from resnet_jax.data.erasing import Box, erase
  v2 = references.transforms_v2()
  image = torch.randn(3, 20, 16)
  transform = v2.RandomErasing(p=1.0, value=0.0 if value == "0" else "random")
  erased = 0
  for seed in range(20):
    torch.manual_seed(seed)
    params = transform.make_params([image])
    expected = transform.transform(image, params).numpy().transpose(1, 2, 0)
    box = Box(*(jnp.asarray(params[k]) for k in ("i", "j", "h", "w")),
              erase=jnp.asarray(params["v"] is not None))
    noise = (params["v"].numpy().transpose(1, 2, 0) if value == "random" and box.erase
             else np.zeros((1, 1, 1), np.float32))
    # torchvision's noise covers the rectangle; ours is drawn for the whole image, placed alike.
    values = np.zeros((20, 16, 3), np.float32)
    if value == "random" and params["v"] is not None:
      i, j, h, w = (params[k] for k in ("i", "j", "h", "w"))
      values[i:i + h, j:j + w] = noise
    got = erase(jnp.asarray(image.numpy().transpose(1, 2, 0)), box, jnp.asarray(values))
    np.testing.assert_array_equal(got, expected)
    erased += int(params["v"] is not None)
  assert erased >= 15


def test_random_erasing_draws_follow_torchvisions():
  from resnet_jax.data.erasing import Erasing, sample
  v2 = references.transforms_v2()
  n, (h, w) = 4000, (24, 20)
  erasing = Erasing(prob=0.7, scale=(0.02, 0.4), ratio=(0.3, 3.3))
  ours = jax.tree.map(np.asarray, jax.vmap(lambda k: sample(k, erasing, h, w))(
      jax.random.split(jax.random.key(0), n)))
  transform = v2.RandomErasing(p=1.0, scale=(0.02, 0.4), ratio=(0.3, 3.3))
  torch.manual_seed(0)
  theirs = [transform.make_params([torch.zeros(3, h, w)]) for _ in range(n)]
  fits = np.array([p["v"] is not None for p in theirs])
  assert stats.binomtest(int(ours.erase.sum()), n, 0.7 * fits.mean()).pvalue > 1e-3
  for ours_k, key in ((ours.height, "h"), (ours.width, "w"), (ours.top, "i"), (ours.left, "j")):
    reference = np.array([p[key] for p in theirs])[fits]
    assert stats.ks_2samp(ours_k[ours.erase], reference).pvalue > 1e-3, key


def test_stochastic_depth_equals_torchvisions_with_the_same_mask():
  tv = references.torchvision()
  x = torch.randn(64, 4, 5, 5)
  torch.manual_seed(3)
  expected = tv.ops.StochasticDepth(0.3, "row").train()(x)
  keep = (expected.reshape(64, -1) != 0).any(1).numpy()
  assert 0 < keep.sum() < 64
  got = drop_path(jnp.asarray(x.numpy().transpose(0, 2, 3, 1)), 0.3, jnp.asarray(keep))
  np.testing.assert_allclose(got, expected.numpy().transpose(0, 2, 3, 1), rtol=1e-6)


def test_lamb_equals_timms_lamb_for_ten_steps():
  references.timm()
  from timm.optim import Lamb
  rng = np.random.RandomState(0)
  params = {"conv": {"kernel": rng.randn(3, 3, 4, 8).astype(np.float32)},
            "bn": {"scale": rng.rand(8).astype(np.float32) + 0.5,
                   "bias": rng.randn(8).astype(np.float32)}}
  grads = [jax.tree.map(lambda p, i=i: (rng.randn(*p.shape) * 3.0 ** (i % 3)).astype(np.float32),
                        params) for i in range(10)]
  config = default.get_config().optim
  config.update(name="lamb", learning_rate=0.01, b1=0.9, b2=0.999, eps=1e-6, weight_decay=0.02,
                clip_norm=1.0, schedule="constant", warmup_epochs=0)
  tx, _ = optim.make_optimizer(config, steps_per_epoch=1, total_steps=10, batch_size=1)
  ours, state = jax.tree.map(jnp.asarray, params), None
  state = tx.init(ours)
  for g in grads:
    updates, state = tx.update(jax.tree.map(jnp.asarray, g), state, ours)
    ours = optax.apply_updates(ours, updates)
  # timm's parameter groups: weight decay on the kernels, none on BatchNorm.
  theirs = jax.tree.map(lambda p: torch.nn.Parameter(torch.from_numpy(p.copy())), params)
  lamb = Lamb([{"params": [theirs["conv"]["kernel"]], "weight_decay": 0.02},
               {"params": [theirs["bn"]["scale"], theirs["bn"]["bias"]], "weight_decay": 0.0}],
              lr=0.01, betas=(0.9, 0.999), eps=1e-6, max_grad_norm=1.0)
  for g in grads:
    for p, gp in zip(jax.tree.leaves(theirs), jax.tree.leaves(g)):
      p.grad = torch.from_numpy(gp)
    lamb.step()
  for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs)):
    np.testing.assert_allclose(a, b.detach().numpy(), rtol=2e-5, atol=1e-6)
  assert not np.allclose(ours["conv"]["kernel"], params["conv"]["kernel"], atol=1e-3)


@pytest.mark.parametrize("threshold", [None, 0.2])
def test_binary_cross_entropy_equals_timms(threshold):
  references.timm()
  from timm.loss import BinaryCrossEntropy
  rng = np.random.RandomState(1)
  logits = rng.randn(16, NUM_CLASSES).astype(np.float32) * 3
  labels = rng.randint(0, NUM_CLASSES, 16)
  bce = losses.LOSSES["binary_cross_entropy"]
  reference = BinaryCrossEntropy(smoothing=SMOOTHING, target_threshold=threshold)
  # Class indices (timm smooths them itself), then mixed probability targets (as after Mixup).
  expected = reference(torch.from_numpy(logits), torch.from_numpy(labels)).item()
  targets = losses.soft_targets(jnp.asarray(labels), NUM_CLASSES, SMOOTHING)
  assert float(jnp.mean(bce(logits, targets, target_threshold=threshold))) == \
      pytest.approx(expected, rel=1e-6)
  mixed = losses.soft_targets(jnp.asarray(labels), NUM_CLASSES, SMOOTHING,
                              jnp.asarray(labels[::-1]), jnp.full(16, 0.7))
  expected = reference(torch.from_numpy(logits), torch.from_numpy(np.asarray(mixed))).item()
  assert float(jnp.mean(bce(logits, mixed, target_threshold=threshold))) == \
      pytest.approx(expected, rel=1e-6)


def test_an_unknown_loss_is_refused_listing_the_registered_ones():
  with pytest.raises(InvalidInputError, match="Unknown optim.loss 'hinge'.*binary_cross_entropy"):
    losses.parse_loss("hinge")
  assert losses.parse_loss("binary_cross_entropy(target_threshold=0.2)") == (
      "binary_cross_entropy", (("target_threshold", 0.2),))


class Mlp(nn.Module):
  """A network without BatchNorm, for which micro-batches and one batch are the same sum."""

  @nn.compact
  def __call__(self, x, train=False):
    x = nn.relu(nn.Dense(32)(x.reshape((x.shape[0], -1))))
    return nn.Dense(NUM_CLASSES)(x)


@pytest.mark.parametrize("accumulate_steps", [2, 4])
def test_accumulated_micro_batches_give_the_update_of_one_batch(accumulate_steps):
  rng = np.random.RandomState(2)
  batch = {"image": jnp.asarray(rng.randn(1, 32, 4, 4, 3).astype(np.float32)),
           "label": jnp.asarray(rng.randint(0, NUM_CLASSES, (1, 32)))}
  tx = optax.sgd(0.5, momentum=0.9)
  model = Mlp()
  state = create_train_state(model, tx, jax.random.key(0), (1, 4, 4, 3),
                             metrics=step.metric_names(step.StepConfig(NUM_CLASSES)))
  state = jax.tree.map(lambda x: x[None], state)  # one replica

  def run(k):
    config = step.StepConfig(NUM_CLASSES, label_smoothing=0.1, accumulate_steps=k)
    fn = jax.vmap(functools.partial(step.train_step, model=model, tx=tx, config=config),
                  in_axes=(0, 0, None), axis_name=parallel.AXIS)
    return jax.jit(fn)(state, batch, jax.random.key(1))

  (one, one_metrics), (many, many_metrics) = run(1), run(accumulate_steps)
  for a, b in zip(jax.tree.leaves(one.params), jax.tree.leaves(many.params)):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
  for name in ("train_loss", "train_accuracy", "grad_norm"):
    np.testing.assert_allclose(one_metrics[name], many_metrics[name], rtol=1e-6)
  assert not np.allclose(one.params["Dense_0"]["kernel"], state.params["Dense_0"]["kernel"])


def every_part(small_config, num_steps, accumulate_steps=2):
  """Mixup and CutMix per image, random erasing, repeated augmentation, binary cross-entropy,
  LAMB, micro-batches, stochastic depth."""
  return small_config(
      num_steps=num_steps, model={"drop_path_rate": 0.1},
      data={"mixup_alpha": 0.2, "cutmix_alpha": 1.0, "mix_mode": "elem", "erasing_prob": 0.25,
            "repeated_augmentations": 2},
      optim={"name": "lamb", "loss": "binary_cross_entropy(target_threshold=0.2)",
             "accumulate_steps": accumulate_steps, "learning_rate": 0.01, "weight_decay": 0.02,
             "eps": 1e-6, "clip_norm": 1.0})


def test_a_run_with_every_part_runs_and_a_batch_that_does_not_split_is_refused(small_config,
                                                                              tmp_path):
  # One micro-batch here (the micro-batches' own test is above; two double the compile time).
  config = every_part(small_config, num_steps=2, accumulate_steps=1)
  records = loop.train_and_evaluate(config, str(tmp_path / "run"))
  assert records["step"] == 2 and np.isfinite(records["train_loss"]), records
  config = every_part(small_config, num_steps=2)
  config.train.batch_size = 8 * 3  # 3 rows per device: not two micro-batches
  with pytest.raises(InvalidInputError, match="train.batch_size=24 must be a positive multiple "
                     "of the device count times optim.accumulate_steps \\(16\\)"):
    loop.train_and_evaluate(config, str(tmp_path / "other"))


@pytest.mark.slow  # 60 steps of the digits with every part, two micro-batches: 40 s
def test_a_run_with_every_part_learns(small_config, tmp_path):
  final = loop.train_and_evaluate(every_part(small_config, num_steps=60), str(tmp_path / "run"))
  assert final["eval_accuracy"] > 0.7, final  # chance: 0.1


def test_the_ema_every_n_steps_with_the_adjusted_decay_follows_torchvisions_recipe():
  # torchvision's references/classification/train.py: ExponentialMovingAverage (an AveragedModel
  # of params and buffers with decay x avg + (1 - decay) x param), updated after the optimizer
  # step when the batch index i % model_ema_steps == 0, its count reset during the warm-up epochs
  # (so that every update then, and the first after, copies), and the decay adjusted by
  # world_size x batch_size x model_ema_steps / epochs.
  from torch.optim.swa_utils import AveragedModel
  from resnet_jax.train.experiment import ema_schedule
  steps_per_epoch, epochs, warmup_epochs, every, batch = 5, 4, 1, 2, 64
  config = default.get_config()
  config.optim.update(ema_decay=0.999, ema_every_steps=every, ema_adjust=True,
                      warmup_epochs=float(warmup_epochs))
  config.train.update(num_epochs=float(epochs), batch_size=batch)
  fields = ema_schedule(config, steps_per_epoch=steps_per_epoch,
                        total_steps=epochs * steps_per_epoch)
  adjust = batch * every / epochs
  decay = 1.0 - min(1.0, (1.0 - 0.999) * adjust)
  assert fields["ema_decay"] == pytest.approx(decay)
  step_config = step.StepConfig(NUM_CLASSES, **fields)

  net = torch.nn.Linear(3, 2)
  averaged = AveragedModel(net, avg_fn=lambda avg, p, n: decay * avg + (1 - decay) * p,
                           use_buffers=True)
  rng = np.random.RandomState(0)
  ema = {"w": jnp.asarray(net.weight.detach().numpy()), "b": jnp.asarray(net.bias.detach().numpy())}
  update = jax.jit(functools.partial(ema_update, step_config))
  for epoch in range(epochs):
    for i in range(steps_per_epoch):
      with torch.no_grad():  # the optimizer step
        net.weight.copy_(torch.from_numpy(rng.randn(2, 3).astype(np.float32)))
        net.bias.copy_(torch.from_numpy(rng.randn(2).astype(np.float32)))
      if i % every == 0:
        averaged.update_parameters(net)
        if epoch < warmup_epochs:
          averaged.n_averaged.fill_(0)
      current = {"w": jnp.asarray(net.weight.detach().numpy()),
                 "b": jnp.asarray(net.bias.detach().numpy())}
      ema = update(jnp.asarray(epoch * steps_per_epoch + i), ema, current)
      np.testing.assert_allclose(ema["w"], averaged.module.weight.detach().numpy(), rtol=1e-5,
                                 atol=1e-6)
      np.testing.assert_allclose(ema["b"], averaged.module.bias.detach().numpy(), rtol=1e-5,
                                 atol=1e-6)


def replay(transform, name, image_hw):
  """The operations and magnitudes torchvision's policy `name` draws in one call, replayed from
  torch's generator in the order its forward draws them."""
  h, w = image_hw
  space = transform._AUGMENTATION_SPACE

  def signed_magnitude(op, bins, index):
    table, signed = space[op]
    magnitudes = table(bins, h, w)
    if magnitudes is None:
      return 0.0
    magnitude = float(magnitudes[index() if callable(index) else index])
    return -magnitude if signed and torch.rand(()) <= 0.5 else magnitude

  uniform_op = lambda: list(space)[int(torch.randint(len(space), ()))]
  if name == "trivial_augment_wide":
    op = uniform_op()
    return [(op, signed_magnitude(op, 31, lambda: int(torch.randint(31, ()))))]
  if name == "rand_augment":
    ops = []
    for _ in range(transform.num_ops):
      op = uniform_op()
      ops.append((op, signed_magnitude(op, transform.num_magnitude_bins, transform.magnitude)))
    return ops
  pair = transform._policies[int(torch.randint(len(transform._policies), ()))]
  return [(op, signed_magnitude(op, 10, index)) for op, probability, index in pair
          if torch.rand(()) <= probability]


@pytest.mark.parametrize("name", ["trivial_augment_wide", "rand_augment", "auto_augment"])
@pytest.mark.parametrize("channels", [3, 1])
def test_the_policies_give_torchvisions_pixels_for_the_same_draws(name, channels):
  from PIL import Image
  from resnet_jax.data import policies
  v2 = references.transforms_v2()
  transform = {"trivial_augment_wide": v2.TrivialAugmentWide(),
               "rand_augment": v2.RandAugment(num_ops=2, magnitude=9),
               "auto_augment": v2.AutoAugment(v2.AutoAugmentPolicy.IMAGENET)}[name]
  rng = np.random.RandomState(4)
  # A smooth image with texture, so that every operation changes pixels.
  yy, xx = np.mgrid[0:37, 0:45]
  image = (np.stack([yy * 5, xx * 4, (yy + xx) * 3], -1) + rng.randint(0, 40, (37, 45, 3)))
  image = np.clip(image, 0, 255).astype(np.uint8)[..., :channels]
  pil = Image.fromarray(image[..., 0] if channels == 1 else image)
  ops = set()
  for seed in range(60):
    torch.manual_seed(seed)
    expected = np.asarray(transform(pil)).reshape(image.shape)
    torch.manual_seed(seed)
    got = image
    for op, magnitude in replay(transform, name, image.shape[:2]):
      got = policies.apply_op(got, op, magnitude)
      ops.add(op)
    np.testing.assert_array_equal(got, expected, err_msg=f"seed {seed}")
  assert len(ops) >= 10, ops


def test_the_magnitude_tables_are_torchvisions():
  from resnet_jax.data import policies
  v2 = references.transforms_v2()
  for ours, theirs, bins in ((policies.TRIVIAL_AUGMENT_WIDE, v2.TrivialAugmentWide, 31),
                             (policies.RAND_AUGMENT, v2.RandAugment, 31),
                             (policies.AUTO_AUGMENT, v2.AutoAugment, 10)):
    assert list(ours) == list(theirs._AUGMENTATION_SPACE)
    for (op, (table, signed)), (h, w) in itertools.product(ours.items(), ((224, 160), (37, 45))):
      reference, reference_signed = theirs._AUGMENTATION_SPACE[op]
      expected = reference(bins, h, w)
      assert signed == reference_signed
      if expected is None:
        assert table(bins, h, w) is None
      else:
        np.testing.assert_array_equal(table(bins, h, w), expected.numpy(), err_msg=op)
  assert [tuple(p) for p in policies.IMAGENET_POLICY] == v2.AutoAugment()._policies


def test_the_policies_draws_follow_torchvisions_distributions():
  # 10,000 draws each: TrivialAugmentWide's operation uniform over its 14, its bin over 31, its
  # sign fair; RandAugment's operations uniform; AutoAugment's pairs uniform, each operation with
  # its probability.
  from resnet_jax.data import policies
  rng, n, shape = np.random.default_rng(0), 10_000, (32, 32, 3)
  uniform = lambda values, k: stats.chisquare(np.bincount(values, minlength=k)).pvalue > 1e-3
  draws = [policies.draw_trivial_augment_wide(rng, shape)[0] for _ in range(n)]
  names = list(policies.TRIVIAL_AUGMENT_WIDE)
  assert uniform([names.index(op) for op, _, _ in draws], 14)
  scaled = [(index, magnitude) for op, index, magnitude in draws
            if policies.TRIVIAL_AUGMENT_WIDE[op][0](2, 2, 2) is not None]
  assert uniform([index for index, _ in scaled], 31)
  signed = [m < 0 for (op, index, m) in draws if policies.TRIVIAL_AUGMENT_WIDE[op][1] and index]
  assert stats.binomtest(sum(signed), len(signed), 0.5).pvalue > 1e-3
  ops = [op for _ in range(n // 2) for op, _, _ in policies.draw_rand_augment(rng, shape)]
  assert len(ops) == n and uniform([list(policies.RAND_AUGMENT).index(op) for op in ops], 14)
  # AutoAugment: how often each operation runs, against the policy's probabilities.
  counts = collections.Counter(op for _ in range(n)
                               for op, _, _ in policies.draw_auto_augment(rng, shape))
  expected = collections.Counter()
  for pair in policies.IMAGENET_POLICY:
    for op, probability, _ in pair:
      expected[op] += n * probability / len(policies.IMAGENET_POLICY)
  names = sorted(expected)
  observed = np.array([counts[op] for op in names])
  predicted = np.array([expected[op] for op in names])
  assert stats.chisquare(observed, predicted * observed.sum() / predicted.sum()).pvalue > 1e-3


def test_training_and_evaluation_sizes_differ_as_torchvisions_recipe_sets_them(small_config):
  # Train at 8 pixels; evaluate a 12-pixel centre crop of the image resized to 14 (torchvision's
  # 176 / 232 / 224 at small scale): the evaluation batches, the resident arrays and the saved
  # preprocessing all use the crop.
  from resnet_jax import data
  from resnet_jax.data.sources import eval_geometry
  config = small_config(data={"eval_crop": 12, "eval_resize": 14})
  assert eval_geometry(config.data) == (12, 12 / 14)
  dataset = data.open(config.data)
  for resident in ("yes", "no"):
    config.data.device_resident = resident
    pipeline = data.Pipeline(config.data, dataset, global_batch_size=64, eval_batch_size=128,
                             seed=0)
    batch = next(iter(pipeline.eval_batches()))
    images = pipeline.arrays["eval"]["image"] if resident == "yes" else batch["image"]
    assert images.shape[1:3] == (12, 12), images.shape
    if resident == "yes":
      assert pipeline.arrays["train"]["image"].shape[1:3] == (8, 8)
  final = loop.train_and_evaluate(config, None)
  assert final["eval_accuracy"] > 0.1
  config.data.eval_resize = 10
  with pytest.raises(InvalidInputError, match="data.eval_resize=10 is smaller than the evaluation "
                     "crop \\(12\\)"):
    eval_geometry(config.data)


@pytest.mark.parametrize("n,repeats,replicas,batch", [(100, 3, 4, 8), (257, 2, 8, 32),
                                                        (64, 4, 2, 16)])
def test_repeated_augmentation_gives_each_replica_timms_repeat_aug_sampler_rows(n, repeats,
                                                                                replicas, batch):
  references.timm()
  from timm.data.distributed_sampler import RepeatAugSampler
  from resnet_jax.data.pipeline import EpochSteps, repeated_sequence
  sequence = repeated_sequence(np.arange(n), repeats, replicas, batch)
  rows, steps = batch // replicas, n // batch
  for rank in range(replicas):
    theirs = list(RepeatAugSampler(range(n), num_replicas=replicas, rank=rank, shuffle=False,
                                   num_repeats=repeats, selected_round=0))
    ours = [int(i) for b in range(steps)
            for i in sequence[b * batch + rank * rows:b * batch + (rank + 1) * rows]]
    assert ours == theirs[:len(ours)], rank
  # Through a run's epoch order (shuffled): the copies of an example sit on different replicas
  # (on every replica when there are more copies than replicas).
  order = EpochSteps(n, batch, repeats=repeats, replicas=replicas).order(seed=3, epoch=1)
  replica_of = np.arange(len(order)) % batch // rows
  for example in np.unique(order):
    places = replica_of[order == example]
    assert len(places) <= repeats, (example, places)
    assert len(set(places)) == min(len(places), replicas), (example, places)
  assert len(np.unique(order)) < len(order)  # fewer distinct examples per epoch
