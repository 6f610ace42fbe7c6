"""Image sources. Each yields `(uint8 image [H, W, C], int label or -1)` pairs.

Sources are Python iterables of numpy arrays so that they can be decoded, resized and held in
memory once (the limited-data setting). Sources that can be large also stream as a `tf.data`
pipeline (`as_tf_dataset`) for collections that do not fit: an image folder (files read and
decoded by TF in parallel, in file order) or a TFDS split.
"""

import abc
import gzip
import hashlib
import os
import re
import struct

import numpy as np
import tensorflow as tf
from absl import logging

from tfgan_eff.config import configurable

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")


class Source(abc.ABC):
  """A finite collection of images with optional integer labels.

  Attributes:
    name: short identifier used in cache keys and logs.
    num_classes: number of label values (0 when the source has no labels).
  """

  name = "source"
  num_classes = 0

  @abc.abstractmethod
  def __iter__(self):
    """Yields (uint8 image [H, W, C], int label or -1)."""

  @abc.abstractmethod
  def __len__(self):
    """Number of images."""

  def take(self, indices):
    """Yields (image, label) of the images at the sorted `indices`, in that order.

    This default reads the source in order up to the last index; sources with random
    access (an image folder) read only those images.
    """
    keep = {int(i) for i in indices}
    last = max(keep, default=-1)
    for i, example in enumerate(self):
      if i > last:
        return
      if i in keep:
        yield example

  def fingerprint(self):
    """A string that changes when the images change: part of the key of a file cache
    (`ImageData.cache_dir`). This default is the name; sources whose files can change in
    place override it."""
    return self.name


class UndecodableImage(ValueError):
  """An image file that cannot be decoded."""


def _decode_op(path):
  """Reads and decodes one image file with TF's decoders: uint8 [H, W, C] (C = 1..4).

  The one decoder of image files, run eagerly by `_decode` and inside tf.data pipelines,
  so images held in memory and streamed ones are the same pixels.
  """
  return tf.io.decode_image(tf.io.read_file(path), expand_animations=False, dtype=tf.uint8)


def _decode(path):
  """Decodes one image file to uint8 HxWxC, or raises UndecodableImage naming the file."""
  try:
    image = _decode_op(path)
  except (tf.errors.InvalidArgumentError, tf.errors.UnknownError, tf.errors.NotFoundError) as e:
    reason = re.sub(r"^\{\{.*?\}\}\s*|\s*\[Op:.*$", "", str(e).splitlines()[0]).strip()
    err = UndecodableImage(
        f"Could not decode image file '{path}' ({reason}). "
        f"Remove or re-save this file (PNG or JPEG), or point the source elsewhere.")
    err.reason = reason
    raise err from None
  return image.numpy()


def _undecodable_message(bad, path):
  shown = "\n  ".join(f"{f}: {why}" for f, why in bad[:50])
  more = f"\n  ... and {len(bad) - 50} more" if len(bad) > 50 else ""
  return (f"{len(bad)} image file(s) under '{path}' cannot be decoded:\n  {shown}{more}\n"
          f"Remove or re-save them (PNG or JPEG), or skip them with "
          f"--gin_param=\"ImageFolder.on_error = 'skip'\".")


