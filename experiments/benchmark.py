"""`python -m experiments.benchmark`: runs `resnet_jax.commands.benchmark` (`resnet-jax-benchmark`)."""

import runpy

if __name__ == "__main__":
  runpy.run_module("resnet_jax.commands.benchmark", run_name="__main__", alter_sys=True)
