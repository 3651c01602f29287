"""Fine-tunes a pretrained ResNet (converted torchvision weights or a run of this project) on a
folder of your own images, replacing the classifier for its classes.

Command:  python -m experiments.train --config=finetune \\
            --config.init.checkpoint=DIR --config.data.name=folder:PATH [--workdir=RUN]
Options:  --config.init.freeze=backbone|stem|stage1..stage4 (frozen parts get no updates and keep
          BatchNorm in inference mode), --config.init.backbone_lr_scale=0.1 (the default: the
          backbone learns 10x slower than the new head).
Target:   depends on the data; no figure is claimed for it.
"""

from resnet_jax.configs import default


def get_config():
  config = default.get_config()
  config.model.name = ""  # the checkpoint's
  config.init.update(head="replace", freeze="none", backbone_lr_scale=0.1)
  # Preprocessing of torchvision's weights: ImageNet statistics, 224 crops, resize 256 at eval.
  config.data.update(image_size=224, crop_padding=0, random_flip=True, random_resized_crop=True,
                     eval_crop_ratio=0.875, normalization="imagenet", device_resident="no",
                     num_workers=4)
  config.optim.update(name="sgd", learning_rate=0.01, lr_batch_base=0, momentum=0.9,
                      nesterov=True, weight_decay=1e-4, schedule="cosine", warmup_epochs=1.0,
                      label_smoothing=0.1)
  config.train.update(batch_size=64, eval_batch_size=64, num_epochs=15.0, eval_every_epochs=1.0,
                      log_every_steps=10)
  return config
