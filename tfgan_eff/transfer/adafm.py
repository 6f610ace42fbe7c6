"""AdaFM transfer (Zhao, Cong, Carin, ICML 2020): start a limited-data GAN from a pretrained
one, freeze the low-level filters, learn a per-kernel scale and shift for them.

    GAN.warm_start = @AdaFMTransfer()
    AdaFMTransfer.source = "runs/source"      # a run of this library (or @NpzImporter())
    GAN.terms = [@Adversarial(), @AdaFMMonitor()]

`GAN.build` calls the transfer once G, G_ema and D exist and before the optimizers are
built, so frozen variables never get optimizer slots. It (1) loads every target variable by
name from the source, all checked before any is assigned (a missing name or a different
shape fails naming the tensor), (2) freezes the low-level layers of G, G_ema and D, whose
spectral norms keep the source's σ, and (3) gives every 3x3 convolution of the low-level G
layers an `AdaFM` kernel transform, Ŵ = γ ⊙ W + β with γ = 1, β = 0 at the start. γ and β
get no gradient before G step `adafm_start_step`.

Which layers are re-initialized, how blocks map across resolutions, which convolutions are
wrapped, the Adam caveat of a late start and what differs from the reference:
docs/architecture.md, "AdaFM transfer, step by step".
"""

import contextlib
import re

import gin
import keras
import numpy as np
import tensorflow as tf
from absl import logging

from tfgan_eff.config import configurable
from tfgan_eff.models import layers
from tfgan_eff.objectives.base import Term
from tfgan_eff.params import count_params as _count
from tfgan_eff.training import checkpoints
from tfgan_eff.transfer import sources

HIGH_LEVEL = ("finetune", "reinit")
OUTPUT_LAYERS = ("conv_out",)  # BigGAN's output conv: frozen, not modulated (as conv_img)


def _is_stylegan2(model):
  return hasattr(model, "mapping_network") or type(model).__name__.startswith("StyleGAN2")


def g_layer_resolutions(G):
  """{top-level G layer name: the resolution it works at}; the output layers at full size."""
  res = {}
  if _is_stylegan2(G):
    for b in G.blocks:
      res[b.name] = b.resolution
  else:
    for i, b in enumerate(G.blocks):
      res[b.name] = 8 * 2 ** i
    for i, a in getattr(G, "attention", {}).items():
      res[a.name] = 8 * 2 ** i
    for name in ("bn_out", "conv_out"):
      res[name] = G.resolution
  return res


def _block_number(name):
  m = re.fullmatch(r"[a-z]+?(\d+)", name)
  return int(m.group(1)) if m else None


def _sublayers(layer):
  # pylint: disable-next=protected-access
  return list(layer._flatten_layers(include_self=True, recursive=True))


def _in_scope(path):
  """Name scopes making variables created inside get paths under `path`."""
  stack = contextlib.ExitStack()
  for part in path.split("/"):
    stack.enter_context(keras.name_scope(part))
  return stack


def _under(path, prefixes):
  return any(path == p or path.startswith(p + "/") for p in prefixes)


