"""The configs by their old paths: each file here is `resnet_jax.configs.NAME`."""
