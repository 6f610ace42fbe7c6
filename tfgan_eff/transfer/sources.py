"""Where transferred weights come from: a checkpoint of this library or a NumPy `.npz`.

Both are read by name, in the flat layout of `GAN.checkpoint_items()`: an item (`"G"`,
`"G_ema"`, `"D"`) and a variable path inside it (`"block2/conv1/kernel"`), together
`"G/block2/conv1/kernel"`. A source never touches the current gin configuration.

    src = open_source("runs/source")          # a model_dir, checkpoint dir or prefix
    src.shape("G_ema", "conv_out/kernel"), src.get("G_ema", "conv_out/kernel")

Importing published weights: dump the state dict to an `.npz` of named arrays, e.g. in
PyTorch `np.savez("g.npz", **{k: v.cpu().numpy() for k, v in G.state_dict().items()})`,
and give a name-mapping table in gin:

    GAN.warm_start = @NpzImporter()            # or AdaFMTransfer.source = @NpzImporter()
    NpzImporter.path = "g.npz"
    NpzImporter.name_map = {
        "conv_img.weight": "G/conv_out/kernel|torch_conv",   # OIHW -> HWIO
        "conv_img.bias": "G/conv_out/bias",
        "fc.weight": "D/linear/kernel|torch_linear",         # [out, in] -> [in, out]
    }

List this library's names (and check a round trip) with `export_npz(gan, path)`.
"""

import os

import gin
import numpy as np
import tensorflow as tf
from absl import logging

from tfgan_eff.config import configurable
from tfgan_eff.training import checkpoints

ITEMS = ("G", "G_ema", "D")
LAYOUTS = {
    "torch_conv": lambda a: np.transpose(a, (2, 3, 1, 0)),   # [O, I, kh, kw] -> [kh, kw, I, O]
    "torch_linear": lambda a: np.transpose(a, (1, 0)),       # [out, in] -> [in, out]
}


class SourceMismatchError(ValueError):
  """A source's tensors do not fit the configured model (name missing or shape differs)."""


def _ckpt_key(item, path):
  """The key tf.train.Checkpoint gives variable `path` of the flat dict `item`."""
  escaped = path.replace(".", "..").replace("/", ".S")
  return f"{item}/{escaped}/.ATTRIBUTES/VARIABLE_VALUE"


def resolve_checkpoint(source):
  """A model_dir, a checkpoint folder or a checkpoint prefix -> the checkpoint prefix."""
  p = os.path.expanduser(str(source))
  if tf.io.gfile.isdir(p):
    for d in (os.path.join(p, "checkpoints"), p):
      latest = tf.train.latest_checkpoint(d) if tf.io.gfile.isdir(d) else None
      if latest:
        return latest
    raise FileNotFoundError(
        f"No checkpoint in '{p}' or '{p}/checkpoints'. Pass the --model_dir of a finished "
        f"source run, or a checkpoint prefix such as '{p}/checkpoints/ckpt-600'.")
  if tf.io.gfile.exists(p + ".index"):
    return p
  raise FileNotFoundError(
      f"Transfer source '{p}' is neither a run directory nor a checkpoint prefix (no "
      f"'{p}.index'). Pass the source run's --model_dir.")


class CheckpointSource:
  """Reads the variables of a checkpoint written by this library, by item and path."""

  def __init__(self, path):
    self.path = resolve_checkpoint(path)
    self._reader = tf.train.load_checkpoint(self.path)
    self._shapes = self._reader.get_variable_to_shape_map()

  def __str__(self):
    return f"checkpoint '{self.path}'"

  def shape(self, item, path):
    """The tensor's shape, or None when the source has no such tensor."""
    s = self._shapes.get(_ckpt_key(item, path))
    return None if s is None else tuple(s)

  def get(self, item, path):
    return self._reader.get_tensor(_ckpt_key(item, path))

  def paths(self, item):
    """Every variable path of `item` in the source."""
    prefix, suffix = f"{item}/", "/.ATTRIBUTES/VARIABLE_VALUE"
    out = []
    for k in self._shapes:
      if k.startswith(prefix) and k.endswith(suffix) and "/" not in k[len(prefix):-len(suffix)]:
        out.append(k[len(prefix):-len(suffix)].replace(".S", "/").replace("..", "."))
    return sorted(out)


