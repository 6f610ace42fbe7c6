"""The standard FID Inception network: TTUR's `classify_image_graph_def.pb`, run in TF2.

The weights are the frozen TF1 graph inside `inception-2015-12-05.tgz` (the file TTUR, the
OpenAI Inception-score code and mimicry use; pytorch-fid, torch-fidelity, clean-fid and
stylegan2-ada use ports of the same weights). It is about 95 MB, not on PyPI, and never
downloaded unless asked (`download=True`).

How the graph is run (the preprocessing decisions):

- **Input node.** We feed `ExpandDims:0` (through `import_graph_def(input_map=...)`), like
  TTUR (`FID_Inception_Net/ExpandDims:0`) and the OpenAI IS code: a float32 batch
  [B, H, W, 3] holding uint8 *values* 0..255, of any H and W. The graph's own JPEG decoding
  (`DecodeJpeg`, `Cast`) is bypassed. Because we map our own [None, None, None, 3] tensor
  onto `ExpandDims:0`, the batch dimension is free everywhere downstream; no TTUR-style
  patching of static shapes is needed.
- **Resize to 299.** `resize="legacy_tf"` (default): none outside the graph; the graph's
  `ResizeBilinear` node resizes (TF1 legacy bilinear: align_corners=False,
  half_pixel_centers=False), then `Sub`/`Mul` map to [-1, 1]. This is exactly TTUR's and
  the numbers are comparable with TTUR-based papers. `resize="clean"`: each channel is first
  resized to 299×299 as float with PIL bicubic and clipped to [0, 255] without
  re-quantizing (clean-fid's "clean" mode); the in-graph 299→299 resize is then the identity.
- **Quantization.** Inputs are uint8 (the Evaluator contract): generated images are
  quantized with `to_uint8` exactly as a saved PNG would be.
- **Outputs.** `pool_3:0` is [B, 1, 1, 2048] and reshaped to [B, 2048]. The graph's
  `pool_3/_reshape` has batch size 1 baked in, so we do not run it (nor the `softmax` node
  after it); logits are computed as `pool @ W` with W the constant feeding
  `softmax/logits/MatMul` (1008 classes), *without* the bias: this is what the OpenAI IS
  code does and what torch-fidelity calls `logits_unbiased`, so IS matches published values.
- **Deprecated op.** The 2015 graph uses `BatchNormWithGlobalNormalization`, removed from
  GraphDef version 9 on; a function graph built by `wrap_function` has the current version,
  so each such node is rewritten into the same arithmetic with current ops
  ((x − mean) · (rsqrt(var + eps) · gamma) + beta). Should another removed op ever show up,
  the graph is run with a `tf.compat.v1.Session` instead (TTUR's way).
"""

import hashlib
import os
import shutil
import tarfile
import tempfile
import urllib.request

import numpy as np
import tensorflow as tf
from absl import logging
from tensorflow.core.framework import attr_value_pb2, node_def_pb2

from tfgan_eff.eval.features import DEFAULT_CACHE_DIR, FeatureExtractor

INCEPTION_URL = "http://download.tensorflow.org/models/image/imagenet/inception-2015-12-05.tgz"
INCEPTION_NAME = "inception-2015-12-05"
GRAPH_FILENAME = "classify_image_graph_def.pb"
TGZ_FILENAME = "inception-2015-12-05.tgz"
# Not known on this machine (no network): pass `expected_sha256` to check a file. The hash
# of every file loaded is written next to it (`<file>.sha256`) and recorded with results.
INCEPTION_SHA256 = None

INPUT_TENSOR = "ExpandDims:0"
POOL_TENSOR = "pool_3:0"
LOGITS_MATMUL = "softmax/logits/MatMul"
RESIZE_MODES = ("legacy_tf", "clean")
INPUT_SIZE = 299


class InceptionNotFoundError(FileNotFoundError):
  pass


def _not_found(where):
  return InceptionNotFoundError(
      f"Inception weights not found: put {GRAPH_FILENAME} (or {TGZ_FILENAME}) at {where} "
      f"or pass --inception_path (download: {INCEPTION_URL}, or call "
      f"load_inception(download=True) where the network is reachable).")


def sha256_of(path):
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      h.update(chunk)
  return h.hexdigest()


