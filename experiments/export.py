"""`python -m experiments.export`: runs `resnet_jax.commands.export` (`resnet-jax-export`)."""

import runpy

if __name__ == "__main__":
  runpy.run_module("resnet_jax.commands.export", run_name="__main__", alter_sys=True)
