"""Benchmarks the real train step: `python -m experiments.benchmark --model=resnet50 ...`.

Synthetic data by default; `--input` also times the input pipeline alone and the step fed by it;
`--compare-torch` times the same architecture in PyTorch in the same process and prints the ratio.
Prints a table and writes every field as JSON (--json).

Example on CPU:  python -m experiments.benchmark --model=resnet20 --batch-size=64 --image-size=32 --dtype=float32 --steps=5
"""

import datetime
import json
import os
import tempfile

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("model", "resnet50", "Registry name.")
flags.DEFINE_integer("batch_size", 256, "Global batch size.")
flags.DEFINE_integer("image_size", 224, "Square input size.")
flags.DEFINE_integer("channels", 3, "Input channels.")
flags.DEFINE_integer("num_classes", 1000, "Classifier outputs.")
flags.DEFINE_enum("dtype", "bfloat16", ["float32", "bfloat16", "float16"], "Compute dtype.")
flags.DEFINE_integer("steps", 20, "Timed steps.")
flags.DEFINE_integer("warmup", 3, "Untimed steps after compilation.")
flags.DEFINE_enum("runner", "mesh", ["mesh", "pmap"], "Parallel runner.")
flags.DEFINE_bool("compare_torch", False, "Also time PyTorch's twin (needs torch).")
flags.DEFINE_bool("input", False, "Also time the input pipeline alone and the step fed by it.")
flags.DEFINE_string("data", "", "Dataset for --input: a config data.name; default: digits for "
                    "images under 64 pixels, else a generated folder of ImageNet-like JPEGs.")
flags.DEFINE_integer("num_workers", 0, "Host decoding processes for --input (0: in-process).")
flags.DEFINE_string("json", "", "Where to write the results (default runs/benchmark/...json).")


def make_config():
  from experiments.configs import default
  config = default.get_config()
  config.model.name = FLAGS.model
  config.optim.update(name="sgd", momentum=0.9, nesterov=False, weight_decay=1e-4,
                      schedule="constant", warmup_epochs=0.0)
  config.train.update(batch_size=FLAGS.batch_size, precision=FLAGS.dtype, runner=FLAGS.runner)
  config.data.update(image_size=FLAGS.image_size, num_workers=FLAGS.num_workers,
                     crop_padding=4 if FLAGS.image_size < 64 else 0, random_flip=True)
  return config


def input_config(config, folder: str):
  """Points the data section at the dataset to read for --input."""
  name = FLAGS.data or ("digits" if FLAGS.image_size < 64 else f"folder:{folder}")
  imagenet_like = FLAGS.image_size >= 64
  config.data.update(name=name, random_resized_crop=imagenet_like, device_resident="auto",
                     eval_crop_ratio=0.875 if imagenet_like else 1.0,
                     crop_padding=0 if imagenet_like else config.data.crop_padding)
  return config


def main(argv):
  del argv
  import jax
  from resnet_jax import benchmark, data, parallel
  from resnet_jax.models import create_model

  config = make_config()
  results = {"model": FLAGS.model, "batch_size": FLAGS.batch_size,
             "image_size": FLAGS.image_size, "dtype": FLAGS.dtype, "runner": FLAGS.runner,
             "device": jax.devices()[0].device_kind, "platform": jax.devices()[0].platform,
             "jax_version": jax.__version__}
  info = benchmark.synthetic_info(FLAGS.num_classes, FLAGS.image_size, FLAGS.channels)
  results["synthetic"] = benchmark.time_train_step(config, info, steps=FLAGS.steps,
                                                   warmup=FLAGS.warmup)

  if FLAGS.input:
    with tempfile.TemporaryDirectory() as folder:
      if not FLAGS.data and FLAGS.image_size >= 64:
        benchmark.write_jpeg_folder(folder, num_images=max(64, 2 * FLAGS.batch_size))
      config = input_config(config, folder)
      real_info = data.get_info(config.data)
      runner = parallel.make_runner(FLAGS.runner)
      pipeline = data.create_pipeline(
          config.data, real_info, global_batch_size=FLAGS.batch_size,
          eval_batch_size=FLAGS.batch_size, seed=0, process_index=jax.process_index(),
          process_count=jax.process_count())
      results["input_only"] = benchmark.time_input(
          pipeline, batch_size=FLAGS.batch_size, steps=FLAGS.steps, warmup=FLAGS.warmup)
      results["input_only"]["images_per_sec_per_worker"] = (
          results["input_only"]["images_per_sec"] / max(1, FLAGS.num_workers))
      arrays = runner.replicate(pipeline.arrays["train"]) if pipeline.device_resident else None
      results["with_input"] = benchmark.time_train_step(
          config, real_info, steps=FLAGS.steps, warmup=FLAGS.warmup,
          batches=(pipeline.train_batches(0), arrays))
      results["with_input"]["device_resident"] = pipeline.device_resident
      results["input_vs_synthetic"] = (results["with_input"]["images_per_sec"] /
                                       results["synthetic"]["images_per_sec"])

  if FLAGS.compare_torch:
    spec = create_model(FLAGS.model, num_classes=FLAGS.num_classes)
    results["torch"] = benchmark.time_torch(
        spec, batch_size=FLAGS.batch_size, image_size=FLAGS.image_size, channels=FLAGS.channels,
        precision=FLAGS.dtype, learning_rate=0.1, momentum=0.9, weight_decay=1e-4,
        steps=FLAGS.steps, warmup=FLAGS.warmup)
    results["jax_vs_torch"] = (results["synthetic"]["images_per_sec"] /
                               results["torch"]["images_per_sec"])

  path = FLAGS.json or os.path.join(
      "runs", "benchmark",
      f"{FLAGS.model}-{datetime.datetime.now().strftime('%Y%m%d-%H%M%S')}.json")
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w") as f:
    json.dump(results, f, indent=2, default=lambda x: x.item() if hasattr(x, "item") else str(x))
  print(benchmark.format_table(results))
  print(f"Wrote {path}")


if __name__ == "__main__":
  app.run(main)
