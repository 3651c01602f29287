"""Mixup and CutMix with timm's semantics (`timm.data.Mixup`), on the device, inside the compiled
step: each replica mixes its own rows with the same rows in reverse order, as timm mixes each
GPU's batch with itself flipped.

- `mode="batch"`: one draw per replica's batch (apply with `prob`; CutMix with `switch_prob` when
  both alphas are set; the weight from Beta(alpha, alpha)); `mode="elem"`: one draw per image.
- CutMix pastes the partner's box of side sqrt(1 - weight) around a uniform centre, clipped at the
  borders, and corrects the weight to the pasted area (timm's `correct_lam`).
- The targets are mixed in the step (`train.losses.soft_targets`), from the label and weight that
  `mix` returns with the images, label smoothing included.
"""

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from resnet_jax.errors import InvalidInputError

MODES = ("batch", "elem")


@dataclasses.dataclass(frozen=True)
class Mixing:
  """timm's Mixup arguments: mixup_alpha, cutmix_alpha (0: that one off), prob (of mixing a
  batch or an image), switch_prob (of CutMix when both are on), mode (batch | elem)."""

  mixup_alpha: float = 0.0
  cutmix_alpha: float = 0.0
  prob: float = 1.0
  switch_prob: float = 0.5
  mode: str = "batch"

  @property
  def enabled(self) -> bool:
    return self.mixup_alpha > 0 or self.cutmix_alpha > 0

  @classmethod
  def from_config(cls, data_config: Any) -> "Mixing":
    """The `data.mixup_alpha`, `cutmix_alpha`, `mix_prob`, `mix_switch_prob` and `mix_mode` keys.

    Raises:
      InvalidInputError: an unknown mode.
    """
    mixing = cls(float(data_config.get("mixup_alpha", 0.0)),
                 float(data_config.get("cutmix_alpha", 0.0)),
                 float(data_config.get("mix_prob", 1.0)),
                 float(data_config.get("mix_switch_prob", 0.5)),
                 data_config.get("mix_mode", "batch"))
    if mixing.mode not in MODES:
      raise InvalidInputError(f"data.mix_mode={mixing.mode!r}; choose one of {', '.join(MODES)}.")
    return mixing


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class MixParams:
  """What one mixing draws, per image: weight (of its own image before CutMix's correction),
  cutmix (else Mixup; weight 1 leaves the image alone), the box centre (row, column)."""

  weight: jax.Array
  cutmix: jax.Array
  center_y: jax.Array
  center_x: jax.Array


def sample(key: jax.Array, mixing: Mixing, batch_size: int, height: int, width: int) -> MixParams:
  """The draws of timm's `_params_per_batch` (mode batch, one draw for every image) or
  `_params_per_elem` (mode elem), and of `rand_bbox`'s centre."""
  n = 1 if mixing.mode == "batch" else batch_size
  keys = jax.random.split(key, 6)
  apply = jax.random.uniform(keys[0], (n,)) < mixing.prob
  if mixing.mixup_alpha > 0 and mixing.cutmix_alpha > 0:
    cutmix = jax.random.uniform(keys[1], (n,)) < mixing.switch_prob
  else:
    cutmix = jnp.full((n,), mixing.cutmix_alpha > 0)
  beta = lambda k, alpha: (jax.random.beta(k, alpha, alpha, (n,)) if alpha > 0
                           else jnp.ones((n,)))
  weight = jnp.where(cutmix, beta(keys[2], mixing.cutmix_alpha), beta(keys[3], mixing.mixup_alpha))
  params = MixParams(weight=jnp.where(apply, weight, 1.0).astype(jnp.float32),
                     cutmix=cutmix & apply,
                     center_y=jax.random.randint(keys[4], (n,), 0, height),
                     center_x=jax.random.randint(keys[5], (n,), 0, width))
  return jax.tree.map(lambda x: jnp.broadcast_to(x, (batch_size,)), params)


def mix(images: jax.Array, labels: jax.Array, params: MixParams
        ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Mixes each image with the image at the mirrored position, as `params` say.

  Args:
    images: (batch, height, width, channels), normalised.
    labels: (batch,) class indices.
    params: `sample`'s draws.

  Returns:
    (mixed images, the partners' labels, each image's own weight in its target: the Mixup weight,
    or the share of its area CutMix left).
  """
  b, h, w = images.shape[:3]
  partner, partner_labels = images[::-1], labels[::-1]
  weight = params.weight
  # rand_bbox: a cut of int(side * sqrt(1 - weight)) around the centre (half rounded down before
  # it, up after), clipped at the borders.
  ratio = jnp.sqrt(1.0 - weight)
  cut_h, cut_w = (jnp.floor(h * ratio).astype(jnp.int32), jnp.floor(w * ratio).astype(jnp.int32))
  top, bottom = (jnp.clip(params.center_y - cut_h // 2, 0, h),
                 jnp.clip(params.center_y + (cut_h + 1) // 2, 0, h))
  left, right = (jnp.clip(params.center_x - cut_w // 2, 0, w),
                 jnp.clip(params.center_x + (cut_w + 1) // 2, 0, w))
  rows, cols = jnp.arange(h)[None, :, None], jnp.arange(w)[None, None, :]
  inside = ((rows >= top[:, None, None]) & (rows < bottom[:, None, None]) &
            (cols >= left[:, None, None]) & (cols < right[:, None, None]))
  cut_images = jnp.where(inside[..., None], partner, images)
  wb = weight.astype(images.dtype)[:, None, None, None]
  mixed = jnp.where((weight == 1.0)[:, None, None, None], images, images * wb + partner * (1 - wb))
  out = jnp.where(params.cutmix[:, None, None, None], cut_images, mixed)
  area = ((bottom - top) * (right - left)).astype(jnp.float32)
  own = jnp.where(params.cutmix, 1.0 - area / (h * w), weight)
  return out, partner_labels, own
