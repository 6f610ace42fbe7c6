"""From a `Source` to per-replica training batches.

`ImageData` decodes, converts, crops and resizes the images, keeps the configured subset
(`data_fraction` / `num_images`) and label mask (`label_fraction`), and serves:

- `dataset_fn(global_batch, start_sample)`: for `strategy.distribute_datasets_from_function`;
  yields dicts `{"images": float32 [b, H, W, C] in [-1, 1], "labels": int32 [b] (-1 where
  the label is hidden), "true_labels": int32 [b]}` with `b` the per-replica batch.
- `eval_batches(batch_size)`: one pass over the kept images as uint8 numpy batches.

In memory (the limited-data setting: the kept images, resized, up to `max_in_memory_mb`),
the images are prepared once and the order of the stream is a pure function of
`(seed, sample index)`: epoch `e` is the permutation drawn from `(seed, e)`, and random flips
are drawn per sample index. Resuming at `start_sample` therefore continues the exact stream of
the interrupted run, with no iterator state to save. Larger sources (an image folder, a TFDS
split) stream: read and decoded in parallel by tf.data (`num_parallel_calls=AUTOTUNE`, order
kept), prepared by the TF twin of the in-memory preparation (the same pixels, tested), then
shuffled through a buffer; on resume the stream is reshuffled with a seed that depends on the
resume point (docs/architecture.md). With `cache_dir`, a streamed source is decoded and
prepared once into a file cache and read from there by every later epoch and run. Batches
are prefetched (`prefetch(AUTOTUNE)`).
"""

import hashlib
import os
import shutil
import tempfile
import time

import numpy as np
import tensorflow as tf
from absl import logging

from tfgan_eff.config import configurable


LUMA = np.array([0.299, 0.587, 0.114], np.float32)  # RGB -> gray (ITU-R 601)
CACHE_VERSION = 1  # part of a file cache's key: bump when the cached preparation changes


def _to_channels(image, channels):
  """uint8 HxWxC (C in 1..4) -> uint8 HxWx`channels` (1 or 3)."""
  c = image.shape[-1]
  if c == 4:  # RGBA: drop alpha
    image, c = image[..., :3], 3
  if c == 2:  # gray + alpha
    image, c = image[..., :1], 1
  if c == channels:
    return image
  if channels == 3:
    return np.repeat(image, 3, axis=-1)
  x = image.astype(np.float32)
  luma = x[..., 0] * LUMA[0] + x[..., 1] * LUMA[1] + x[..., 2] * LUMA[2]  # as _prepare_tf
  return np.clip(np.round(luma), 0, 255).astype(np.uint8)[..., None]


def _center_crop(image):
  h, w = image.shape[:2]
  s = min(h, w)
  top, left = (h - s) // 2, (w - s) // 2
  return image[top:top + s, left:left + s]


def _resize(images, resolution):
  """Resizes a uint8 batch to resolution² (antialiased bilinear), rounding back to uint8."""
  if images.shape[1] == resolution and images.shape[2] == resolution:
    return images
  out = tf.image.resize(tf.convert_to_tensor(images, tf.float32), [resolution, resolution],
                        method="bilinear", antialias=True)
  return np.clip(np.round(out.numpy()), 0, 255).astype(np.uint8)


