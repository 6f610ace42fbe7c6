"""Data sources and pipeline: subsets, label masks, resumable order, bad inputs."""

import os
import re
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from conftest import SHARED_DATA
from tfgan_eff.data import Arrays, Digits, ImageData, ImageFolder, label_mask, subset_indices


def test_data_fraction_is_exact_and_deterministic():
  a = subset_indices(1000, 0.1, seed=3)
  assert len(a) == 100 and len(set(a)) == 100
  np.testing.assert_array_equal(a, subset_indices(1000, 0.1, seed=3))
  assert not np.array_equal(a, subset_indices(1000, 0.1, seed=4))
  assert len(subset_indices(1000, count=37, seed=0)) == 37


def test_class_balanced_subset_keeps_each_class_share_exactly():
  labels = np.repeat(np.arange(10), [100, 90, 110, 100, 100, 100, 100, 100, 100, 100])
  keep = subset_indices(len(labels), count=100, seed=0, labels=labels)
  assert len(keep) == 100 and len(set(keep)) == 100
  counts = np.bincount(labels[keep], minlength=10)
  assert counts.sum() == 100 and counts.min() >= 9 and counts.max() <= 11
  np.testing.assert_array_equal(counts[3:], [10] * 7)
  np.testing.assert_array_equal(keep, subset_indices(len(labels), count=100, seed=0,
                                                     labels=labels))
  assert not np.array_equal(keep, subset_indices(len(labels), count=100, seed=1,
                                                 labels=labels))
  with pytest.raises(ValueError, match="class_balanced"):
    subset_indices(4, count=2, labels=np.array([0, 1, -1, 1]))


def test_image_data_class_balanced_subset_of_digits():
  d = ImageData(Digits(), resolution=8, num_images=50, class_balanced=True)
  np.testing.assert_array_equal(np.bincount(d.true_labels, minlength=10), [5] * 10)
  assert len(d.source_indices) == 50 and "balanced" in d.name
  src = Digits()
  np.testing.assert_array_equal(d.images[:, :, :, 0], src.images[d.source_indices, :, :, 0])


def test_label_fraction_is_class_balanced_and_deterministic():
  labels = np.repeat(np.arange(10), 100)
  keep = label_mask(labels, 0.1, seed=1)
  assert keep.sum() == 100
  np.testing.assert_array_equal(np.bincount(labels[keep], minlength=10), [10] * 10)
  np.testing.assert_array_equal(keep, label_mask(labels, 0.1, seed=1))
  assert not np.array_equal(keep, label_mask(labels, 0.1, seed=2))


def test_image_data_counts_and_range(tmp_path):
  images = np.random.RandomState(0).randint(0, 256, (200, 8, 8, 1)).astype(np.uint8)
  np.savez(tmp_path / "a.npz", images=images, labels=np.arange(200) % 10)
  d = ImageData(Arrays(str(tmp_path / "a.npz")), resolution=8, data_fraction=0.5,
                label_fraction=0.2)
  assert d.num_examples == 100 and d.images.shape == (100, 8, 8, 1)
  assert d.num_labelled == int((d.labels >= 0).sum())
  assert set(np.unique(d.true_labels[d.labels >= 0])) <= set(range(10))
  batch = next(iter(d.dataset_fn(16)(None)))
  assert batch["images"].shape == (16, 8, 8, 1)
  assert -1.0 <= float(tf.reduce_min(batch["images"])) <= float(tf.reduce_max(
      batch["images"])) <= 1.0


def test_stream_resumes_exactly_and_flips_are_per_sample():
  d = ImageData(Digits(), resolution=32, num_images=50, random_flip=True, seed=5)
  it = iter(d.dataset_fn(8)(None))
  batches = [next(it)["images"].numpy() for _ in range(9)]  # crosses an epoch (50 images)
  resumed = iter(d.dataset_fn(8, start_sample=40)(None))
  for i in range(5, 9):
    np.testing.assert_array_equal(next(resumed)["images"], batches[i])
  # each epoch is a permutation of the 50 images
  seen = np.concatenate(batches)[:48]
  assert len({x.tobytes() for x in seen}) >= 45


