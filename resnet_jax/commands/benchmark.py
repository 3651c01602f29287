"""Benchmarks the real train step: `python -m experiments.benchmark --model=resnet50 ...`.

Synthetic data by default; `--input` also times the input pipeline alone and the step fed by it;
`--compare-torch` times the same architecture in PyTorch in the same process and prints the ratio.
Prints a table and writes every field as JSON (--json).

Example on CPU:  python -m experiments.benchmark --model=resnet20 --batch-size=64 --image-size=32 --dtype=float32 --steps=5
The GPU program, on any machine:  python -m experiments.benchmark --lower-only=cuda --num-devices=1
"""

import argparse
import ast
import datetime
import os
import sys

from resnet_jax.commands import cli


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--model", default="resnet50", help="Registry name.")
  p.add_argument("--batch-size", type=int, default=256, help="Global batch size.")
  p.add_argument("--image-size", type=int, default=224, help="Square input size.")
  p.add_argument("--channels", type=int, default=3, help="Input channels.")
  p.add_argument("--num-classes", type=int, default=1000, help="Classifier outputs.")
  p.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"])
  p.add_argument("--steps", type=int, default=20, help="Timed steps.")
  p.add_argument("--warmup", type=int, default=3, help="Untimed steps after compilation.")
  p.add_argument("--runner", default="mesh", help="A registered runner: mesh or pmap.")
  p.add_argument("--num-devices", type=int, default=0,
                 help="Run on the first N devices (default 0: all of them).")
  p.add_argument("--lower-only", default="", choices=["", "cuda", "rocm", "tpu", "cpu"],
                 help="Only lower the train step for PLATFORM (cuda, rocm, tpu, cpu; no such "
                 "device needed) and print its program's census: operations by kind, "
                 "conditionals, collectives, convolution types, donated arguments.")
  p.add_argument("--compare-torch", action="store_true", help="Also time PyTorch's twin.")
  p.add_argument("--torch-compile", default="auto", choices=["auto", "yes", "no"],
                 help="torch.compile the twin; auto: on CUDA only (inductor's CPU compile is slow).")
  p.add_argument("--profile-convs", action="store_true",
                 help="Also time each of the network's convolutions alone (forward, input "
                 "gradient, weight gradient), and PyTorch's with --compare-torch.")
  p.add_argument("--profile-layers", action="store_true",
                 help="Also time every other part of the step alone (BatchNorm, residual joins, "
                 "max-pool, head, optimizer), the convolutions too, and report what the parts "
                 "leave unaccounted of the step.")
  p.add_argument("--tuning", "--gpu-tuning", action="store_true",
                 help="Also time each XLA setting, batch size and step variant listed for this "
                 "platform (resnet_jax.benchmark.TUNING: on GPUs conv fusion, command buffers, "
                 "batch x1.5 and x2, the flat optimizer update) against the default step, "
                 "alternately in one process.")
  p.add_argument("--input", action="store_true",
                 help="Also time the input pipeline alone and the step fed by it.")
  p.add_argument("--data", default="", help="Dataset for --input (a data.name); default: digits "
                 "for images under 64 pixels, else a generated folder of ImageNet-like JPEGs.")
  p.add_argument("--data-dir", default="", help="tfds data_dir for --data (default: tfds's).")
  p.add_argument("--num-workers", type=int, default=0, help="Decoding processes for --input.")
  p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                 help="Override a key of the timed run's config (repeatable), e.g. "
                 "--set data.mixup_alpha=0.2 --set optim.accumulate_steps=2.")
  p.add_argument("--json", default="", help="Results file (default runs/benchmark/...json).")
  args = p.parse_args(argv)
  settings = []
  for item in args.set:
    key, equals, text = item.partition("=")
    if not equals or "." not in key:
      p.error(f"--set {item!r} is not SECTION.KEY=VALUE, e.g. --set data.mixup_alpha=0.2")
    try:
      value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      value = text  # a bare word: a string
    settings.append((key.strip(), value))
  args.set = tuple(settings)
  for name, least in (("batch_size", 1), ("image_size", 1), ("channels", 1), ("num_classes", 1),
                      ("steps", 1), ("warmup", 0), ("num_workers", 0), ("num_devices", 0)):
    if getattr(args, name) < least:
      p.error(f"--{name.replace('_', '-')} must be >= {least}, got {getattr(args, name)}")
  return args


def main(argv=None) -> int:
  args = parse_args(argv)
  with cli.command():
    from resnet_jax.configs import default
    from resnet_jax import benchmark
    options = {**vars(args), "torch_compile": {"auto": None, "yes": True, "no": False}[
        args.torch_compile]}
    options["settings"] = options.pop("set")
    path = options.pop("json") or os.path.join(
        "runs", "benchmark",
        f"{args.model}-{datetime.datetime.now().strftime('%Y%m%d-%H%M%S')}.json")
    results = benchmark.run(benchmark.Options(**options), default.get_config())
    benchmark.write_results(results, path)
  print(benchmark.format_table(results))
  print(f"Wrote {path}")
  return 0


def console() -> None:
  """The console script resnet-jax-benchmark."""
  sys.exit(main())


if __name__ == "__main__":
  console()
