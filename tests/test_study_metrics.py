"""Tests of the study metrics: the MNIST domain classifier, pixel-space memorisation and the
augmentation-leak check (on real MNIST digits where the shared data folder has them)."""

import json
import logging
import os
import shutil

import gin
import numpy as np
import pytest
import tensorflow as tf

from tfgan_eff.augment import diffaugment
from tfgan_eff.eval import evaluator as evaluator_lib
from tfgan_eff.eval import features as features_lib
from tfgan_eff.eval import memorisation as mem
from tfgan_eff.eval import orientation
from tfgan_eff.io import to_uint8
from tfgan_eff.rng import SampleRNG

# Module-scoped fixtures: keep this file in one worker process (pytest -n 2 --dist loadgroup).
pytestmark = pytest.mark.xdist_group("study_metrics")


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MNIST_DIR = os.path.join(ROOT, "..", "shared", "data", "mnist")
MNIST_IMAGES = os.path.join(MNIST_DIR, "t10k-images-idx3-ubyte.gz")

needs_mnist = pytest.mark.skipif(
    not os.path.exists(os.path.join(MNIST_DIR, "t10k-labels-idx1-ubyte.gz"))
    or not os.path.exists(MNIST_IMAGES),
    reason=f"the real MNIST test digits (t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz) "
           f"are not in {os.path.normpath(MNIST_DIR)}; tests never download them")


@pytest.fixture(scope="module")
def mnist():
  """The 10,000 MNIST test digits: (uint8 [N, 28, 28, 1], uint8 [N, 32, 32, 1], labels)."""
  images, labels = features_lib._load_mnist(MNIST_IMAGES)  # pylint: disable=protected-access
  x = tf.image.resize(tf.cast(images, tf.float32), [32, 32], method="bilinear",
                      antialias=True).numpy()
  return images, np.clip(np.round(x), 0, 255).astype(np.uint8), labels


# ---------------------------------------------------------------------------------------
# MNIST classifier extractor
# ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def mnist_cache(tmp_path_factory):
  return str(tmp_path_factory.mktemp("mnist_cache"))


@pytest.fixture(scope="module")
def mnist_extractor(mnist_cache):
  return features_lib.MnistClassifierExtractor(MNIST_IMAGES, cache_dir=mnist_cache)


def test_mnist_split_is_fixed_and_disjoint():
  train, held = features_lib.mnist_split(10000)
  assert len(train) == 8000 and len(held) == 2000
  assert not set(train) & set(held) and len(set(train) | set(held)) == 10000
  np.testing.assert_array_equal(features_lib.mnist_split(10000)[1], held)


@needs_mnist
def test_mnist_classifier_extractor(mnist_extractor, mnist_cache, mnist, caplog):
  ex = mnist_extractor
  assert ex.heldout_accuracy >= 0.97
  assert ex.name == "mnist-lenet32-v1" and ex.resize == "bilinear-antialias-32"
  assert not ex.comparable_to_published and ex.cache_tag.startswith("mnist-lenet32-v1-")
  _, x32, labels = mnist
  out = ex(x32[:5])
  assert out["pool"].shape == (5, 128) and out["logits"].shape == (5, 10)
  # RGB goes through luma: a grey image tiled to RGB gives the same features.
  np.testing.assert_allclose(ex(np.repeat(x32[:5], 3, axis=-1))["pool"], out["pool"],
                             rtol=1e-5, atol=1e-5)
  # 28 px inputs are resized inside; the held-out digits as generated 32 px images score
  # the recorded accuracy.
  held28, held_labels = features_lib.heldout_mnist(MNIST_IMAGES)
  assert held28.shape == (2000, 28, 28, 1) and ex.accuracy(held28, held_labels) >= 0.97
  _, held_idx = features_lib.mnist_split(10000)
  assert ex.accuracy(x32[held_idx], labels[held_idx]) == pytest.approx(ex.heldout_accuracy,
                                                                       abs=1e-9)
  # Cached with its accuracy; a second instance loads (and logs) instead of training.
  with open(ex.weights_path[:-len(".weights.h5")] + ".json") as f:
    assert json.load(f)["heldout_accuracy"] == ex.heldout_accuracy
  with caplog.at_level(logging.INFO, logger="absl"):  # the library logs through absl
    again = features_lib.MnistClassifierExtractor(MNIST_IMAGES, cache_dir=mnist_cache)
  assert again.sha256 == ex.sha256 and again.heldout_accuracy == ex.heldout_accuracy
  assert any("MNIST classifier" in r.getMessage() and "held-out accuracy 0.9" in r.getMessage()
             and "loaded" in r.getMessage() for r in caplog.records)


