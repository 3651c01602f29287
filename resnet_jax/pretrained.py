"""Weights for transfer learning and inference: exported models and training runs, and adapting
them to a new head or input channel count."""

import dataclasses
import json
import os
from typing import Any

import flax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from resnet_jax import files, saved
from resnet_jax.data.transforms import Preprocessing
from resnet_jax.errors import InputNotFoundError, InvalidInputError, mismatch_error
from resnet_jax.models import ResNet, create_model

MODEL_FILE = "model.json"
VARIABLES_DIR = "variables"


@dataclasses.dataclass
class Pretrained:
  """A network's variables with what is needed to rebuild and feed it."""

  variables: dict[str, Any]  # {"params", "batch_stats"} as numpy arrays
  model: str
  num_classes: int
  preprocessing: Preprocessing
  options: dict[str, Any] = dataclasses.field(default_factory=dict)
  class_names: tuple[str, ...] | None = None

  def create_model(self, **overrides: Any) -> ResNet:
    """The registry network these variables belong to."""
    return create_model(self.model, num_classes=self.num_classes, **{**self.options, **overrides})

  def describe(self) -> dict[str, Any]:
    """Everything but the variables, as JSON-friendly values."""
    return {"model": self.model, "num_classes": self.num_classes, "options": self.options,
            "preprocessing": dataclasses.asdict(self.preprocessing),
            "class_names": list(self.class_names) if self.class_names else None}


def from_description(variables: dict[str, Any], description: dict[str, Any]) -> Pretrained:
  p = description["preprocessing"]
  return Pretrained(
      variables=variables, model=description["model"], num_classes=description["num_classes"],
      options=description.get("options") or {},
      preprocessing=Preprocessing(p["image_size"], p["channels"], p["crop_ratio"],
                                  tuple(p["mean"]), tuple(p["std"])),
      class_names=tuple(description["class_names"]) if description.get("class_names") else None)


def export(directory: str, pretrained: Pretrained) -> None:
  """Writes an orbax checkpoint of the variables, then model.json describing them (with their
  checksums); both atomically, model.json last, so a folder with model.json is complete."""
  directory = files.resolve(directory)
  existing = [n for n in (VARIABLES_DIR, MODEL_FILE)
              if files.is_link(os.path.join(directory, n)) or
              epath.Path(directory, n).exists()]
  if existing:
    raise InvalidInputError(f"{directory} already holds {' and '.join(existing)}; choose a new "
                            "--out folder.")
  epath.Path(directory).mkdir(parents=True, exist_ok=True)
  with ocp.StandardCheckpointer() as saver:
    saver.save(os.path.join(directory, VARIABLES_DIR), pretrained.variables)
  files.write_atomic(os.path.join(directory, MODEL_FILE), json.dumps(
      {**pretrained.describe(), "checksums": saved.checksums(pretrained.variables)},
      indent=2))


def load(path: str, *, step: int | None = None, ema: bool = False) -> Pretrained:
  """Reads an exported model (model.json), a training run folder (its newest checkpoint), or
  published weights by name ("torchvision:resnet50", "timm:resnet50.a1_in1k": `resnet_jax.hub`).

  Each is verified against the checksums saved with it, as a resumed run verifies its checkpoint.

  Args:
    path: the folder, or the weights' name.
    step, ema: for a run folder, the checkpoint at `step` (default: the newest) and its EMA of
      the weights instead of the weights.

  Raises:
    FileNotFoundError: `path` is none of these.
    InvalidInputError: it cannot be read, fails its checksums, or has no such step or EMA.
  """
  from resnet_jax import hub  # the weights cache imports this module
  if (step is not None or ema) and (hub.is_name(path) or
                                    epath.Path(files.resolve(path), MODEL_FILE).exists()):
    raise InvalidInputError(f"{path} holds one set of weights; a checkpoint step or the EMA "
                            "can only be chosen in a training run folder.")
  if hub.is_name(path):
    return hub.load(path)
  path = files.resolve(path)
  if epath.Path(path, MODEL_FILE).exists():
    try:
      description = json.loads(epath.Path(path, MODEL_FILE).read_text())
      with ocp.StandardCheckpointer() as reader:
        variables = reader.restore(os.path.join(path, VARIABLES_DIR))
    except saved.READ_ERRORS as e:
      raise InvalidInputError(f"The model in {path} cannot be read ({saved.short(e)}); "
                              "export it again.") from e
    saved.verified(variables, description, f"The model in {path}")
    return from_description(variables, description)
  checkpoints = os.path.join(path, saved.CHECKPOINTS_DIR)
  if epath.Path(checkpoints).is_dir():
    state, meta = saved.read_checkpoint(checkpoints, step)
    if "model" not in meta:
      raise InvalidInputError(f"The checkpoint in {checkpoints} does not describe its model.")
    prefix = "ema_" if ema else ""
    if state.get(prefix + "params") is None:
      raise InvalidInputError(f"The run in {path} kept no EMA of its weights (optim.ema_decay "
                              "was 0); export its final or best weights.")
    return from_description({"params": state[prefix + "params"],
                             "batch_stats": state[prefix + "batch_stats"]}, meta["model"])
  raise InputNotFoundError(f"{path} is neither an exported model (with {MODEL_FILE}) nor a "
                           "training run folder (with checkpoints/).")