def _extract_pb(tgz_path, cache_dir):
  """Extracts classify_image_graph_def.pb from the .tgz into cache_dir (atomically)."""
  os.makedirs(cache_dir, exist_ok=True)
  target = os.path.join(cache_dir, GRAPH_FILENAME)
  try:
    with tarfile.open(tgz_path, "r:*") as tar:
      member = next((m for m in tar.getmembers()
                     if os.path.basename(m.name) == GRAPH_FILENAME and m.isfile()), None)
      if member is None:
        raise ValueError(f"'{tgz_path}' does not contain {GRAPH_FILENAME}; expected the "
                         f"archive {INCEPTION_URL}.")
      if os.path.exists(target) and os.path.getsize(target) == member.size:
        return target
      fd, tmp = tempfile.mkstemp(dir=cache_dir, prefix=".tmp-", suffix=".pb")
      with os.fdopen(fd, "wb") as out, tar.extractfile(member) as src:
        shutil.copyfileobj(src, out)
      os.chmod(tmp, 0o644)
  except tarfile.TarError as e:
    raise ValueError(f"'{tgz_path}' is not a readable .tgz archive ({e}); re-download "
                     f"{INCEPTION_URL}.") from None
  os.replace(tmp, target)
  return target


def _download(cache_dir):
  os.makedirs(cache_dir, exist_ok=True)
  target = os.path.join(cache_dir, TGZ_FILENAME)
  fd, tmp = tempfile.mkstemp(dir=cache_dir, prefix=".tmp-", suffix=".tgz")
  os.close(fd)
  logging.info("Downloading %s to %s", INCEPTION_URL, target)
  try:
    urllib.request.urlretrieve(INCEPTION_URL, tmp)
    os.chmod(tmp, 0o644)
    os.replace(tmp, target)
  except OSError as e:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise InceptionNotFoundError(
        f"Could not download {INCEPTION_URL} ({e}). Download it elsewhere and put "
        f"{TGZ_FILENAME} (or the {GRAPH_FILENAME} inside) at {cache_dir} or pass "
        f"--inception_path.") from None
  return target


def locate_inception(path=None, cache_dir=DEFAULT_CACHE_DIR, download=False):
  """Returns the path of classify_image_graph_def.pb, extracting a .tgz into `cache_dir`.

  `path` may be the .pb, the .tgz, or a folder holding either. Without `path`, `cache_dir`
  is searched. Downloads only with `download=True`. Raises `InceptionNotFoundError` with one
  message naming where to put the file.
  """
  cache_dir = os.path.expanduser(cache_dir)
  if path:
    p = os.path.expanduser(path)
    if os.path.isdir(p):
      candidates = [os.path.join(p, GRAPH_FILENAME), os.path.join(p, TGZ_FILENAME)]
    else:
      candidates = [p]
    where = p
  else:
    candidates = [os.path.join(cache_dir, GRAPH_FILENAME),
                  os.path.join(cache_dir, TGZ_FILENAME)]
    where = cache_dir
  for c in candidates:
    if os.path.isfile(c):
      if c.endswith((".tgz", ".tar.gz", ".tar")):
        return _extract_pb(c, cache_dir)
      return c
  if download:
    return _extract_pb(_download(cache_dir), cache_dir)
  raise _not_found(where)


def _record_hash(pb_path, digest, cache_dir):
  line = f"{digest}  {os.path.basename(pb_path)}\n"
  for target in (pb_path + ".sha256",
                 os.path.join(cache_dir, os.path.basename(pb_path) + ".sha256")):
    try:
      if os.path.exists(target):
        with open(target) as f:
          if f.read() == line:
            return
      with open(target, "w") as f:
        f.write(line)
      return
    except OSError:
      continue


# ---------------------------------------------------------------------------------------
# GraphDef surgery
# ---------------------------------------------------------------------------------------

def _node(name, op, inputs, t=None, **attrs):
  n = node_def_pb2.NodeDef(name=name, op=op)
  n.input.extend(inputs)
  if t is not None:
    n.attr["T"].CopyFrom(attr_value_pb2.AttrValue(type=t))
  for k, v in attrs.items():
    n.attr[k].CopyFrom(v)
  return n


