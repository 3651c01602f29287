"""Exact evaluation: over a whole split (padding masked out), during training and of a saved run."""

import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from resnet_jax import data, files, pretrained, saved
from resnet_jax.errors import InputNotFoundError
from resnet_jax.train import parallel, resume
from resnet_jax.train.experiment import assemble
from resnet_jax.train.workdir import CONFIG_FILE, read_saved


def evaluate(eval_fn: Any, variables: Any, pipeline: data.Pipeline,
             runner: parallel.Runner) -> dict[str, float]:
  """Exact loss, top-1 and top-5 over the whole eval split.

  Args:
    eval_fn: the runner-compiled eval step (variables, inputs, arrays) -> sums.
    variables: replicated {"params", "batch_stats"}.
    pipeline, runner: what feeds the step, and where.

  Returns:
    {"eval_loss", "eval_accuracy" (top-1, a fraction), "eval_top5"}.
  """
  totals = None
  for inputs, arrays in pipeline.eval_feed(runner):
    sums = eval_fn(variables, inputs, arrays)
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  totals = jax.device_get(totals)
  count = float(totals["count"])
  if count != pipeline.num_eval:
    raise RuntimeError(f"Evaluated {count} examples, expected {pipeline.num_eval}.")
  return {"eval_loss": float(totals["loss"]) / count, "eval_accuracy": float(totals["top1"]) / count,
          "eval_top5": float(totals["top5"]) / count}


def load_config(workdir: str) -> Any:
  """The resolved config a run saved in WORKDIR/config.json, its dataset named as saved (a
  folder by its absolute path, whatever the current directory)."""
  stored = read_saved(workdir)
  if stored is None:
    raise InputNotFoundError(f"{workdir} is not a run folder (no {CONFIG_FILE}).")
  config = ml_collections.ConfigDict(stored["config"])
  config.data.name = (stored.get("dataset") or {}).get("name", config.data.name)
  return config


def evaluate_run(workdir: str, *, split: str = "", step: int | None = None,
                 data_name: str = "") -> dict[str, Any]:
  """Exact loss, top-1 and top-5 of a run's checkpoint on a split of its dataset.

  The network is rebuilt from the checkpoint's own description, assembled with the eval step
  alone (no optimizer, no train state).

  Args:
    workdir: the run folder.
    split: a split name (default: the run's evaluation split).
    step: which checkpoint (default: the newest).
    data_name: the run's dataset under another name (a folder that moved: folder:NEW_DIR);
      its classes must be those the checkpoint was trained on.

  Returns:
    {"step", "split", "num_examples", "eval_loss", "eval_accuracy", "eval_top5"}.

  Raises:
    InvalidInputError: the dataset's classes changed, or the checkpoint fails its checksums.
  """
  workdir = files.resolve(workdir)
  config = load_config(workdir)
  config.data.eval_split = split or config.data.eval_split
  config.data.name = data_name or config.data.name
  dataset = data.open(config.data)
  state, meta = saved.read_checkpoint(os.path.join(workdir, saved.CHECKPOINTS_DIR), step)
  trained_on = resume.saved_dataset(meta) or {}
  if split:  # another split than the run evaluated: its size is not comparable
    trained_on = {k: v for k, v in trained_on.items() if k != "num_eval"}
  data.check_same_classes(trained_on, dataset.info, action="evaluate", where=workdir,
                          trained=f"its checkpoint {meta['step']}",
                          remedy="name the run's dataset with --data")
  network = pretrained.from_description(
      {"params": state["params"], "batch_stats": state["batch_stats"]}, meta["model"])
  exp = assemble(config, weights=network, dataset=dataset, for_training=False)
  metrics = evaluate(exp.steps.eval, exp.runner.replicate(network.variables), exp.pipeline,
                     exp.runner)
  return {"step": int(meta["step"]), "split": config.data.eval_split or "default",
          "num_examples": exp.pipeline.num_eval, **metrics}