@configurable
class ImageFolder(Source):
  """PNG/JPEG/BMP/GIF images found recursively under `path`.

  Args:
    path: the folder.
    labels_from_subfolders: when True, each immediate sub-folder is one class (sorted by
      name, label = index); images directly in `path` are then an error.
    on_error: what an undecodable file does: 'raise' (one error listing every such file,
      once all have been read; a streamed folder stops at the first one, naming it) or
      'skip' (every file is decoded once here, in parallel, and the bad ones are left out
      with a warning naming them).

  Files are read and decoded by TF in parallel (`tf.data`, `num_parallel_calls=AUTOTUNE`),
  in file order, whether the images are loaded into memory or streamed (`as_tf_dataset`).
  """

  def __init__(self, path, labels_from_subfolders=False, on_error="raise"):
    if on_error not in ("raise", "skip"):
      raise ValueError(f"ImageFolder.on_error must be 'raise' or 'skip', got {on_error!r}.")
    self.on_error = on_error
    path = os.path.expanduser(path)
    if not os.path.isdir(path):
      raise FileNotFoundError(
          f"Image folder '{path}' does not exist. Set ImageFolder.path to a folder of "
          f"PNG/JPEG images (e.g. --gin_param=\"ImageFolder.path='/data/my_images'\").")
    self.path = path
    self.name = "folder-" + os.path.basename(os.path.normpath(path))
    self.files, labels = [], []
    classes = sorted(d for d in os.listdir(path) if os.path.isdir(os.path.join(path, d)))
    for root, _, names in sorted(os.walk(path)):
      for n in sorted(names):
        if not n.lower().endswith(IMAGE_EXTENSIONS):
          continue
        full = os.path.join(root, n)
        label = -1
        if labels_from_subfolders:
          rel = os.path.relpath(full, path).split(os.sep)
          if len(rel) < 2:
            raise ValueError(
                f"'{full}' sits directly in '{path}', but labels_from_subfolders=True expects "
                f"every image inside a class sub-folder. Move it into one, or set "
                f"ImageFolder.labels_from_subfolders=False.")
          label = classes.index(rel[0])
        self.files.append(full)
        labels.append(label)
    if not self.files:
      raise ValueError(
          f"Image folder '{path}' contains no images (looked for {', '.join(IMAGE_EXTENSIONS)} "
          f"recursively). Put images there or point ImageFolder.path elsewhere.")
    self.labels = np.asarray(labels, np.int32)
    self.num_classes = len(classes) if labels_from_subfolders else 0
    self.class_names = classes if labels_from_subfolders else []
    if on_error == "skip":
      every = np.arange(len(self.files))
      seen = {int(i) for i in self._decoded(every).map(lambda i, x, y: i).as_numpy_iterator()}
      bad = self._reasons([i for i in every if i not in seen])
      if bad:
        logging.warning("Skipping %s", _undecodable_message(bad, path).split("\nRemove")[0])
        drop = {f for f, _ in bad}
        keep = [i for i, f in enumerate(self.files) if f not in drop]
        self.files = [self.files[i] for i in keep]
        self.labels = self.labels[keep]
        if not self.files:
          raise ValueError(f"No image under '{path}' can be decoded.")

  def __len__(self):
    return len(self.files)

  def __iter__(self):
    return self.take(range(len(self.files)))

  def fingerprint(self):
    """The relative paths, sizes, modification times and labels of the files."""
    h = hashlib.sha1()
    for f, y in zip(self.files, self.labels):
      st = os.stat(f)
      h.update(f"{os.path.relpath(f, self.path)}\0{st.st_size}\0{st.st_mtime_ns}\0{y}\n"
               .encode())
    return f"{self.name}-{len(self.files)}-{h.hexdigest()}"

  def _decoded(self, indices):
    """tf.data of (index, uint8 image, label) for the files at `indices`, in that order,
    read and decoded in parallel; a file that cannot be decoded is left out (its index is
    missing from the stream)."""
    indices = np.asarray(indices, np.int64).reshape([-1])
    files = np.asarray(self.files, object)[indices].astype(str)
    ds = tf.data.Dataset.from_tensor_slices((indices, files, self.labels[indices]))
    ds = ds.map(lambda i, f, y: (i, _decode_op(f), y), num_parallel_calls=tf.data.AUTOTUNE,
                deterministic=True)
    return ds.ignore_errors()

  def _reasons(self, indices):
    """[(file, why it cannot be decoded)] for the files at `indices`, decoded one by one."""
    bad = []
    for i in indices:
      try:
        _decode(self.files[i])
        bad.append((self.files[i], "could not be read in the parallel pass"))
      except UndecodableImage as e:
        bad.append((self.files[i], e.reason))
    return bad

  def take(self, indices):
    """Decodes only the files at `indices`, in parallel; with on_error='raise', one error
    names every file among them that cannot be decoded, once all have been read."""
    indices = [int(i) for i in indices]
    pending, missing = iter(indices), []
    for i, image, y in self._decoded(indices).as_numpy_iterator():
      for j in pending:  # indices before i that never came are undecodable files
        if j == i:
          break
        missing.append(j)
      yield image, int(y)
    missing.extend(pending)
    if missing:
      raise ValueError(_undecodable_message(self._reasons(missing), self.path))

  def as_tf_dataset(self):
    """Every image as a tf.data pipeline of (uint8 image [H, W, C], int32 label), in file
    order, read and decoded by TF in parallel. A file that cannot be decoded stops the stream
    with an error naming it (with on_error='skip' such files were left out already)."""
    n = len(self.files)
    files = tf.constant(self.files)
    fix = (f"(the first such file under {self.path}). Remove or re-save it (PNG or JPEG), or "
           f"leave such files out: set the gin parameter ImageFolder.on_error to skip.")

    def check(expected, example):  # a gap in the indices is a file that failed to decode
      i = example[0]
      ok = tf.debugging.Assert(tf.equal(i, expected), [
          "Could not decode image file", tf.gather(files, tf.minimum(expected, n - 1)), fix])
      with tf.control_dependencies([ok]):
        return i + 1, tf.nest.map_structure(tf.identity, example)

    end = tf.data.Dataset.from_tensors((tf.constant(n, tf.int64), tf.zeros([0, 0, 0], tf.uint8),
                                        tf.constant(-1, tf.int32)))
    ds = self._decoded(np.arange(n)).concatenate(end)  # `end` checks for a missing last file
    ds = ds.scan(tf.constant(0, tf.int64), check).filter(lambda i, x, y: i < n)
    return ds.map(lambda i, x, y: (x, y))