@configurable
class AdaFMTransfer:
  """Loads a source GAN, freezes its low-level layers and wraps their 3x3 convs with AdaFM.

  Args:
    source: the source run's model_dir, a checkpoint folder or prefix written by this
      library, or an `NpzImporter` (gin: `@NpzImporter()`). Its gin config is not read.
    generator: "G_ema" (default; the source's sampling generator) or "G": which source
      generator G and G_ema start from.
    low_level_resolution: the default low-level G layers are those working at this
      resolution or more, plus the output layers (BigGAN `bn_out`, `conv_out`; StyleGAN2
      toRGBs live in their blocks).
    g_low_level: explicit names of the low-level G layers (e.g. ["block3", "block4",
      "bn_out", "conv_out"]); overrides `low_level_resolution`.
    d_low_level: names of the frozen D layers; default the first (fromRGB) block.
    high_level: "finetune" (load the source's high-level G layers and train them) or
      "reinit" (keep their fresh initialization).
    g_reinit: G variable path prefixes never loaded; default the class embedding.
    d_reinit: D variable path prefixes never loaded; default the final linear layer and
      the projection embedding.
    adafm_start_step: γ/β get no gradient before this G step (the reference: 10,000).
    adafm_d: also wrap the 3x3 convs of the frozen D layers (the reference does not).
  """

  def __init__(self, source=gin.REQUIRED, generator="G_ema", low_level_resolution=32,
               g_low_level=None, d_low_level=None, high_level="finetune", g_reinit=None,
               d_reinit=None, adafm_start_step=0, adafm_d=False):
    if generator not in ("G", "G_ema"):
      raise ValueError(f"AdaFMTransfer.generator must be 'G' or 'G_ema', got '{generator}'.")
    if high_level not in HIGH_LEVEL:
      raise ValueError(f"AdaFMTransfer.high_level must be one of {HIGH_LEVEL}, got "
                       f"'{high_level}'.")
    if adafm_start_step < 0:
      raise ValueError(f"AdaFMTransfer.adafm_start_step must be >= 0, got {adafm_start_step}.")
    self.source, self.generator = source, generator
    self.low_level_resolution = low_level_resolution
    self.g_low_level = list(g_low_level) if g_low_level is not None else None
    self.d_low_level = list(d_low_level) if d_low_level is not None else None
    self.high_level = high_level
    self.g_reinit = list(g_reinit) if g_reinit is not None else None
    self.d_reinit = list(d_reinit) if d_reinit is not None else None
    self.adafm_start_step, self.adafm_d = int(adafm_start_step), adafm_d
    self.summary = {}

  # -- which layers ------------------------------------------------------------------------
  def low_level_g(self, G):
    names = {l.name for l in G._layers}  # pylint: disable=protected-access
    if self.g_low_level is not None:
      unknown = sorted(set(self.g_low_level) - names)
      if unknown:
        raise ValueError(f"AdaFMTransfer.g_low_level names {unknown}, which are not layers "
                         f"of the generator (it has {sorted(names)}).")
      return list(self.g_low_level)
    res = g_layer_resolutions(G)
    return [n for n, r in res.items() if r >= self.low_level_resolution]

  def low_level_d(self, D):
    names = [l.name for l in D._layers]  # pylint: disable=protected-access
    if self.d_low_level is not None:
      unknown = sorted(set(self.d_low_level) - set(names))
      if unknown:
        raise ValueError(f"AdaFMTransfer.d_low_level names {unknown}, which are not layers "
                         f"of the discriminator (it has {sorted(names)}).")
      return list(self.d_low_level)
    return [D.blocks[0].name]

  def reinit_g(self, G):
    if self.g_reinit is not None:
      return self.g_reinit
    return ["mapping/embed"] if _is_stylegan2(G) else ["shared"]

  def reinit_d(self, D):
    if self.d_reinit is not None:
      return self.d_reinit
    last = D.out if _is_stylegan2(D) else D.linear
    return [last.name, "projection"]

  # -- name mapping ------------------------------------------------------------------------
  @staticmethod
  def block_map(target_blocks, source_paths, from_output):
    """{target block name: source block name}, aligned from the output or input side."""
    if not target_blocks:
      return {}
    pattern = re.sub(r"\d+$", "", target_blocks[0])
    found = {p.split("/", 1)[0] for p in source_paths}
    src = sorted((b for b in found if re.fullmatch(pattern + r"\d+", b)), key=_block_number)
    tgt = list(target_blocks)
    if pattern == "b":  # StyleGAN2 names blocks by resolution
      src_order = src if from_output else src[::-1]
      tgt_order = sorted(tgt, key=_block_number) if from_output else \
          sorted(tgt, key=_block_number, reverse=True)
    else:
      src_order, tgt_order = src, sorted(tgt, key=_block_number)
    if len(src_order) < len(tgt_order):
      return {}  # fewer source blocks: names are kept and the check reports the first miss
    fixed = {}
    if pattern == "b" and from_output and tgt_order[0] == "b4" and src_order[0] == "b4":
      fixed = {"b4": "b4"}  # StyleGAN2's 4x4 block (const input) only maps to itself
      src_order, tgt_order = src_order[1:], tgt_order[1:]
    if from_output:
      src_order = src_order[len(src_order) - len(tgt_order):]
    return {**fixed, **dict(zip(tgt_order, src_order[:len(tgt_order)]))}

  def _source_path(self, path, rename):
    head, _, rest = path.partition("/")
    return f"{rename.get(head, head)}/{rest}" if rest else path

  def _g_rename(self, G, src_paths):
    m = self.block_map([b.name for b in G.blocks], src_paths, from_output=True)
    for i, a in getattr(G, "attention", {}).items():  # BigGAN attention follows its block
      src_block = m.get(G.blocks[i].name)
      if src_block is not None:
        m[a.name] = "attention" + str(_block_number(src_block))
    return m

  # -- the transfer ------------------------------------------------------------------------
  def __call__(self, gan):
    G, G_ema, D = gan.G, gan.G_ema, gan.D
    src = self.source if hasattr(self.source, "get") else sources.CheckpointSource(self.source)
    g_low, d_low = self.low_level_g(G), self.low_level_d(D)
    g_rename = self._g_rename(G, src.paths(self.generator))
    d_rename = self.block_map([b.name for b in D.blocks], src.paths("D"), from_output=False)

    plan = []  # (variable, value): everything is checked before anything is assigned
    g_skip = self.reinit_g(G)
    for path, var in checkpoints.variables_by_path(G).items():
      low = _under(path, g_low)
      if _under(path, g_skip) or (not low and self.high_level == "reinit"):
        continue
      src_path = self._source_path(path, g_rename)
      if (path.endswith("/noise_const") and
          src.shape(self.generator, src_path) != tuple(var.shape)):
        continue  # StyleGAN2's fixed noise of a block mapped from another resolution
      plan.append((var, sources.check(src, self.generator, src_path, var, f"G/{path}")))
    d_skip = self.reinit_d(D)
    for path, var in checkpoints.variables_by_path(D).items():
      if _under(path, d_skip):
        continue
      plan.append((var, sources.check(src, "D", self._source_path(path, d_rename), var,
                                      f"D/{path}")))
    for var, value in plan:
      var.assign(value)

    step_fn = lambda: gan.g_optimizer.iterations  # noqa: E731  completed G steps
    wrapped = self._freeze_and_wrap(G, g_low, step_fn, wrap=True)
    self._freeze_and_wrap(G_ema, g_low, None, wrap=True)  # same structure; no gradients
    self._freeze_and_wrap(D, d_low, step_fn, wrap=self.adafm_d)
    self._log(gan, src, g_low, d_low, g_rename, d_rename, len(plan), wrapped)

  def _freeze_and_wrap(self, model, names, step_fn, wrap):
    """Freezes the named top-level layers; wraps their 3x3 convs. Returns the count."""
    count = 0
    for layer in model._layers:  # pylint: disable=protected-access
      if layer.name not in names:
        continue
      layer.trainable = False
      modulate = wrap and layer.name not in OUTPUT_LAYERS
      for sub in _sublayers(layer):
        if isinstance(sub, layers.SpectralNormMixin) and getattr(sub, "use_sn", False):
          sub.freeze_sigma()
        kernel = getattr(sub, "kernel", None)
        if (modulate and hasattr(sub, "set_kernel_transform") and kernel is not None and
            len(kernel.shape) == 4 and kernel.shape[0] == 3 and sub.kernel_transform is None):
          with _in_scope(kernel.path.rsplit("/", 1)[0]):
            adafm = layers.AdaFM(self.adafm_start_step if step_fn else 0, step_fn,
                                 name="adafm")
            adafm.build(kernel.shape)
          sub.set_kernel_transform(adafm)
          count += 1
    return count

  def _log(self, gan, src, g_low, d_low, g_rename, d_rename, loaded, wrapped):
    G, D = gan.G, gan.D
    adafm = [v for v in G.trainable_variables if "/adafm/" in v.path]
    s = {
        "g_trainable": _count(G.trainable_variables), "g_frozen": _count(
            [v for v in G.non_trainable_variables if _under(v.path.split("/", 1)[-1], g_low)
             and "/sn_u" not in v.path and "moving_" not in v.path]),
        "g_adafm": _count(adafm), "d_trainable": _count(D.trainable_variables),
        "d_frozen": _count([v for v in D.non_trainable_variables
                            if _under(v.path.split("/", 1)[-1], d_low)
                            and "/sn_u" not in v.path]),
    }
    self.summary = s
    renamed = {k: v for k, v in {**g_rename, **d_rename}.items() if k != v}
    logging.info(
        "AdaFM transfer from %s: loaded %d tensors%s.\n"
        "  G low-level (frozen, %d 3x3 convs AdaFM-wrapped): %s; high level: %s\n"
        "  D frozen: %s; re-initialized: G %s, D %s\n"
        "  parameters: G trainable %s (AdaFM γ/β %s), G frozen %s; D trainable %s, "
        "D frozen %s", src, loaded, f" (blocks renamed {renamed})" if renamed else "",
        wrapped, g_low, self.high_level, d_low, self.reinit_g(G), self.reinit_d(D),
        f"{s['g_trainable']:,}", f"{s['g_adafm']:,}", f"{s['g_frozen']:,}",
        f"{s['d_trainable']:,}", f"{s['d_frozen']:,}")


