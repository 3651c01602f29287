"""The CIFAR-10 recipe of He et al. 2015, section 4.2, shared by the cifar10_resnet{20,56,110} configs."""

import ml_collections

from resnet_jax.configs import default


def get_config(model: str) -> ml_collections.ConfigDict:
  config = default.get_config()
  config.model.name = model
  config.data.update(name="cifar10", image_size=0, crop_padding=4, random_flip=True)
  # SGD momentum 0.9, lr 0.1, weight decay 1e-4 (on every weight, as in the paper's Torch code),
  # batch 128, lr /10 at 32k and 48k iterations, 64k iterations.
  config.optim.update(name="sgd", learning_rate=0.1, momentum=0.9, nesterov=False,
                      weight_decay=1e-4, decay_all=True, schedule="piecewise", warmup_epochs=0.0,
                      boundaries=(32000, 48000), boundaries_unit="steps")
  config.train.update(batch_size=128, num_steps=64000, eval_every_epochs=10.0)
  return config
