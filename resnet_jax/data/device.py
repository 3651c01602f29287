"""The data side's device functions: where a step's batch comes from on the device.

The parallel runner composes them with the train and eval steps inside one compiled program, so
the step only ever sees normalised images and labels. Per replica, with collectives over
`axis_name`:

- training: this replica's rows of the global batch, either sent by the host or, for a
  device-resident dataset, sliced from the epoch's order that lives on the device; then the
  device stage of the augmentations (one key per example from its position in the global batch,
  so the result does not depend on how many devices share it); then normalisation; then random
  erasing (`data.erasing`, the same keys); then Mixup or
  CutMix (`data.mixing`), within this replica's rows as timm mixes each GPU's batch, which adds
  each row's partner label ("mix_label") and own weight ("mix_weight") for the step's targets;
- evaluation: the padded, masked rows of an evaluation batch (gathered on the device when the
  dataset is resident), normalised.
"""

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from resnet_jax.data.augment import Stage, apply_on_device, normalize, plan, requested
from resnet_jax.data.erasing import Erasing, random_erasing
from resnet_jax.data.mixing import Mixing, mix, sample


def mixing_key(rng: jax.Array, step: Any, replica: Any, num_replicas: int,
               rows: int) -> jax.Array:
  """The key of replica `replica`'s Mixup/CutMix draws at `step`, from the data stream `rng`: the
  position after the global batch's last row (examples take the positions before it)."""
  return jax.random.fold_in(jax.random.fold_in(rng, step), num_replicas * rows + replica)


@dataclasses.dataclass(frozen=True)
class DeviceBatches:
  """Builds the step's batch on the device from what the host sent (`inputs`) and what lives on
  the device (`arrays`).

  Attributes:
    mean, std: per-channel normalisation (0..255 units).
    axis_name: the data-parallel axis of the runner.
    augmentations: the device stage (`augment.plan(...).device`).
    erasing: random erasing, after normalisation.
    mixing: Mixup/CutMix, after that.
    resident: the dataset lives on the device (`arrays`); the host sends no rows.
    global_batch_size, steps_per_epoch: for slicing a resident epoch's order.
    dtype: of the normalised images (float32; float64 for a float64 network).
  """

  mean: tuple[float, ...]
  std: tuple[float, ...]
  axis_name: str
  augmentations: Stage = ()
  erasing: Erasing = Erasing()
  mixing: Mixing = Mixing()
  resident: bool = False
  global_batch_size: int = 0
  steps_per_epoch: int = 1
  dtype: Any = jnp.float32

  @classmethod
  def unpipelined(cls, data_config: Any, info: Any, axis_name: str) -> "DeviceBatches":
    """For batches the host sends already at size, without a pipeline (synthetic data): the
    config's device-stage augmentations, then normalisation."""
    return cls(mean=tuple(info.mean), std=tuple(info.std),
               augmentations=plan(requested(data_config)).device,
               erasing=Erasing.from_config(data_config), mixing=Mixing.from_config(data_config),
               axis_name=axis_name)

  def _rows(self, arrays: dict, step: jax.Array) -> jax.Array:
    """This replica's example indices at `step`, from the epoch's order on the device."""
    local = self.global_batch_size // jax.lax.axis_size(self.axis_name)
    start = (step % self.steps_per_epoch) * self.global_batch_size + \
        jax.lax.axis_index(self.axis_name) * local
    return jax.lax.dynamic_slice(arrays["order"], (start,), (local,))

  def train(self, inputs: dict, arrays: dict | None, step: jax.Array, rng: jax.Array) -> dict:
    """{"image" (normalised float32), "label"}: this replica's training rows at `step`."""
    if self.resident:
      rows = self._rows(arrays, step)
      images, labels = arrays["image"][rows], arrays["label"][rows]
    else:
      images, labels = inputs["image"], inputs["label"]
    local = images.shape[0]
    positions = jax.lax.axis_index(self.axis_name) * local + jnp.arange(local)
    step_rng = jax.random.fold_in(rng, step)
    keys = jax.vmap(lambda i: jax.random.fold_in(step_rng, i))(positions)
    images = normalize(apply_on_device(images, keys, self.augmentations), self.mean, self.std,
                       self.dtype)
    if self.erasing.prob:
      images = random_erasing(images, jax.vmap(lambda k: jax.random.fold_in(k, 1))(keys),
                              self.erasing)
    if not self.mixing.enabled:
      return {"image": images, "label": labels}
    key = mixing_key(rng, step, jax.lax.axis_index(self.axis_name),
                     jax.lax.axis_size(self.axis_name), local)
    images, mix_labels, weights = mix(images, labels, sample(key, self.mixing, *images.shape[:3]))
    return {"image": images, "label": labels, "mix_label": mix_labels, "mix_weight": weights}

  def eval(self, inputs: dict, arrays: dict | None) -> dict:
    """{"image", "label", "mask"}: this replica's rows of an evaluation batch (mask False on
    padding)."""
    if self.resident:
      images, labels = arrays["image"][inputs["index"]], arrays["label"][inputs["index"]]
    else:
      images, labels = inputs["image"], inputs["label"]
    return {"image": normalize(images, self.mean, self.std, self.dtype), "label": labels,
            "mask": inputs["mask"]}
