"""PyTorch's speed on the same work as JAX's: a ResNet's train step on a twin
(`torch_reference.TorchResNet`) and each convolution alone, for `experiments.benchmark
--compare-torch`. Importing this module needs torch (`pip install -e .[dev]`)."""

import functools
import statistics
import time
from typing import Any

import torch
import torch.nn.functional as F

from resnet_jax.interop.torch_reference import TorchResNet
from resnet_jax.timing import summary, timed


def time_torch(model_spec: Any, *, batch_size: int, image_size: int, channels: int,
               precision: str, learning_rate: float, momentum: float, weight_decay: float,
               steps: int, warmup: int, compile: bool | None = None) -> dict[str, Any]:
  """The same architecture, batch, dtype and optimizer (SGD momentum) in PyTorch.

  channels-last memory format, autocast to the compute dtype, and `torch.compile` (by default on
  CUDA only: inductor's CPU compilation takes minutes for a ResNet).
  """
  device = "cuda" if torch.cuda.is_available() else "cpu"
  net = TorchResNet(model_spec, channels).to(device).to(memory_format=torch.channels_last)
  opt = torch.optim.SGD(net.parameters(), lr=learning_rate, momentum=momentum,
                        weight_decay=weight_decay)
  x = torch.randn(batch_size, channels, image_size, image_size, device=device).to(
      memory_format=torch.channels_last)
  y = torch.randint(0, max(1, model_spec.num_classes), (batch_size,), device=device)
  autocast_dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(precision)
  scaler = torch.amp.GradScaler(device) if precision == "float16" else None

  def step(model):
    opt.zero_grad(set_to_none=True)
    with torch.autocast(device, dtype=autocast_dtype or torch.float32,
                        enabled=autocast_dtype is not None):
      loss = torch.nn.functional.cross_entropy(model(x), y)
    if scaler is not None:
      scaler.scale(loss).backward()
      scaler.step(opt)
      scaler.update()
    else:
      loss.backward()
      opt.step()
    return loss

  sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
  if compile is None:
    compile = device == "cuda"
  model = torch.compile(net) if compile else net
  start = time.perf_counter()
  try:
    step(model)
  except Exception:  # noqa: BLE001 - e.g. no C++ compiler for inductor: measure eager instead
    if model is net:
      raise
    model = net
    step(model)
  sync()
  compile_s = time.perf_counter() - start
  times = timed(lambda: step(model), lambda _: sync(), steps=steps, warmup=warmup)
  return {**summary(times, batch_size), "compile_time_s": compile_s,
          "torch_compile": model is not net, "torch_version": torch.__version__,
          "torch_threads": torch.get_num_threads()}


def time_torch_convolution(shape: Any, *, dtype: str, steps: int,
                           warmup: int) -> dict[str, float]:
  """`resnet_jax.benchmark.time_convolution` for torch's convolution (channels-last, as
  `time_torch` runs it): the forward, and each gradient alone from one recorded forward."""
  dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
  device = "cuda" if torch.cuda.is_available() else "cpu"
  sync = (lambda _: torch.cuda.synchronize()) if device == "cuda" else (lambda _: None)
  n, h, w, _ = shape.input_shape
  kh, kw, cin, cout = shape.kernel_shape
  (pt, pb), (pl, pr) = shape.padding
  x = torch.randn(n, cin * shape.groups, h, w, dtype=dtype, device=device).to(
      memory_format=torch.channels_last)
  weight = torch.randn(cout, cin, kh, kw, dtype=dtype, device=device).to(
      memory_format=torch.channels_last)

  def forward(x, weight):
    return F.conv2d(F.pad(x, (pl, pr, pt, pb)), weight, stride=shape.strides,
                    groups=shape.groups)

  def no_grad_forward():
    with torch.no_grad():
      return forward(x, weight)

  dy = torch.randn_like(no_grad_forward())
  fns = {"forward": no_grad_forward}
  for phase, wrt in (("input_gradient", x), ("weight_gradient", weight)):
    wrt = wrt.detach().requires_grad_(True)
    out = forward(wrt, weight) if phase == "input_gradient" else forward(x, wrt)
    fns[phase] = functools.partial(torch.autograd.grad, out, wrt, dy, retain_graph=True)
  return {phase: 1e3 * statistics.median(timed(fn, sync, steps=steps, warmup=warmup + 1,
                                                window=1)) for phase, fn in fns.items()}
