"""ResNet-56 on CIFAR-10 with the recipe of He et al. 2015 (section 4.2).

Command:  python -m experiments.train --config=cifar10_resnet56 --workdir=runs/cifar10_resnet56
Target:   the paper's 6.97% test error, i.e. >= 93.03% test accuracy (eval_accuracy in metrics.jsonl).
Measured: not yet in this repository (CIFAR-10 cannot be downloaded on the development machines);
          preparing cifar10 with tfds needs TensorFlow: pip install -e ".[prepare]".
"""

from resnet_jax.configs import _he2015_cifar


def get_config():
  config = _he2015_cifar.get_config("resnet56")
  return config
