"""Feature extractors: uint8 images in, pooled features and class logits out.

Every extractor maps uint8 images [B, H, W, C] (C = 1, 3 or 4) to
`{"pool": float32 [B, D], "logits": float32 [B, K]}`; `pool` feeds FID, KID and
precision/recall, `logits` the Inception score.

- `InceptionExtractor` (inception.py): the 2015-12-05 Inception graph of TTUR. Its numbers
  are comparable to published FID/IS/KID (`comparable_to_published = True`).
- `DigitsClassifierExtractor` (here): a small LeNet trained in seconds on scikit-learn's
  handwritten digits, for toy runs without the 95 MB Inception file. A FID measured with it
  is a *domain FID*: useful to compare runs with each other, never with a paper.
- `MnistClassifierExtractor` (here): the same LeNet trained on 8,000 real MNIST test
  digits, the domain extractor for MNIST runs (also a domain FID).
"""

import abc
import hashlib
import json
import os
import shutil
import tempfile

import numpy as np
import tensorflow as tf
from absl import logging

DEFAULT_CACHE_DIR = "~/.cache/tfgan_eff"


def as_uint8_batch(images, who="feature extractor"):
  """Validates a batch of uint8 images [B, H, W, C]; drops alpha (C = 2 or 4)."""
  if hasattr(images, "numpy"):
    images = images.numpy()
  images = np.asarray(images)
  if images.dtype != np.uint8:
    raise TypeError(
        f"The {who} expects uint8 images [B, H, W, C], got dtype {images.dtype}. Quantize "
        f"generator outputs in [-1, 1] with tfgan_eff.eval.to_uint8(images) first.")
  if images.ndim != 4 or images.shape[-1] not in (1, 2, 3, 4):
    raise ValueError(f"The {who} expects images [B, H, W, C] with C in (1, 3), got shape "
                     f"{images.shape}.")
  if images.shape[-1] == 4:
    images = images[..., :3]
  elif images.shape[-1] == 2:
    images = images[..., :1]
  return images


class FeatureExtractor(abc.ABC):
  """Maps uint8 images [B, H, W, C] to {"pool": [B, D], "logits": [B, K]} (float32).

  Attributes:
    name: identifier recorded with every result and used in reference-statistics cache keys
      (change it whenever the features change).
    comparable_to_published: True only for the standard FID Inception network.
    resize: how images are brought to the network's input size (recorded with results).
    pool_dim, num_classes: D and K.
    needs_rgb: grayscale inputs are tiled to 3 channels before `_extract`.
    batch_size: images per forward pass.
  """

  name = "extractor"
  comparable_to_published = False
  resize = "none"
  pool_dim = 0
  num_classes = 0
  needs_rgb = True
  batch_size = 64

  def __call__(self, images):
    images = as_uint8_batch(images, who=f"{self.name} feature extractor")
    if self.needs_rgb and images.shape[-1] == 1:
      images = np.repeat(images, 3, axis=-1)
    if images.shape[0] == 0:
      return {"pool": np.zeros([0, self.pool_dim], np.float32),
              "logits": np.zeros([0, self.num_classes], np.float32)}
    outs = {"pool": [], "logits": []}
    for i in range(0, images.shape[0], self.batch_size):
      batch = images[i:i + self.batch_size]
      out = self._extract(batch)
      for k in outs:
        outs[k].append(np.asarray(out[k], np.float32).reshape(batch.shape[0], -1))
    return {k: np.concatenate(v, axis=0) for k, v in outs.items()}

  @abc.abstractmethod
  def _extract(self, images):
    """One batch of uint8 [b, H, W, C] (C = 3 when `needs_rgb`) -> dict of arrays."""


# ---------------------------------------------------------------------------------------
# Toy extractor: LeNet on scikit-learn digits
# ---------------------------------------------------------------------------------------

DIGITS_HELDOUT = 297  # scikit-learn digits kept out of the classifier's training set
_DIGITS_VERSION = 1   # bump when the architecture, data or training recipe changes


def _sklearn_digits():
  """The 1,797 scikit-learn digits as uint8 [N, 8, 8, 1] (0..16 scaled to 0..255)."""
  from sklearn.datasets import load_digits  # bundled with scikit-learn, no network
  d = load_digits()
  images = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
  return images, d.target.astype(np.int32)


