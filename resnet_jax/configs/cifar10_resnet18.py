"""ResNet-18 with the CIFAR stem (3x3/1 conv, no max-pool) on CIFAR-10, cosine schedule.

Command:  python -m experiments.train --config=cifar10_resnet18 --workdir=runs/cifar10_resnet18
Target:   >= 95% test accuracy (200 epochs; bfloat16 on accelerators).
Measured: not yet in this repository (CIFAR-10 cannot be downloaded on the development machines);
          preparing cifar10 with tfds needs TensorFlow: pip install -e ".[prepare]".
"""

from resnet_jax.configs import default


def get_config():
  config = default.get_config()
  config.model.name = "resnet18_cifar"
  config.data.update(name="cifar10", image_size=0, crop_padding=4, random_flip=True)
  config.optim.update(name="sgd", learning_rate=0.1, momentum=0.9, nesterov=True,
                      weight_decay=5e-4, schedule="cosine", warmup_epochs=1.0)
  config.train.update(batch_size=128, num_epochs=200.0, eval_every_epochs=10.0,
                      precision="bfloat16")
  return config
