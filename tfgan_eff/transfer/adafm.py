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

Everything backbone-specific comes from the networks' `transfer_layout()`
(`tfgan_eff/models/layout.py`): their blocks by resolution, the layers attached to a block,
G's output layers, the class embeddings and D's heads. This file names no backbone.
Which layers are re-initialized, how blocks map across resolutions, which convolutions are
wrapped, the Adam caveat of a late start and what differs from the reference:
docs/architecture.md, "AdaFM transfer, step by step".
"""

import contextlib
import os

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

HIGH_LEVEL = ("finetune", "reinit", "new_small")




def _in_scope(path):
  """Name scopes making variables created inside get paths under `path`."""
  stack = contextlib.ExitStack()
  for part in path.split("/"):
    stack.enter_context(keras.name_scope(part))
  return stack


def _under(path, prefixes):
  return any(path == p or path.startswith(p + "/") for p in prefixes)


def _check_names(setting, names, layout, network):
  unknown = sorted(set(names) - set(layout.layer_names()))
  if unknown:
    raise ValueError(f"AdaFMTransfer.{setting} names {unknown}, which are not layers of the "
                     f"{network} (it has {sorted(layout.layer_names())}).")


@configurable
class AdaFMTransfer:
  """Loads a source GAN, freezes its low-level layers and wraps their 3x3 convs with AdaFM.

  Args:
    source: the source run's model_dir, a checkpoint folder or prefix written by this
      library, or an `NpzImporter` (gin: `@NpzImporter()`). Its gin config is not read.
    generator: "G_ema" (default; the source's sampling generator) or "G": which source
      generator G and G_ema start from.
    low_level_resolution: the default low-level G layers are those working at this
      resolution or more, plus G's output layers (BigGAN `bn_out`, `conv_out`; StyleGAN2
      toRGBs live in their blocks).
    g_low_level: explicit names of the low-level G layers (e.g. ["block3", "block4",
      "bn_out", "conv_out"]); overrides `low_level_resolution`.
    d_low_level: names of the frozen D layers; overrides `d_frozen_blocks`.
    d_frozen_blocks: how many D blocks, from the input side, are frozen (with the layers
      attached to them, e.g. BigGAN's attention); negative counts from the end (-1: all but
      the last block). None: the reference's depth for the target size `num_images`: all
      but the last block for <= 25 images (Flowers-25, `D_Layer_FIX=6` of its 6 stages),
      else the first block (Flowers, `D_Layer_FIX=2`: fromRGB and the first stage); the first
      block when `num_images` is not given.
    num_images: the target's number of training images (gin: `%NUM_IMAGES`), for the
      default `d_frozen_blocks`.
    high_level: which high-level G layers (all but the low-level ones) train:
      "finetune": the source's, loaded; "reinit": fresh ones of the target's architecture;
      "new_small": fresh ones at the reference's relative width (the paper's method): G and
      G_ema are rebuilt with every feature map below the first low-level block as wide as
      that block's input (the reference: 512 channels, its frozen 32 px stage's input,
      where its source's 4-16 px stages are 1,024 wide), one block per resolution.
    g_reinit: G variable path prefixes never loaded; default the class embedding
      (`G.transfer_layout().conditional`).
    d_reinit: D variable path prefixes never loaded; default the final linear layer and
      the projection embedding (`D.transfer_layout().heads`).
    adafm_start_step: γ/β get no gradient before this G step (the reference: 10,000).
    adafm_d: also wrap the 3x3 convs of the frozen D layers (the reference does not).
  """

  def __init__(self, source=gin.REQUIRED, generator="G_ema", low_level_resolution=32,
               g_low_level=None, d_low_level=None, high_level="finetune", g_reinit=None,
               d_reinit=None, adafm_start_step=0, adafm_d=False, d_frozen_blocks=None,
               num_images=None):
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
    if d_frozen_blocks is not None and d_low_level is not None:
      raise ValueError("Set AdaFMTransfer.d_low_level (layer names) or d_frozen_blocks (a "
                       "count), not both.")
    if num_images is not None and num_images < 1:
      raise ValueError(f"AdaFMTransfer.num_images must be >= 1, got {num_images}.")
    self.d_frozen_blocks, self.num_images = d_frozen_blocks, num_images
    self.summary = {}

  # -- which layers ------------------------------------------------------------------------
  def low_level_g(self, G):
    layout = G.transfer_layout()
    if self.g_low_level is not None:
      _check_names("g_low_level", self.g_low_level, layout, "generator")
      return list(self.g_low_level)
    return [n for n, r in layout.resolutions().items() if r >= self.low_level_resolution]

  def low_level_d(self, D):
    layout = D.transfer_layout()
    if self.d_low_level is not None:
      _check_names("d_low_level", self.d_low_level, layout, "discriminator")
      return list(self.d_low_level)
    n, blocks = self.frozen_d_blocks(), layout.blocks
    if not -len(blocks) < n <= len(blocks):
      raise ValueError(f"AdaFMTransfer.d_frozen_blocks = {n}, but the discriminator has "
                       f"{len(blocks)} blocks ({[b.name for b in blocks]}): use "
                       f"{-len(blocks) + 1}..{len(blocks)}.")
    return [name for b in blocks[:n] for name in (b.name, *b.attached)]

  def frozen_d_blocks(self):
    """The D freeze depth: `d_frozen_blocks`, or the reference's for `num_images`."""
    if self.d_frozen_blocks is not None:
      return int(self.d_frozen_blocks)
    return -1 if self.num_images is not None and self.num_images <= 25 else 1

  def reinit_g(self, G):
    if self.g_reinit is not None:
      return self.g_reinit
    return list(G.transfer_layout().conditional)

  def reinit_d(self, D):
    if self.d_reinit is not None:
      return self.d_reinit
    return list(D.transfer_layout().heads)

  # -- name mapping ------------------------------------------------------------------------
  @staticmethod
  def block_map(layout, source_paths, from_output):
    """{target top-level layer: source top-level layer} for the blocks of `layout` (a
    `TransferLayout`) and the layers attached to them, the blocks aligned with the source's
    (read from its variable paths) from the output or the input side."""
    tgt = [b.name for b in layout.blocks]
    src = layout.names.blocks(p.split("/", 1)[0] for p in source_paths)
    if not tgt or len(src) < len(tgt):
      return {}  # fewer source blocks: names are kept and the check reports the first miss
    fixed = {}
    if tgt[0] in layout.pinned and src[0] == tgt[0]:
      fixed = {tgt[0]: src[0]}  # a pinned block (StyleGAN2's const 4x4) only maps to itself
      tgt, src = tgt[1:], src[1:]
    src = src[len(src) - len(tgt):] if from_output else src[:len(tgt)]
    m = {**fixed, **dict(zip(tgt, src))}
    for block in layout.blocks:
      for name in block.attached:
        m[name] = layout.names.renumber(name, m[block.name])
    return m

  def _source_path(self, path, rename):
    head, _, rest = path.partition("/")
    return f"{rename.get(head, head)}/{rest}" if rest else path

  # -- the transfer ------------------------------------------------------------------------
  def new_small_widths(self, G):
    """{resolution: channels} of the 'new_small' high-level part of generator `G`."""
    widths = getattr(G, "widths", None)
    if widths is None:
      raise ValueError(f"AdaFMTransfer.high_level = 'new_small' needs a generator that "
                       f"takes `widths` (BigGAN, StyleGAN2); {type(G).__name__} does not.")
    low = set(self.low_level_g(G))
    frozen = [b for b in G.transfer_layout().blocks if b.name in low]
    if not frozen or frozen[0].resolution // 2 not in widths:
      raise ValueError(f"AdaFMTransfer.high_level = 'new_small': the generator has no "
                       f"low-level block with a high-level block before it (low level: "
                       f"{sorted(low)}); lower low_level_resolution or g_low_level.")
    first = frozen[0].resolution
    return {r: widths[first // 2] for r in widths if r < first}

  def __call__(self, gan):
    if self.high_level == "new_small":
      small, before = self.new_small_widths(gan.G), dict(gan.G.widths)
      if any(before[r] != c for r, c in small.items()):
        gan.rebuild_generators(widths={**before, **small})
      logging.info("AdaFM 'new_small': a fresh high-level generator part with widths %s "
                   "(the target architecture's: %s).", small,
                   {r: c for r, c in before.items() if r in small})
    G, G_ema, D = gan.G, gan.G_ema, gan.D
    src = (sources.CheckpointSource(self.source) if isinstance(self.source, (str, os.PathLike))
           else self.source)  # a path, or a source object (NpzImporter)
    g_layout, d_layout = G.transfer_layout(), D.transfer_layout()
    g_low, d_low = self.low_level_g(G), self.low_level_d(D)
    g_rename = self.block_map(g_layout, src.paths(self.generator), from_output=True)
    d_rename = self.block_map(d_layout, src.paths("D"), from_output=False)

    plan = []  # (variable, value): everything is checked before anything is assigned
    g_skip = self.reinit_g(G)
    for path, var in checkpoints.variables_by_path(G).items():
      low = _under(path, g_low)
      if _under(path, g_skip) or (not low and self.high_level != "finetune"):
        continue
      src_path = self._source_path(path, g_rename)
      if (path.rsplit("/", 1)[-1] in g_layout.resolution_buffers and
          src.shape(self.generator, src_path) != tuple(var.shape)):
        continue  # e.g. StyleGAN2's fixed noise of a block mapped from another resolution
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
    # γ/β get their own optimizer: its step count starts when they unfreeze, as PyTorch's
    # per-parameter Adam state does in the reference (no burst of up to 1/sqrt(1 - beta_2)
    # times the learning rate at the start step; GAN.own_optimizer).
    if _modulation_variables(G):  # none when nothing is low level (plain fine-tuning)
      gan.own_optimizer("g", "adafm", _modulation_variables(G), self.adafm_start_step)
    if self.adafm_d and _modulation_variables(D):  # D steps: disc_iters per G step
      gan.own_optimizer("d", "adafm", _modulation_variables(D),
                        self.adafm_start_step * gan.disc_iters)
    self._log(gan, src, g_low, d_low, g_rename, d_rename, len(plan), wrapped)

  def _freeze_and_wrap(self, model, names, step_fn, wrap):
    """Freezes the named top-level layers; wraps their 3x3 convs. Returns the count."""
    layout = model.transfer_layout()
    count = 0
    for layer in layout.layers:
      if layer.name not in names:
        continue
      layer.trainable = False
      modulate = wrap and layer.name not in layout.output
      for sub in layers.sublayers(layer):
        if isinstance(sub, layers.SpectralNormMixin) and sub.use_sn:
          sub.freeze_sigma()
        if not (modulate and isinstance(sub, layers.KernelTransformMixin)):
          continue
        kernel = sub.kernel
        if len(kernel.shape) == 4 and kernel.shape[0] == 3 and sub.kernel_transform is None:
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
  return [l for l in layers.sublayers(model) if isinstance(l, layers.AdaFM)]


def _modulation_variables(model):
  return [v for a in adafm_layers(model) for v in (a.gamma, a.beta)]


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
