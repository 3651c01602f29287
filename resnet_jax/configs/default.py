"""Default config: every key, with values for the offline default run.

Each key's range is documented, and checked before a run starts, in RANGES of
resnet_jax/train/config.py; a new key goes there too (tests/test_config_ranges.py checks).

A CIFAR-style ResNet-20 on the embedded scikit-learn digits (8x8 grayscale, resized to 16x16).

Command:  python -m experiments.train
Target:   >= 97% test accuracy in a few minutes on 2 CPU cores (measured in the README).
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0  # in [0, 2**32)

  placeholder = ml_collections.config_dict.placeholder
  config.model = ml_collections.ConfigDict(dict(
      name="resnet20",            # any name from resnet_jax.list_models()
      zero_init_residual=False,   # zero-init each branch's last BN scale (Goyal et al. 2017)
      stride_in_1x1=False,        # True: ResNet v1 (stride on the bottleneck's first 1x1)
      # The architecture's own choices; None keeps the registry's (see resnet_jax.models).
      block=placeholder(str),     # basic | bottleneck | preact_basic | preact_bottleneck | yours
      stage_sizes=placeholder(tuple),  # blocks per stage, e.g. (3, 4, 6, 3)
      num_filters=placeholder(int),    # the first stage's width (64 ImageNet, 16 CIFAR)
      stem=placeholder(str),      # imagenet (7x7/2 conv + max-pool) | cifar (3x3/1 conv)
      shortcut=placeholder(str),  # projection | zero_pad (option A)
      groups=placeholder(int),    # ResNeXt cardinality (bottleneck blocks)
      width_per_group=placeholder(int),  # ResNeXt / wide-ResNet bottleneck width
      # nn.scan over repeated blocks (compile time independent of depth; on CPU the backward
      # pass runs slower); None: the registry's choice (on for resnet1202, preact_resnet1001).
      scan_blocks=placeholder(bool),
      remat=False,                # rematerialise blocks in the backward pass (saves memory)
      drop_path_rate=0.0,         # stochastic depth, linear over blocks from 0 (timm's); 0: off
      bn_momentum=0.9,
      bn_epsilon=1e-5,
      bn_unbiased_var=True,       # running variance of the unbiased batch variance (PyTorch's)
  ))

  config.data = ml_collections.ConfigDict(dict(
      name="digits",              # tfds name (cifar10, mnist, ...), "digits", or "folder:DIR"
      data_dir="",                # tfds data_dir; "" = tfds's default (~/tensorflow_datasets);
                                  # a bucket (gs://...) keeps it prepared for every host
      mirror_dir="",              # with a bucket data_dir: this host's copy, which tfds reads
                                  # ("" = ~/.cache/resnet_jax/tfds/<hash of data_dir>)
      eval_split="",              # "" = the dataset's test/validation split
      image_size=16,              # resize to this (0 = native size)
      crop_padding=2,             # on-device pad-and-crop augmentation (0 = off)
      random_flip=False,          # horizontal flip (not for digits), with the crop on the host
      random_resized_crop=False,  # host Inception-style crop (ImageNet); else eval-style resize
      augmentations=(),           # more registered augmentations, e.g. ("name(key=value)",)
      # Random erasing as torchvision's RandomErasing, on the device after normalisation
      erasing_prob=0.0, erasing_scale=(0.02, 0.33), erasing_ratio=(0.3, 3.3),
      erasing_value="0",          # "0" | "random" (normal noise per pixel)
      # Mixup/CutMix as timm's Mixup, on the device per replica's rows (0: off)
      mixup_alpha=0.0, cutmix_alpha=0.0,
      mix_prob=1.0,               # of mixing a batch (mix_mode=batch) or an image (elem)
      mix_switch_prob=0.5,        # of CutMix rather than Mixup when both are on
      mix_mode="batch",           # batch | elem
      eval_crop_ratio=1.0,        # <1: resize short side to size/ratio, center-crop (0.875 ImageNet)
      eval_crop=0,                # evaluation crop side (0: image_size), e.g. 224 after training at 176
      eval_resize=0,              # shorter side before that crop (0: eval_crop / eval_crop_ratio)
      repeated_augmentations=1,   # k > 1: each example k times an epoch, on different devices
      device_resident="auto",     # "auto" | "yes" | "no": keep the dataset on the devices
      max_device_bytes=2 * 1024**3,
      normalization="dataset",    # "dataset" mean/std, or "imagenet" (pretrained backbones)
      num_workers=0,              # host decoding processes (grain) for streamed datasets
      verify_images="auto",       # folder: decode every image before training: auto (folders of
                                  # at most 10,000 files) | yes | no (headers only)
      prepare_timeout_s=24 * 3600,  # multi-process: how long the others wait for process 0 to
                                    # prepare a tfds dataset (converting ImageNet takes hours)
  ))

  config.optim = ml_collections.ConfigDict(dict(
      name="sgd",                 # sgd | adamw | lars | lamb | a registered one | optax.<name>
      kwargs="",                  # optax.<name>'s arguments: "b1=0.95, eps=1e-6"
      learning_rate=0.1,
      lr_batch_base=0,            # > 0: learning_rate * batch_size / lr_batch_base
      momentum=0.9,
      nesterov=True,
      weight_decay=5e-4,
      decay_all=False,            # False: decay conv/dense kernels only
      schedule="cosine",          # constant | cosine | piecewise | onecycle
      warmup_epochs=1.0,
      warmup_start_factor=0.0,    # the warm-up starts at this fraction of the peak rate
      boundaries=(),              # ascending; schedule=piecewise only ...
      boundaries_unit="epochs",   # ... in "epochs" or "steps"
      decay_factor=0.1,           # in (0, 1]: the rate's factor at each boundary
      b1=0.9, b2=0.999, eps=1e-8,  # adamw
      trust_coefficient=0.001,    # lars
      loss="softmax_cross_entropy",  # | binary_cross_entropy(target_threshold=0.2) | yours
      accumulate_steps=1,         # micro-batches per update (train.batch_size is the whole)
      clip_norm=0.0,              # global-norm clipping (0 = off)
      flat_update=False,          # sgd/adamw over one vector per group of leaves, not per leaf
      label_smoothing=0.0,
      ema_decay=0.0,              # > 0: keep and evaluate an EMA of the weights
      ema_every_steps=1,          # update it at every N-th step of an epoch
      ema_adjust=False,           # torchvision's: decay adjusted to batch x N / epochs, copies
                                  # the weights until the warm-up's end
  ))

  config.train = ml_collections.ConfigDict(dict(
      batch_size=128,             # global, over all devices and processes
      eval_batch_size=512,
      num_epochs=30.0,
      num_steps=0,                # > 0 overrides num_epochs
      precision="float32",        # float32 | bfloat16 | float16 (dynamic loss scaling)
      runner="mesh",              # mesh (jit + shard_map) | pmap
      sync_batchnorm=True,        # average BN statistics over replicas in the forward pass
      # Replica means (gradients, BN statistics) with the same bits on any split of the same
      # devices over processes (2x2 = 1x4 = 4x1): gathers every replica's gradients, so it costs
      # their size times the device count in memory. Off: all-reduce, exact to float rounding.
      exact_reduction=False,
      log_every_steps=20,
      eval_every_epochs=5.0,      # also at the end
      checkpoint_every_steps=0,   # 0: at each evaluation and at the end
      keep_checkpoints=2,         # the latest K, plus the best by eval accuracy
      keep_best=True,
      async_checkpointing=True,
      on_nonfinite="auto",        # stop | skip (skip and count) | auto (skip for float16)
      loss_scale_period=2000,
      progress_bar="auto",        # auto (on a terminal) | yes | no
      # Resuming with another batch_size (and so learning rate, with optim.lr_batch_base) continues
      # the interrupted epoch from the example it stopped at, the schedule at the same epoch; the
      # length must be in epochs (num_steps=0). Another device count needs no flag.
      elastic=False,
      profile_steps="",           # "START,END": a trace of steps START..END-1 in WORKDIR/profile
  ))

  config.log = ml_collections.ConfigDict(dict(
      wandb="",                   # also log to this Weights & Biases project ("": only
                                  # metrics.jsonl and TensorBoard); pip install -e ".[wandb]"
  ))

  config.init = ml_collections.ConfigDict(dict(
      checkpoint="",              # start from: a converted model, a run folder, torchvision:resnet50
      head="replace",             # replace | keep the checkpoint's classifier
      freeze="none",              # none | stem | stage1 .. stage4 (and all before) | backbone
      backbone_lr_scale=1.0,      # learning-rate multiplier for the (unfrozen) backbone
  ))

  config.distributed = ml_collections.ConfigDict(dict(
      coordinator_address="",     # host:port of process 0; "" = single process or auto-detect
      num_processes=0,
      process_id=-1,
      # A process silent for half of this ends the others in one line naming it (exit 75); the
      # runtime ends them all after all of it.
      heartbeat_timeout_s=100,
  ))
  return config
