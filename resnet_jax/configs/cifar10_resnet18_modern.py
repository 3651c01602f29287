"""ResNet-18 (CIFAR stem) on CIFAR-10 with today's parts: TrivialAugmentWide after the padded crop
and flip, random erasing 0.25, Mixup 0.2 or CutMix 1.0 on half of the batches, label smoothing
0.1, stochastic depth 0.1, an EMA of the weights every 4 steps (torchvision's adjusted decay),
SGD Nesterov lr 0.1 cosine over 200 epochs, weight decay 5e-4 on kernels only.

Command:  python -m experiments.train --config=cifar10_resnet18_modern --workdir=runs/cifar10_resnet18_modern
Target:   >= 96% test accuracy (200 epochs; bfloat16 on accelerators).
Measured: not yet in this repository (CIFAR-10 cannot be downloaded on the development machines);
          preparing cifar10 with tfds needs TensorFlow: pip install -e ".[prepare]".
          The same parts on the digits at small scale: see the README's Configs section.
"""

from resnet_jax.configs import default


def get_config():
  config = default.get_config()
  config.model.update(name="resnet18_cifar", drop_path_rate=0.1)
  # TrivialAugmentWide runs on the host (Pillow), so the padded crop and flip run there too.
  config.data.update(name="cifar10", image_size=0, crop_padding=0, random_flip=False,
                     augmentations=("flip", "trivial_augment_wide", "pad_crop(padding=4)"),
                     erasing_prob=0.25, mixup_alpha=0.2, cutmix_alpha=1.0, mix_prob=0.5,
                     num_workers=4)
  config.optim.update(name="sgd", learning_rate=0.1, momentum=0.9, nesterov=True,
                      weight_decay=5e-4, schedule="cosine", warmup_epochs=1.0,
                      label_smoothing=0.1, ema_decay=0.9999, ema_every_steps=4, ema_adjust=True)
  config.train.update(batch_size=128, num_epochs=200.0, eval_every_epochs=10.0,
                      precision="bfloat16")
  return config