def _read_idx(path):
  """Reads an MNIST-style IDX file (optionally gzipped) into a numpy array."""
  opener = gzip.open if path.endswith(".gz") else open
  with opener(path, "rb") as f:
    data = f.read()
  if len(data) < 4 or data[0] != 0 or data[1] != 0:
    raise ValueError(f"'{path}' is not an IDX file (bad magic number).")
  dtype = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4",
           0x0E: ">f8"}.get(data[2])
  if dtype is None:
    raise ValueError(f"'{path}': unknown IDX element type 0x{data[2]:02x}.")
  ndim = data[3]
  shape = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
  arr = np.frombuffer(data, dtype=dtype, offset=4 + 4 * ndim)
  if arr.size != int(np.prod(shape)):
    raise ValueError(f"'{path}' is truncated: header says {shape}, found {arr.size} values.")
  return arr.reshape(shape)


class InMemory(Source):
  """A source whose images are one uint8 array in memory (`self.images` [N, H, W, C],
  `self.labels` [N] int32, -1 where unlabelled): random access for `take`."""

  images: np.ndarray
  labels: np.ndarray

  def __len__(self):
    return len(self.images)

  def __iter__(self):
    for x, y in zip(self.images, self.labels):
      yield x, int(y)

  def take(self, indices):
    for i in sorted({int(i) for i in indices}):
      yield self.images[i], int(self.labels[i])


