"""ResNet-50 on ImageNet-1k with torchvision's V2 recipe (the IMAGENET1K_V2 weights, 80.858%).

torchvision's command (8 GPUs x 128): train.py --model resnet50 --batch-size 128 --lr 0.5
--lr-scheduler cosineannealinglr --lr-warmup-epochs 5 --lr-warmup-method linear --auto-augment
ta_wide --epochs 600 --random-erase 0.1 --weight-decay 0.00002 --norm-weight-decay 0.0
--label-smoothing 0.1 --mixup-alpha 0.2 --cutmix-alpha 1.0 --train-crop-size 176 --model-ema
--val-resize-size 232 --ra-sampler --ra-reps 4. Here: SGD momentum 0.9 (not Nesterov), lr 0.5 at
batch 1024, 5 linear warm-up epochs from 0.01 x lr, then cosine to 0 (per step; torchvision
steps its schedulers per epoch), weight decay 2e-5 on kernels only, label smoothing 0.1,
Inception crop at 176 + flip + TrivialAugmentWide, random erasing 0.1, Mixup 0.2 or CutMix 1.0
(one of the two per batch, timm's semantics: the partner is the batch reversed, torchvision's
rolls it by one), repeated augmentation x4, EMA every 32 steps with decay 0.99998 adjusted as
torchvision adjusts it, evaluation of the 224 centre crop of 232. bfloat16 compute (torchvision
trained in float32).

Command:  python -m experiments.train --config=imagenet_resnet50_tv2 --workdir=runs/imagenet_resnet50_tv2
          (imagenet2012 needs a manual download: the error message says where to put the files).
Target:   >= 80.858% top-1 (the EMA weights, as torchvision reports them).
Measured: not yet in this repository (no ImageNet on the development machines).
"""

from resnet_jax.configs import default


def get_config():
  config = default.get_config()
  config.model.update(name="resnet50")
  config.data.update(name="imagenet2012", image_size=176, crop_padding=0, random_flip=True,
                     random_resized_crop=True, augmentations=("trivial_augment_wide",),
                     eval_crop=224, eval_resize=232, erasing_prob=0.1, mixup_alpha=0.2,
                     cutmix_alpha=1.0, mix_prob=1.0, mix_switch_prob=0.5,
                     repeated_augmentations=4, device_resident="no", normalization="imagenet",
                     num_workers=16)
  config.optim.update(name="sgd", learning_rate=0.5, momentum=0.9, nesterov=False,
                      weight_decay=2e-5, schedule="cosine", warmup_epochs=5.0,
                      warmup_start_factor=0.01, label_smoothing=0.1, ema_decay=0.99998,
                      ema_every_steps=32, ema_adjust=True)
  config.train.update(batch_size=1024, eval_batch_size=1000, num_epochs=600.0,
                      precision="bfloat16", eval_every_epochs=10.0, checkpoint_every_steps=2000,
                      log_every_steps=100, sync_batchnorm=False)
  return config