def digits_split():
  """(train_idx, heldout_idx) of the fixed split used to train the digits classifier."""
  n = 1797
  perm = np.random.RandomState(0).permutation(n)
  return np.sort(perm[DIGITS_HELDOUT:]), np.sort(perm[:DIGITS_HELDOUT])


def heldout_digits():
  """uint8 images [297, 8, 8, 1] and labels the digits classifier never saw in training."""
  images, labels = _sklearn_digits()
  _, test = digits_split()
  return images[test], labels[test]


def _resize_uint8(images, size, method, antialias=False):
  out = tf.image.resize(tf.cast(images, tf.float32), [size, size], method=method,
                        antialias=antialias)
  return np.clip(np.round(out.numpy()), 0, 255).astype(np.uint8)


def _digits_training_views(images, resolution):
  """The training images seen at `resolution` in several renderings, so the classifier
  does not depend on one resizing method or on how tightly the digit is framed:
  antialiased bilinear (what tfgan_eff.data does), nearest, bicubic, and a 2-pixel
  border (MNIST-style framing, the digit spanning ~70% of the image)."""
  padded = np.pad(images, [(0, 0), (2, 2), (2, 2), (0, 0)])
  return np.concatenate([
      _resize_uint8(images, resolution, "bilinear", antialias=True),
      _resize_uint8(images, resolution, "nearest"),
      _resize_uint8(images, resolution, "bicubic"),
      _resize_uint8(padded, resolution, "bilinear", antialias=True),
  ], axis=0)


def _build_lenet(resolution, seed, name="digits_lenet", num_classes=10, channels=1):
  import keras
  init = lambda i: keras.initializers.GlorotUniform(seed=seed + i)  # noqa: E731
  x_in = keras.Input([resolution, resolution, channels])
  h = x_in
  for i, width in enumerate((16, 32, 64)):
    h = keras.layers.Conv2D(width, 3, padding="same", activation="relu",
                            kernel_initializer=init(i))(h)
    h = keras.layers.MaxPooling2D(2)(h)
  h = keras.layers.Flatten()(h)
  pool = keras.layers.Dense(128, activation="relu", kernel_initializer=init(3),
                            name="pool")(h)
  logits = keras.layers.Dense(num_classes, kernel_initializer=init(4), name="logits")(pool)
  return keras.Model(x_in, {"pool": pool, "logits": logits}, name=name)


