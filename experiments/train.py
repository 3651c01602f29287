"""`python -m experiments.train`: runs `resnet_jax.commands.train` (`resnet-jax-train`)."""

import runpy

if __name__ == "__main__":
  runpy.run_module("resnet_jax.commands.train", run_name="__main__", alter_sys=True)
