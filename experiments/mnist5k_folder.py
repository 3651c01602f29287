"""`python -m experiments.mnist5k_folder`: runs `resnet_jax.commands.mnist5k_folder` (`resnet-jax-mnist5k-folder`)."""

import runpy

if __name__ == "__main__":
  runpy.run_module("resnet_jax.commands.mnist5k_folder", run_name="__main__", alter_sys=True)