def save_weights(model, weights_path, info):
  """Writes `model`'s weights to `weights_path` (…weights.h5) and `info` to the .json beside
  it, each atomically (a reader never sees half a file)."""
  folder = os.path.dirname(weights_path) or "."
  os.makedirs(folder, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".weights.h5")
  os.close(fd)
  try:
    model.save_weights(tmp, overwrite=True)
    os.chmod(tmp, 0o644)
    os.replace(tmp, weights_path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
  path = weights_path[:-len(".weights.h5")] + ".json"
  with open(path + ".tmp", "w") as f:
    json.dump(info, f)
  os.replace(path + ".tmp", path)


def fit_classifier(model, x, y, epochs, batch, learning_rate, seed, augment=None):
  """Trains a model with a "logits" output on float32 images x [n, h, w, c] and int labels
  y: Adam, cross-entropy, `epochs` seeded shuffles in batches of `batch` (a last partial
  batch is dropped); `augment(xb, rng)` maps each batch before the step."""
  import keras
  opt = keras.optimizers.Adam(learning_rate)
  loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

  @tf.function
  def step(xb, yb):
    with tf.GradientTape() as tape:
      loss = loss_fn(yb, model(xb, training=True)["logits"])
    grads = tape.gradient(loss, model.trainable_variables)
    opt.apply_gradients(zip(grads, model.trainable_variables))
    return loss

  rng = np.random.RandomState(seed)
  for _ in range(epochs):
    order = rng.permutation(len(x))
    for i in range(0, len(x) - batch + 1, batch):
      idx = order[i:i + batch]
      xb = x[idx] if augment is None else augment(x[idx], rng)
      step(tf.constant(xb), tf.constant(y[idx]))


class _LeNetClassifierExtractor(FeatureExtractor):
  """Shared machinery of the small LeNet digit classifiers: train once, cache, extract.

  A subclass names its data (`_prefix`, `_version`, `_label`) and provides
  `_training_data()`; this class builds the LeNet, trains it (Adam, cross-entropy, seeded
  shuffling), measures the held-out accuracy, caches the weights atomically next to a json
  with `heldout_accuracy`, and keys reference statistics on the weights' SHA-256
  (`cache_tag`). Inputs: RGB is converted to luma (BT.601), then the image is resized to
  `resolution`² with antialiased bilinear and scaled to [0, 1].
  """

  comparable_to_published = False
  needs_rgb = False
  pool_dim = 128
  num_classes = 10
  _prefix = "lenet"          # name = f"{_prefix}-lenet{resolution}-v{_version}"
  _version = 1               # bump when the architecture, data or training recipe changes
  _label = "LeNet classifier"  # how logs call it
  _train_batch = 64
  _learning_rate = 2e-3

  def __init__(self, resolution=32, cache_dir=DEFAULT_CACHE_DIR, seed=0, epochs=5,
               batch_size=256, retrain=False, weights_dir=None):
    self.resolution = int(resolution)
    self.name = f"{self._prefix}-lenet{self.resolution}-v{self._version}"
    self.resize = f"bilinear-antialias-{self.resolution}"
    self.batch_size = batch_size
    self.seed = seed
    # weights_dir (e.g. a study's folder) keeps this extractor's own copy of the weights:
    # training is seeded but not bit-reproducible across CPUs and kernels, and every score
    # of a study must come from one set of weights. A missing copy is seeded from the cache.
    self.weights_dir = os.path.expanduser(weights_dir or cache_dir)
    self.weights_path = os.path.join(self.weights_dir, f"{self.name}-seed{seed}.weights.h5")
    cached = os.path.join(os.path.expanduser(cache_dir), os.path.basename(self.weights_path))
    if weights_dir and not os.path.exists(self.weights_path) and os.path.exists(cached):
      os.makedirs(self.weights_dir, exist_ok=True)
      # The json first: the weights file is what marks the copy complete.
      for src, dst in ((cached[:-len(".weights.h5")] + ".json", self._info_path()),
                       (cached, self.weights_path)):
        if os.path.exists(src):
          shutil.copyfile(src, dst + ".tmp")
          os.replace(dst + ".tmp", dst)
    self.model = _build_lenet(self.resolution, seed, name=f"{self._prefix}_lenet")
    self.heldout_accuracy = None
    if os.path.exists(self.weights_path) and not retrain:
      self.model.load_weights(self.weights_path)
      info = self._info_path()
      if os.path.exists(info):
        with open(info) as f:
          self.heldout_accuracy = json.load(f).get("heldout_accuracy")
      how = f"loaded from {self.weights_path}"
    else:
      self._train(epochs)
      self._save()
      how = f"trained ({epochs} epochs), cached in {self.weights_path}"
    if self.heldout_accuracy is None:
      logging.info("%s %s %s; held-out accuracy unknown", self._label, self.name, how)
    else:
      logging.info("%s %s %s; held-out accuracy %.4f", self._label, self.name, how,
                   self.heldout_accuracy)
    # Reference statistics are keyed on the weights themselves, so retraining (or another
    # machine's slightly different training run) never reuses stale real statistics.
    with open(self.weights_path, "rb") as f:
      self.sha256 = hashlib.sha256(f.read()).hexdigest()
    self.cache_tag = f"{self.name}-{self.sha256[:12]}"
    self._forward = tf.function(
        lambda x: self.model(self._preprocess(x), training=False),
        input_signature=[tf.TensorSpec([None, None, None, 1], tf.uint8)],
        reduce_retracing=True)

  @abc.abstractmethod
  def _training_data(self):
    """(train images, train labels, held-out images, held-out labels).

    Images uint8 [n, resolution, resolution, 1], already rendered at `resolution`.
    """

  def _augment(self, x, rng):
    """A training batch float32 [b, r, r, 1] in [0, 1] -> its augmented version."""
    del rng
    return x

  def _info_path(self):
    return self.weights_path[:-len(".weights.h5")] + ".json"

  def _preprocess(self, images):
    x = tf.cast(images, tf.float32)
    x = tf.image.resize(x, [self.resolution, self.resolution], method="bilinear",
                        antialias=True)
    return x / 255.0

  def _train(self, epochs):
    x, y, x_held, y_held = self._training_data()
    fit_classifier(self.model, x.astype(np.float32) / 255.0, y, epochs, self._train_batch,
                   self._learning_rate, self.seed, self._augment)
    logits = self.model(tf.constant(x_held.astype(np.float32) / 255.0),
                        training=False)["logits"].numpy()
    self.heldout_accuracy = float((logits.argmax(axis=1) == y_held).mean())

  def _save(self):
    save_weights(self.model, self.weights_path, {
        "heldout_accuracy": self.heldout_accuracy, "name": self.name, "seed": self.seed})

  def _extract(self, images):
    if images.shape[-1] == 3:
      luma = images.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
      images = np.clip(np.round(luma), 0, 255).astype(np.uint8)[..., None]
    out = self._forward(tf.constant(images))
    return {"pool": out["pool"].numpy(), "logits": out["logits"].numpy()}

  def accuracy(self, images, labels):
    """Fraction of `images` (uint8) whose arg-max logit equals `labels`."""
    logits = self(images)["logits"]
    return float((logits.argmax(axis=1) == np.asarray(labels)).mean())


class DigitsClassifierExtractor(_LeNetClassifierExtractor):
  """LeNet-style digit classifier; `pool` = its 128-d penultimate layer, `logits` = 10.

  For toy runs on handwritten digits: trained on the fly on 1,500 scikit-learn digits (a
  few seconds on CPU; held-out accuracy ≈ 98%, `heldout_accuracy`), then cached in
  `cache_dir`. On MNIST's 28×28 digits (other writers, thinner strokes) it classifies only
  ~70% correctly: its features still separate digit-like images from others, but numbers
  on MNIST are rougher (use `MnistClassifierExtractor` there). Not comparable to published
  numbers: report its FID as a "domain FID".

  Input handling: RGB is converted to luma (BT.601), then the image is resized to
  `resolution`² with antialiased bilinear (the resizing tfgan_eff.data uses) and scaled to
  [0, 1].

  Args:
    resolution: the classifier's input size.
    cache_dir: where the trained weights are kept
      (`digits-lenet<res>-v1-seed<seed>.weights.h5`).
    weights_dir: keep (and load) the weights here instead, seeded from the cache (a study's
      own copy; see tfgan_eff/study.py)
    seed: initialisation and shuffling seed.
    epochs: training epochs over the ~6,000 training views.
    batch_size: images per forward pass.
    retrain: ignore cached weights.
  """

  _prefix = "digits"
  _version = _DIGITS_VERSION
  _label = "Digits classifier"

  def _training_data(self):
    images, labels = _sklearn_digits()
    train, test = digits_split()
    x = _digits_training_views(images[train], self.resolution)
    y = np.tile(labels[train], len(x) // len(train))
    held = _resize_uint8(images[test], self.resolution, "bilinear", antialias=True)
    return x, y, held, labels[test]


# ---------------------------------------------------------------------------------------
# Domain extractor for MNIST: LeNet on the 10,000 real MNIST test digits
# ---------------------------------------------------------------------------------------

MNIST_HELDOUT_FRACTION = 0.2  # of the MNIST file kept out of training (2,000 of 10,000)
_MNIST_VERSION = 1            # bump when the architecture, data or training recipe changes


def _mnist_labels_path(path):
  return path.replace("images-idx3", "labels-idx1")


_MNIST_FIX = ("Pass the path of t10k-images-idx3-ubyte.gz (the MNIST test images, with "
              "t10k-labels-idx1-ubyte.gz beside it) as MnistClassifierExtractor(path=...) "
              "or Evaluator.mnist_path.")


def _mnist_files(path):
  """(images path, labels path) of an MNIST images IDX file; FileNotFoundError if absent."""
  path = os.path.expanduser(path)
  labels_path = _mnist_labels_path(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"MNIST images file '{path}' does not exist. {_MNIST_FIX}")
  if labels_path == path or not os.path.isfile(labels_path):
    raise FileNotFoundError(f"MNIST labels file '{labels_path}' (expected beside '{path}') "
                            f"does not exist. {_MNIST_FIX}")
  return path, labels_path


def _load_mnist(path):
  """uint8 images [N, 28, 28, 1] and int32 labels of an MNIST IDX images file."""
  path, labels_path = _mnist_files(path)
  from tfgan_eff.data.sources import _read_idx  # pylint: disable=import-outside-toplevel
  images, labels = _read_idx(path), _read_idx(labels_path)
  if images.ndim == 3:
    images = images[..., None]
  if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 1:
    raise ValueError(f"'{path}': expected uint8 grayscale MNIST images [N, 28, 28], got "
                     f"{images.dtype} {images.shape}. {_MNIST_FIX}")
  if len(labels) != len(images) or len(images) < 10:
    raise ValueError(f"'{path}' has {len(images)} images but '{labels_path}' has "
                     f"{len(labels)} labels. {_MNIST_FIX}")
  return images, np.asarray(labels, np.int32)


def mnist_split(n):
  """(train_idx, heldout_idx) of the fixed split of `n` MNIST images (8,000 / 2,000 of 10,000)."""
  heldout = int(round(n * MNIST_HELDOUT_FRACTION))
  perm = np.random.RandomState(0).permutation(n)
  return np.sort(perm[heldout:]), np.sort(perm[:heldout])


def heldout_mnist(path):
  """uint8 images [2000, 28, 28, 1] and labels the MNIST classifier never saw in training."""
  images, labels = _load_mnist(path)
  _, test = mnist_split(len(images))
  return images[test], labels[test]


def _shift(x, rng, max_shift):
  """Each image of x [b, h, w, c] shifted by its own random (dy, dx) in ±max_shift (0 fill)."""
  b, h, w, _ = x.shape
  m = max_shift
  padded = np.pad(x, [(0, 0), (m, m), (m, m), (0, 0)])
  dy, dx = rng.randint(0, 2 * m + 1, [2, b])
  rows = dy[:, None] + np.arange(h)[None]
  cols = dx[:, None] + np.arange(w)[None]
  return padded[np.arange(b)[:, None, None], rows[:, :, None], cols[:, None, :]]


class MnistClassifierExtractor(_LeNetClassifierExtractor):
  """LeNet classifier of MNIST digits; `pool` = its 128-d penultimate layer, `logits` = 10.

  The domain extractor for MNIST runs: the same LeNet as `DigitsClassifierExtractor`,
  trained on the fly on 8,000 of the 10,000 real MNIST test digits (fixed split,
  `mnist_split`), seen as generated images are: 28→`resolution` with antialiased bilinear
  (what tfgan_eff.data does), with random ±2 px shifts. Takes ~20 s on 2 CPU cores; the
  accuracy on the 2,000 held-out digits (≈ 98.6%) is `heldout_accuracy` and is logged.
  Cached in `cache_dir` (the cache is keyed by name and seed, not by the file's contents).
  Not comparable to published numbers: report its FID as a "domain FID".

      ex = MnistClassifierExtractor("/data/mnist/t10k-images-idx3-ubyte.gz")
      ex(images)["pool"]  # float32 [B, 128]

  Input handling: RGB is converted to luma (BT.601), then the image is resized to
  `resolution`² with antialiased bilinear and scaled to [0, 1].

  Args:
    path: the MNIST images IDX file, t10k-images-idx3-ubyte(.gz); the labels file
      (t10k-labels-idx1-ubyte(.gz)) must sit beside it.
    resolution: the classifier's input size.
    cache_dir: where the trained weights are kept
      (`mnist-lenet<res>-v1-seed<seed>.weights.h5`, and a .json with `heldout_accuracy`).
    weights_dir: keep (and load) the weights here instead, seeded from the cache (a study's
      own copy; see tfgan_eff/study.py)
    seed: initialisation, shuffling and augmentation seed.
    epochs: training epochs over the 8,000 training digits.
    batch_size: images per forward pass.
    retrain: ignore cached weights.
  """

  _prefix = "mnist"
  _version = _MNIST_VERSION
  _label = "MNIST classifier"
  _max_shift = 2

  def __init__(self, path, resolution=32, cache_dir=DEFAULT_CACHE_DIR, seed=0, epochs=8,
               batch_size=256, retrain=False, weights_dir=None):
    # Checked before any state is written, whether or not the weights are cached.
    self.path, _ = _mnist_files(path)
    super().__init__(resolution=resolution, cache_dir=cache_dir, seed=seed, epochs=epochs,
                     batch_size=batch_size, retrain=retrain, weights_dir=weights_dir)

  def _training_data(self):
    images, labels = _load_mnist(self.path)
    train, test = mnist_split(len(images))
    views = _resize_uint8(images, self.resolution, "bilinear", antialias=True)
    return views[train], labels[train], views[test], labels[test]

  def _augment(self, x, rng):
    return _shift(x, rng, self._max_shift)
