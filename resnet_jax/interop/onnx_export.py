"""ONNX export (`--format=onnx`): the network's PyTorch twin (`torch_reference.TorchResNet`, every
registered family, its logits equal to the Flax network's within 1e-4) with the converted weights,
written by torch's ONNX exporter with a symbolic batch dimension and NHWC input (and the
preprocessing inside, with --with-preprocessing). Needs torch and onnx.

jax2onnx was measured as the other route: it constrains orbax-checkpoint below the version this
project uses, and the ImageNet stem's padding and NHWC max-pool need rewriting for it (a symbolic
batch in `lax.pad`, a 4-D MaxPool onnxruntime refuses); jax2tf's SavedModels hold one
XlaCallModule op that tf2onnx cannot convert.
"""

import io
import warnings

import numpy as np

from resnet_jax import files
from resnet_jax.errors import InvalidInputError, MissingDependencyError
from resnet_jax.export import Program, new_file, register_format
from resnet_jax.interop.convert import to_torchvision

OPSET = 17


def twin(program: Program):
  """The PyTorch module computing the program: NHWC images in, the twin network, logits out."""
  import torch

  from resnet_jax.interop.torch_reference import TorchResNet
  weights = program.weights
  model = weights.create_model()
  net = TorchResNet(model, program.image_shape[-1]).eval()
  net.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in
                       to_torchvision(program.variables, model).items()})
  prep = weights.preprocessing
  normalise = program.with_preprocessing

  class Twin(torch.nn.Module):
    def __init__(self):
      super().__init__()
      self.net = net
      self.register_buffer("mean", torch.tensor(prep.mean, dtype=torch.float32))
      self.register_buffer("std", torch.tensor(prep.std, dtype=torch.float32))

    def forward(self, images):
      x = images.to(self.mean.dtype)  # the network's dtype (float32; float64 in the tests)
      if normalise:
        x = (x - self.mean) / self.std
      return self.net(x.permute(0, 3, 1, 2))

  return Twin().eval()


@register_format("onnx")
def write(program: Program, out: str) -> None:
  try:
    import onnx  # noqa: F401  torch's exporter needs it
    import torch
  except ImportError as e:
    raise MissingDependencyError("--format=onnx needs torch and onnx: pip install torch onnx "
                                 "(or pip install -e '.[export]').") from e
  if program.dtype != "float32":
    raise InvalidInputError("--format=onnx writes float32 programs; drop --dtype (onnxruntime "
                            "can convert a float32 model to float16 itself).")
  out = new_file(out)
  example = torch.from_numpy(program.example(2))
  buffer = io.BytesIO()
  with warnings.catch_warnings():  # the TorchScript-based exporter is deprecated, not gone
    warnings.simplefilter("ignore")
    torch.onnx.export(twin(program), (example,), buffer, input_names=["images"],
                      output_names=["logits"], opset_version=OPSET, dynamo=False,
                      dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}})
  files.write_atomic(out, buffer.getvalue())