def test_mnist_extractor_missing_files_fail_clearly(tmp_path):
  missing = str(tmp_path / "nowhere" / "t10k-images-idx3-ubyte.gz")
  cache = tmp_path / "cache"
  with pytest.raises(FileNotFoundError) as e:
    features_lib.MnistClassifierExtractor(missing, cache_dir=str(cache))
  assert missing in str(e.value) and "t10k-images-idx3-ubyte.gz" in str(e.value)
  assert not cache.exists()  # nothing written before the error
  if os.path.exists(MNIST_IMAGES):  # images without their labels file beside them
    lonely = tmp_path / "t10k-images-idx3-ubyte.gz"
    shutil.copy(MNIST_IMAGES, lonely)
    with pytest.raises(FileNotFoundError, match="t10k-labels-idx1-ubyte.gz"):
      features_lib.MnistClassifierExtractor(str(lonely), cache_dir=str(cache))


@needs_mnist
def test_make_extractor_and_evaluator_with_mnist(mnist_extractor, mnist_cache, mnist):
  ex = evaluator_lib.make_extractor("mnist", mnist_path=MNIST_IMAGES, cache_dir=mnist_cache)
  assert isinstance(ex, features_lib.MnistClassifierExtractor)
  assert ex.sha256 == mnist_extractor.sha256  # loaded from the cache, not retrained
  with pytest.raises(ValueError, match=r"Evaluator\.mnist_path"):
    evaluator_lib.make_extractor("mnist", cache_dir=mnist_cache)
  with pytest.raises(ValueError, match=r"Evaluator\.mnist_path"):
    evaluator_lib.Evaluator(feature_extractor="mnist", cache_dir=mnist_cache)
  with pytest.raises(ValueError, match="'mnist'"):
    evaluator_lib.make_extractor("lenet")

  gin.clear_config()
  try:
    gin.parse_config([f"Evaluator.mnist_path = '{MNIST_IMAGES}'",
                      f"Evaluator.cache_dir = '{mnist_cache}'"])
    ev = evaluator_lib.Evaluator(metrics=("fid",), num_samples=500,
                                 feature_extractor="mnist", batch_size=250)
  finally:
    gin.clear_config()
  _, x32, _ = mnist
  reals = x32[:1000]
  rng = np.random.RandomState(0)
  good = ev.evaluate(lambda n: x32[1000 + rng.randint(0, 2000, n)], lambda: iter([reals]))
  bad = ev.evaluate(lambda n: rng.randint(0, 256, [n, 32, 32, 1]).astype(np.uint8),
                    lambda: iter([reals]))
  assert good["extractor"] == "mnist-lenet32-v1" and good["extractor_sha256"] == ex.sha256
  assert good["fid"] < 0.05 * bad["fid"]


# ---------------------------------------------------------------------------------------
# Memorisation rate
# ---------------------------------------------------------------------------------------