def replace_deprecated_batchnorm(graph_def):
  """Returns a copy of `graph_def` with every BatchNormWithGlobalNormalization node (op
  removed in GraphDef version 9) replaced by the kernel's arithmetic in current ops:
  out = (x − mean) · (rsqrt(var + eps) · gamma) + beta  (gamma only with
  `scale_after_normalization`). The final node keeps the original name."""
  out = tf.compat.v1.GraphDef()
  out.versions.CopyFrom(graph_def.versions)
  out.library.CopyFrom(graph_def.library)
  for node in graph_def.node:
    if node.op != "BatchNormWithGlobalNormalization":
      out.node.add().CopyFrom(node)
      continue
    data = [i for i in node.input if not i.startswith("^")]
    control = [i for i in node.input if i.startswith("^")]
    x, mean, var, beta, gamma = data
    dtype = node.attr["T"].type
    eps = node.attr["variance_epsilon"].f
    p = node.name + "/tfgan_eff_"
    eps_value = tf.make_tensor_proto(
        np.asarray(eps, tf.dtypes.as_dtype(dtype).as_numpy_dtype))
    out.node.extend([
        _node(p + "eps", "Const", [], dtype=attr_value_pb2.AttrValue(type=dtype),
              value=attr_value_pb2.AttrValue(tensor=eps_value)),
        _node(p + "var_eps", "AddV2", [var, p + "eps"], dtype),
        _node(p + "rsqrt", "Rsqrt", [p + "var_eps"], dtype),
    ])
    scale = p + "rsqrt"
    if node.attr["scale_after_normalization"].b:
      out.node.append(_node(p + "scale", "Mul", [scale, gamma], dtype))
      scale = p + "scale"
    out.node.extend([
        _node(p + "centered", "Sub", [x, mean], dtype),
        _node(p + "scaled", "Mul", [p + "centered", scale], dtype),
        _node(node.name, "AddV2", [p + "scaled", beta] + control, dtype),
    ])
  return out


def _tensor_name(input_name):
  name = input_name.lstrip("^")
  return name if ":" in name else name + ":0"


def _check_nodes(graph_def, source):
  names = {n.name: n for n in graph_def.node}
  for t in (INPUT_TENSOR, POOL_TENSOR, LOGITS_MATMUL):
    if t.split(":")[0] not in names:
      raise ValueError(
          f"'{source}' does not look like the {INCEPTION_NAME} Inception graph: it has no "
          f"node '{t.split(':')[0]}'. Use {GRAPH_FILENAME} from {INCEPTION_URL}.")
  return _tensor_name(names[LOGITS_MATMUL].input[1])


class _FunctionRunner:
  """The graph imported into a `tf.compat.v1.wrap_function` (the default)."""

  def __init__(self, graph_def, weights_tensor):
    graph_def = replace_deprecated_batchnorm(graph_def)

    def run(images):
      pool, w = tf.graph_util.import_graph_def(
          graph_def, input_map={INPUT_TENSOR: images},
          return_elements=[POOL_TENSOR, weights_tensor], name="inception")
      pool = tf.reshape(pool, [-1, w.shape[0]])
      return {"pool": pool, "logits": tf.matmul(pool, w)}

    wrapped = tf.compat.v1.wrap_function(
        run, [tf.TensorSpec([None, None, None, 3], tf.float32)])
    self._fn = wrapped.prune(feeds=wrapped.inputs, fetches=wrapped.structured_outputs)

  def __call__(self, images):
    out = self._fn(tf.convert_to_tensor(images, tf.float32))
    return {k: v.numpy() for k, v in out.items()}


class _SessionRunner:
  """Fallback: the graph in a `tf.Graph` run by a `tf.compat.v1.Session` (as TTUR). A
  tf.Graph takes the imported GraphDef's old producer version, so removed ops still run."""

  def __init__(self, graph_def, weights_tensor):
    self._graph = tf.Graph()
    with self._graph.as_default():
      self._images = tf.compat.v1.placeholder(tf.float32, [None, None, None, 3])
      pool, w = tf.graph_util.import_graph_def(
          graph_def, input_map={INPUT_TENSOR: self._images},
          return_elements=[POOL_TENSOR, weights_tensor], name="inception")
      pool = tf.reshape(pool, [-1, w.shape[0]])
      self._out = {"pool": pool, "logits": tf.matmul(pool, w)}
    self._session = tf.compat.v1.Session(graph=self._graph)

  def __call__(self, images):
    return self._session.run(self._out, {self._images: np.asarray(images, np.float32)})


_RUNNERS = {}  # (realpath, size, mtime) -> (runner, sha256): load each file once per process


