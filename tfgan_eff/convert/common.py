"""What every converter shares: reading state dicts, checking and assigning tensors by name,
writing a run directory of this library.

A backbone converter (`stylegan2.py`, `biggan.py`) is a pure function of the reference's
state dicts (name -> numpy array, in the reference's layout) to a `Converted`: the gin
bindings of our networks and, for each item ("G", "G_ema", "D"), our variable paths (as
`checkpoints.variables_by_path` names them) -> (source tensor name, array in our layout).
`write_run` builds the GAN from the bindings, checks every tensor against the model (every
variable provided, every shape equal, every source tensor used or deliberately ignored),
assigns them, and writes `config.gin` plus `checkpoints/ckpt-0`, all or nothing.
"""

import dataclasses
import os
import shutil
import tempfile

import numpy as np

EXTRA_HINT = "pip install -e '.[convert]'  (or: pip install torch)"


class ConversionError(ValueError):
  """A source that cannot be converted: unreadable, a missing or unknown tensor, a shape
  that does not fit. The message names the tensor on both sides."""


@dataclasses.dataclass
class Converted:
  """A converted GAN.

  gin: gin bindings of our networks (`GAN.generator = @...`, their arguments).
  tensors: {item: {our variable path: (source tensor name, array in our layout)}}, item in
    "G", "G_ema", "D" (an item left out keeps its initial value; G_ema then copies G).
  ignored: {item: [source names deliberately not converted, each with the reason]}.
  description: where the tensors came from, for messages and the run's config.gin.
  """
  gin: str
  tensors: dict
  ignored: dict = dataclasses.field(default_factory=dict)
  description: str = ""


def require_torch():
  """torch, or a ConversionError saying how to install it (only reading pickles needs it)."""
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise ConversionError(
        f"Reading PyTorch files needs torch, which is not installed: {EXTRA_HINT}. "
        f"Or dump the state dict to an .npz where torch is installed, "
        f"np.savez('g.npz', **{{k: v.cpu().numpy() for k, v in G.state_dict().items()}}), "
        f"and convert the .npz.") from None
  return torch


def to_numpy(state_dict):
  """{name: tensor or array} -> {name: float32/int numpy array} (torch tensors detached)."""
  out = {}
  for k, v in state_dict.items():
    if hasattr(v, "detach"):
      v = v.detach().cpu().numpy()
    out[k] = np.asarray(v)
  return out


def read_state_dict(path):
  """A state dict from `.npz` (no torch needed) or a torch `.pt`/`.pth` file (a state dict,
  or a dict holding one under 'state_dict'), as {name: numpy array}."""
  p = os.path.expanduser(str(path))
  if not os.path.exists(p):
    raise ConversionError(f"'{p}' does not exist.")
  if p.endswith(".npz"):
    with np.load(p) as f:
      return {k: f[k] for k in f.files}
  torch = require_torch()
  try:
    obj = torch.load(p, map_location="cpu", weights_only=True)
  except Exception as e:  # pylint: disable=broad-except
    raise ConversionError(f"'{p}' is not a PyTorch state dict torch.load can read safely "
                          f"({type(e).__name__}: {e}).") from None
  if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
    obj = obj["state_dict"]
  if not isinstance(obj, dict) or not all(hasattr(v, "shape") for v in obj.values()):
    raise ConversionError(f"'{p}' holds a {type(obj).__name__}, not a state dict "
                          f"(a dict of tensors).")
  return to_numpy(obj)


def torch_conv(a):
  """[O, I, kh, kw] -> [kh, kw, I, O]."""
  return np.transpose(np.asarray(a), (2, 3, 1, 0))


def torch_linear(a):
  """[out, in] -> [in, out]."""
  return np.transpose(np.asarray(a), (1, 0))


class Tensors:
  """Builds one item's {our path: (source name, array)}, keeping track of what was used.

      t = Tensors(state_dict, "G")
      t.put("b4/conv1/conv/kernel", "synthesis.b4.conv1.weight", torch_conv)
      t.done(ignore=lambda name: name.endswith(".resample_filter"))   # -> the dict
  """

  def __init__(self, state_dict, item):
    self.sd, self.item, self.out, self.used = state_dict, item, {}, set()

  def has(self, name):
    return name in self.sd

  def get(self, name):
    if name not in self.sd:
      raise ConversionError(f"The {self.item} source has no tensor '{name}' (it holds "
                            f"{len(self.sd)}, e.g. {sorted(self.sd)[:6]}). It was made by "
                            f"another architecture or version of the reference code.")
    self.used.add(name)
    return np.asarray(self.sd[name])

  def put(self, ours, name, layout=None):
    a = self.get(name)
    self.out[ours] = (name, np.asarray(layout(a) if layout else a))

  def put_value(self, ours, name, value):
    """A tensor derived from source tensor(s) `name` (already marked used via `get`)."""
    self.out[ours] = (name, np.asarray(value))

  def done(self, ignore=None):
    """The dict; raises if a source tensor was neither used nor ignored (a silently
    dropped weight would make a different network)."""
    left = sorted(k for k in self.sd if k not in self.used and not (ignore and ignore(k)))
    if left:
      raise ConversionError(
          f"{len(left)} tensors of the {self.item} source have no place in our network: "
          f"{left[:10]}. The source uses a feature this converter does not map.")
    return self.out