@needs_mnist
def test_memorisation_rate_of_the_training_set_and_of_other_digits(mnist):
  _, x32, labels = mnist
  train = x32[:100]
  same = mem.memorisation_rate(train, train)
  assert same["memorisation_rate"] == 1.0
  assert same["nn_distance_median"] == 0.0 and same["train_nn_median"] > 500.0
  others = mem.memorisation_rate(x32[100:600], train)
  assert others["memorisation_rate"] < 0.05
  assert others["train_nn_median"] == same["train_nn_median"]
  assert 0.8 < others["nn_distance_median"] / others["train_nn_median"] < 1.25
  # What counts at all among real unseen digits are thin 1s, which sit closer to each other
  # than the median pair of digits: a global threshold's known residue.
  not_ones = x32[100:600][labels[100:600] != 1]
  assert mem.memorisation_rate(not_ones, train)["memorisation_rate"] < 0.01
  # A copy with a few pixels changed is still a copy.
  noisy = train.copy()
  noisy[:, 10:12, 10:12] = 255 - noisy[:, 10:12, 10:12]
  assert mem.memorisation_rate(noisy, train)["memorisation_rate"] == 1.0


def test_memorisation_distances_match_brute_force_and_chunking():
  rng = np.random.RandomState(1)
  train = rng.randint(0, 256, [37, 6, 5, 3]).astype(np.uint8)
  samples = rng.randint(0, 256, [23, 6, 5, 3]).astype(np.uint8)
  t = train.reshape(37, -1).astype(np.float64)
  s = samples.reshape(23, -1).astype(np.float64)
  d_ts = np.sqrt(((s[:, None] - t[None]) ** 2).sum(-1)).min(1)
  d_tt = np.sqrt(((t[:, None] - t[None]) ** 2).sum(-1))
  np.fill_diagonal(d_tt, np.inf)
  train_median = np.median(d_tt.min(1))
  for max_elements in (1, 50, 2 ** 23):  # one row at a time, a few rows, all rows
    got = mem.memorisation_rate(samples, train, 0.9, max_elements=max_elements)
    assert got["train_nn_median"] == pytest.approx(train_median, rel=1e-6)
    assert got["nn_distance_median"] == pytest.approx(np.median(d_ts), rel=1e-6)
    assert got["memorisation_rate"] == np.mean(d_ts < 0.9 * train_median)
  # Exact duplicates inside the training set are at distance 0 from each other.
  dup = np.concatenate([train, train])
  assert mem.memorisation_rate(samples, dup)["train_nn_median"] == 0.0


def test_memorisation_rate_with_mirrors_matches_brute_force():
  # mirror=True: the keys are the training images and their mirrors; the threshold's
  # nearest "other" image excludes an image's own mirror.
  rng = np.random.RandomState(2)
  train = rng.randint(0, 256, [19, 4, 6, 3]).astype(np.uint8)
  samples = np.concatenate([train[:5, :, ::-1], rng.randint(0, 256, [9, 4, 6, 3])]).astype(
      np.uint8)
  t = train.reshape(19, -1).astype(np.float64)
  tm = train[:, :, ::-1].reshape(19, -1).astype(np.float64)
  s = samples.reshape(14, -1).astype(np.float64)
  dist = lambda a, b: np.sqrt(((a[:, None] - b[None]) ** 2).sum(-1))
  d_ts = np.minimum(dist(s, t), dist(s, tm)).min(1)
  d_tt = np.minimum(dist(t, t), dist(t, tm))
  np.fill_diagonal(d_tt, np.inf)
  train_median = np.median(d_tt.min(1))
  for max_elements in (1, 2 ** 23):
    got = mem.memorisation_rate(samples, train, 0.9, mirror=True, max_elements=max_elements)
    assert got["train_nn_median"] == pytest.approx(train_median, rel=1e-6)
    assert got["nn_distance_median"] == pytest.approx(np.median(d_ts), rel=1e-6)
    assert got["memorisation_rate"] == np.mean(d_ts < 0.9 * train_median)
  # The five mirrored copies count with mirror=True (and only then, on random images).
  assert mem.memorisation_rate(samples[:5], train, mirror=True)["memorisation_rate"] == 1.0
  assert mem.memorisation_rate(samples[:5], train)["memorisation_rate"] == 0.0
  # Symmetric images are their own mirrors: that is not "another" image (threshold > 0).
  sym = np.concatenate([train[:, :, :3], train[:, :, :3][:, :, ::-1]], axis=2)
  assert mem.memorisation_rate(sym, sym, mirror=True)["train_nn_median"] > 0


