"""`python -m experiments.evaluate`: runs `resnet_jax.commands.evaluate` (`resnet-jax-evaluate`)."""

import runpy

if __name__ == "__main__":
  runpy.run_module("resnet_jax.commands.evaluate", run_name="__main__", alter_sys=True)