@configurable
class Arrays(InMemory):
  """Images held in array files: `.npz` (keys `images`, optional `labels`) or IDX.

  For IDX, `path` names the images file (`*-images-idx3-ubyte[.gz]`); the labels file is
  found next to it (`*-labels-idx1-ubyte[.gz]`) or given as `labels_path`.
  Images may be [N, H, W] (grayscale) or [N, H, W, C], uint8.
  """

  def __init__(self, path, labels_path=None, num_classes=None):
    path = os.path.expanduser(path)
    if not os.path.exists(path):
      raise FileNotFoundError(
          f"Array file '{path}' does not exist. Set Arrays.path to an .npz with 'images' "
          f"(and 'labels') or to an IDX images file such as t10k-images-idx3-ubyte.gz.")
    self.name = "arrays-" + os.path.basename(path).split(".")[0]
    labels = None
    if path.endswith(".npz"):
      with np.load(path) as f:
        if "images" not in f:
          raise ValueError(f"'{path}' has no 'images' array (found {sorted(f.keys())}).")
        images = f["images"]
        labels = f["labels"] if "labels" in f else None
    else:
      images = _read_idx(path)
      if labels_path is None:
        guess = path.replace("images-idx3", "labels-idx1")
        labels_path = guess if guess != path and os.path.exists(guess) else None
      if labels_path is not None:
        labels = _read_idx(os.path.expanduser(labels_path))
    if images.ndim == 3:
      images = images[..., None]
    if images.ndim != 4 or images.dtype != np.uint8:
      raise ValueError(f"'{path}': expected uint8 images [N,H,W(,C)], got {images.dtype} "
                       f"{images.shape}.")
    if labels is not None and len(labels) != len(images):
      raise ValueError(f"'{path}': {len(images)} images but {len(labels)} labels.")
    self.images = images
    self.labels = (np.asarray(labels, np.int32) if labels is not None
                   else np.full(len(images), -1, np.int32))
    self.num_classes = (num_classes if num_classes is not None
                        else (int(self.labels.max()) + 1 if labels is not None else 0))


@configurable
class Digits(InMemory):
  """The built-in default: the 1,797 real 8x8 handwritten digits bundled with scikit-learn.

  No download needed. Pixel values 0..16 are scaled to 0..255; 10 classes.
  """

  name = "digits"
  num_classes = 10

  def __init__(self):
    from sklearn.datasets import load_digits  # bundled with the package, no network
    d = load_digits()
    self.images = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    self.labels = d.target.astype(np.int32)


@configurable
class TFDS(Source):
  """Any TensorFlow Datasets name/split, e.g. `cifar10` / `train` or `imagenet2012`.

  Works for users online (or with a prepared `data_dir`); tests use local sources.
  """

  def __init__(self, name, split="train", data_dir=None, image_key="image",
               label_key="label"):
    import tensorflow_datasets as tfds
    try:
      builder = tfds.builder(name, data_dir=data_dir)
    except Exception as e:  # tfds raises several types for unknown names
      raise ValueError(f"Unknown TFDS dataset '{name}': {e}") from None
    self.name = f"tfds-{name}-{split.replace('[', '').replace(']', '').replace(':', '-')}"
    self._builder, self._split = builder, split
    self._image_key, self._label_key = image_key, label_key
    try:
      builder.download_and_prepare()
    except Exception as e:
      raise RuntimeError(
          f"TFDS dataset '{name}' is not available locally and could not be prepared: {e}\n"
          f"Prepare it where you have network access (or follow the manual download "
          f"instructions of TFDS for '{name}') and pass TFDS.data_dir.") from None
    info = builder.info
    self._len = info.splits[split].num_examples
    feat = info.features.get(label_key) if hasattr(info.features, "get") else None
    self.num_classes = int(getattr(feat, "num_classes", 0) or 0)

  def __len__(self):
    return self._len

  def fingerprint(self):
    return f"{self.name}-{self._builder.info.version}"

  def as_tf_dataset(self):
    ds = self._builder.as_dataset(split=self._split, shuffle_files=False)
    ik, lk, has_label = self._image_key, self._label_key, self.num_classes > 0
    return ds.map(lambda ex: (ex[ik], tf.cast(ex[lk], tf.int32) if has_label
                              else tf.constant(-1, tf.int32)))

  def __iter__(self):
    for x, y in self.as_tf_dataset().as_numpy_iterator():
      yield x, int(y)
