"""ResNet-20 on CIFAR-10 with the recipe of He et al. 2015 (section 4.2).

Command:  python -m experiments.train --config=cifar10_resnet20 --workdir=runs/cifar10_resnet20
Target:   the paper's 8.75% test error, i.e. >= 91.25% test accuracy (eval_accuracy in metrics.jsonl).
Measured: not yet in this repository (CIFAR-10 cannot be downloaded on the development machines);
          preparing cifar10 with tfds needs TensorFlow: pip install -e ".[prepare]".
"""

from resnet_jax.configs import _he2015_cifar


def get_config():
  config = _he2015_cifar.get_config("resnet20")
  return config