def test_memorisation_rate_rejects_bad_inputs():
  a = np.zeros([4, 8, 8, 1], np.uint8)
  with pytest.raises(ValueError, match="same"):
    mem.memorisation_rate(a, np.zeros([4, 8, 8, 3], np.uint8))
  with pytest.raises(ValueError, match="at least 2 training images"):
    mem.memorisation_rate(a, a[:1])
  with pytest.raises(TypeError, match="to_uint8"):
    mem.memorisation_rate(a.astype(np.float32), a)


# ---------------------------------------------------------------------------------------
# Augmentation leak
# ---------------------------------------------------------------------------------------

def _paste(images, top, left, h, w, value=128):
  out = images.copy()
  out[:, top:top + h, left:left + w] = value
  return out


@needs_mnist
def test_real_digits_do_not_leak(mnist):
  x28, x32, _ = mnist
  clean = {"leak_square": 0.0, "leak_border": 0.0, "leak_any": 0.0}
  assert mem.augmentation_leak(x32[:1000]) == clean
  assert mem.augmentation_leak(x28[:1000]) == clean
  assert mem.augmentation_leak(np.repeat(x32[:1000], 3, axis=-1)) == clean


@needs_mnist
def test_pasted_squares_and_bands_are_flagged(mnist):
  _, x32, _ = mnist
  digits = x32[:40]
  # A 16 x 16 square (25% of the area) anywhere; a little noise within tol still counts.
  for top, left in ((0, 0), (8, 8), (16, 5), (3, 16)):
    pasted = _paste(digits, top, left, 16, 16)
    assert mem.augmentation_leak(pasted)["leak_square"] == 1.0
    rng = np.random.RandomState(top)
    noise = rng.randint(-8, 9, pasted.shape)
    inside = np.zeros(pasted.shape, bool)
    inside[:, top:top + 16, left:left + 16] = True
    noisy = np.where(inside, pasted.astype(int) + noise, pasted).astype(np.uint8)
    assert mem.augmentation_leak(noisy)["leak_square"] == 1.0
    assert mem.augmentation_leak(noisy, tol=4)["leak_square"] < 0.5
  # The side at 32 px is ceil(sqrt(0.2) * 32) = 15: 15 is flagged, 14 (and 15 x 14) are not.
  assert mem.augmentation_leak(_paste(digits, 9, 9, 15, 15))["leak_square"] == 1.0
  assert mem.augmentation_leak(_paste(digits, 9, 9, 14, 14))["leak_any"] == 0.0
  assert mem.augmentation_leak(_paste(digits, 9, 9, 15, 14))["leak_any"] == 0.0
  # A band 2 px wide (the default border_px at 32 px) on any one side.
  for top, left, h, w in ((0, 0, 2, 32), (30, 0, 2, 32), (0, 0, 32, 2), (0, 29, 32, 3)):
    got = mem.augmentation_leak(_paste(digits, top, left, h, w))
    assert got == {"leak_square": 0.0, "leak_border": 1.0, "leak_any": 1.0}
  one_px = _paste(digits, 0, 0, 32, 1)
  assert mem.augmentation_leak(one_px)["leak_border"] == 0.0
  assert mem.augmentation_leak(one_px, border_px=1)["leak_border"] == 1.0
  # A band that stops short of the corner is not a border.
  assert mem.augmentation_leak(_paste(digits, 0, 1, 2, 31))["leak_border"] == 0.0
  # Shares over a mixed batch; RGB needs every channel at the fill.
  mixed = np.concatenate([_paste(digits[:10], 8, 8, 16, 16), _paste(digits[10:15], 0, 0, 3, 32),
                          digits[15:]])
  assert mem.augmentation_leak(mixed) == {"leak_square": 0.25, "leak_border": 0.125,
                                          "leak_any": 0.375}
  rgb = np.repeat(_paste(digits, 8, 8, 16, 16), 3, axis=-1)
  assert mem.augmentation_leak(rgb)["leak_square"] == 1.0
  rgb[..., 2] = digits[..., 0]
  assert mem.augmentation_leak(rgb)["leak_square"] == 0.0