def test_mnist_idx_from_shared_data():
  path = os.path.join(SHARED_DATA, "mnist", "t10k-images-idx3-ubyte.gz")
  if not os.path.exists(path):
    pytest.skip(f"real MNIST not found at {path}")
  src = Arrays(path)
  assert len(src) == 10000 and src.num_classes == 10
  np.testing.assert_array_equal(np.bincount(src.labels),
                                [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009])
  d = ImageData(src, resolution=32, data_fraction=0.1, label_fraction=0.1)
  assert d.num_examples == 1000
  assert abs(d.num_labelled - 100) <= 5  # per-class rounding of an unbalanced subset


def test_image_folder_grayscale_rgb_rgba_and_labels(tmp_path):
  for cls, channels in (("a", 1), ("b", 3), ("c", 4)):
    os.makedirs(tmp_path / cls)
    img = np.random.RandomState(0).randint(0, 255, (20, 30, channels)).astype(np.uint8)
    tf.io.write_file(str(tmp_path / cls / "x.png"), tf.io.encode_png(img))
  src = ImageFolder(str(tmp_path), labels_from_subfolders=True)
  assert src.num_classes == 3 and sorted(src.labels.tolist()) == [0, 1, 2]
  d = ImageData(src, resolution=16, channels=3)
  assert d.images.shape == (3, 16, 16, 3)


def test_missing_folder(tmp_path):
  with pytest.raises(FileNotFoundError, match="does not exist.*ImageFolder.path"):
    ImageFolder(str(tmp_path / "nope"))


def test_empty_folder(tmp_path):
  with pytest.raises(ValueError, match="contains no images"):
    ImageFolder(str(tmp_path))


def test_corrupt_image_names_the_file(tmp_path):
  (tmp_path / "bad.png").write_bytes(b"this is not a png")
  src = ImageFolder(str(tmp_path))
  with pytest.raises(ValueError, match="(?s)bad.png: Unknown image file format.*Remove or re-save"):
    ImageData(src, resolution=8)


def test_every_undecodable_image_is_named_at_once_or_skipped(tmp_path):
  for i in range(2):
    tf.io.write_file(str(tmp_path / f"good{i}.png"),
                     tf.io.encode_png(tf.fill([8, 8, 3], tf.constant(40 * i, tf.uint8))))
  (tmp_path / "bad1.png").write_bytes(b"not a png")
  (tmp_path / "bad2.jpg").write_bytes(b"\xff\xd8 truncated jpeg")
  with pytest.raises(ValueError, match=r"(?s)2 image file\(s\).*bad1.png.*bad2.jpg.*on_error"):
    ImageData(ImageFolder(str(tmp_path)), resolution=8)
  src = ImageFolder(str(tmp_path), on_error="skip")
  assert len(src) == 2 and all("good" in f for f in src.files)
  assert ImageData(src, resolution=8).images.shape == (2, 8, 8, 3)


def test_bad_resolution_and_fraction():
  with pytest.raises(ValueError, match="power of two"):
    ImageData(Digits(), resolution=30)
  with pytest.raises(ValueError, match="data_fraction"):
    subset_indices(10, 1.5)


def test_classes_keep_only_those_classes_relabelled_before_the_subset():
  src = Digits()
  data = ImageData(src, resolution=8, channels=1, classes=[9, 3], num_images=25)
  assert data.num_classes == 2 and data.num_examples == 25
  assert set(data.true_labels.tolist()) == {0, 1}  # 9 -> 0, 3 -> 1
  nines = ImageData(src, resolution=8, channels=1, classes=[9])
  assert nines.num_examples == int((src.labels == 9).sum())
  nine_set = {x.tobytes() for x in nines.images}
  assert all(x.tobytes() in nine_set for x in data.images[data.true_labels == 0])
  with pytest.raises(ValueError, match="classes"):
    ImageData(src, resolution=8, classes=[10])


# -- image folders streamed through tf.data (parallel decode, file cache) --------------------

