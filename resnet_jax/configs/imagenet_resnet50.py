"""ResNet-50 (v1.5) on ImageNet-1k with the recipe of Goyal et al. 2017.

90 epochs, SGD momentum 0.9, lr 0.1 x batch/256 with 5 linear warm-up epochs and /10 at epochs 30,
60 and 80, weight decay 1e-4 on conv/dense kernels only, zero-initialised last BN of each block,
label smoothing 0.1, bfloat16 compute, Inception crop + flip, 224 train / 256->224 eval.
BatchNorm statistics per device, not synchronised (train.sync_batchnorm=false), as Goyal et al.
(32 images per GPU) and MLPerf's reference do; running averages are averaged over devices.

Command:  python -m experiments.train --config=imagenet_resnet50 --workdir=runs/imagenet_resnet50
          (imagenet2012 needs a manual download: the error message says where to put the files).
Target:   >= 76.5% top-1.
Measured: not yet in this repository (no ImageNet on the development machines).
"""

from resnet_jax.configs import default


def get_config():
  config = default.get_config()
  config.model.update(name="resnet50", zero_init_residual=True)
  config.data.update(name="imagenet2012", image_size=224, crop_padding=0, random_flip=True,
                     random_resized_crop=True, eval_crop_ratio=0.875, device_resident="no",
                     normalization="imagenet", num_workers=16)
  config.optim.update(name="sgd", learning_rate=0.1, lr_batch_base=256, momentum=0.9,
                      nesterov=False, weight_decay=1e-4, schedule="piecewise", warmup_epochs=5.0,
                      # Goyal et al. warm up from the small-batch rate, 0.1 = 0.4 x 256/1024
                      # (change it with train.batch_size).
                      warmup_start_factor=0.25,
                      boundaries=(30, 60, 80), boundaries_unit="epochs", label_smoothing=0.1)
  config.train.update(batch_size=1024, eval_batch_size=1000, num_epochs=90.0,
                      precision="bfloat16", eval_every_epochs=5.0, checkpoint_every_steps=2000,
                      log_every_steps=100, sync_batchnorm=False)
  return config
