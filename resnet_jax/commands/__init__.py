"""The commands: flags in, a library call out. Each is installed as a console script
(`resnet-jax-train`, ...) and runs as `python -m resnet_jax.commands.NAME`; from a clone of the
repository, `python -m experiments.NAME` runs the same command."""