@needs_mnist
def test_leaks_of_the_projects_diffaugment_are_found(mnist):
  """The project's own cutout and translation, on real digits, quantized as samples are."""
  _, x32, _ = mnist
  x = tf.constant(x32[:1000].astype(np.float32) / 127.5 - 1.0)
  rng = SampleRNG([0, 0])
  cut = mem.augmentation_leak(to_uint8(diffaugment.cutout(x, rng)))
  # 16 px cutouts centred anywhere; ~(19/33)² of them keep a 15 px square inside the image.
  assert 0.28 < cut["leak_square"] < 0.39 and cut["leak_border"] < 0.05
  moved = mem.augmentation_leak(to_uint8(diffaugment.translation(x, rng)))
  # Shifts in {-4..4} per axis; a band of >= 2 px in either axis: 1 - (3/9)² ≈ 0.89.
  assert 0.85 < moved["leak_border"] < 0.93 and moved["leak_square"] == 0.0


def test_orient_is_the_dihedral_group():
  x = np.arange(2 * 4 * 4, dtype=np.uint8).reshape(2, 4, 4, 1)
  seen = {orientation.orient(x, k).tobytes() for k in range(8)}
  assert len(seen) == 8 and orientation.orient(x, 0).tobytes() == x.tobytes()
  np.testing.assert_array_equal(orientation.orient(x, 1), x[:, :, ::-1])
  np.testing.assert_array_equal(orientation.orient(x, 2), np.rot90(x, 1, axes=(1, 2)))
  np.testing.assert_array_equal(orientation.orient(x, 3, "rotations"),
                                np.rot90(x, 3, axes=(1, 2)))
  with pytest.raises(ValueError, match="out of range"):
    orientation.orient(x, 4, "rotations")


@needs_mnist
def test_orientation_probe_flags_mirrored_and_sideways_digits(mnist, tmp_path, monkeypatch):
  """Trained on 3,000 real digits: it tells the 8 orientations apart on held-out ones, finds
  other unseen upright digits as upright as its own held-out ones (ratio ~1), and mirrored or
  sideways ones far less so; kept in weights_dir, it is loaded, not retrained."""
  _, x32, _ = mnist
  probe = orientation.OrientationProbe(x32[:3000], train_size=6000, epochs=3, seed=0,
                                       weights_dir=str(tmp_path))
  assert probe.heldout_accuracy > 0.75 and 0.4 < probe.real_upright < 1.0
  unseen = x32[5000:6000]
  assert 0.85 < probe.upright_ratio(unseen) < 1.15
  for k in (1, 2, 5):  # mirrored; a quarter turn; a half turn, mirrored
    assert probe.upright_ratio(orientation.orient(unseen, k)) < 0.35, k
  # The mean over images: a half-upright, half-mirrored batch scores the mean of its halves.
  mirrored = orientation.orient(unseen[500:], 1)
  want = (probe.upright(unseen[:500]) + probe.upright(mirrored)) / 2
  assert probe.upright(np.concatenate([unseen[:500], mirrored])) == pytest.approx(want)
  p = probe.probabilities(unseen[:10])
  assert p.shape == (10, 8) and np.allclose(p.sum(axis=1), 1.0)
  with pytest.raises(ValueError, match="trained on images"):
    probe.upright(mnist[0][:4])  # 28 px, not the real set's 32
  # Loaded from weights_dir: the same probe, no training.
  monkeypatch.setattr(orientation, "fit_classifier", lambda *a, **k: pytest.fail("retrained"))
  again = orientation.OrientationProbe(x32[:3000], train_size=6000, epochs=3, seed=0,
                                       weights_dir=str(tmp_path))
  assert again.tag == probe.tag and again.real_upright == probe.real_upright
  np.testing.assert_allclose(again.probabilities(unseen[:50]), probe.probabilities(unseen[:50]),
                             atol=1e-6)
  # Other real images (or another seed) are another probe.
  monkeypatch.undo()
  other = orientation.OrientationProbe(x32[:2000], epochs=1, train_size=64, seed=0)
  assert other.name != probe.name and other.name.endswith("-seed0")