@configurable
class NpzImporter:
  """Weights from a `.npz` of named arrays, renamed into this library's layout.

  Use it as `GAN.warm_start = @NpzImporter()` to start a model from the arrays (the EMA
  generator then starts as a copy of G), or as `AdaFMTransfer.source = @NpzImporter()`.

  Args:
    path: the `.npz` file.
    name_map: {npz name: our name}; our name is "<G|G_ema|D>/<variable path>", optionally
      followed by "|torch_conv" ([O, I, kh, kw] -> [kh, kw, I, O]) or "|torch_linear"
      ([out, in] -> [in, out]). npz names not in the map are ignored (and logged). None:
      the npz names are ours already (as `export_npz` writes them).
    allow_missing: as a warm start, leave model variables the npz does not provide at their
      initial values (logged) instead of failing on the first one.
  """

  def __init__(self, path, name_map=None, allow_missing=False):
    p = os.path.expanduser(path)
    if not os.path.exists(p):
      raise FileNotFoundError(f"NpzImporter.path '{p}' does not exist.")
    with np.load(p) as f:
      raw = {k: f[k] for k in f.files}
    self.path, self.allow_missing = p, allow_missing
    self.arrays = {}
    if name_map is None:
      self.arrays = raw
    else:
      for src, dst in dict(name_map).items():
        if src not in raw:
          raise SourceMismatchError(
              f"NpzImporter.name_map names '{src}', which is not in '{p}' (it holds "
              f"{len(raw)} arrays, e.g. {sorted(raw)[:5]}). Fix the name in the map.")
        name, _, layout = dst.partition("|")
        if layout and layout not in LAYOUTS:
          raise ValueError(f"NpzImporter.name_map['{src}']: unknown layout '{layout}'; use "
                           f"one of {sorted(LAYOUTS)}.")
        self.arrays[name] = LAYOUTS[layout](raw[src]) if layout else raw[src]
      unused = sorted(set(raw) - set(name_map))
      if unused:
        logging.info("NpzImporter: %d arrays of %s are not in name_map and are ignored: %s",
                     len(unused), p, ", ".join(unused[:20]))
    for k in self.arrays:
      if k.split("/", 1)[0] not in ITEMS or "/" not in k:
        raise ValueError(f"NpzImporter: name '{k}' is not '<G|G_ema|D>/<variable path>' "
                         f"(e.g. 'G/conv_out/kernel'); fix it in name_map.")

  def __str__(self):
    return f"npz '{self.path}'"

  def shape(self, item, path):
    a = self.arrays.get(f"{item}/{path}")
    return None if a is None else tuple(a.shape)

  def get(self, item, path):
    return self.arrays[f"{item}/{path}"]

  def paths(self, item):
    return sorted(k.split("/", 1)[1] for k in self.arrays if k.startswith(item + "/"))

  def __call__(self, gan):
    """Warm start: loads G and D from the arrays (G_ema follows G in `GAN.build`)."""
    plan = []
    for item, model in (("G", gan.G), ("D", gan.D)):
      for path, var in checkpoints.variables_by_path(model).items():
        if self.shape(item, path) is None and self.allow_missing:
          logging.info("NpzImporter: %s/%s not in %s; keeps its initial value.", item, path,
                       self.path)
          continue
        plan.append((var, check(self, item, path, var, f"{item}/{path}")))
    for var, value in plan:
      var.assign(value)
    logging.info("NpzImporter: loaded %d tensors from %s.", len(plan), self.path)


@configurable
class RunWarmStart:
  """Fine-tuning: G, G_ema and D start from a run of this library (any checkpoint of it,
  e.g. a published network bin/convert wrote), then train on the configured data.

      GAN.warm_start = @RunWarmStart()
      RunWarmStart.model_dir = "runs/ffhq"      # a model_dir, checkpoint folder or prefix

  Args:
    model_dir: the source run (its latest checkpoint), a checkpoint folder or a prefix.
    items: which networks to load; G_ema left out starts as a copy of G.

  The configured networks must have the source's architecture (the run's config.gin lists
  it); every tensor is checked by name and shape before any is assigned. Optimizer state,
  the step and augmentation state start fresh.
  """

  def __init__(self, model_dir=gin.REQUIRED, items=ITEMS):
    bad = [i for i in items if i not in ITEMS]
    if bad or not items:
      raise ValueError(f"RunWarmStart.items must be some of {list(ITEMS)}, got {list(items)}.")
    self.model_dir, self.items = model_dir, tuple(items)
    self.loads_g_ema = "G_ema" in self.items

  def __call__(self, gan):
    src = CheckpointSource(self.model_dir)
    models = {"G": gan.G, "G_ema": gan.G_ema, "D": gan.D}
    plan = []
    for item in self.items:
      for path, var in checkpoints.variables_by_path(models[item]).items():
        plan.append((var, check(src, item, path, var, f"{item}/{path}")))
    for var, value in plan:
      var.assign(value)
    logging.info("RunWarmStart: loaded %s (%d tensors) from %s.", ", ".join(self.items),
                 len(plan), src.path)


def check(source, item, path, var, target_name):
  """Source tensor `item/path` for model variable `var`, or a SourceMismatchError."""
  shape = source.shape(item, path)
  if shape is None:
    raise SourceMismatchError(
        f"The transfer source ({source}) has no tensor '{item}/{path}' (needed for "
        f"'{target_name}', shape {tuple(var.shape)}). The source was built with another "
        f"architecture or configuration; match the target's to it, or mark the layer to be "
        f"re-initialized.")
  if shape != tuple(var.shape):
    raise SourceMismatchError(
        f"Shape mismatch: source tensor '{item}/{path}' is {shape} but the model's "
        f"'{target_name}' is {tuple(var.shape)}. The source was built with another "
        f"architecture or configuration (width, classes, z_dim, resolution); match the "
        f"target's to it, or mark the layer to be re-initialized.")
  return np.asarray(source.get(item, path)).astype(var.dtype)


def export_npz(gan, path, items=ITEMS):
  """Writes the GAN's variables to `path` as an `.npz`, named as NpzImporter expects."""
  arrays = {}
  models = {"G": gan.G, "G_ema": gan.G_ema, "D": gan.D}
  for item in items:
    for p, v in checkpoints.variables_by_path(models[item]).items():
      arrays[f"{item}/{p}"] = v.numpy()
  np.savez(path, **arrays)
  return sorted(arrays)
