"""`--config=experiments/configs/default.py`: the config `resnet_jax.configs.default` (`--config=default`)."""

from resnet_jax.configs.default import get_config  # noqa: F401