def adafm_layers(model):
  """Every AdaFM transform inside `model`."""
  return [l for l in _sublayers(model) if isinstance(l, layers.AdaFM)]


@configurable
class AdaFMMonitor(Term):
  """Reports AdaFM statistics and parameter counts as metrics (no loss).

  In the G step: `adafm_gamma_dev` = mean |γ − 1| and `adafm_beta_abs` = mean |β| over all
  modulated kernels of G, `adafm_active` (1 once γ/β receive gradients), and the constant
  counts `params_g_trainable`, `params_g_frozen`, `params_d_trainable`, `params_d_frozen`,
  so the frozen/trainable split is in TensorBoard next to the curves.
  """

  def __init__(self, name="adafm_monitor"):
    super().__init__(name=name)
    self._adafm, self._counts = [], {}

  def build(self, ctx):
    G, D = ctx.gan.G, ctx.gan.D
    self._adafm = adafm_layers(G)
    self._counts = {
        "params_g_trainable": _count(G.trainable_variables),
        "params_g_frozen": _count([v for v in G.non_trainable_variables
                                   if "/sn_u" not in v.path and "moving_" not in v.path
                                   and "w_avg" not in v.path]),
        "params_d_trainable": _count(D.trainable_variables),
        "params_d_frozen": _count([v for v in D.non_trainable_variables
                                   if "/sn_u" not in v.path]),
    }
    if not self._adafm:
      logging.warning("AdaFMMonitor: the generator has no AdaFM layers (is "
                      "GAN.warm_start = @AdaFMTransfer() set?).")

  def g_loss(self, ctx):
    metrics = {k: ctx.scalar(float(v)) for k, v in self._counts.items()}
    if self._adafm:
      n = float(sum(np.prod(a.gamma.shape) for a in self._adafm))
      dev = tf.add_n([tf.reduce_sum(tf.abs(a.gamma - 1.0)) for a in self._adafm]) / n
      beta = tf.add_n([tf.reduce_sum(tf.abs(a.beta)) for a in self._adafm]) / n
      a0 = self._adafm[0]
      active = (tf.cast(tf.cast(a0.step_fn(), tf.int64) >= a0.start_step, tf.float32)
                if a0.start_step else tf.constant(1.0))
      metrics.update(adafm_gamma_dev=ctx.scalar(dev), adafm_beta_abs=ctx.scalar(beta),
                     adafm_active=ctx.scalar(active))
    return tf.constant(0.0), metrics