def _jpeg_folder(path, n=40):
  """n JPEGs of about 64 px: square and not, RGB and grayscale, smooth content (as photos)."""
  rng = np.random.default_rng(0)
  os.makedirs(path, exist_ok=True)
  for i in range(n):
    h, w = (64, 64) if i % 3 else (48 + i % 5, 64)
    coarse = rng.integers(0, 256, (8, 8, 1 if i % 4 == 1 else 3)).astype(np.float32)
    x = tf.cast(tf.image.resize(coarse, [h, w], method="bicubic"), tf.uint8)
    tf.io.write_file(os.path.join(path, f"{i:02d}.jpg"), tf.io.encode_jpeg(x, quality=90))
  return str(path)


def _streamed_images(data):
  return np.concatenate(list(data.eval_batches(16)))


@pytest.mark.parametrize("channels", [3, 1])
def test_streamed_folder_has_the_pixels_of_the_in_memory_one(tmp_path, channels):
  # Both read files with the one decoder (`sources._decode_op`) and `_prepare_tf` repeats the
  # in-memory preparation op for op (RGB<->gray, crop, antialiased resize, rounding), so the
  # pixels are equal, not close. An RGBA PNG and a gray + alpha one ride along.
  folder = _jpeg_folder(tmp_path / "img")
  rng = np.random.default_rng(1)
  for name, c in (("rgba", 4), ("gray_alpha", 2)):
    x = tf.image.resize(rng.integers(0, 256, (6, 6, c)).astype(np.float32), [40, 56])
    tf.io.write_file(os.path.join(folder, f"{name}.png"), tf.io.encode_png(tf.cast(x, tf.uint8)))
  src = ImageFolder(folder)
  memory = ImageData(src, resolution=32, channels=channels)
  streamed = ImageData(src, resolution=32, channels=channels, max_in_memory_mb=0,
                       shuffle_buffer=64)
  assert memory.in_memory and not streamed.in_memory
  assert memory.images.shape == (42, 32, 32, channels)
  np.testing.assert_array_equal(_streamed_images(streamed), memory.images)
  # The training stream serves those images, shuffled (over a buffer of many epochs).
  stream = iter(streamed.dataset_fn(7)(None))
  served = np.concatenate([np.round((next(stream)["images"].numpy() + 1) * 127.5)
                           for _ in range(6)]).astype(np.uint8)
  known = {x.tobytes() for x in memory.images}
  assert all(x.tobytes() in known for x in served)
  assert len({x.tobytes() for x in served}) >= 20  # 42 draws from 42 images: ~27 distinct


def test_file_cache_serves_the_same_images_every_epoch_and_run(tmp_path):
  folder = _jpeg_folder(tmp_path / "img")
  cache = tmp_path / "cache"
  memory = ImageData(ImageFolder(folder), resolution=32)
  data = ImageData(ImageFolder(folder), resolution=32, max_in_memory_mb=0, cache_dir=str(cache))
  assert data.cache_built and data.cache_path.startswith(str(cache))
  assert len(os.listdir(cache)) == 1  # the finished cache, no temporary folder left
  epochs = list(data._stream_examples().repeat(2).map(lambda x, y, t: x).batch(40)
                .as_numpy_iterator())
  np.testing.assert_array_equal(epochs[0], memory.images)
  np.testing.assert_array_equal(epochs[1], epochs[0])
  again = ImageData(ImageFolder(folder), resolution=32, max_in_memory_mb=0, cache_dir=str(cache))
  assert not again.cache_built and again.cache_path == data.cache_path  # found, not rebuilt
  # Overwritten files: the cache still serves what it holds (no file is read), and a new
  # ImageData sees new files (their size / time changed the key) and caches them apart.
  for name in os.listdir(folder):
    tf.io.write_file(os.path.join(folder, name),
                     tf.io.encode_jpeg(tf.fill([64, 64, 3], tf.constant(7, tf.uint8))))
  np.testing.assert_array_equal(_streamed_images(data), memory.images)
  fresh = ImageData(ImageFolder(folder), resolution=32, max_in_memory_mb=0, cache_dir=str(cache))
  assert fresh.cache_built and len(os.listdir(cache)) == 2
  assert np.abs(_streamed_images(fresh).astype(int) - 7).max() <= 2  # JPEG of a flat 7


