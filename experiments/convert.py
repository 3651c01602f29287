"""`python -m experiments.convert`: runs `resnet_jax.commands.convert` (`resnet-jax-convert`)."""

import runpy

if __name__ == "__main__":
  runpy.run_module("resnet_jax.commands.convert", run_name="__main__", alter_sys=True)