def test_orientation_probe_rotations_of_rgb_images():
  """"rotations": 4 classes, RGB kept; synthetic photos with a sky (blue top half): the
  probe learns where the sky is, and a quarter turn reads as not upright."""
  rng = np.random.default_rng(0)
  x = rng.integers(0, 60, [200, 16, 16, 3]).astype(np.uint8)
  x[:, :8, :, 2] += 150
  probe = orientation.OrientationProbe(x, transforms="rotations", resolution=16,
                                       train_size=3200, epochs=2, seed=0)
  assert probe.num == 4 and probe.heldout_accuracy > 0.9
  assert probe.probabilities(x[:5]).shape == (5, 4)
  assert probe.upright_ratio(x[:50]) > 0.9
  assert probe.upright_ratio(orientation.orient(x[:50], 1, "rotations")) < 0.2


def test_orientation_probe_rejects_bad_inputs():
  x = np.zeros([40, 16, 16, 1], np.uint8)
  with pytest.raises(ValueError, match="square images"):
    orientation.OrientationProbe(np.zeros([40, 16, 12, 1], np.uint8))
  with pytest.raises(ValueError, match="at least 20 real images"):
    orientation.OrientationProbe(x[:10])
  with pytest.raises(ValueError, match="transforms must be one of"):
    orientation.OrientationProbe(x, transforms="flips")
  with pytest.raises(TypeError, match="uint8"):
    orientation.OrientationProbe(x.astype(np.float32))


def test_augmentation_leak_rejects_bad_inputs():
  x = np.zeros([2, 32, 32, 1], np.uint8)
  with pytest.raises(ValueError, match="border_px"):
    mem.augmentation_leak(x, border_px=40)
  with pytest.raises(ValueError, match="square_fraction"):
    mem.augmentation_leak(x, square_fraction=0.0)
  with pytest.raises(ValueError, match="no images"):
    mem.augmentation_leak(x[:0])
  with pytest.raises(TypeError, match="to_uint8"):
    mem.augmentation_leak(x.astype(np.float32))


