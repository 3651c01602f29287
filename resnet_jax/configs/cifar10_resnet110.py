"""ResNet-110 on CIFAR-10 with the recipe of He et al. 2015 (section 4.2).

Command:  python -m experiments.train --config=cifar10_resnet110 --workdir=runs/cifar10_resnet110
Target:   the paper's 6.43% test error, i.e. >= 93.57% test accuracy (eval_accuracy in metrics.jsonl).
Measured: not yet in this repository (CIFAR-10 cannot be downloaded on the development machines);
          preparing cifar10 with tfds needs TensorFlow: pip install -e ".[prepare]".
"""

from resnet_jax.configs import _he2015_cifar


def get_config():
  config = _he2015_cifar.get_config("resnet110")
  # The paper warms up at lr 0.01 for ~400 iterations; a linear warm-up from 0.01 to 0.1 over one
  # epoch (391 iterations) plays the same role.
  config.optim.update(warmup_epochs=1.0, warmup_start_factor=0.1)
  return config
