"""TensorFlow SavedModel (`--format=savedmodel`, `pip install -e ".[export]"`): the program through
`jax.experimental.jax2tf` (native serialization: one XlaCallModule op holding its StableHLO,
lowered for CPU and CUDA), the weights as tf.Variables, the batch dimension symbolic, served as
`serving_default` with input "images"; model.json beside saved_model.pb describes it."""

import json
import os

import jax
import numpy as np

from resnet_jax import files
from resnet_jax.errors import InvalidInputError, MissingDependencyError
from resnet_jax.export import Program, new_folder, register_format
from resnet_jax.export.stablehlo import DESCRIPTION

PLATFORMS = ("cpu", "cuda")


@register_format("savedmodel")
def write(program: Program, out: str) -> None:
  try:
    import tensorflow as tf
    from jax.experimental import jax2tf
  except ImportError as e:
    raise MissingDependencyError("--format=savedmodel needs TensorFlow: pip install -e "
                                 "'.[export]' (or pip install tensorflow-cpu).") from e
  if files.is_remote(out):
    raise InvalidInputError("--format=savedmodel writes a local folder; copy it to the bucket "
                            "afterwards.")
  out = new_folder(out)
  height, width, channels = program.image_shape
  convert = jax2tf.convert(program.fn, with_gradient=False,
                           polymorphic_shapes=[None, f"(b, {height}, {width}, {channels})"],
                           native_serialization_platforms=PLATFORMS)
  module = tf.Module()
  module.weights = jax.tree.map(tf.Variable, program.variables)
  spec = tf.TensorSpec([None, height, width, channels], tf.as_dtype(np.dtype(program.input_dtype)),
                       name="images")
  module.serve = tf.function(lambda images: {"logits": convert(module.weights, images)},
                             input_signature=[spec], autograph=False)
  with files.atomic_folder(out) as temp:  # a stop leaves no half model
    tf.saved_model.save(module, temp, signatures={"serving_default": module.serve})
    files.write_atomic(os.path.join(temp, DESCRIPTION),
                       json.dumps({"format": "savedmodel", **program.describe()}, indent=2))


def call(folder: str, images: np.ndarray) -> np.ndarray:
  """The logits a written SavedModel gives for `images`, computed by TensorFlow."""
  import tensorflow as tf
  serve = tf.saved_model.load(folder).signatures["serving_default"]
  return serve(images=tf.constant(images))["logits"].numpy()
