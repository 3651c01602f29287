"""`python -m experiments.predict`: runs `resnet_jax.commands.predict` (`resnet-jax-predict`)."""

import runpy

if __name__ == "__main__":
  runpy.run_module("resnet_jax.commands.predict", run_name="__main__", alter_sys=True)
