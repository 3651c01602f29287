"""Training losses: one registry. A loss maps logits and targets (probabilities over the classes:
one-hot, label-smoothed, or mixed by Mixup/CutMix; float32) to one loss per example. The config
names one with its arguments, `optim.loss="binary_cross_entropy(target_threshold=0.2)"`; a fork
adds its own:

    @register_loss("focal")
    def focal(logits, targets, *, gamma=2.0): ...
"""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from resnet_jax.registry import Registry, parse_call

LOSSES: Registry[Callable[..., jax.Array]] = Registry("loss", "optim.loss")
register_loss = LOSSES.register


@register_loss("softmax_cross_entropy")
def softmax_cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """PyTorch's CrossEntropyLoss on probability targets."""
  return optax.softmax_cross_entropy(logits, targets)


@register_loss("binary_cross_entropy")
def binary_cross_entropy(logits: jax.Array, targets: jax.Array, *,
                         target_threshold: float | None = None) -> jax.Array:
  """timm's BinaryCrossEntropy: a sigmoid cross-entropy per class, averaged over the classes (so
  that the batch mean is timm's mean over every element). With `target_threshold`, a target above
  it counts as 1 and any other as 0 (after smoothing and mixing, as timm applies it)."""
  if target_threshold is not None:
    targets = (targets > target_threshold).astype(targets.dtype)
  return jnp.mean(optax.sigmoid_binary_cross_entropy(logits, targets), axis=-1)


def parse_loss(text: str) -> tuple[str, tuple[tuple[str, Any], ...]]:
  """`optim.loss` as (registered name, its keyword arguments as sorted pairs: hashable, for a
  step's static config).

  Raises:
    InvalidInputError: not name(key=literal, ...), or an unknown name (listing the valid ones).
  """
  name, kwargs = parse_call(text, "optim.loss", "binary_cross_entropy(target_threshold=0.2)")
  LOSSES[name]  # an unknown name is refused with the registered ones
  return name, tuple(sorted(kwargs.items()))


def soft_targets(labels: jax.Array, num_classes: int, label_smoothing: float = 0.0,
                 mix_labels: jax.Array | None = None, mix_weights: jax.Array | None = None,
                 dtype: Any = jnp.float32) -> jax.Array:
  """One-hot targets, smoothed (`optax.smooth_labels`: 1 - s + s/K and s/K), and mixed with the
  partners' (`mix_weights` x own + (1 - `mix_weights`) x partner's) when Mixup/CutMix mixed the
  images: timm's `mixup_target`."""
  def smoothed(y):
    one_hot = jax.nn.one_hot(y, num_classes, dtype=dtype)
    return optax.smooth_labels(one_hot, label_smoothing) if label_smoothing else one_hot
  targets = smoothed(labels)
  if mix_labels is None:
    return targets
  w = mix_weights.astype(dtype)[:, None]
  return targets * w + smoothed(mix_labels) * (1.0 - w)
