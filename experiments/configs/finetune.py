"""`--config=experiments/configs/finetune.py`: the config `resnet_jax.configs.finetune` (`--config=finetune`)."""

from resnet_jax.configs.finetune import get_config  # noqa: F401
