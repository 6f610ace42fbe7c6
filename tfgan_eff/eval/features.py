"""Feature extractors: uint8 images in, pooled features and class logits out.

Every extractor maps uint8 images [B, H, W, C] (C = 1, 3 or 4) to
`{"pool": float32 [B, D], "logits": float32 [B, K]}`; `pool` feeds FID, KID and
precision/recall, `logits` the Inception score.

- `InceptionExtractor` (inception.py): the 2015-12-05 Inception graph of TTUR. Its numbers
  are comparable to published FID/IS/KID (`comparable_to_published = True`).
- `DigitsClassifierExtractor` (here): a small LeNet trained in seconds on scikit-learn's
  handwritten digits, for toy runs without the 95 MB Inception file. A FID measured with it
  is a *domain FID*: useful to compare runs with each other, never with a paper.
"""

import abc
import hashlib
import json
import os
import tempfile

import numpy as np
import tensorflow as tf

DEFAULT_CACHE_DIR = "~/.cache/tfgan_eff"


def to_uint8(images, value_range=(-1.0, 1.0)):
  """Quantizes float images (default range [-1, 1]) to uint8 the way images are saved.

  v = floor((x − lo) / (hi − lo) · 255 + 0.5), clipped to [0, 255]: round-half-up, which
  equals stylegan2-ada's `(x * 127.5 + 128).clamp(0, 255).to(uint8)` for [-1, 1] inputs.
  Evaluate quantized images: real images are uint8 too, and metrics computed on
  unquantized floats are not comparable (see docs on FID pitfalls).
  """
  if hasattr(images, "numpy"):
    images = images.numpy()
  x = np.asarray(images, np.float32)
  lo, hi = value_range
  v = np.floor((x - lo) * (255.0 / (hi - lo)) + 0.5)
  return np.clip(v, 0, 255).astype(np.uint8)


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


def _build_lenet(resolution, seed):
  import keras
  init = lambda i: keras.initializers.GlorotUniform(seed=seed + i)  # noqa: E731
  x_in = keras.Input([resolution, resolution, 1])
  h = x_in
  for i, width in enumerate((16, 32, 64)):
    h = keras.layers.Conv2D(width, 3, padding="same", activation="relu",
                            kernel_initializer=init(i))(h)
    h = keras.layers.MaxPooling2D(2)(h)
  h = keras.layers.Flatten()(h)
  pool = keras.layers.Dense(128, activation="relu", kernel_initializer=init(3),
                            name="pool")(h)
  logits = keras.layers.Dense(10, kernel_initializer=init(4), name="logits")(pool)
  return keras.Model(x_in, {"pool": pool, "logits": logits}, name="digits_lenet")


class DigitsClassifierExtractor(FeatureExtractor):
  """LeNet-style digit classifier; `pool` = its 128-d penultimate layer, `logits` = 10.

  For toy runs on handwritten digits: trained on the fly on 1,500 scikit-learn digits (a
  few seconds on CPU; held-out accuracy ≈ 98%, `heldout_accuracy`), then cached in
  `cache_dir`. On MNIST's 28×28 digits (other writers, thinner strokes) it classifies only
  ~70% correctly: its features still separate digit-like images from others, but numbers
  on MNIST are rougher. Not comparable to published numbers: report its FID as a
  "domain FID".

  Input handling: RGB is converted to luma (BT.601), then the image is resized to
  `resolution`² with antialiased bilinear (the resizing tfgan_eff.data uses) and scaled to
  [0, 1].

  Args:
    resolution: the classifier's input size.
    cache_dir: where the trained weights are kept
      (`digits-lenet<res>-v1-seed<seed>.weights.h5`).
    seed: initialisation and shuffling seed.
    epochs: training epochs over the ~6,000 training views.
    retrain: ignore cached weights.
  """

  comparable_to_published = False
  needs_rgb = False
  pool_dim = 128
  num_classes = 10

  def __init__(self, resolution=32, cache_dir=DEFAULT_CACHE_DIR, seed=0, epochs=5,
               batch_size=256, retrain=False):
    self.resolution = int(resolution)
    self.name = f"digits-lenet{self.resolution}-v{_DIGITS_VERSION}"
    self.resize = f"bilinear-antialias-{self.resolution}"
    self.batch_size = batch_size
    self.seed = seed
    self.cache_dir = os.path.expanduser(cache_dir)
    self.weights_path = os.path.join(self.cache_dir, f"{self.name}-seed{seed}.weights.h5")
    self.model = _build_lenet(self.resolution, seed)
    self.heldout_accuracy = None
    if os.path.exists(self.weights_path) and not retrain:
      self.model.load_weights(self.weights_path)
      info = self.weights_path[:-len(".weights.h5")] + ".json"
      if os.path.exists(info):
        with open(info) as f:
          self.heldout_accuracy = json.load(f).get("heldout_accuracy")
    else:
      self._train(epochs)
      self._save()
    # Reference statistics are keyed on the weights themselves, so retraining (or another
    # machine's slightly different training run) never reuses stale real statistics.
    with open(self.weights_path, "rb") as f:
      self.sha256 = hashlib.sha256(f.read()).hexdigest()
    self.cache_tag = f"{self.name}-{self.sha256[:12]}"
    self._forward = tf.function(
        lambda x: self.model(self._preprocess(x), training=False),
        input_signature=[tf.TensorSpec([None, None, None, 1], tf.uint8)],
        reduce_retracing=True)

  def _preprocess(self, images):
    x = tf.cast(images, tf.float32)
    x = tf.image.resize(x, [self.resolution, self.resolution], method="bilinear",
                        antialias=True)
    return x / 255.0

  def _train(self, epochs):
    import keras
    images, labels = _sklearn_digits()
    train, test = digits_split()
    x = _digits_training_views(images[train], self.resolution)
    y = np.tile(labels[train], len(x) // len(train))
    x = x.astype(np.float32) / 255.0
    opt = keras.optimizers.Adam(2e-3)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model = self.model

    @tf.function
    def step(xb, yb):
      with tf.GradientTape() as tape:
        loss = loss_fn(yb, model(xb, training=True)["logits"])
      grads = tape.gradient(loss, model.trainable_variables)
      opt.apply_gradients(zip(grads, model.trainable_variables))
      return loss

    rng = np.random.RandomState(self.seed)
    bs = 64
    for _ in range(epochs):
      order = rng.permutation(len(x))
      for i in range(0, len(x) - bs + 1, bs):
        idx = order[i:i + bs]
        step(tf.constant(x[idx]), tf.constant(y[idx]))
    logits = model(tf.constant(_resize_uint8(images[test], self.resolution, "bilinear",
                                             antialias=True).astype(np.float32) / 255.0),
                   training=False)["logits"].numpy()
    self.heldout_accuracy = float((logits.argmax(axis=1) == labels[test]).mean())

  def _save(self):
    os.makedirs(self.cache_dir, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=self.cache_dir, prefix=".tmp-", suffix=".weights.h5")
    os.close(fd)
    try:
      self.model.save_weights(tmp, overwrite=True)
      os.chmod(tmp, 0o644)
      os.replace(tmp, self.weights_path)
    finally:
      if os.path.exists(tmp):
        os.remove(tmp)
    info = self.weights_path[:-len(".weights.h5")] + ".json"
    with open(info + ".tmp", "w") as f:
      json.dump({"heldout_accuracy": self.heldout_accuracy, "name": self.name,
                 "seed": self.seed}, f)
    os.replace(info + ".tmp", info)

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
