"""Benchmarks the real train step: `python -m experiments.benchmark --model=resnet50 ...`.

Synthetic data by default; `--input` also times the input pipeline alone and the step fed by it;
`--compare-torch` times the same architecture in PyTorch in the same process and prints the ratio.
Prints a table and writes every field as JSON (--json).

Example on CPU:  python -m experiments.benchmark --model=resnet20 --batch-size=64 --image-size=32 --dtype=float32 --steps=5
"""

import argparse
import datetime
import functools
import json
import os
import sys
import tempfile

from experiments import cli


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
  p.add_argument("--compare-torch", action="store_true", help="Also time PyTorch's twin.")
  p.add_argument("--torch-compile", default="auto", choices=["auto", "yes", "no"],
                 help="torch.compile the twin; auto: on CUDA only (inductor's CPU compile is slow).")
  p.add_argument("--profile-convs", action="store_true",
                 help="Also time each of the network's convolutions alone (forward, input "
                 "gradient, weight gradient), and PyTorch's with --compare-torch.")
  p.add_argument("--input", action="store_true",
                 help="Also time the input pipeline alone and the step fed by it.")
  p.add_argument("--data", default="", help="Dataset for --input (a data.name); default: digits "
                 "for images under 64 pixels, else a generated folder of ImageNet-like JPEGs.")
  p.add_argument("--data-dir", default="", help="tfds data_dir for --data (default: tfds's).")
  p.add_argument("--num-workers", type=int, default=0, help="Decoding processes for --input.")
  p.add_argument("--json", default="", help="Results file (default runs/benchmark/...json).")
  args = p.parse_args(argv)
  for name, least in (("batch_size", 1), ("image_size", 1), ("channels", 1), ("num_classes", 1),
                      ("steps", 1), ("warmup", 0), ("num_workers", 0)):
    if getattr(args, name) < least:
      p.error(f"--{name.replace('_', '-')} must be >= {least}, got {getattr(args, name)}")
  return args


def make_config(args):
  from experiments.configs import default
  config = default.get_config()
  config.model.name = args.model
  config.optim.update(name="sgd", momentum=0.9, nesterov=False, weight_decay=1e-4,
                      schedule="constant", warmup_epochs=0.0)
  config.train.update(batch_size=args.batch_size, precision=args.dtype, runner=args.runner)
  config.data.update(image_size=args.image_size, num_workers=args.num_workers,
                     crop_padding=4 if args.image_size < 64 else 0, random_flip=True)
  return config


def input_config(args, config, folder: str):
  """Points the data section at the dataset to read for --input."""
  name = args.data or ("digits" if args.image_size < 64 else f"folder:{folder}")
  imagenet_like = args.image_size >= 64
  config.data.update(name=name, data_dir=args.data_dir, random_resized_crop=imagenet_like,
                     device_resident="auto",
                     eval_crop_ratio=0.875 if imagenet_like else 1.0,
                     crop_padding=0 if imagenet_like else config.data.crop_padding)
  return config


def main(argv=None) -> int:
  args = parse_args(argv)
  with cli.command():
    results = run(args)
  path = args.json or os.path.join(
      "runs", "benchmark",
      f"{args.model}-{datetime.datetime.now().strftime('%Y%m%d-%H%M%S')}.json")
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  from resnet_jax import benchmark, files
  with cli.command():
    files.write_atomic(path, json.dumps(
        results, indent=2, default=lambda x: x.item() if hasattr(x, "item") else str(x)))
  print(benchmark.format_table(results))
  print(f"Wrote {path}")
  return 0


def run(args) -> dict:
  """Every timing the flags ask for, as one results dict."""
  import jax
  from resnet_jax import benchmark, data
  from resnet_jax.models import create_model

  create_model(args.model, num_classes=args.num_classes)  # an unknown name fails here, listing all
  config = make_config(args)
  results = {"model": args.model, "batch_size": args.batch_size,
             "image_size": args.image_size, "dtype": args.dtype, "runner": args.runner,
             "device": jax.devices()[0].device_kind, "platform": jax.devices()[0].platform,
             "jax_version": jax.__version__}
  with tempfile.TemporaryDirectory() as folder:
    pipeline = None
    channels = args.channels
    if args.input:
      if not args.data and args.image_size >= 64:
        benchmark.write_jpeg_folder(folder, num_images=max(64, 2 * args.batch_size))
      config = input_config(args, config, folder)
      real_info = data.get_info(config.data)
      channels = real_info.image_shape[-1]  # time the synthetic step on the same input shape
      pipeline = data.create_pipeline(
          config.data, real_info, global_batch_size=args.batch_size,
          eval_batch_size=args.batch_size, seed=0, process_index=jax.process_index(),
          process_count=jax.process_count())
    info = benchmark.synthetic_info(args.num_classes, args.image_size, channels)
    results["synthetic"] = benchmark.time_train_step(config, info, steps=args.steps,
                                                     warmup=args.warmup)
    if pipeline is not None:
      results["input_only"] = benchmark.time_input(
          pipeline, batch_size=args.batch_size, steps=args.steps, warmup=args.warmup)
      results["input_only"]["images_per_sec_per_worker"] = (
          results["input_only"]["images_per_sec"] / max(1, args.num_workers))
      results["with_input"] = benchmark.time_train_step(
          config, real_info, steps=args.steps, warmup=args.warmup, pipeline=pipeline)
      results["with_input"]["device_resident"] = pipeline.device_resident
      results["input_vs_synthetic"] = (results["with_input"]["images_per_sec"] /
                                       results["synthetic"]["images_per_sec"])

  if args.compare_torch:
    spec = create_model(args.model, num_classes=args.num_classes)
    from resnet_jax.interop.torch_timing import time_torch
    results["torch"] = time_torch(
        spec, batch_size=args.batch_size, image_size=args.image_size, channels=channels,
        precision=args.dtype, learning_rate=0.1, momentum=0.9, weight_decay=1e-4,
        steps=args.steps, warmup=args.warmup,
        compile={"auto": None, "yes": True, "no": False}[args.torch_compile])
    results["jax_vs_torch"] = (results["synthetic"]["images_per_sec"] /
                               results["torch"]["images_per_sec"])
  if args.profile_convs:
    shapes = benchmark.convolutions(create_model(args.model, num_classes=args.num_classes),
                                    (args.image_size, args.image_size, channels),
                                    args.batch_size // jax.device_count())
    timers = {"jax": benchmark.time_convolution}
    if args.compare_torch:
      from resnet_jax.interop.torch_timing import time_torch_convolution
      timers["torch"] = time_torch_convolution
    results["convolutions"] = {name: benchmark.profile_convolutions(shapes, functools.partial(
        timer, dtype=args.dtype, steps=args.steps, warmup=args.warmup))
        for name, timer in timers.items()}
  return results


if __name__ == "__main__":
  sys.exit(main())