def assign(model, tensors, item):
  """Assigns {our path: (source name, array)} to `model`'s variables, all or none.

  Every variable must be provided and every shape must match; errors name both tensors.
  """
  from tfgan_eff.training import checkpoints  # pylint: disable=import-outside-toplevel
  variables = checkpoints.variables_by_path(model)
  missing = sorted(set(variables) - set(tensors))
  if missing:
    raise ConversionError(f"The converted {item} lacks {len(missing)} of our variables: "
                          f"{missing[:10]}.")
  unknown = sorted(set(tensors) - set(variables))
  if unknown:
    raise ConversionError(f"The converted {item} names variables our network does not have: "
                          f"{unknown[:10]} (source {[tensors[k][0] for k in unknown[:3]]}).")
  plan = []
  for path, var in variables.items():
    name, value = tensors[path]
    if tuple(value.shape) != tuple(var.shape):
      raise ConversionError(
          f"Shape mismatch: source tensor '{name}' gives {tuple(value.shape)} (in our layout) "
          f"but our '{item}/{path}' is {tuple(var.shape)}.")
    plan.append((var, value.astype(np.dtype(var.dtype))))
  for var, value in plan:
    var.assign(value)


def build_gan(gin_text):
  """Our GAN for `gin_text` (the networks' bindings), built; the gin config is replaced."""
  import gin  # pylint: disable=import-outside-toplevel

  from tfgan_eff.training import runs  # pylint: disable=import-outside-toplevel
  from tfgan_eff import config  # pylint: disable=import-outside-toplevel
  gin.clear_config()
  config.parse([], [line for line in gin_text.splitlines() if line.strip()
                    and not line.lstrip().startswith("#")])
  return runs.build_run()


def load_into(gan, converted):
  """Assigns a `Converted`'s tensors to a built GAN (G_ema copies G unless provided)."""
  models = {"G": gan.G, "G_ema": gan.G_ema, "D": gan.D}
  for item, tensors in converted.tensors.items():
    if item not in models:
      raise ConversionError(f"Unknown item '{item}': use G, G_ema or D.")
    assign(models[item], tensors, item)
  if "G_ema" not in converted.tensors and "G" in converted.tensors:
    for e, w in zip(gan.G_ema.weights, gan.G.weights):
      e.assign(w)


def write_run(converted, model_dir, overwrite=False):
  """Builds our GAN from `converted`, loads its tensors and writes a run directory
  (`config.gin`, `checkpoints/ckpt-0`) that bin/sample, bin/eval, bin/export and
  `AdaFMTransfer.source` / `RunWarmStart.model_dir` read. Nothing is written unless all of
  it converts; the directory appears whole (written beside it, then renamed)."""
  import gin  # pylint: disable=import-outside-toplevel
  import tensorflow as tf  # pylint: disable=import-outside-toplevel

  model_dir = os.path.abspath(os.path.expanduser(model_dir))
  if os.path.exists(model_dir) and os.listdir(model_dir) and not overwrite:
    raise ConversionError(f"'{model_dir}' exists and is not empty; choose a new --model_dir "
                          f"(or pass --overwrite).")
  gan, ckpt, _ = build_gan(converted.gin)
  load_into(gan, converted)
  parent = os.path.dirname(model_dir)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=".convert-", dir=parent)
  try:
    header = (f"# Converted by bin/convert from {converted.description}.\n"
              if converted.description else "")
    g = gan.G  # macros for the configs that fine-tune or transfer this run (their data)
    macros = (f"RESOLUTION = {g.resolution}\nCHANNELS = {g.channels}\n"
              f"NUM_CLASSES = {gan.num_classes}\n\n")
    with open(os.path.join(tmp, "config.gin"), "w") as f:
      f.write(header + macros + gin.config_str())
    manager = tf.train.CheckpointManager(ckpt, os.path.join(tmp, "checkpoints"), 1)
    manager.save(checkpoint_number=0)
    # The checkpoint index names its files relative to the folder: the rename keeps it valid.
    if os.path.exists(model_dir):
      shutil.rmtree(model_dir)
    os.rename(tmp, model_dir)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return model_dir, gan
