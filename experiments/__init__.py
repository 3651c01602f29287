"""`python -m experiments.NAME` and `--config=experiments/configs/NAME.py` from a clone of the
repository, as before the commands and configs moved into the package: each module here runs
`resnet_jax.commands.NAME` (installed as the console script resnet-jax-NAME), and each config
file is `resnet_jax.configs.NAME`. Not installed with the package."""