def _stem_for_channels(kernel: np.ndarray, channels: int) -> np.ndarray:
  """The stem kernel (H, W, in, out) for `channels` inputs.

  RGB -> grayscale sums over the colour inputs, as timm's adapt_input_conv does: a gray image
  then produces exactly the activations its RGB replica (gray in every channel) produced.
  Grayscale -> RGB spreads the kernel evenly over the three inputs, for the same reason.
  """
  have = kernel.shape[2]
  if channels == 1:
    return kernel.sum(axis=2, keepdims=True)
  if have == 1:
    return np.repeat(kernel / channels, channels, axis=2)
  raise InvalidInputError(f"Cannot adapt a {have}-channel stem to {channels} channels; only to or "
                          "from 1 channel.")


def adapt(pretrained: dict[str, Any], template: dict[str, Any], *, replace_head: bool,
          head: str = ResNet.head, input_conv: str = ResNet.input_conv) -> dict:
  """The `template` network's variables, taken from `pretrained` wherever they correspond.

  Args:
    pretrained: the pretrained {"params", "batch_stats"}.
    template: the new network's variables, or their shapes (`jax.eval_shape`) to check the match
      before anything is initialised; a replaced head keeps the template's leaves.
    replace_head: keep the template's classifier instead of the pretrained one.
    head, input_conv: the network's classifier and first convolution (`ResNet.head`,
      `ResNet.input_conv`): the parts that change with the classes and the image channels.

  Returns:
    Variables for the template network: numpy arrays, and the template's own head leaves.

  Raises:
    InvalidInputError: naming every missing, unexpected or mis-shaped variable.
  """
  src = flax.traverse_util.flatten_dict(flax.core.unfreeze(pretrained), sep="/")
  dst = flax.traverse_util.flatten_dict(flax.core.unfreeze(template), sep="/")
  is_head = lambda key: key.split("/")[1] == head
  out, missing, mismatched = {}, [], []
  for key, init in dst.items():
    if replace_head and is_head(key):
      out[key] = init
    elif key not in src:
      missing.append(key)
    elif tuple(src[key].shape) == tuple(init.shape):
      out[key] = np.asarray(src[key], dtype=init.dtype)
    elif key == f"params/{input_conv}/kernel" and src[key].shape[:2] + src[key].shape[3:] == \
        init.shape[:2] + init.shape[3:]:
      out[key] = _stem_for_channels(np.asarray(src[key]), init.shape[2]).astype(init.dtype)
    else:
      hint = " (a different number of classes: use init.head=replace)" if is_head(key) else ""
      mismatched.append(f"{key}: checkpoint {tuple(src[key].shape)}, model "
                        f"{tuple(init.shape)}{hint}")
  unexpected = sorted(k for k in src if k not in dst and not (replace_head and is_head(k)))
  if missing or unexpected or mismatched:
    raise mismatch_error(
        "The checkpoint does not match the model",
        {"missing": missing, "unexpected": unexpected, "wrong shape": mismatched},
        "Use the model the checkpoint was made for (init.checkpoint's model.json).")
  return flax.traverse_util.unflatten_dict(out, sep="/")