def _prepare_tf(image, channels, resolution):
  """The TF twin of `_to_channels`, `_center_crop` and `_resize` for one uint8 [H, W, C]
  image of any C in 1..4 (known only when the graph runs): the same pixels."""
  c = tf.shape(image)[-1]
  image = image[..., :tf.where(c % 2 == 0, c - 1, c)]  # RGBA -> RGB, gray + alpha -> gray
  if channels == 3:
    image = tf.tile(image, [1, 1, 3 // tf.shape(image)[-1]])  # gray -> RGB
  else:
    def luma():
      x = tf.cast(image, tf.float32)
      y = x[..., 0] * LUMA[0] + x[..., 1] * LUMA[1] + x[..., 2] * LUMA[2]
      return tf.cast(tf.clip_by_value(tf.round(y), 0, 255), tf.uint8)[..., None]
    image = tf.cond(tf.shape(image)[-1] == 3, luma, lambda: image[..., :1])
  image.set_shape([None, None, channels])
  h, w = tf.shape(image)[0], tf.shape(image)[1]
  s = tf.minimum(h, w)
  top, left = (h - s) // 2, (w - s) // 2
  image = image[top:top + s, left:left + s]

  def resize():
    out = tf.image.resize(tf.cast(image, tf.float32), [resolution, resolution],
                          method="bilinear", antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(out), 0, 255), tf.uint8)

  image = tf.cond(tf.equal(s, resolution), lambda: image, resize)
  image.set_shape([resolution, resolution, channels])
  return image


def _check_cache_dir(path):
  """The cache folder, created if missing; one clear error if it cannot be written."""
  if path is None:
    return None
  path = os.path.expanduser(str(path))
  try:
    os.makedirs(path, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
      pass
  except OSError as e:
    raise ValueError(
        f"ImageData.cache_dir '{path}' cannot be used: {e.strerror or e}. Point it at a "
        f"folder you can write to (it is created if missing), or set ImageData.cache_dir = "
        f"None to decode the images in every epoch.") from None
  return path


def subset_indices(n, fraction=1.0, count=None, seed=0, labels=None):
  """The sorted indices of a fixed, seeded subset: `count` images or `round(n·fraction)`.

  With `labels` (int [n]) the subset is class-balanced: each class keeps its share of the
  count (largest remainder, so the total is exact; e.g. 100 of MNIST's 10,000 digits are
  10 per class), drawn at random within the class.
  """
  if count is None:
    if not 0.0 < fraction <= 1.0:
      raise ValueError(f"data_fraction must be in (0, 1], got {fraction}.")
    count = int(round(n * fraction))
  if not 0 < count <= n:
    raise ValueError(f"Cannot keep {count} of {n} images: num_images must be in [1, {n}].")
  if count == n:
    return np.arange(n)
  rng = np.random.default_rng([seed, 0x5EB5E7])
  if labels is None:
    return np.sort(rng.permutation(n)[:count])
  labels = np.asarray(labels)
  if len(labels) != n or (labels < 0).any():
    raise ValueError("A class-balanced subset needs a label >= 0 for every image; the source "
                     "has unlabelled images. Set ImageData.class_balanced = False.")
  classes, sizes = np.unique(labels, return_counts=True)
  share = sizes * (count / n)
  take = np.floor(share).astype(int)
  by_remainder = np.argsort(-(share - take), kind="stable")
  take[by_remainder[:count - take.sum()]] += 1
  keep = [rng.permutation(np.flatnonzero(labels == c))[:k] for c, k in zip(classes, take)]
  return np.sort(np.concatenate(keep))


def label_mask(labels, fraction=1.0, seed=0):
  """Boolean mask keeping labels on a seeded, class-balanced `fraction` of each class.

  Each class c keeps `round(n_c · fraction)` of its n_c labelled images; images whose
  label is already -1 stay unlabelled.
  """
  if not 0.0 <= fraction <= 1.0:
    raise ValueError(f"label_fraction must be in [0, 1], got {fraction}.")
  keep = np.zeros(len(labels), bool)
  rng = np.random.default_rng([seed, 0x1ABE1])
  for c in np.unique(labels[labels >= 0]):
    idx = np.flatnonzero(labels == c)
    k = int(round(len(idx) * fraction))
    keep[rng.permutation(idx)[:k]] = True
  return keep


def _hash_bit(k, seed):
  """A pseudo-random bit per int64 sample index (a pure function of (k, seed))."""
  h = k * 6364136223846793005 + (seed * 1442695040888963407 + 1013904223)
  h = tf.bitwise.bitwise_xor(h, tf.bitwise.right_shift(h, 29))
  h = h * 2685821657736338717
  return tf.equal(tf.bitwise.bitwise_and(tf.bitwise.right_shift(h, 40), 1), 1)


@configurable
class ImageData:
  """Images from a source, preprocessed once, with subsets and label masks.

  Args:
    source: a `Source` (gin: `ImageData.source = @Digits()`).
    resolution: square output size in pixels.
    channels: 1 or 3; `None` keeps the source's (grayscale stays 1, RGB(A) becomes 3).
    data_fraction: keep a fixed, seeded fraction of the images (the limited-data setting).
    num_images: keep exactly this many images instead (e.g. 100-shot); overrides the fraction.
    classes: keep only the images of these classes (e.g. [0, 1, 2] to pretrain on some
      classes, [9] for a held-out target); labels become their index in this list and
      `num_classes` its length. The subset (`data_fraction` / `num_images`) is then taken
      among these images. In-memory sources only.
    class_balanced: draw the subset class-balanced (each class keeps its share of
      `num_images` / `data_fraction`); needs a label on every image.
    label_fraction: keep labels on a fixed, seeded, class-balanced fraction; others get -1.
    random_flip: random horizontal flips in the training stream.
    seed: seeds the subset, the label mask, the shuffling order and the flips.
    max_in_memory_mb: when the kept images (after resizing) take up to this much, they are
      prepared once, held in memory and streamed in an exactly resumable order; larger
      data streams from the source (an image folder or TFDS) through a shuffle buffer. 0
      streams every such source.
    shuffle_buffer: buffer size (images) for streamed sources.
    cache_dir: for streamed sources, a folder for a file cache: the whole source, decoded
      and prepared (resolution, channels), is written there once (before training starts,
      in parallel) and read from there by every epoch and by later runs with the same
      source files, resolution and channels (subsets, label masks and seeds share it). It
      takes resolution² x channels bytes per image (196 KB at 256 px RGB). None: decode in
      every epoch. In-memory data does not use it.
  """

  def __init__(self, source, resolution=32, channels=None, data_fraction=1.0,
               num_images=None, label_fraction=1.0, random_flip=False, seed=0,
               max_in_memory_mb=2048, shuffle_buffer=10000, classes=None,
               class_balanced=False, cache_dir=None):
    if resolution < 4 or resolution & (resolution - 1):
      raise ValueError(f"ImageData.resolution must be a power of two >= 4, got {resolution}.")
    if channels not in (None, 1, 3):
      raise ValueError(f"ImageData.channels must be 1, 3 or None, got {channels}.")
    self.cache_dir = _check_cache_dir(cache_dir)
    self.cache_path, self.cache_built = None, False
    self.source = source
    self.resolution = resolution
    self.random_flip = random_flip
    self.seed = seed
    self.num_classes = source.num_classes
    self.classes = self._check_classes(source, classes)
    if self.classes is not None:
      self.num_classes = len(self.classes)
    self.data_fraction, self.label_fraction = data_fraction, label_fraction
    self.class_balanced = class_balanced
    self.shuffle_buffer = shuffle_buffer
    n_total = len(source)
    if n_total == 0:
      raise ValueError(f"Source '{source.name}' holds no images.")
    first, _ = next(iter(source))
    src_c = 3 if first.shape[-1] >= 3 else 1
    self.channels = channels or src_c
    n_keep = min(n_total, num_images or int(round(n_total * data_fraction)))
    est_mb = n_keep * resolution * resolution * self.channels / 2**20
    self.in_memory = est_mb <= max_in_memory_mb or not hasattr(source, "as_tf_dataset")
    if self.classes is not None and not self.in_memory:
      raise ValueError(f"ImageData.classes needs an in-memory source, but '{source.name}' "
                       f"(~{est_mb:.0f} MB) streams; raise ImageData.max_in_memory_mb or "
                       f"drop `classes`.")
    self.name = (f"{source.name}-{resolution}px-c{self.channels}"
                 f"-n{num_images if num_images else data_fraction}-s{seed}")
    if self.classes is not None:
      self.name += "-classes" + "_".join(str(c) for c in self.classes)
    if class_balanced:
      if not self.in_memory:
        raise ValueError(f"ImageData.class_balanced needs an in-memory source, but "
                         f"'{source.name}' (~{est_mb:.0f} MB) streams; raise "
                         f"ImageData.max_in_memory_mb or drop class_balanced.")
      self.name += "-balanced"
    if self.in_memory:
      if self.cache_dir:
        logging.info("Data: in memory (~%.0f MB <= ImageData.max_in_memory_mb); "
                     "ImageData.cache_dir is not used.", est_mb)
      self._load(n_total, num_images)
    else:
      self._setup_streaming(n_total, num_images)

  # -- in memory -------------------------------------------------------------------------
  @staticmethod
  def _check_classes(source, classes):
    if classes is None:
      return None
    classes = [int(c) for c in classes]
    if not source.num_classes:
      raise ValueError(f"ImageData.classes={classes} needs labels, but source "
                       f"'{source.name}' has none; drop `classes`.")
    bad = [c for c in classes if not 0 <= c < source.num_classes]
    if not classes or bad or len(set(classes)) != len(classes):
      raise ValueError(f"ImageData.classes must be distinct labels in [0, "
                       f"{source.num_classes}) of '{source.name}', got {classes}.")
    return classes

  def _source_labels(self):
    labels = getattr(self.source, "labels", None)
    if labels is None:
      labels = [y for _, y in self.source]
    return np.asarray(labels)

  def _eligible(self, n_total):
    """Indices of the source images that `classes` allows (all without it)."""
    if self.classes is None:
      return np.arange(n_total)
    idx = np.flatnonzero(np.isin(self._source_labels(), self.classes))
    if not len(idx):
      raise ValueError(f"Source '{self.source.name}' has no image of classes {self.classes}.")
    return idx

  def _load(self, n_total, num_images):
    eligible = self._eligible(n_total)
    labels = self._source_labels()[eligible] if self.class_balanced else None
    keep = eligible[subset_indices(len(eligible), self.data_fraction, num_images, self.seed,
                                   labels)]
    self.source_indices = keep  # which source images were kept (sorted)
    images, labels, chunk = [], [], []
    for img, y in self.source.take(keep):  # an image folder decodes only these, in parallel
      if img.ndim == 2:
        img = img[..., None]
      chunk.append(_center_crop(_to_channels(img, self.channels)))
      labels.append(y)
      if len(chunk) == 256:
        images.extend(self._resize_chunk(chunk))
        chunk = []
    images.extend(self._resize_chunk(chunk))
    self.images = np.stack(images)
    self.true_labels = np.asarray(labels, np.int32)
    if self.classes is not None:  # label c -> its index in `classes`
      lut = np.full(self.source.num_classes, -1, np.int32)
      lut[self.classes] = np.arange(len(self.classes))
      self.true_labels = lut[self.true_labels]
    if self.num_classes and self.true_labels.max() >= self.num_classes:
      raise ValueError(f"Source '{self.source.name}' has label {self.true_labels.max()} but "
                       f"declares {self.num_classes} classes.")
    self.labels = np.where(label_mask(self.true_labels, self.label_fraction, self.seed),
                           self.true_labels, -1).astype(np.int32)
    self.num_examples = len(self.images)
    self.num_labelled = int((self.labels >= 0).sum())
    digest = hashlib.sha1(keep.tobytes()).hexdigest()[:8]
    self.name += f"-{digest}"
    logging.info("Data: %s: kept %d of %d images (data_fraction=%s), %d labelled "
                 "(label_fraction=%s), %dx%dx%d, in memory.", self.source.name,
                 self.num_examples, n_total, self.data_fraction, self.num_labelled,
                 self.label_fraction, self.resolution, self.resolution, self.channels)

  def _resize_chunk(self, chunk):
    out = []
    i = 0
    while i < len(chunk):  # group equal shapes so each group resizes in one call
      j = i
      while j < len(chunk) and chunk[j].shape == chunk[i].shape:
        j += 1
      out.extend(_resize(np.stack(chunk[i:j]), self.resolution))
      i = j
    return out

  # -- streaming -------------------------------------------------------------------------
  def _setup_streaming(self, n_total, num_images):
    self.images = None
    frac = (num_images / n_total) if num_images else self.data_fraction
    self._stream_fraction = frac
    self.num_examples = int(round(n_total * frac))
    self.num_labelled = (int(round(self.num_examples * self.label_fraction))
                         if self.num_classes else 0)
    if self.cache_dir:
      self._build_cache()
    logging.info("Data: %s: streaming ~%d of %d images, ~%d labelled (per-image hash "
                 "subsets; exact counts only for in-memory sources), %s.", self.source.name,
                 self.num_examples, n_total, self.num_labelled,
                 f"from the file cache {self.cache_path}" if self.cache_path else
                 "decoded in every epoch (no ImageData.cache_dir)")

  def _prepared_source(self):
    """Every source image, prepared (channels, crop, resize) in parallel, in source order:
    (uint8 image [res, res, channels], int32 label)."""
    res, ch = self.resolution, self.channels
    return self.source.as_tf_dataset().map(
        lambda x, y: (_prepare_tf(x, ch, res), tf.cast(y, tf.int32)),
        num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

  def _build_cache(self):
    """Writes the prepared source to cache_dir once, or finds it there; sets `cache_path`.

    A tf.data file cache (`Dataset.cache(filename)`), filled by one pass before training
    (errors such as an undecodable file surface then) in a temporary folder that is renamed
    when complete: an interrupted pass leaves no cache, and runs started together each
    write their own and keep the first one finished. (`Dataset.save` hangs when its input
    fails, so it is not used.)
    """
    key = hashlib.sha1(repr((self.source.fingerprint(), self.resolution, self.channels,
                             CACHE_VERSION)).encode()).hexdigest()[:16]
    folder = os.path.join(self.cache_dir, f"{self.source.name}-{self.resolution}px-"
                                          f"c{self.channels}-{key}")
    self.cache_path = os.path.join(folder, "images")
    if os.path.exists(self.cache_path + ".index"):
      return
    logging.info("Data: writing the file cache %s (one pass over %d images).", folder,
                 len(self.source))
    start = time.perf_counter()
    tmp = tempfile.mkdtemp(dir=self.cache_dir, prefix=f".{os.path.basename(folder)}-")
    try:
      self._prepared_source().cache(os.path.join(tmp, "images")).reduce(
          tf.constant(0, tf.int64), lambda count, _: count + 1)
      try:
        os.rename(tmp, folder)
      except OSError:
        if not os.path.exists(self.cache_path + ".index"):  # not a run that finished first
          raise ValueError(f"Cannot move the new file cache {tmp} to {folder}: something "
                           f"else is in the way. Remove {folder} and re-run.") from None
    finally:
      shutil.rmtree(tmp, ignore_errors=True)
    seconds = time.perf_counter() - start
    logging.info("Data: file cache written in %.1f s (%.1f images/s).", seconds,
                 len(self.source) / seconds)
    self.cache_built = True

  def _stream_examples(self):
    """Streams (uint8 image at resolution, label, true label) for large sources."""
    res, ch, seed = self.resolution, self.channels, self.seed
    frac, lfrac = self._stream_fraction, self.label_fraction

    def unit(i, salt):
      return tf.random.stateless_uniform([], seed=tf.stack([tf.cast(i, tf.int64),
                                                            tf.constant(seed * 7919 + salt,
                                                                        tf.int64)]))

    def shown(i, label):
      return tf.where(unit(i, 2) < lfrac, label, -1)

    if self.cache_path:  # prepared already: read from the cache, the source is not read
      ds = self._prepared_source().cache(self.cache_path).enumerate()
    else:
      ds = self.source.as_tf_dataset().enumerate()
    if frac < 1.0:
      ds = ds.filter(lambda i, ex: unit(i, 1) < frac)
    if self.cache_path:
      return ds.map(lambda i, ex: (ex[0], shown(i, ex[1]), ex[1]))

    def prep(i, ex):
      label = tf.cast(ex[1], tf.int32)
      return _prepare_tf(ex[0], ch, res), shown(i, label), label

    return ds.map(prep, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

  # -- training stream -------------------------------------------------------------------
  def dataset_fn(self, global_batch, start_sample=0):
    """A function for `strategy.distribute_datasets_from_function`.

    Sample k of the global stream (k = 0, 1, ...) is the same whatever the number of
    replicas; `start_sample` resumes the stream at sample k.
    """

    def fn(input_context=None):
      pipes = input_context.num_input_pipelines if input_context else 1
      pid = input_context.input_pipeline_id if input_context else 0
      b = (input_context.get_per_replica_batch_size(global_batch) if input_context
           else global_batch)
      if self.in_memory:
        ds = self._indexed_stream(start_sample)
      else:
        ds = self._shuffled_stream(start_sample)
      if self.random_flip:
        ds = ds.map(self._flip, num_parallel_calls=tf.data.AUTOTUNE)
      if pipes > 1:
        # Pipeline `pid` takes block `pid` of every global batch, so global row r is the
        # same sample (and meets the same SampleRNG row) on any number of workers.
        ds = ds.batch(global_batch // pipes, drop_remainder=True).shard(pipes, pid).unbatch()
      ds = ds.batch(b, drop_remainder=True)
      ds = ds.map(self._finish_batch, num_parallel_calls=tf.data.AUTOTUNE)
      return ds.prefetch(tf.data.AUTOTUNE)

    return fn

  def _indexed_stream(self, start_sample):
    n = self.num_examples
    seed = self.seed
    images = tf.constant(self.images)
    labels = tf.constant(self.labels)
    true_labels = tf.constant(self.true_labels)
    first_epoch = start_sample // n

    def epoch(e):
      perm = tf.argsort(tf.random.stateless_uniform(
          [n], seed=tf.stack([tf.constant(seed, tf.int64), e])))
      k = e * n + tf.range(n, dtype=tf.int64)
      return tf.data.Dataset.from_tensor_slices((k, tf.cast(perm, tf.int64)))

    ds = tf.data.Dataset.range(first_epoch, 2**40).flat_map(epoch)
    ds = ds.skip(start_sample - first_epoch * n)
    return ds.map(lambda k, i: {"k": k, "images": tf.gather(images, i),
                                "labels": tf.gather(labels, i),
                                "true_labels": tf.gather(true_labels, i)})

  def _shuffled_stream(self, start_sample):
    ds = self._stream_examples().repeat()
    ds = ds.shuffle(self.shuffle_buffer, seed=self.seed * 1000003 + start_sample)
    k0 = tf.constant(start_sample, tf.int64)
    return ds.enumerate().map(lambda k, ex: {"k": k + k0, "images": ex[0], "labels": ex[1],
                                             "true_labels": ex[2]})

  def _flip(self, example):
    """Mirrors sample k's image when its hash bit is set: per uint8 image, before batching
    (at 256 px a select over the float batch held the in-memory stream to a third of its
    rate; docs/performance.md). The same pixels as flipping after the conversion."""
    image, flip = example["images"], _hash_bit(example["k"], self.seed)
    return {**example, "images": tf.cond(flip, lambda: tf.reverse(image, axis=[1]),
                                          lambda: image)}

  def _finish_batch(self, batch):
    x = tf.cast(batch["images"], tf.float32) / 127.5 - 1.0
    return {"images": x, "labels": batch["labels"], "true_labels": batch["true_labels"]}

  # -- evaluation ------------------------------------------------------------------------
  def eval_batches(self, batch_size=256):
    """One pass over the kept images: uint8 numpy batches [b, H, W, C]."""
    if self.in_memory:
      for i in range(0, self.num_examples, batch_size):
        yield self.images[i:i + batch_size]
    else:
      ds = self._stream_examples().map(lambda x, y, t: x).batch(batch_size)
      yield from ds.as_numpy_iterator()
