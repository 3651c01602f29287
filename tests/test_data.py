"""Datasets and pipelines: the digits builder, folders, mock tfds, order, sharding, exact eval,
host transforms and on-device augmentation."""

import os
import sys

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from resnet_jax import data
from resnet_jax.data import augment, sources, decode, digits, transforms
from resnet_jax.errors import InvalidInputError


def make_config(**overrides) -> ml_collections.ConfigDict:
  values = dict(name="digits", data_dir="", image_size=0, crop_padding=0, random_flip=False,
                random_resized_crop=False, eval_crop_ratio=1.0, device_resident="auto",
                max_device_bytes=2 * 1024**3, normalization="dataset", num_workers=0,
                verify_images="auto")
  values.update(overrides)
  return ml_collections.ConfigDict(values)


def pipeline_for(config, *, batch=64, eval_batch=100, seed=0, process_index=0, process_count=1,
                 dataset=None):
  return data.Pipeline(config, dataset or data.open(config), global_batch_size=batch,
                       eval_batch_size=eval_batch, seed=seed, process_index=process_index,
                       process_count=process_count)


def resident_rows(pipeline, steps):
  """The examples a device-resident run's train step reads at each of `steps`, [steps, batch]:
  `DeviceBatches._rows` on the eight devices, from the epoch's order that `train_feed` sends."""
  batches = pipeline.device_batches("batch")
  rows = jax.pmap(lambda order, step: batches._rows({"order": order}, step), axis_name="batch",
                  in_axes=(None, 0))
  return np.stack([np.asarray(rows(pipeline.epoch_order(step // pipeline.steps_per_epoch),
                                   np.full(jax.device_count(), step))).reshape(-1)
                   for step in steps])


def take(iterator, n):
  return [next(iterator) for _ in range(n)]


def assert_batches_equal(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    chex.assert_trees_all_equal(x, y)


def save(path, array, mode=None, fmt=None):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  image = Image.fromarray(array)
  (image.convert(mode) if mode else image).save(path, format=fmt)


def noise(shape, seed):
  return np.random.RandomState(seed).randint(0, 256, shape, np.uint8)


# The embedded digits dataset.
def test_digits_builder_prepares_without_tensorflow(tmp_path):
  from sklearn.datasets import load_digits
  builder = tfds.builder("digits", data_dir=str(tmp_path))
  builder.download_and_prepare(file_format="array_record")
  assert "tensorflow" not in sys.modules  # prepared and read with Pillow and array_record only
  assert str(builder.info.version) == "1.0.0"
  assert builder.info.features["label"].names == [str(i) for i in range(10)]
  train, test = builder.as_data_source("train"), builder.as_data_source("test")
  assert (len(train), len(test)) == (1438, 359)  # 80/20 of 1797, stratified
  records = [train[i] for i in range(len(train))] + [test[i] for i in range(len(test))]
  images = np.stack([r["image"] for r in records])
  assert images.shape == (1797, 8, 8, 1) and images.dtype == np.uint8 and images.max() == 255
  reference = load_digits()
  expected = np.round(reference.images * 255 / 16).astype(np.uint8)
  assert images.astype(np.int64).sum() == expected.astype(np.int64).sum()
  test_counts = np.bincount([r["label"] for r in records[len(train):]], minlength=10)
  all_counts = np.bincount(reference.target, minlength=10)
  np.testing.assert_allclose(test_counts / all_counts, 0.2, atol=0.01)
  # The split is a fixed function of the labels: the same on every machine.
  first, second = digits.split_indices(reference.target), digits.split_indices(reference.target)
  np.testing.assert_array_equal(first[0], second[0])
  assert not set(first[0]) & set(first[1]) and len(first[0]) + len(first[1]) == 1797


def test_opening_the_digits(tfds_dir):
  info = data.open(make_config(data_dir=tfds_dir)).info
  assert info.name == "digits" and info.num_classes == 10 and len(info.class_names) == 10
  assert info.image_shape == (8, 8, 1)
  assert (info.num_train, info.num_eval) == (1438, 359)
  assert len(info.mean) == len(info.std) == 1 and 50 < info.mean[0] < 110 and info.std[0] > 50
  assert data.open(make_config(data_dir=tfds_dir)).info == info  # deterministic statistics
  resized = data.open(make_config(data_dir=tfds_dir, image_size=16,
                                  normalization="imagenet")).info
  assert resized.image_shape == (16, 16, 1)
  np.testing.assert_allclose(resized.mean, [np.mean(sources.IMAGENET_MEAN)])
  np.testing.assert_allclose(resized.std, [np.mean(sources.IMAGENET_STD)])


# Image folders.
def test_grayscale_folder_has_one_channel(tmp_path):
  save(str(tmp_path / "train/b/one.png"), noise((6, 5), 0))
  save(str(tmp_path / "train/b/two.jpg"), noise((6, 5), 1), fmt="JPEG")
  save(str(tmp_path / "train/a/bilevel.png"), noise((6, 5), 2), mode="1")
  # A 16-bit PNG: its grey levels are scaled to 0..255, not clipped.
  save(str(tmp_path / "train/a/deep.png"), np.full((6, 5), 65535, np.uint16))
  save(str(tmp_path / "val/a/x.png"), noise((6, 5), 3))
  (tmp_path / "train/b/.DS_Store").write_bytes(b"hidden files are skipped")
  config = make_config(name=f"folder:{tmp_path}")
  info = data.open(config).info
  assert info.image_shape == (6, 5, 1) and info.class_names == ("a", "b")
  assert (info.num_train, info.num_eval) == (4, 1)
  pipeline = pipeline_for(config, batch=4, eval_batch=2)
  arrays = pipeline.arrays["train"]
  assert arrays["image"].shape == (4, 6, 5, 1)
  np.testing.assert_array_equal(arrays["label"], [0, 0, 1, 1])  # a/*, then b/*, sorted
  assert arrays["image"][1].min() == 255  # deep.png
  np.testing.assert_array_equal(arrays["image"][2, ..., 0], noise((6, 5), 0))


def test_mixed_folder_has_three_channels_and_needs_image_size(tmp_path):
  save(str(tmp_path / "train/cat/grey.png"), noise((10, 12), 0))
  save(str(tmp_path / "train/cat/rgba.png"), noise((9, 7, 4), 1))
  save(str(tmp_path / "train/dog/palette.png"), noise((8, 8, 3), 2), mode="P")
  save(str(tmp_path / "train/dog/cmyk.jpg"), noise((8, 8, 3), 3), mode="CMYK", fmt="JPEG")
  save(str(tmp_path / "test/dog/rgb.jpg"), noise((20, 16, 3), 4), fmt="JPEG")
  with pytest.raises(ValueError, match=r"different sizes.*--config.data.image_size=N"):
    data.open(make_config(name=f"folder:{tmp_path}"))
  config = make_config(name=f"folder:{tmp_path}", image_size=10, device_resident="no")
  info = data.open(config).info
  assert info.image_shape == (10, 10, 3) and info.class_names == ("cat", "dog")
  assert len(info.mean) == 3
  pipeline = pipeline_for(config, batch=2, eval_batch=2)
  assert not pipeline.device_resident
  batch = next(pipeline.train_batches(0))
  assert batch["image"].shape == (2, 10, 10, 3) and batch["image"].dtype == np.uint8
  (evaluation,) = list(pipeline.eval_batches())
  np.testing.assert_array_equal(evaluation["mask"], [True, False])
  np.testing.assert_array_equal(evaluation["label"], [1, 1])


def test_folder_jpegs_decode_to_pillows_pixels(tmp_path):
  # OpenCV decodes grey and colour JPEGs (faster); the pixels must be Pillow's, EXIF orientation
  # ignored as Pillow ignores it; other JPEGs (CMYK) and formats stay with Pillow.
  y, x = np.mgrid[0:37, 0:53]
  photo = np.stack([(x * 5 + y) % 256, (x * y) % 256, (y * 7) % 256], -1).astype(np.uint8)
  photo = np.clip(photo.astype(int) + noise(photo.shape, 0) // 8, 0, 255).astype(np.uint8)
  save(str(tmp_path / "train/a/subsampled.jpg"), photo, fmt="JPEG")
  Image.fromarray(photo).save(tmp_path / "train/a/full.jpg", quality=95, subsampling=0)
  exif = Image.Exif()
  exif[0x0112] = 6  # "rotate 90 degrees to display"
  Image.fromarray(photo).save(tmp_path / "train/a/rotated.jpg", exif=exif)
  save(str(tmp_path / "train/a/grey.jpg"), photo[..., 0], fmt="JPEG")
  save(str(tmp_path / "train/a/cmyk.jpg"), photo, mode="CMYK", fmt="JPEG")
  save(str(tmp_path / "train/a/plain.png"), photo)
  save(str(tmp_path / "train/b/other.png"), photo[::-1])  # a folder dataset has >= 2 classes
  source, _, _ = data.folder.open_folder(str(tmp_path), "train")
  assert len(source) == 7
  for index, path in enumerate(source.files):
    with Image.open(path) as image:
      expected = decode.to_uint8(image)
    chex.assert_trees_all_equal(source[index]["image"], expected)
  assert source[source.files.index(str(tmp_path / "train/a/rotated.jpg"))]["image"].shape == \
      (37, 53, 3)
  # A truncated JPEG, which OpenCV declines, still raises the error that names the file.
  path = tmp_path / "train/a/subsampled.jpg"
  path.write_bytes(path.read_bytes()[:-200])
  with pytest.raises(data.folder.ImageReadError, match="subsampled.jpg"):
    source[source.files.index(str(path))]


def test_folder_errors(tmp_path):
  (tmp_path / "empty/train").mkdir(parents=True)
  with pytest.raises(ValueError, match="no class subfolders"):
    data.open(make_config(name=f"folder:{tmp_path / 'empty'}"))
  (tmp_path / "empty/train/cat").mkdir()
  (tmp_path / "empty/train/dog").mkdir()
  (tmp_path / "empty/test/cat").mkdir(parents=True)
  with pytest.raises(ValueError, match="No images under .*empty/train"):
    data.open(make_config(name=f"folder:{tmp_path / 'empty'}"))
  with pytest.raises(ValueError, match="does not exist"):
    data.open(make_config(name=f"folder:{tmp_path / 'missing'}"))
  bad = tmp_path / "bad"
  for split in ("train", "test"):
    for label in ("cat", "dog"):
      save(str(bad / f"{split}/{label}/ok.png"), noise((8, 8, 3), 0))
  (bad / "train/cat/notes.jpg").write_bytes(b"not an image")
  with pytest.raises(ValueError, match="Cannot read image .*notes.jpg"):
    data.open(make_config(name=f"folder:{bad}"))
  os.remove(bad / "train/cat/notes.jpg")
  save(str(bad / "test/bird/x.png"), noise((8, 8, 3), 0))
  with pytest.raises(ValueError, match=r"\['bird'\].*train lacks"):
    data.open(make_config(name=f"folder:{bad}"))
  os.remove(bad / "test/bird/x.png")
  os.rmdir(bad / "test/bird")
  # A file whose header reads but whose pixels do not: named when its pixels are decoded, before
  # training when the folder is verified (data.verify_images: auto for small folders), else by
  # the first batch that reads it (imagenet statistics need no pass over the images).
  save(str(bad / "train/cat/zz.png"), noise((8, 8, 3), 1))
  raw = (bad / "train/cat/zz.png").read_bytes()
  (bad / "train/cat/zz.png").write_bytes(raw[:len(raw) // 2])
  config = make_config(name=f"folder:{bad}", device_resident="no", normalization="imagenet",
                       verify_images="no")
  pipeline = pipeline_for(config, batch=2, eval_batch=2)
  batches = pipeline.train_batches(0)
  with pytest.raises(ValueError, match="Cannot read image .*zz.png"):
    for _ in range(10):  # 2 of the 3 training images per step
      next(batches)
  for verify in ("auto", "yes"):
    config.verify_images = verify
    with pytest.raises(ValueError, match="Cannot read image .*zz.png"):
      data.open(config)
  config.update(normalization="dataset", verify_images="no")
  with pytest.raises(ValueError, match="Cannot read image .*zz.png"):
    data.open(config)


# tfds datasets through the same pipeline, without TensorFlow.
def test_mock_cifar10_through_the_pipeline(tmp_path):
  config = make_config(name="cifar10", data_dir=str(tmp_path), device_resident="no")
  with tfds.testing.mock_data(num_examples=40):
    dataset = data.open(config)
    info = dataset.info
    assert info.image_shape == (32, 32, 3) and info.num_classes == 10
    assert (info.num_train, info.num_eval) == (40, 40)
    assert info.mean == sources.SOURCES["cifar10"].spec.mean
    pipeline = pipeline_for(config, dataset=dataset, batch=16, eval_batch=24)
    batch = next(pipeline.train_batches(0))
    assert batch["image"].shape == (16, 32, 32, 3) and batch["label"].dtype == np.int32
    evaluation = list(pipeline.eval_batches())
    assert sum(int(b["mask"].sum()) for b in evaluation) == 40
    config.device_resident = "yes"
    resident = pipeline_for(config, dataset=dataset, batch=16, eval_batch=24)
    assert resident.arrays["train"]["image"].shape == (40, 32, 32, 3)
    np.testing.assert_array_equal(
        resident.arrays["train"]["image"][resident_rows(resident, [0])[0]], batch["image"])
  assert "tensorflow" not in sys.modules


def test_errors_for_unknown_names_missing_downloads_and_missing_tensorflow(tmp_path):
  with pytest.raises(ValueError, match=r"Unknown dataset 'cifar11'.*cifar10.*digits.*folder:DIR"):
    data.open(make_config(name="cifar11"))
  with pytest.raises(FileNotFoundError,
                     match="ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar.*"
                     f"{tmp_path}/downloads/manual"):
    data.open(make_config(name="imagenet2012", data_dir=str(tmp_path)))
  if "tensorflow" not in sys.modules:
    with pytest.raises(ImportError, match=r'needs TensorFlow.*pip install -e "\.\[prepare\]"'):
      data.open(make_config(name="cifar10", data_dir=str(tmp_path)))
  with pytest.raises(ValueError, match="normalization"):
    data.open(make_config(normalization="per_image"))


# Order: a pure function of (seed, epoch, step), sharded over processes.
def test_training_order_is_deterministic_and_resumable(tfds_dir):
  resident = pipeline_for(make_config(data_dir=tfds_dir))
  steps_per_epoch = resident.steps_per_epoch
  assert resident.device_resident and steps_per_epoch == 1438 // 64
  steps = steps_per_epoch + 2  # into the second epoch
  rows = resident_rows(resident, range(steps))
  first_epoch = rows[:steps_per_epoch].reshape(-1)
  assert len(set(first_epoch)) == len(first_epoch)  # without replacement within an epoch
  np.testing.assert_array_equal(first_epoch, np.random.default_rng([0, 0]).permutation(1438)[
      :len(first_epoch)])
  assert not np.array_equal(resident.epoch_order(0), resident.epoch_order(1))
  np.testing.assert_array_equal(rows[steps_per_epoch:].reshape(-1),
                                resident.epoch_order(1)[:2 * 64])
  other_seed = pipeline_for(make_config(data_dir=tfds_dir), seed=1)
  assert not np.array_equal(resident_rows(other_seed, [0]), rows[:1])
  # The host-fed pipeline reads the same examples at every step, from any start.
  host = make_config(data_dir=tfds_dir, device_resident="no")
  full = take(pipeline_for(host).train_batches(0), steps)
  for batch, step_rows in zip(full, rows):
    np.testing.assert_array_equal(batch["label"], resident.arrays["train"]["label"][step_rows])
    np.testing.assert_array_equal(batch["image"], resident.arrays["train"]["image"][step_rows])
  assert_batches_equal(full, take(pipeline_for(host).train_batches(0), steps))
  assert_batches_equal(full[7:], take(pipeline_for(host).train_batches(7), steps - 7))


def test_processes_share_each_global_batch(tfds_dir):
  for mode in ("yes", "no"):
    config = make_config(data_dir=tfds_dir, device_resident=mode)
    whole = pipeline_for(config)
    parts = [pipeline_for(config, process_index=p, process_count=2) for p in range(2)]
    if mode == "no":  # resident processes each slice their devices' rows (DeviceBatches)
      start = whole.steps_per_epoch - 1  # across an epoch boundary
      expected = take(whole.train_batches(start), 2)
      shares = [take(p.train_batches(start), 2) for p in parts]
      for step in range(2):
        chex.assert_trees_all_equal(expected[step], jax.tree.map(
            lambda *x: np.concatenate(x), *[s[step] for s in shares]))
    for a, b, c in zip(whole.eval_batches(), *[p.eval_batches() for p in parts]):
      chex.assert_trees_all_equal(a, jax.tree.map(lambda *x: np.concatenate(x), b, c))
  with pytest.raises(ValueError, match="multiple of the process count"):
    pipeline_for(config, batch=63, process_count=2)


def test_eval_is_exact_and_padded_at_the_end(tfds_dir):
  config = make_config(data_dir=tfds_dir)
  pipeline = pipeline_for(config, eval_batch=100)
  assert pipeline.num_eval_batches == 4  # 359 examples: 3 full batches and 59 + 41 padding
  batches = list(pipeline.eval_batches())
  assert len(batches) == 4
  mask = np.concatenate([b["mask"] for b in batches])
  index = np.concatenate([b["index"] for b in batches])
  assert mask.sum() == 359 and mask[:359].all() and not mask[359:].any()
  np.testing.assert_array_equal(index[mask], np.arange(359))
  assert (index[~mask] == 0).all()
  host = pipeline_for(make_config(data_dir=tfds_dir, device_resident="no"), eval_batch=100)
  host_batches = list(host.eval_batches())
  labels = np.concatenate([b["label"][b["mask"]] for b in host_batches])
  np.testing.assert_array_equal(labels, pipeline.arrays["eval"]["label"])
  images = np.concatenate([b["image"][b["mask"]] for b in host_batches])
  np.testing.assert_array_equal(images, pipeline.arrays["eval"]["image"])


def test_device_residency_choice(tfds_dir):
  assert pipeline_for(make_config(data_dir=tfds_dir)).device_resident
  assert not pipeline_for(make_config(data_dir=tfds_dir, max_device_bytes=1000)).device_resident
  crop = make_config(data_dir=tfds_dir, random_resized_crop=True, image_size=8)
  assert not pipeline_for(crop).device_resident
  crop.device_resident = "yes"
  with pytest.raises(ValueError, match="random_resized_crop"):
    pipeline_for(crop)
  with pytest.raises(ValueError, match="exceeds the 1438 training examples"):
    pipeline_for(make_config(data_dir=tfds_dir), batch=2048).check_steps()


def test_host_batches_match_resident_arrays_and_do_not_depend_on_workers(tfds_dir):
  resident = pipeline_for(make_config(data_dir=tfds_dir, image_size=12))
  host = make_config(data_dir=tfds_dir, image_size=12, device_resident="no")
  serial = take(pipeline_for(host).train_batches(5), 3)
  for batch, rows in zip(serial, resident_rows(resident, range(5, 8))):
    np.testing.assert_array_equal(batch["image"], resident.arrays["train"]["image"][rows])
    np.testing.assert_array_equal(batch["label"], resident.arrays["train"]["label"][rows])
  # Inception crops: randomness from (seed, position), so worker processes change nothing.
  crop = make_config(data_dir=tfds_dir, image_size=12, random_resized_crop=True,
                     random_flip=True)
  serial = take(pipeline_for(crop).train_batches(5), 4)
  crop.num_workers = 2
  parallel = take(pipeline_for(crop).train_batches(5), 4)
  assert_batches_equal(serial, parallel)
  assert serial[0]["image"].shape == (64, 12, 12, 1)
  assert not np.array_equal(serial[0]["image"], resident.arrays["train"]["image"][
      resident_rows(resident, [5])[0]])


# Host transforms.
def test_eval_transform_sizes_and_channels():
  image = noise((300, 400, 3), 0)
  plain = data.eval_transform(image, image_size=224, channels=3, crop_ratio=1.0)
  assert plain.shape == (224, 224, 3) and plain.dtype == np.uint8
  expected = np.asarray(Image.fromarray(image).resize((224, 224), Image.Resampling.BILINEAR))
  np.testing.assert_array_equal(plain, expected)
  cropped = data.eval_transform(image, image_size=224, channels=3, crop_ratio=0.875)
  resized = Image.fromarray(image).resize((341, 256), Image.Resampling.BILINEAR)  # short -> 256
  np.testing.assert_array_equal(cropped, np.asarray(resized)[16:240, 58:282])
  grey = data.eval_transform(image, image_size=0, channels=1, crop_ratio=1.0)
  assert grey.shape == (300, 400, 1)
  np.testing.assert_array_equal(grey[..., 0], np.asarray(Image.fromarray(image).convert("L")))
  colour = data.eval_transform(grey, image_size=8, channels=3, crop_ratio=0.875)
  assert colour.shape == (8, 8, 3)
  np.testing.assert_array_equal(colour[..., 0], colour[..., 2])
  with pytest.raises(ValueError, match="crop_ratio"):
    data.eval_transform(image, image_size=8, channels=3, crop_ratio=1.5)


def test_random_resized_crop_follows_torchvision():
  image = noise((40, 60, 3), 0)
  a = transforms.random_resized_crop(image, np.random.default_rng(1), size=(16, 16), channels=3,
                                     random_flip=True)
  b = transforms.random_resized_crop(image, np.random.default_rng(1), size=(16, 16), channels=3,
                                     random_flip=True)
  assert a.shape == (16, 16, 3) and a.dtype == np.uint8
  np.testing.assert_array_equal(a, b)
  for seed in range(50):
    left, top, w, h = transforms.crop_box(60, 40, np.random.default_rng(seed))
    assert 0 <= left and left + w <= 60 and 0 <= top and top + h <= 40
    assert 0.08 * 2400 * 0.8 <= w * h <= 2400 and 0.7 < w / h < 1.45
  # Impossible areas fall back to the central crop at the nearest allowed aspect ratio.
  assert transforms.crop_box(100, 10, np.random.default_rng(0), scale=(2, 3)) == (43, 0, 13, 10)
  assert transforms.crop_box(30, 30, np.random.default_rng(0), scale=(2, 3)) == (0, 0, 30, 30)
  whole = transforms.random_resized_crop(image, np.random.default_rng(0), size=(40, 60),
                                         channels=3, random_flip=False, scale=(1, 1),
                                         ratio=(1.5, 1.5))
  np.testing.assert_array_equal(whole, image)


# On-device augmentation.
def device_stage(*items):
  return augment.plan(items).device


def test_augment_on_device():
  images = jnp.asarray(noise((64, 6, 5, 3), 0))
  keys = jax.random.split(jax.random.key(0), 64)
  assert augment.apply_on_device(images, keys, ()) is images
  apply = jax.jit(augment.apply_on_device, static_argnums=2)
  flipped = np.asarray(apply(images, keys, device_stage(("flip", {}))))
  is_flipped = [np.array_equal(f, i[:, ::-1]) for f, i in zip(flipped, np.asarray(images))]
  is_same = [np.array_equal(f, i) for f, i in zip(flipped, np.asarray(images))]
  assert all(f != s for f, s in zip(is_flipped, is_same)) and 10 < sum(is_flipped) < 54
  p = 2
  cropped = np.asarray(apply(images, keys, device_stage(("pad_crop", {"padding": p}))))
  assert cropped.shape == images.shape and cropped.dtype == np.uint8
  padded = np.pad(np.asarray(images), ((0, 0), (p, p), (p, p), (0, 0)))
  shifts = []
  for out, pad in zip(cropped, padded):
    matches = [(dy, dx) for dy in range(2 * p + 1) for dx in range(2 * p + 1)
               if np.array_equal(out, pad[dy:dy + 6, dx:dx + 5])]
    assert matches, "every crop is a shifted copy of the zero-padded image"
    shifts.append(matches[0])
  assert len(set(shifts)) > 10 and any(s != (p, p) for s in shifts)
  # Each example's key decides its augmentation, whatever else is in the batch.
  both = device_stage(("pad_crop", {"padding": p}), ("flip", {}))
  np.testing.assert_array_equal(apply(images, keys, both)[:8], apply(images[:8], keys[:8], both))


def test_augmentations_run_where_the_plan_puts_them():
  names = lambda stage: [aug.name for aug, _ in stage]
  plan = augment.plan([("random_resized_crop", {}), ("flip", {})])  # ImageNet: both on the host
  assert names(plan.host) == ["random_resized_crop", "flip"] and not plan.device
  plan = augment.plan([("random_resized_crop", {}), ("pad_crop", {"padding": 2}), ("flip", {})])
  assert names(plan.host) == ["random_resized_crop"] and names(plan.device) == ["pad_crop", "flip"]
  plan = augment.plan([("pad_crop", {"padding": 2}), ("flip", {})])  # CIFAR: all on the device
  assert not plan.host and names(plan.device) == ["pad_crop", "flip"]
  with pytest.raises(ValueError, match="random_resized_crop decides the image size, so it must "
                                       "come first"):
    augment.plan([("flip", {}), ("random_resized_crop", {})])
  with pytest.raises(ValueError, match=r"Unknown data.augmentations 'cutout'; valid names: "
                                       r"auto_augment, flip, .*pad_crop, .*random_resized_crop"):
    augment.plan([("cutout", {})])
  config = make_config(random_flip=True, crop_padding=4, augmentations=("flip(p=1)",))
  assert augment.requested(config) == [("pad_crop", {"padding": 4}), ("flip", {}),
                                       ("flip", {"p": 1})]


@pytest.mark.parametrize("spec,expected", [
    ("flip", ("flip", {})), (" flip ", ("flip", {})), ("flip()", ("flip", {})),
    ("flip( )", ("flip", {})), ("flip(p=1)  ", ("flip", {"p": 1})),
    ("pad_crop(padding=4,)", ("pad_crop", {"padding": 4})),
    ("cutout(size=-1, fill=(0, 0, 0), mode='a,b', p=None, on=True)",
     ("cutout", {"size": -1, "fill": (0, 0, 0), "mode": "a,b", "p": None, "on": True})),
    ("my-aug(p=')')", ("my-aug", {"p": ")"})),  # the name is whatever stands before "("
    ("(p=1)", ("", {"p": 1})),  # left to the registry, which refuses the name ''
])
def test_an_augmentation_entry_is_a_name_or_a_call_with_literal_keywords(spec, expected):
  assert augment.requested(make_config(augmentations=(spec,))) == [expected]


@pytest.mark.parametrize("spec,message", [
    ("flip(0.5)", "data.augmentations entry 'flip(0.5)': '0.5' is not name=value with a Python "
                  "literal value (e.g. flip or pad_crop(padding=4))."),
    ("flip(p=x)", "'p=x' is not name=value"), ("flip(*a)", "'*a' is not name=value"),
    ("flip(**{'p': 1})", "\"**{'p': 1}\" is not name=value"),
    ("flip(p={[1]: 1})", "'p={[1]: 1}' is not name=value"),
    ("flip(p=1) or f(q=2)", "'p=1) or f(q=2' is not name=value"),
    ("flip(", "data.augmentations entry 'flip(' is not name or name(key=value, ...); e.g. flip "
              "or pad_crop(padding=4)."),
    ("flip(p=1", "entry 'flip(p=1' is not name or name(key=value, ...)"),
    ("flip(p=1) x", "entry 'flip(p=1) x' is not name or name(key=value, ...)"),
])
def test_an_augmentation_entry_that_is_not_a_call_with_literal_keywords_is_refused(spec, message):
  with pytest.raises(InvalidInputError) as refused:
    augment.requested(make_config(augmentations=(spec,)))
  assert message in str(refused.value) and "\n" not in str(refused.value)


def test_normalize():
  images = jnp.asarray(noise((2, 4, 4, 3), 0))
  out = augment.normalize(images, (10.0, 20.0, 30.0), (2.0, 4.0, 8.0), jnp.bfloat16)
  assert out.dtype == jnp.bfloat16
  expected = (np.asarray(images, np.float32) - [10, 20, 30]) / [2, 4, 8]
  np.testing.assert_allclose(np.asarray(out, np.float32), expected, rtol=1e-2)


def test_folders_with_fewer_than_two_classes_or_an_empty_class_are_refused(tmp_path):
  for split in ("train", "test"):
    save(str(tmp_path / f"{split}/cat/a.png"), noise((8, 8, 3), 0))
  with pytest.raises(ValueError, match=r"train has one class folder \(cat\); a classifier needs "
                                       r"at least two"):
    data.open(make_config(name=f"folder:{tmp_path}"))
  (tmp_path / "train/dog").mkdir()  # empty: a class that no example would show
  (tmp_path / "train/dog/.hidden").write_bytes(b"")
  with pytest.raises(ValueError, match=r"train/dog has no images; remove that folder or add its "
                                       r"images"):
    data.open(make_config(name=f"folder:{tmp_path}"))


def test_unreadable_and_oversized_images_are_named_before_training(tmp_path, monkeypatch):
  for split in ("train", "test"):
    for label in ("cat", "dog"):
      save(str(tmp_path / f"{split}/{label}/ok.png"), noise((8, 8, 3), 0))
  save(str(tmp_path / "train/cat/big.png"), noise((40, 40, 3), 1))
  (tmp_path / "train/dog/notes.jpg").write_bytes(b"not an image")
  # Pillow refuses images of more than 2 x MAX_IMAGE_PIXELS pixels (its decompression-bomb
  # guard), here lowered so that a 40x40 image stands for a 15000x15000 one.
  monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)
  config = make_config(name=f"folder:{tmp_path}", image_size=8)
  with pytest.raises(decode.ImageReadError,
                     match=r"Cannot read 2 of 4 images: .*big.png: DecompressionBombError.*; "
                           r".*notes.jpg: UnidentifiedImageError"):
    data.open(config)
  os.remove(tmp_path / "train/dog/notes.jpg")
  config.verify_images = "no"  # headers only: the guard still names the file
  with pytest.raises(decode.ImageReadError, match=r"Cannot read image .*big.png"):
    data.open(config)
