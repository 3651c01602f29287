"""`python -m experiments.plot`: runs `resnet_jax.commands.plot` (`resnet-jax-plot`)."""

import runpy

if __name__ == "__main__":
  runpy.run_module("resnet_jax.commands.plot", run_name="__main__", alter_sys=True)
