"""Layers with hand-written gradients: the same functions and variables as flax's."""
