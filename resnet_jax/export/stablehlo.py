"""StableHLO: a folder with `jax.export`'s serialized program (a symbolic batch dimension), its
weights and a description; reloaded by `jax.export.deserialize` in any JAX, or by any StableHLO
runtime (the weights are the program's first arguments, in the order of `weights.safetensors`).

  DIR/program.stablehlo   the serialized `jax.export.Exported` of (weights, images) -> logits
  DIR/weights.safetensors the weights, named "params/conv1/kernel", ...
  DIR/model.json          input, output, preprocessing and class names
"""

import json
import os

import flax
import jax
import numpy as np
from etils import epath

from resnet_jax import files
from resnet_jax.errors import InvalidInputError
from resnet_jax.export import Program, new_folder, register_format

PROGRAM, WEIGHTS, DESCRIPTION = "program.stablehlo", "weights.safetensors", "model.json"


def exported(program: Program) -> jax.export.Exported:
  """The program exported for this platform, its batch dimension symbolic ("batch")."""
  batch, = jax.export.symbolic_shape("batch")
  images = jax.ShapeDtypeStruct((batch, *program.image_shape), program.input_dtype)
  weights = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), program.variables)
  return jax.export.export(jax.jit(program.fn))(weights, images)


@register_format("stablehlo")
def write(program: Program, out: str) -> None:
  import safetensors.numpy
  out = new_folder(out)  # refused before any work; a stop while exporting leaves it empty, and
  # an empty folder is taken again
  serialized = bytes(exported(program).serialize())
  flat = flax.traverse_util.flatten_dict(program.variables, sep="/")
  weights = safetensors.numpy.save({k: np.ascontiguousarray(v) for k, v in flat.items()})
  files.write_atomic(os.path.join(out, WEIGHTS), weights)
  files.write_atomic(os.path.join(out, PROGRAM), serialized)
  files.write_atomic(os.path.join(out, DESCRIPTION),  # last: a folder with it is complete
                     json.dumps({"format": "stablehlo", **program.describe()}, indent=2))


def load(folder: str):
  """A written program as a function of images: `load(DIR)(images) -> logits`."""
  import safetensors.numpy
  folder = files.resolve(folder)
  if not epath.Path(folder, DESCRIPTION).exists():
    raise InvalidInputError(f"{folder} holds no complete StableHLO export (no {DESCRIPTION}); "
                            "export it again.")
  program = jax.export.deserialize(bytearray(epath.Path(folder, PROGRAM).read_bytes()))
  weights = flax.traverse_util.unflatten_dict(
      safetensors.numpy.load(epath.Path(folder, WEIGHTS).read_bytes()), sep="/")
  return lambda images: program.call(weights, images)