def test_conditioning_scores_class_consistency_and_predicted_labels_of_unlabelled_reals():
  """`class_consistency` (the classifier on G(z, y) against y) and
  `label_accuracy_unlabelled` (a term's predicted labels of the unlabelled training reals
  against their true labels), on stand-ins whose answers are known."""
  import types  # pylint: disable=import-outside-toplevel
  from tfgan_eff import study  # pylint: disable=import-outside-toplevel

  class Classifier:  # reads the class off the image: pixel value // 20
    num_classes = 10

    def __call__(self, images):
      return {"logits": np.eye(10)[images[:, 0, 0, 0] // 20]}

  class Head:  # predicts from D's features: the first feature, rounded
    def predict_labels(self, ctx):
      return tf.cast(tf.round(ctx.d_real["features"][:, 0]), tf.int32)

  class NoPrediction:
    def predict_labels(self, ctx):
      return None

  images = np.zeros([6, 4, 4, 1], np.uint8) + (np.arange(6) * 20).astype(np.uint8)[:, None,
                                                                                    None, None]
  ev = types.SimpleNamespace(evaluator=types.SimpleNamespace(extractor=Classifier()),
                             metrics_available=True, batch_size=4)
  # D's feature: the class the image shows, except for the last image (class 1, not 5).
  def D(x, y, training):
    del y, training
    shown = tf.round((x[:, 0, 0, 0] + 1.0) * 127.5 / 20)
    return {"features": tf.where(shown == 5, 1.0, shown)[:, None]}

  cell = object.__new__(study._CellEvaluation)  # pylint: disable=protected-access
  cell.ev, cell._tf = ev, tf
  cell.gan = types.SimpleNamespace(num_classes=10, terms=[NoPrediction(), Head()], D=D)
  cell.data = types.SimpleNamespace(labels=np.array([0, -1, 2, -1, -1, -1]), classes=None)
  cell.train_images, cell.train_labels = images, np.arange(6)
  row = cell.conditioning(images, np.array([0, 1, 2, 3, 9, 9]))  # 4 of 6 right
  assert row["class_consistency"] == pytest.approx(4 / 6)
  assert row["label_accuracy_unlabelled"] == pytest.approx(3 / 4)  # images 1, 3, 4 right; 5 not
  # Trained on the classes in another order: G's label i means the source's classes[i].
  cell.data.classes = [9, 8, 7, 6, 5, 4, 3, 2, 1, 0]
  row = cell.conditioning(images, np.array([9, 8, 7, 6, 0, 4]))  # 0..5 shown: 5 of 6 asked
  assert row["class_consistency"] == pytest.approx(5 / 6)


def test_in_class_rate_is_the_share_of_samples_the_classifier_puts_in_the_training_classes():
  """A cell trained on some classes (e.g. the few-shot nines of a transfer) reports how many
  samples the classifier assigns to them, beside the real reference's share; a cell without
  a class subset marks its rows as not applicable (None), so they are not supplemented."""
  import types  # pylint: disable=import-outside-toplevel
  from tfgan_eff import study  # pylint: disable=import-outside-toplevel

  class Classifier:  # pixel value // 20
    num_classes = 10

    def __call__(self, images):
      return {"logits": np.eye(10)[images[:, 0, 0, 0] // 20]}

  def shown(*classes):
    return np.array(classes, np.uint8)[:, None, None, None] * 20 + np.zeros([1, 4, 4, 1],
                                                                            np.uint8)

  cell = object.__new__(study._CellEvaluation)  # pylint: disable=protected-access
  cell.ev = types.SimpleNamespace(evaluator=types.SimpleNamespace(extractor=Classifier()))
  cell.class_subset, cell.real_in_class = np.array([9, 8]), 0.98
  assert cell.class_rows(shown(9, 9, 1, 8, 3)) == {"in_class_rate": pytest.approx(3 / 5),
                                                  "real_in_class_rate": 0.98}
  cell.class_subset = None
  assert cell.class_rows(shown(9, 9)) == {"in_class_rate": None}
  # Which cells have a subset: only one whose classifier knows the source's classes.
  mnist_nines = types.SimpleNamespace(classes=[9], source=types.SimpleNamespace(num_classes=10))
  assert study._class_subset(mnist_nines, Classifier()).tolist() == [9]  # pylint: disable=protected-access
  inception = types.SimpleNamespace(num_classes=1008)
  assert study._class_subset(mnist_nines, inception) is None  # pylint: disable=protected-access
  assert study._class_subset(mnist_nines, None) is None  # pylint: disable=protected-access
  every_digit = types.SimpleNamespace(classes=None, source=mnist_nines.source)
  assert study._class_subset(every_digit, Classifier()) is None  # pylint: disable=protected-access
