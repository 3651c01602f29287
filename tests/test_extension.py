"""A research fork extends the project from its own file, editing nothing under resnet_jax/ or
experiments/: a squeeze-and-excitation block as a new model, a new dataset source, an optimizer by
optax name, and a new on-device augmentation, trained through the path experiments.train takes;
then fine-tuned with the stem frozen, which leaves the new block's parameters trainable."""

import functools

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import resnet_jax
from resnet_jax.configs import default
from resnet_jax.data import Splits, device_augmentation, register_source
from resnet_jax.models import blocks
from resnet_jax import saved
from resnet_jax.train import loop, metrics, parallel


class SEBasicBlock(blocks.BasicBlock):
  """A basic block whose residual branch is rescaled per channel (Hu et al. 2018)."""

  reduction: int = 4

  @nn.compact
  def __call__(self, x):
    pad = ((1, 1), (1, 1))
    y = self.conv(self.num_filters, (3, 3), strides=self.strides, padding=pad, name="conv1")(x)
    y = nn.relu(self.norm(name="bn1")(y))
    y = self.norm(name="bn2")(self.conv(self.num_filters, (3, 3), padding=pad, name="conv2")(y))
    s = nn.relu(nn.Dense(max(1, self.num_filters // self.reduction), name="se_reduce")(
        jnp.mean(y, axis=(1, 2))))
    y = y * nn.sigmoid(nn.Dense(self.num_filters, name="se_expand")(s))[:, None, None, :]
    return nn.relu(y + self._shortcut(x, with_norm=True))


resnet_jax.register_block("se_basic", SEBasicBlock)
resnet_jax.register_model("se_resnet8", functools.partial(
    resnet_jax.ResNet, stage_sizes=(1, 1, 1), block_cls=SEBasicBlock, stem="cifar",
    num_filters=16, shortcut="zero_pad"))


def stripes(n, seed):
  """Horizontal (label 0) or vertical (label 1) stripes, 8x8 grey, with noise."""
  rng = np.random.RandomState(seed)
  records = []
  for i in range(n):
    image = np.tile((np.arange(8) % 2 * 200)[:, None], (1, 8))
    image = image if i % 2 == 0 else image.T
    noisy = np.clip(image + rng.randint(0, 50, (8, 8)), 0, 255).astype(np.uint8)
    records.append({"image": noisy[..., None], "label": i % 2})
  return records


@register_source("stripes", usage="stripes (a fork's synthetic dataset)")
def open_stripes(data_config):
  del data_config
  return Splits(train=stripes(256, 0), eval=stripes(64, 1), class_names=("rows", "columns"),
                native_shape=lambda: (8, 8, 1))


@device_augmentation("invert")
def invert(image, key, *, p=0.5):
  return jnp.where(jax.random.bernoulli(key, p), 255 - image, image)


def fork_config(**sections):
  config = default.get_config()
  config.model.name = "se_resnet8"
  config.data.update(name="stripes", image_size=0, crop_padding=1,
                     augmentations=("invert(p=0.25)",))
  config.optim.update(name="optax.adabelief", kwargs="b1=0.9, eps=1e-8", learning_rate=0.01,
                      warmup_epochs=0.0, schedule="constant")
  config.train.update(batch_size=32, eval_batch_size=64, num_steps=16, log_every_steps=4,
                      eval_every_epochs=0.0, progress_bar="no")
  for section, values in sections.items():
    config[section].update(values)
  return config


def test_a_fork_adds_a_block_a_dataset_an_optimizer_and_an_augmentation(tmp_path):
  final = loop.train_and_evaluate(fork_config(), str(tmp_path / "run"))
  state, meta = saved.read_checkpoint(str(tmp_path / "run" / "checkpoints"))
  assert meta["model"]["model"] == "se_resnet8" and meta["model"]["options"]["block"] == "se_basic"
  assert state["params"]["layer2_0"]["se_expand"]["kernel"].shape == (8, 32)
  assert "nu" in str(jax.tree_util.tree_structure(state["opt_state"]))  # adabelief's moments
  records = metrics.read_metrics(str(tmp_path / "run"))
  assert records[-1]["train_loss"] < records[0]["train_loss"]
  assert final["eval_accuracy"] > 0.9  # rows vs columns
  from resnet_jax import data
  config = fork_config().data
  pipeline = data.Pipeline(config, data.open(config), global_batch_size=32, eval_batch_size=64,
                           seed=0)
  assert pipeline.device_resident  # the new augmentation runs on the device, as planned
  assert [aug.name for aug, _ in pipeline.augmentations.device] == ["pad_crop", "invert"]

  # Fine-tuning with the stem frozen trains the new block's parameters, not the stem's.
  tuned = fork_config(init={"checkpoint": str(tmp_path / "run"), "freeze": "stem"},
                      model={"name": ""}, train={"num_steps": 4})
  loop.train_and_evaluate(tuned, str(tmp_path / "tuned"))
  after, _ = saved.read_checkpoint(str(tmp_path / "tuned" / "checkpoints"))
  chex.assert_trees_all_equal(after["params"]["conv1"], state["params"]["conv1"])
  for name in ("se_reduce", "se_expand", "conv1"):
    assert not np.array_equal(after["params"]["layer1_0"][name]["kernel"],
                              state["params"]["layer1_0"][name]["kernel"]), name


def test_a_runner_is_named_once_by_its_registration():
  assert (parallel.PmapRunner.name, parallel.MeshRunner.name) == ("pmap", "mesh")

  @parallel.register_runner("fork_mesh", replace=True)
  class ForkRunner(parallel.MeshRunner):
    """A fork's runner: the mesh runner under its own name."""

  assert parallel.make_runner("fork_mesh", jax.devices()[:1]).name == "fork_mesh"
  assert isinstance(parallel.make_runner("mesh"), parallel.MeshRunner)
  assert parallel.MeshRunner.name == "mesh"  # the subclass's name is its own


def test_a_pytorch_twin_is_registered_by_its_flax_block_class_name():
  pytest.importorskip("torch")
  from resnet_jax.interop import torch_reference
  assert {"BasicBlock", "Bottleneck", "PreActBasicBlock", "PreActBottleneck"} <= set(
      torch_reference.TWINS)
  with pytest.raises(ValueError, match="No PyTorch twin is registered for SEBasicBlock; register "
                                       "one with resnet_jax.interop.torch_reference.register_twin"):
    torch_reference.TorchResNet(resnet_jax.create_model("se_resnet8", num_classes=2), 1)

  class ForkBlock(blocks.BasicBlock):
    """A fork's block with a twin of its own."""

  factory = functools.partial(torch_reference.TWINS["BasicBlock"])
  assert torch_reference.register_twin(ForkBlock)(factory) is factory
  assert torch_reference.TWINS["ForkBlock"] is factory
