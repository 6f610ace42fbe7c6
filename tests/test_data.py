"""Data sources and pipeline: subsets, label masks, resumable order, bad inputs."""

import os

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
