"""Files a run writes and reads: atomic writes, uint8 quantization, PNG grids, scalars.

    atomic_write("runs/q/eval.jsonl", text)              # readers see old or new, never a part
    write_png("grid.png", image_grid(to_uint8(images)))   # float [-1, 1] -> one PNG grid
    read_scalars("runs/q")["eval/fid"]                    # {200: 156.6, 400: 101.7, ...}

Light to import (numpy only): TensorFlow is imported by the functions that need it, so
tools that never touch a tensor (`bin/study`'s bookkeeping) stay quick to start.
"""

import os
import tempfile

import numpy as np


def _umask():
  mask = os.umask(0)
  os.umask(mask)
  return mask


_FILE_MODE = 0o666 & ~_umask()  # what open() would give: readable by TensorBoard, colleagues


def atomic_write(path, data, mode="w"):
  """Writes a file so that readers see the old or the new content, never a part.

  `data` is text (mode "w") or bytes (mode "wb"); missing folders are made. The file gets
  the mode `open()` would give it (not mkstemp's 0600).
  """
  d = os.path.dirname(path) or "."
  os.makedirs(d, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp-")
  try:
    with os.fdopen(fd, mode) as f:
      f.write(data)
    os.chmod(tmp, _FILE_MODE)  # mkstemp makes 0600
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def to_uint8(images, value_range=(-1.0, 1.0)):
  """Quantizes float images (default range [-1, 1]) to uint8 the way images are saved.

  v = floor((x − lo) · 255 / (hi − lo) + 0.5), clipped to [0, 255]: round half up, which
  equals stylegan2-ada's `(x * 127.5 + 128).clamp(0, 255).to(uint8)` for [-1, 1] inputs
  (docs/architecture.md, "One uint8 quantizer"). Computed in float32 with TF ops, so it
  works inside a `tf.function` (the SavedModel's `generate`) as well as eagerly.

  A tensor in gives a uint8 tensor out; anything else (numpy, lists) a uint8 numpy array.
  Evaluate quantized images: real images are uint8 too, and metrics computed on
  unquantized floats are not comparable.

  >>> to_uint8(np.array([-1.0, 0.0, 0.5, 1.0]))    # array([  0, 128, 191, 255], dtype=uint8)
  """
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  lo, hi = value_range
  x = tf.cast(images, tf.float32)
  v = tf.floor((x - lo) * (255.0 / (hi - lo)) + 0.5)
  out = tf.cast(tf.clip_by_value(v, 0.0, 255.0), tf.uint8)
  return out if tf.is_tensor(images) or not tf.executing_eagerly() else out.numpy()


def image_grid(images, cols=None):
  """uint8 [N, H, W, C] -> one uint8 [rows·H, cols·W, C] grid (square-ish by default)."""
  images = np.asarray(images)
  n, h, w, c = images.shape
  cols = cols or int(np.ceil(np.sqrt(n)))
  rows = int(np.ceil(n / cols))
  grid = np.zeros([rows * h, cols * w, c], np.uint8)
  for i in range(n):
    r, q = divmod(i, cols)
    grid[r * h:(r + 1) * h, q * w:(q + 1) * w] = images[i]
  return grid


def write_png(path, grid):
  """Writes a uint8 [H, W, C] image (e.g. an `image_grid`) as a PNG, atomically."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  atomic_write(path, tf.io.encode_png(grid).numpy(), mode="wb")


def read_scalars(model_dir):
  """{tag: {step: value}} of the numeric scalars a run wrote to TensorBoard (`train/`).

  >>> read_scalars("runs/quickstart")["eval/fid"]   # {200: 156.6, 400: 101.7, ...}
  """
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  out = {}
  events = os.path.join(model_dir, "train")
  for name in sorted(os.listdir(events)):
    for e in tf.compat.v1.train.summary_iterator(os.path.join(events, name)):
      for v in e.summary.value:
        value = tf.make_ndarray(v.tensor)
        if value.ndim == 0 and value.dtype.kind in "fiu":
          out.setdefault(v.tag, {})[e.step] = float(value)
  return out
