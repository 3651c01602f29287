"""The training system: state, steps, optimizers, parallel runners, checkpoints, the loop."""
