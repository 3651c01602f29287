"""Models leave in the forms users deploy: `python -m experiments.export --format=FORMAT`.

Every format is a registered writer (`FORMATS`; a fork adds one with `register_format`) of the
same inference function (`inference_fn`): the network in inference mode with its weights inside,
taking a batch of any size: normalised float32 NHWC images, or with the preprocessing, uint8 NHWC
images at the evaluation crop size, normalised inside as evaluation normalises them.
"""

import dataclasses
import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath

from resnet_jax import files, pretrained, saved
from resnet_jax.errors import InvalidInputError
from resnet_jax.pretrained import Pretrained
from resnet_jax.registry import Registry

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


@dataclasses.dataclass(frozen=True)
class Program:
  """What a format writes: the function, its input and the weights it was made from."""

  fn: Callable[[Any, jax.Array], jax.Array]  # (variables, images) -> float32 logits
  variables: Any  # {"params", "batch_stats"}
  image_shape: tuple[int, int, int]  # (height, width, channels) of one image
  input_dtype: Any  # uint8 with the preprocessing inside, else float32
  weights: Pretrained
  with_preprocessing: bool
  dtype: str  # the network's compute dtype

  def __call__(self, images: Any) -> jax.Array:
    """The logits for `images`, computed here (jitted): what every format must reproduce."""
    return jax.jit(self.fn)(self.variables, images)

  def example(self, batch: int, seed: int = 0) -> np.ndarray:
    """A batch of input images: random pixels, normalised unless the preprocessing is inside."""
    rng = np.random.RandomState(seed)
    if self.with_preprocessing:
      return rng.randint(0, 256, (batch, *self.image_shape)).astype(np.uint8)
    return rng.randn(batch, *self.image_shape).astype(np.float32)

  def describe(self) -> dict[str, Any]:
    """The input, output, preprocessing and classes, for a file beside the export."""
    return {"input": {"shape": ["batch", *self.image_shape],
                      "dtype": np.dtype(self.input_dtype).name,
                      "layout": "NHWC", "normalised_inside": self.with_preprocessing},
            "output": {"shape": ["batch", self.weights.num_classes], "dtype": "float32",
                       "meaning": "logits"},
            "compute_dtype": self.dtype, **self.weights.describe()}


def inference_fn(weights: Pretrained, *, with_preprocessing: bool = False,
                 dtype: str = "float32") -> Program:
  """The network of `weights` in inference mode as one function of a batch of images.

  Args:
    weights: the network and its variables (`resnet_jax.pretrained.load`).
    with_preprocessing: take uint8 images (at the evaluation crop size) and normalise them
      inside, with the mean and std the weights were trained with.
    dtype: the compute dtype (float32, bfloat16 or float16); parameters stay float32, logits
      are float32.

  Raises:
    InvalidInputError: an unknown dtype, or a network without a classifier head.
  """
  if dtype not in DTYPES:
    raise InvalidInputError(f"--dtype={dtype!r} is not one of {', '.join(DTYPES)}.")
  if not weights.num_classes:
    raise InvalidInputError(f"This {weights.model} has no classifier head; export a network "
                            "with one.")
  model = weights.create_model(dtype=DTYPES[dtype])
  prep = weights.preprocessing
  mean = np.asarray(prep.mean, np.float32)
  std = np.asarray(prep.std, np.float32)

  # The weights are an argument, not constants: XLA compiles a program with constant weights
  # differently (their layouts, folded arithmetic), and its logits then differ from
  # model.apply's in the last bits.
  def fn(variables: Any, images: jax.Array) -> jax.Array:
    if with_preprocessing:
      images = (images.astype(jnp.float32) - mean) / std
    return model.apply(variables, images, train=False).astype(jnp.float32)

  size = prep.image_size
  return Program(fn, jax.tree.map(np.asarray, weights.variables), (size, size, prep.channels),
                 np.uint8 if with_preprocessing else np.float32, weights, with_preprocessing,
                 dtype)


WHICH_WEIGHTS = ("final", "best", "ema")


def load_weights(path: str, which: str = "final") -> Pretrained:
  """The weights to export from a run folder, an exported model or weights by name.

  Args:
    path: what `pretrained.load` reads.
    which: "final" (the newest checkpoint), "best" (the checkpoint with the best evaluation
      accuracy in the run's metrics.jsonl) or "ema" (the newest checkpoint's EMA).

  Raises:
    InvalidInputError: an unknown choice, or one the run cannot give (no EMA, no evaluation of a
      kept checkpoint).
  """
  if which not in WHICH_WEIGHTS:
    raise InvalidInputError(f"--weights={which!r} is not one of {', '.join(WHICH_WEIGHTS)}.")
  if which != "best":
    return pretrained.load(path, ema=which == "ema")
  from resnet_jax.train import metrics  # a run's records: only for the best checkpoint
  run = files.resolve(path)
  kept = set(saved.checkpoint_steps(os.path.join(run, saved.CHECKPOINTS_DIR)))
  evaluated = {r["step"]: r["eval_accuracy"] for r in metrics.read_metrics(run)
               if "eval_accuracy" in r and r["step"] in kept}
  if not evaluated:
    raise InvalidInputError(f"No kept checkpoint of {path} was evaluated, so none is the best; "
                            "export --weights=final.")
  best = max(evaluated, key=lambda step: (evaluated[step], step))
  return pretrained.load(path, step=best)


def new_file(out: str) -> str:
  """`out` resolved, refused when something is there (the user's files are never replaced)."""
  out = files.resolve(out)
  if files.is_link(out) or epath.Path(out).exists():
    raise InvalidInputError(f"{out} already exists; choose a new --out.")
  epath.Path(out).parent.mkdir(parents=True, exist_ok=True)
  return out


def new_folder(out: str) -> str:
  """`out` resolved and made, refused when it holds anything."""
  out = files.resolve(out)
  path = epath.Path(out)
  if files.is_link(out) or (path.exists() and (not path.is_dir() or any(path.iterdir()))):
    raise InvalidInputError(f"{out} already exists; choose a new --out folder.")
  path.mkdir(parents=True, exist_ok=True)
  return out


# name -> writer(program, out): writes `out` (a file or folder, as the format has it) atomically.
FORMATS: Registry[Callable[[Program, str], None]] = Registry("export format", "--format")


def register_format(name: str) -> Callable:
  """Decorator: registers a writer `(program, out) -> None` as export format `name`."""
  return FORMATS.register(name)


def export(weights: Pretrained, fmt: str, out: str, *, with_preprocessing: bool = False,
           dtype: str = "float32") -> Program:
  """Writes `weights` to `out` in format `fmt` (see `FORMATS`); returns what was exported."""
  writer = FORMATS[fmt]
  program = inference_fn(weights, with_preprocessing=with_preprocessing, dtype=dtype)
  writer(program, out)
  return program


# The built-in formats register themselves.
from resnet_jax.export import savedmodel, stablehlo  # noqa: E402,F401
from resnet_jax.interop import onnx_export, torch_export  # noqa: E402,F401
