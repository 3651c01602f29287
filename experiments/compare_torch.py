"""`python -m experiments.compare_torch`: runs `resnet_jax.commands.compare_torch` (`resnet-jax-compare-torch`)."""

import runpy

if __name__ == "__main__":
  runpy.run_module("resnet_jax.commands.compare_torch", run_name="__main__", alter_sys=True)
