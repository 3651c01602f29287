"""ResNet-50 on ImageNet-1k with timm's "ResNet strikes back" procedure A2 (Wightman et al. 2021:
79.8% top-1 at 224).

A2: 300 epochs, LAMB lr 5e-3 at batch 2048, 5 warm-up epochs then cosine, weight decay 0.02 (on
kernels only), gradients clipped at norm 1 (timm's Lamb does that itself), binary cross-entropy
with target threshold 0.2 and no label smoothing, Inception crop at 224 + flip + RandAugment,
Mixup 0.1 or CutMix 1.0 (switch probability 0.5), repeated augmentation x3, stochastic depth
0.05, no EMA, evaluation of a 0.95 centre crop at 224. bfloat16 compute.
RandAugment: timm's rand-m7-mstd0.5-inc1 is approximated by torchvision's RandAugment (2
operations) at magnitude bin 21 of 31 (0.7 of the range, as m7 of 10 is); timm's magnitude noise
(mstd0.5) and its increasing variants of the operations are not reproduced.

Command:  python -m experiments.train --config=imagenet_resnet50_rsb_a2 --workdir=runs/imagenet_resnet50_rsb_a2
          (imagenet2012 needs a manual download: the error message says where to put the files).
Target:   >= 79.8% top-1.
Measured: not yet in this repository (no ImageNet on the development machines).
"""

from resnet_jax.configs import default


def get_config():
  config = default.get_config()
  config.model.update(name="resnet50", drop_path_rate=0.05)
  config.data.update(name="imagenet2012", image_size=224, crop_padding=0, random_flip=True,
                     random_resized_crop=True,
                     augmentations=("rand_augment(num_ops=2, magnitude=21)",),
                     eval_crop_ratio=0.95, mixup_alpha=0.1, cutmix_alpha=1.0, mix_prob=1.0,
                     mix_switch_prob=0.5, repeated_augmentations=3, device_resident="no",
                     normalization="imagenet", num_workers=16)
  config.optim.update(name="lamb", learning_rate=5e-3, b1=0.9, b2=0.999, eps=1e-6,
                      weight_decay=0.02, clip_norm=1.0, schedule="cosine", warmup_epochs=5.0,
                      warmup_start_factor=0.0, label_smoothing=0.0,
                      loss="binary_cross_entropy(target_threshold=0.2)")
  config.train.update(batch_size=2048, eval_batch_size=1000, num_epochs=300.0,
                      precision="bfloat16", eval_every_epochs=10.0, checkpoint_every_steps=2000,
                      log_every_steps=100, sync_batchnorm=False)
  return config
