"""ResNet-50 from scratch on Imagenette (10 ImageNet classes, 320px version), 160x160 crops.

Command:  python -m experiments.train --config=imagenette_resnet50 --workdir=runs/imagenette_resnet50
Target:   >= 90% top-1 on the validation split (80 epochs).
Measured: not yet in this repository (Imagenette cannot be downloaded on the development machines).
"""

from resnet_jax.configs import default


def get_config():
  config = default.get_config()
  config.model.update(name="resnet50", zero_init_residual=True)
  config.data.update(name="imagenette/320px-v2", image_size=160, crop_padding=0, random_flip=True,
                     random_resized_crop=True, eval_crop_ratio=0.875, device_resident="no",
                     normalization="imagenet", num_workers=8)
  config.optim.update(name="sgd", learning_rate=0.1, lr_batch_base=256, momentum=0.9,
                      nesterov=True, weight_decay=5e-5, schedule="cosine", warmup_epochs=5.0,
                      label_smoothing=0.1)
  config.train.update(batch_size=256, eval_batch_size=256, num_epochs=80.0, precision="bfloat16",
                      eval_every_epochs=5.0, log_every_steps=50)
  return config