def _runner_for(pb_path, expected_sha256, cache_dir):
  st = os.stat(pb_path)
  key = (os.path.realpath(pb_path), st.st_size, st.st_mtime_ns)
  digest = _RUNNERS[key][1] if key in _RUNNERS else sha256_of(pb_path)
  if expected_sha256 and digest != expected_sha256.lower():
    raise ValueError(
        f"SHA-256 of '{pb_path}' is {digest}, expected {expected_sha256}: the file is "
        f"not the {INCEPTION_NAME} graph or is corrupt. Replace it with {GRAPH_FILENAME} "
        f"from {INCEPTION_URL}.")
  if key not in _RUNNERS:
    _record_hash(pb_path, digest, cache_dir)
    graph_def = tf.compat.v1.GraphDef()
    with open(pb_path, "rb") as f:
      try:
        graph_def.ParseFromString(f.read())
      except Exception:  # protobuf raises DecodeError; keep the message about the file
        raise ValueError(f"'{pb_path}' is not a TensorFlow GraphDef (corrupt or wrong "
                         f"file); use {GRAPH_FILENAME} from {INCEPTION_URL}.") from None
    weights = _check_nodes(graph_def, pb_path)
    probe = np.zeros([1, INPUT_SIZE, INPUT_SIZE, 3], np.float32)
    try:
      runner = _FunctionRunner(graph_def, weights)
      runner(probe)
    except (tf.errors.UnimplementedError, tf.errors.InvalidArgumentError,
            tf.errors.NotFoundError) as e:
      logging.warning("Running the Inception graph as a tf.function failed (%s); using a "
                      "tf.compat.v1.Session instead.", str(e).splitlines()[0])
      runner = _SessionRunner(graph_def, weights)
      runner(probe)
    _RUNNERS[key] = (runner, digest)
  return _RUNNERS[key]


def clean_resize(images, size=INPUT_SIZE):
  """clean-fid's "clean" resize: PIL bicubic on each channel as float32 ('F' mode), clipped
  to [0, 255], not re-quantized. uint8 [B, H, W, C] -> float32 [B, size, size, C]."""
  from PIL import Image
  b, _, _, c = images.shape
  out = np.empty([b, size, size, c], np.float32)
  for i in range(b):
    for ch in range(c):
      img = Image.fromarray(images[i, :, :, ch].astype(np.float32))
      img = img.resize((size, size), resample=Image.Resampling.BICUBIC)
      out[i, :, :, ch] = np.asarray(img, np.float32)
  return np.clip(out, 0.0, 255.0)


class InceptionExtractor(FeatureExtractor):
  """FID/IS/KID features from the 2015-12-05 Inception graph: pool [B, 2048] and bias-free
  logits [B, 1008]. Build it with `load_inception`.

  Args:
    pb_path: path of classify_image_graph_def.pb.
    resize: "legacy_tf" (in-graph TF1 bilinear, as TTUR) or "clean" (PIL bicubic, as
      clean-fid); see the module docstring.
    batch_size: images per forward pass.
    expected_sha256: when given, the file must have this SHA-256.
    cache_dir: where the hash record goes if the file's folder is not writable.
  """

  name = INCEPTION_NAME
  comparable_to_published = True
  pool_dim = 2048
  num_classes = 1008
  needs_rgb = True

  def __init__(self, pb_path, resize="legacy_tf", batch_size=50, expected_sha256=None,
               cache_dir=DEFAULT_CACHE_DIR):
    if resize not in RESIZE_MODES:
      raise ValueError(f"resize must be one of {RESIZE_MODES}, got '{resize}'.")
    self.resize = resize
    self.batch_size = batch_size
    self.path = pb_path
    self._runner, self.sha256 = _runner_for(pb_path, expected_sha256,
                                            os.path.expanduser(cache_dir))
    self.cache_tag = f"{self.name}-{self.sha256[:12]}"

  def _extract(self, images):
    if self.resize == "clean":
      x = clean_resize(images)
    else:
      x = images.astype(np.float32)
    return self._runner(x)


def load_inception(path=None, cache_dir=DEFAULT_CACHE_DIR, download=False,
                   expected_sha256=INCEPTION_SHA256, resize="legacy_tf", batch_size=50):
  """Finds (or, with `download=True`, fetches) the Inception graph; returns an
  `InceptionExtractor`.

  Args:
    path: classify_image_graph_def.pb, inception-2015-12-05.tgz, or a folder with either;
      None searches `cache_dir`.
    cache_dir: cache folder (the .pb is extracted there from a .tgz).
    download: fetch the .tgz from download.tensorflow.org when not found.
    expected_sha256: verify the .pb's SHA-256 (None: not checked, only recorded).
    resize, batch_size: see `InceptionExtractor`.

  Raises:
    InceptionNotFoundError: "Inception weights not found: put classify_image_graph_def.pb
      (or inception-2015-12-05.tgz) at <path> or pass --inception_path".
  """
  pb = locate_inception(path, cache_dir, download)
  return InceptionExtractor(pb, resize=resize, batch_size=batch_size,
                            expected_sha256=expected_sha256, cache_dir=cache_dir)