def test_unusable_cache_dir_fails_first_with_the_fix(tmp_path):
  (tmp_path / "bad.jpg").write_bytes(b"not a jpeg")  # decoding anything would fail otherwise
  (tmp_path / "file").write_text("x")
  with pytest.raises(ValueError, match=r"cache_dir '.*file/sub' cannot be used: Not a "
                                       r"directory.*ImageData.cache_dir = None"):
    ImageData(ImageFolder(str(tmp_path)), resolution=8, cache_dir=str(tmp_path / "file" / "sub"))


@pytest.mark.parametrize("bad", ["07.jpg", "39.jpg"])
def test_streamed_folder_names_an_undecodable_file(tmp_path, bad):
  folder = _jpeg_folder(tmp_path / "img")
  (tmp_path / "img" / bad).write_bytes(b"\xff\xd8 truncated jpeg")  # in the middle, or last
  data = ImageData(ImageFolder(folder), resolution=32, max_in_memory_mb=0)
  with pytest.raises(tf.errors.InvalidArgumentError,
                     match=f"Could not decode image file.*{bad}.*on_error to skip"):
    _streamed_images(data)
  with pytest.raises(tf.errors.InvalidArgumentError, match=bad):  # no half-written cache
    ImageData(ImageFolder(folder), resolution=32, max_in_memory_mb=0,
              cache_dir=str(tmp_path / "cache"))
  assert os.listdir(tmp_path / "cache") == []
  skipped = ImageData(ImageFolder(folder, on_error="skip"), resolution=32, max_in_memory_mb=0)
  assert len(_streamed_images(skipped)) == 39


def test_image_folder_take_decodes_only_those_files(tmp_path):
  folder = _jpeg_folder(tmp_path / "img", n=4)
  for i in (0, 2):  # decoding these would raise
    (tmp_path / "img" / f"{i:02d}.jpg").write_bytes(b"junk")
  src = ImageFolder(folder)
  taken = list(src.take([1, 3]))
  assert len(taken) == 2
  np.testing.assert_array_equal(taken[1][0], tf.io.decode_jpeg(tf.io.read_file(src.files[3])))
  with pytest.raises(ValueError, match=r"(?s)2 image file\(s\).*00.jpg.*02.jpg"):
    list(src)


def test_benchmark_data_only_end_to_end(tmp_path):
  folder = _jpeg_folder(tmp_path / "img")
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  out = subprocess.run(
      [sys.executable, "bin/benchmark", "--data_only",
       "--gin_file=gin/stylegan2/stylegan2_ffhq256_ada.gin", f"--gin_param=DATA_DIR='{folder}'",
       "--gin_param=RESOLUTION=32", "--gin_param=Trainer.batch_size=8",
       "--gin_param=ImageData.max_in_memory_mb=0", "--gin_param=ImageData.shuffle_buffer=16",
       f"--gin_param=ImageData.cache_dir='{tmp_path / 'cache'}'",
       "--warmup=1", "--rounds=2", "--steps=3", "--step_seconds=2"],
      cwd=root, capture_output=True, text=True, timeout=120,
      env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
  assert out.returncode == 0, out.stderr[-2000:]
  text = out.stdout
  assert "~40 images, 32x32x3; streamed from the file cache" in text
  assert "load average (1/5/15 min)" in text and "CPU cores" in text
  med = float(re.search(r"images/s delivered: median ([\d.]+) \(min ([\d.]+), max ([\d.]+)\)",
                        text).group(1))
  assert med > 0
  # the step of that config: (disc_iters 1 + 1) x 8 = 16 images in 2 s: 8 images/s needed
  assert "(disc_iters 1 + 1) x batch 8 = 16 real images" in text
  ratio = float(re.search(r"= 8.00 images/s; the pipeline delivers ([\d.]+)x", text).group(1))
  assert ratio == pytest.approx(med / 8, abs=0.06)
  assert len(os.listdir(tmp_path / "cache")) == 1
