"""StyleGAN2 generator and discriminator (Karras et al. 2020, config-f / ADA "paper" nets).

Follows the networks of stylegan2-ada-pytorch, in NHWC and plain TF ops (see
`stylegan2_layers.py`), 16-1024 px.

Channel widths. At resolution r (a power of two):

    channels(r) = min(int(fmap_base / 2 ** (log2(r) * fmap_decay)), fmap_max)

i.e. `fmap_base / r` capped at `fmap_max` for the default `fmap_decay = 1`. `fmap_base` is
stylegan2-ada-pytorch's `channel_base` (= 32768 * `fmaps`): paper256 (fmaps 0.5) is
fmap_base 16384, fmap_max 512 -> 512 at 4..32 px, 256 at 64, 128 at 128, 64 at 256;
config-f at 1024 px is fmap_base 32768 -> 512 at 4..64, 256, 128, 64, 32 at 1024.
(The original TF StyleGAN2 writes the same as 16384 / 2 ** (log2(r) - 1).)

Generator. Mapping: z (and, if conditional, an equalized dense embedding of the one-hot
label, `w_dim` wide) each normalised by their 2nd moment and concatenated; `mapping_layers`
equalized dense layers (lr multiplier 0.01, leaky ReLU 0.2 * sqrt 2) to w; `w_avg` tracks
the mean w. Synthesis: a learned 4x4 constant, then per resolution a block of two modulated
3x3 convolutions (the first up-samples: stride-2 transposed convolution of the flipped
kernel followed by the [1,3,3,1] FIR filter with gain 4, the official "fused" form, equal
to FIR up-sampling followed by the 3x3 convolution), each followed by noise (learned scalar
strength, initial 0), bias and leaky ReLU * sqrt 2; and a 1x1 modulated, non-demodulated
toRGB whose output is added to the FIR-up-sampled image of the previous block ("skip").
The 4x4 block has one convolution. Styles are indexed like the official code: the block at
4 px uses ws[0] (conv) and ws[1] (toRGB); the block with index i > 0 uses ws[2i - 1],
ws[2i] (convs) and ws[2i + 1] (toRGB); num_ws = 2 log2(resolution) - 2.

Discriminator ("resnet"). fromRGB (1x1, lrelu) at full resolution; one block per
resolution from `resolution` down to 8: conv 3x3 (lrelu), conv 3x3 with FIR down-sampling
(lrelu), plus a 1x1 FIR-down-sampled linear shortcut without bias, both branches scaled by
1/sqrt 2. The last block's output [B, 4, 4, C] is `feature_map` (InsGen's tap). Epilogue:
minibatch std, conv 3x3, dense (lrelu) -> `features` [B, C], dense -> logits.
Conditioning: projection (default), a table [num_classes, C], logits += <table[y],
features> / sqrt(C); or `conditioning="cmap"`, the reference's: a label mapping network
(embedding + `mapping_layers` dense layers, lr 0.01) gives cmap [B, cmap_dim], the output
layer has cmap_dim units and logits = <out(features), cmap> / sqrt(cmap_dim) (no
unconditional term; what converted stylegan2-ada networks use).

Departures from stylegan2-ada-pytorch (each deliberate):
* Style mixing draws the decision (prob `style_mixing_prob`) and the crossover layer
  (uniform in [1, num_ws)) per sample, not once per batch, so it can be drawn with
  `SampleRNG` and does not depend on the number of replicas.
* `w_avg` is updated from the mean w of the global batch (all-reduced over replicas).
* Minibatch-std groups are consecutive samples, not strided (see `MinibatchStd`), so groups
  never mix the reals and fakes D sees in one concatenated batch and do not depend on the
  number of replicas when the group size divides the per-replica batch.
* Biases of lr-multiplied layers are stored bias_init / lr (effective initial value
  bias_init); the official stores bias_init (same for all shipped configs, where
  bias_init = 0 whenever lr != 1).
* The modulated convolution is always the non-fused form (scale inputs, shared
  convolution, scale outputs), which the official uses in training.

Mixed precision (`GAN.mixed_precision`) follows the reference: the `num_fp16_res` highest
resolutions (blocks at max(2 ** (log2(resolution) + 1 - num_fp16_res), 8) px and above)
compute in the policy's dtype; the mapping networks, the lower blocks and D's epilogue
compute in float32, the image is accumulated in float32, and `conv_clamp` (256 in the
reference whenever fp16 is on) keeps fp16 activations in range.
"""

import math

import keras
import numpy as np
import tensorflow as tf

from tfgan_eff import precision
from tfgan_eff.config import configurable
from tfgan_eff.models import stylegan2_layers as L
from tfgan_eff.models.layout import Block, BlockNames, TransferLayout, with_widths

RESOLUTIONS = tuple(2 ** k for k in range(4, 11))  # 16 ... 1024


def check_resolution(resolution):
  if resolution not in RESOLUTIONS:
    raise ValueError(f"StyleGAN2 supports resolutions {list(RESOLUTIONS)}, got "
                     f"{resolution}. Set the resolution to one of them.")


def channels_at(resolution, fmap_base=16384, fmap_max=512, fmap_decay=1.0):
  """Feature maps at `resolution`: min(int(fmap_base / 2**(log2(r) * decay)), fmap_max)."""
  return min(int(fmap_base / (2.0 ** (math.log2(resolution) * fmap_decay))), fmap_max)


def _block_resolutions(resolution):
  return [2 ** k for k in range(2, int(math.log2(resolution)) + 1)]


def mixed_resolution(resolution, num_fp16_res):
  """The lowest block resolution that computes in the mixed-precision policy's dtype (the
  reference's `fp16_resolution`); blocks below it, and everything when the policy is
  float32, compute in float32."""
  if num_fp16_res < 0:
    raise ValueError(f"num_fp16_res must be >= 0, got {num_fp16_res}.")
  return max(2 ** (int(math.log2(resolution)) + 1 - num_fp16_res), 8)


def _block_policy(r, resolution, num_fp16_res):
  """The policy scope a block at resolution `r` is built in: the surrounding one (the
  GAN's mixed policy) for the `num_fp16_res` highest resolutions, else float32."""
  return precision.policy_scope(
      None if r >= mixed_resolution(resolution, num_fp16_res) else "float32")


# ---------------------------------------------------------------------------------------
# Generator
# ---------------------------------------------------------------------------------------

class MappingNetwork(keras.layers.Layer):
  """z [B, z_dim] (+ labels) -> ws [B, num_ws, w_dim], tracking the average w.

  `num_ws=None` returns w [B, w_dim]; `w_avg_beta=None` keeps no average; `z_dim=0` maps
  labels alone (pass z=None): the discriminator's label mapping ("cmap").
  """

  def __init__(self, z_dim, w_dim, num_ws, num_classes=0, num_layers=8,
               lr_multiplier=0.01, w_avg_beta=0.995, **kwargs):
    super().__init__(**kwargs)
    if not z_dim and not num_classes:
      raise ValueError("MappingNetwork needs latents (z_dim > 0), labels (num_classes > 0) "
                       "or both.")
    self.z_dim, self.w_dim, self.num_ws = z_dim, w_dim, num_ws
    self.num_classes, self.num_layers = num_classes, num_layers
    self.lr_multiplier, self.w_avg_beta = lr_multiplier, w_avg_beta
    self.embed = (L.EqualizedDense(w_dim, num_classes, name="embed") if num_classes else None)
    dims = [z_dim + (w_dim if num_classes else 0)] + [w_dim] * num_layers
    self.fcs = [L.EqualizedDense(dims[i + 1], dims[i], lr_multiplier=lr_multiplier,
                                 activation="lrelu", name=f"fc{i}")
                for i in range(num_layers)]

  def build(self, input_shape=None):
    L.build_layers(self.embed, *self.fcs)
    self.w_avg = (self.add_weight(name="w_avg", shape=(self.w_dim,), initializer="zeros",
                                  trainable=False, aggregation="only_first_replica",
                                  autocast=False)  # stays float32 under mixed precision
                  if self.w_avg_beta is not None else None)

  def call(self, z, y=None, training=False, truncation=1.0, update_w_avg=True):
    parts = [L.normalize_2nd_moment(z)] if self.z_dim else []
    if self.num_classes:
      if y is None:
        raise ValueError(f"'{self.name}' is class-conditional: pass labels y.")
      dtype = parts[0].dtype if parts else self.compute_dtype
      c = L.labels_to_distribution(y, self.num_classes, dtype)
      parts.append(L.normalize_2nd_moment(self.embed(c)))
    x = tf.concat(parts, axis=-1) if len(parts) > 1 else parts[0]
    for fc in self.fcs:
      x = fc(x)
    if self.num_ws is None:
      return x
    if training and update_w_avg and self.w_avg_beta is not None:
      self._update_w_avg(x)
    # broadcast_to, not tile, throughout: Tile's gradient does not compile with XLA inside
    # the lazy-regularization cond.
    ws = tf.broadcast_to(x[:, None, :], [tf.shape(x)[0], self.num_ws, x.shape[-1]])
    if not (isinstance(truncation, (int, float)) and truncation == 1.0):
      avg = tf.cast(self.w_avg, ws.dtype)
      ws = avg + tf.cast(truncation, ws.dtype) * (ws - avg)
    return ws

  def _update_w_avg(self, w):
    mean = tf.reduce_mean(tf.cast(tf.stop_gradient(w), tf.float32), axis=0)
    ctx = tf.distribute.get_replica_context()
    if ctx is not None and ctx.num_replicas_in_sync > 1:
      mean = ctx.all_reduce(tf.distribute.ReduceOp.MEAN, mean)
    beta = self.w_avg_beta
    self.w_avg.assign(beta * self.w_avg + (1.0 - beta) * mean)


class SynthesisLayer(keras.layers.Layer):
  """affine(w) -> modulated conv (optionally 2x up) -> noise -> bias, lrelu * sqrt 2."""

  def __init__(self, filters, in_channels, w_dim, resolution, up=False, conv_clamp=None,
               **kwargs):
    super().__init__(**kwargs)
    self.filters, self.conv_clamp = filters, conv_clamp
    self.affine = L.EqualizedDense(in_channels, w_dim, bias_init=1.0, name="affine")
    self.conv = L.ModulatedConv2D(filters, in_channels, 3, demodulate=True, up=up,
                                  name="conv")
    self.noise = L.NoiseInjection(resolution, name="noise")

  def build(self, input_shape=None):
    L.build_layers(self.affine, self.conv, self.noise)
    self.bias = self.add_weight(name="bias", shape=(self.filters,), initializer="zeros")

  def call(self, x, w, noise_mode="random", rng=None):
    x = self.conv(x, self.affine(w))
    x = self.noise(x, noise_mode=noise_mode, rng=rng)
    return L.bias_act(x, self.bias, "lrelu", clamp=self.conv_clamp)


class ToRGB(keras.layers.Layer):
  """affine(w) -> 1x1 modulated conv without demodulation -> bias (linear)."""

  def __init__(self, channels, in_channels, w_dim, conv_clamp=None, **kwargs):
    super().__init__(**kwargs)
    self.channels, self.conv_clamp = channels, conv_clamp
    self.affine = L.EqualizedDense(in_channels, w_dim, bias_init=1.0, name="affine")
    self.conv = L.ModulatedConv2D(channels, in_channels, 1, demodulate=False, name="conv")

  def build(self, input_shape=None):
    L.build_layers(self.affine, self.conv)
    self.bias = self.add_weight(name="bias", shape=(self.channels,), initializer="zeros")

  def call(self, x, w):
    return L.bias_act(self.conv(x, self.affine(w)), self.bias, clamp=self.conv_clamp)


class SynthesisBlock(keras.layers.Layer):
  """One resolution of the synthesis network (the 4x4 one starts from a learned const)."""

  def __init__(self, in_channels, out_channels, w_dim, resolution, img_channels, is_last,
               architecture="skip", conv_clamp=None, **kwargs):
    super().__init__(**kwargs)
    self.in_channels, self.out_channels = in_channels, out_channels
    self.resolution, self.architecture = resolution, architecture
    self.conv0 = (SynthesisLayer(out_channels, in_channels, w_dim, resolution, up=True,
                                 conv_clamp=conv_clamp, name="conv0") if in_channels else None)
    self.conv1 = SynthesisLayer(out_channels, out_channels, w_dim, resolution,
                                conv_clamp=conv_clamp, name="conv1")
    self.torgb = (ToRGB(img_channels, out_channels, w_dim, conv_clamp=conv_clamp, name="torgb")
                  if is_last or architecture == "skip" else None)
    self.num_conv = 2 if in_channels else 1

  def build(self, input_shape=None):
    if not self.in_channels:
      r = self.resolution
      self.const = self.add_weight(name="const", shape=(r, r, self.out_channels),
                                   initializer=keras.initializers.RandomNormal(stddev=1.0))
    L.build_layers(self.conv0, self.conv1, self.torgb)

  def call(self, x, ws, noise_mode="random", rng=None):
    """ws: [B, num_conv + 1, w_dim] (the last one for toRGB). Returns (x, rgb or None)."""
    if self.conv0 is None:
      b = tf.shape(ws)[0]
      x = tf.broadcast_to(tf.cast(self.const, ws.dtype)[None], [b, *self.const.shape])
      x = self.conv1(x, ws[:, 0], noise_mode=noise_mode, rng=rng)
    else:
      x = self.conv0(x, ws[:, 0], noise_mode=noise_mode, rng=rng)
      x = self.conv1(x, ws[:, 1], noise_mode=noise_mode, rng=rng)
    rgb = self.torgb(x, ws[:, self.num_conv]) if self.torgb is not None else None
    return x, rgb


class StyleBasedGenerator:
  """The contract of a style-based generator, what path-length regularization needs:

    mapping(z, y=None, training=False, truncation=1.0) -> ws [B, num_ws, w_dim]
    style_mix(ws, y=None, truncation=1.0, rng=None, prob=None) -> (ws, cutoff [B])
    synthesis(ws, training=False, rng=None, noise_mode="random") -> images [B, H, W, C]
    style_mixing_prob, z_dim
  """

  style_mixing_prob = 0.0

  def mapping(self, z, y=None, training=False, truncation=1.0):
    raise NotImplementedError(f"{type(self).__name__} must implement mapping().")

  def style_mix(self, ws, y=None, truncation=1.0, rng=None, prob=None):
    raise NotImplementedError(f"{type(self).__name__} must implement style_mix().")

  def synthesis(self, ws, training=False, rng=None, noise_mode="random"):
    raise NotImplementedError(f"{type(self).__name__} must implement synthesis().")


@configurable
class StyleGAN2Generator(keras.Model, StyleBasedGenerator):
  """StyleGAN2 generator: mapping network + style-modulated synthesis network.

  Args:
    resolution: output size, a power of two in 16 ... 1024.
    channels: image channels.
    z_dim, w_dim: latent and intermediate latent sizes.
    num_classes: 0 for unconditional; otherwise labels are embedded into the mapping input.
    mapping_layers, mapping_lr_multiplier: depth and learning-rate multiplier of the
      mapping network.
    fmap_base, fmap_max, fmap_decay: channel widths (see the module docstring).
    style_mixing_prob: probability (training only) of switching to the w of a second z from
      a random layer on.
    style_mixing: "per_batch" (the reference: one decision and one crossover layer for the
      whole global batch) or "per_sample" (each sample decides and draws its own).
    w_avg_beta: decay of the running average of w (updated in training calls).
    architecture: "skip" (toRGB at every resolution, summed) or "orig" (toRGB at the end).
    widths: {resolution: channels} overriding `channels_at` for the blocks at those
      resolutions (e.g. AdaFM's `high_level = 'new_small'`); `self.widths` holds them all.
    conv_clamp: clip every synthesis layer's output to +-conv_clamp (the reference's guard
      for fp16, applied in fp32 too; 256 in its configs); None: no clipping.
    num_fp16_res: under a mixed-precision policy (`GAN.mixed_precision`), how many of the
      highest resolutions compute in its dtype (the reference: 4); the rest, and the
      mapping network, compute in float32. No effect in float32.

  `call(z, y=None, training=False, truncation=1.0, rng=None, noise_mode="random")` returns
  images [B, H, W, C] in roughly [-1, 1]. `rng` (a SampleRNG) drives noise inputs and style
  mixing; `None` draws with tf.random.

  >>> g = StyleGAN2Generator(resolution=16, z_dim=8, w_dim=8, fmap_base=64, fmap_max=8)
  >>> g(tf.zeros([2, 8])).shape
  TensorShape([2, 16, 16, 3])
  """

  use_sn = False  # equalized learning rate, no spectral norm

  def __init__(self, resolution=256, channels=3, z_dim=512, w_dim=512, num_classes=0,
               mapping_layers=8, mapping_lr_multiplier=0.01, fmap_base=16384, fmap_max=512,
               fmap_decay=1.0, style_mixing_prob=0.9, w_avg_beta=0.995, architecture="skip",
               widths=None, style_mixing="per_batch", conv_clamp=None, num_fp16_res=4,
               **kwargs):
    super().__init__(**kwargs)
    check_resolution(resolution)
    mixed_resolution(resolution, num_fp16_res)  # checks it
    if architecture not in ("skip", "orig"):
      raise ValueError(f"StyleGAN2Generator architecture must be 'skip' or 'orig', got "
                       f"'{architecture}'.")
    self.resolution, self.channels, self.z_dim, self.w_dim = resolution, channels, z_dim, w_dim
    self.num_classes, self.style_mixing_prob = num_classes, style_mixing_prob
    if style_mixing not in ("per_batch", "per_sample"):
      raise ValueError(f"StyleGAN2Generator.style_mixing must be 'per_batch' or 'per_sample', "
                       f"got '{style_mixing}'.")
    self.style_mixing = style_mixing
    self.architecture = architecture
    self._f = L.setup_filter([1, 3, 3, 1])
    self._config = dict(resolution=resolution, channels=channels, z_dim=z_dim, w_dim=w_dim,
                        num_classes=num_classes, mapping_layers=mapping_layers,
                        mapping_lr_multiplier=mapping_lr_multiplier, fmap_base=fmap_base,
                        fmap_max=fmap_max, fmap_decay=fmap_decay,
                        style_mixing_prob=style_mixing_prob, w_avg_beta=w_avg_beta,
                        architecture=architecture, widths=dict(widths or {}),
                        style_mixing=style_mixing, conv_clamp=conv_clamp,
                        num_fp16_res=num_fp16_res)
    res_list = _block_resolutions(resolution)
    self.channels_dict = with_widths(
        {r: channels_at(r, fmap_base, fmap_max, fmap_decay) for r in res_list}, widths,
        "StyleGAN2Generator")
    self.widths = self.channels_dict
    self.blocks = []
    for r in res_list:
      in_ch = self.channels_dict[r // 2] if r > 4 else 0
      with _block_policy(r, resolution, num_fp16_res):
        self.blocks.append(SynthesisBlock(in_ch, self.channels_dict[r], w_dim, r, channels,
                                          is_last=r == resolution, architecture=architecture,
                                          conv_clamp=conv_clamp, name=f"b{r}"))
    self.num_ws = sum(b.num_conv for b in self.blocks) + 1
    with precision.policy_scope("float32"):
      self.mapping_network = MappingNetwork(z_dim, w_dim, self.num_ws, num_classes,
                                            mapping_layers, mapping_lr_multiplier, w_avg_beta,
                                            name="mapping")

  def build(self, input_shape=None):
    L.build_layers(self.mapping_network, *self.blocks)

  @property
  def w_avg(self):
    return self.mapping_network.w_avg

  def mapping(self, z, y=None, training=False, truncation=1.0):
    """z [B, z_dim], labels -> ws [B, num_ws, w_dim] (truncated towards w_avg by ψ).

    Updates `w_avg` when `training`.
    """
    return self.mapping_network(z, y, training=training, truncation=truncation)

  def style_mix(self, ws, y=None, truncation=1.0, rng=None, prob=None):
    """With probability `prob` (default `style_mixing_prob`), replaces ws[:, c:] by the ws
    of a fresh z (same labels, no w_avg update), c ~ U{1..num_ws-1}: one decision and one c
    for the whole global batch (`style_mixing = "per_batch"`, the reference) or per sample.

    Draw order from `rng`: second z, decision, crossover. Returns (ws, cutoff [B]), where
    cutoff = num_ws for samples that are not mixed.
    """
    prob = self.style_mixing_prob if prob is None else prob
    b = ws.shape[0] if ws.shape[0] is not None else tf.shape(ws)[0]
    per_batch = self.style_mixing == "per_batch"
    if rng is not None:
      z2 = rng.normal([b, self.z_dim])
      if per_batch:
        u = tf.fill([b], rng.batch_uniform())
        cut = tf.fill([b], tf.cast(rng.batch_uniform(1, self.num_ws, tf.int32), tf.int32))
      else:
        u = rng.uniform([b])
        cut = rng.integers([b], 1, self.num_ws)
    else:
      z2 = tf.random.normal([b, self.z_dim])
      shape = [] if per_batch else [b]
      u = tf.broadcast_to(tf.random.uniform(shape), [b])
      cut = tf.broadcast_to(tf.random.uniform(shape, 1, self.num_ws, dtype=tf.int32), [b])
    ws2 = self.mapping_network(tf.cast(z2, ws.dtype), y, training=False,
                               truncation=truncation, update_w_avg=False)
    cutoff = tf.where(u < prob, cut, tf.fill(tf.shape(cut), self.num_ws))
    mask = tf.range(self.num_ws)[None, :] >= cutoff[:, None]  # [B, num_ws]
    return tf.where(mask[:, :, None], ws2, ws), cutoff

  def synthesis(self, ws, training=False, rng=None, noise_mode="random"):
    """ws [B, num_ws, w_dim] (or [B, w_dim], broadcast) -> images [B, H, W, C]."""
    del training  # no training-dependent behaviour in synthesis
    ws = tf.convert_to_tensor(ws)
    if ws.shape.rank == 2:
      ws = tf.broadcast_to(ws[:, None, :], [tf.shape(ws)[0], self.num_ws, ws.shape[-1]])
    x = img = None
    i = 0
    for block in self.blocks:
      x, rgb = block(x, ws[:, i:i + block.num_conv + 1], noise_mode=noise_mode, rng=rng)
      i += block.num_conv
      if rgb is not None:  # the image is accumulated in float32 (also under mixed precision)
        rgb = tf.cast(rgb, tf.float32)
        img = rgb if img is None else L.upsample2d(img, self._f) + rgb
    return img

  def call(self, z, y=None, training=False, truncation=1.0, rng=None, noise_mode="random"):
    ws = self.mapping(z, y, training=training, truncation=truncation)
    if training and self.style_mixing_prob > 0:
      ws, _ = self.style_mix(ws, y, truncation=truncation, rng=rng)
    return self.synthesis(ws, training=training, rng=rng, noise_mode=noise_mode)

  def transfer_layout(self):
    """Blocks b4 ... b<resolution> (b4, with the learned constant, maps only to itself),
    their fixed noise, the mapping's label embedding (see `tfgan_eff.models.layout`)."""
    embed = self.mapping_network.embed
    return TransferLayout(
        layers=tuple(self.layers), names=BlockNames("b"),
        blocks=tuple(Block(b.name, b.resolution) for b in self.blocks),
        pinned=tuple(b.name for b in self.blocks if b.conv0 is None),
        conditional=((f"{self.mapping_network.name}/{embed.name}",) if embed is not None
                     else ()),
        resolution_buffers=("noise_const",))  # NoiseInjection's fixed noise

  def get_config(self):
    return {**super().get_config(), **self._config}


# ---------------------------------------------------------------------------------------
# Discriminator
# ---------------------------------------------------------------------------------------

class DiscriminatorBlock(keras.layers.Layer):
  """(fromRGB) -> conv 3x3 -> conv 3x3 down, with a 1x1 down shortcut ("resnet")."""

  def __init__(self, in_channels, tmp_channels, out_channels, img_channels,
               architecture="resnet", conv_clamp=None, **kwargs):
    super().__init__(**kwargs)
    self.architecture = architecture
    self.fromrgb = (L.EqualizedConv2D(tmp_channels, img_channels, 1, activation="lrelu",
                                      conv_clamp=conv_clamp, name="fromrgb")
                    if not in_channels else None)
    resnet = architecture == "resnet"
    gain = np.sqrt(0.5) if resnet else 1.0
    self.conv0 = L.EqualizedConv2D(tmp_channels, tmp_channels, 3, activation="lrelu",
                                   conv_clamp=conv_clamp, name="conv0")
    self.conv1 = L.EqualizedConv2D(out_channels, tmp_channels, 3, down=True,
                                   activation="lrelu", gain=gain, conv_clamp=conv_clamp,
                                   name="conv1")
    self.skip = (L.EqualizedConv2D(out_channels, tmp_channels, 1, down=True, use_bias=False,
                                   gain=gain, name="skip") if resnet else None)

  def build(self, input_shape=None):
    L.build_layers(self.fromrgb, self.conv0, self.conv1, self.skip)

  def call(self, x):
    if self.fromrgb is not None:
      x = self.fromrgb(x)
    y = self.skip(x) if self.skip is not None else None
    x = self.conv1(self.conv0(x))
    return x + y if y is not None else x


@configurable
class StyleGAN2Discriminator(keras.Model):
  """StyleGAN2 residual discriminator with minibatch std and projection conditioning.

  Args:
    resolution: input size, a power of two in 16 ... 1024.
    channels: image channels.
    num_classes: 0 for unconditional; otherwise projection conditioning.
    fmap_base, fmap_max, fmap_decay: channel widths (see the module docstring).
    mbstd_group_size, mbstd_num_features: minibatch-std group size (reduced to a divisor of
      the batch when needed) and number of appended channels (0 disables the layer).
    architecture: "resnet" or "orig" (no shortcut).
    conditioning: "projection" or "cmap" (see the module docstring); cmap_dim (default: the
      4 px width), mapping_layers and mapping_lr_multiplier shape the cmap label mapping.
    conv_clamp: clip every convolution's output to +-conv_clamp (times its gain), as the
      reference (256 in its configs); None: no clipping.
    num_fp16_res: under a mixed-precision policy, how many of the highest-resolution blocks
      compute in its dtype (the reference: 4); the rest and the epilogue (minibatch std,
      4 px conv, fc, output, projection, cmap mapping) compute in float32.

  `call(x, y=None, training=False, segments=1)` returns {"logits": [B], "features": [B, C],
  "feature_map": [B, 4, 4, C]}; `segments`: x is that many equal, independent parts (the
  GAN's [reals; fakes]), which minibatch-std groups never span.

  >>> d = StyleGAN2Discriminator(resolution=16, fmap_base=64, fmap_max=8)
  >>> d(tf.zeros([2, 16, 16, 3]))["feature_map"].shape
  TensorShape([2, 4, 4, 8])
  """

  use_sn = False  # equalized learning rate, no spectral norm

  def __init__(self, resolution=256, channels=3, num_classes=0, fmap_base=16384,
               fmap_max=512, mbstd_group_size=4, mbstd_num_features=1,
               architecture="resnet", fmap_decay=1.0, conditioning="projection",
               cmap_dim=None, mapping_layers=8, mapping_lr_multiplier=0.01, conv_clamp=None,
               num_fp16_res=4, **kwargs):
    super().__init__(**kwargs)
    check_resolution(resolution)
    mixed_resolution(resolution, num_fp16_res)  # checks it
    if architecture not in ("resnet", "orig"):
      raise ValueError(f"StyleGAN2Discriminator architecture must be 'resnet' or 'orig', "
                       f"got '{architecture}'.")
    if conditioning not in ("projection", "cmap"):
      raise ValueError(f"StyleGAN2Discriminator.conditioning must be 'projection' or 'cmap', "
                       f"got '{conditioning}'.")
    self.resolution, self.channels, self.num_classes = resolution, channels, num_classes
    self.conditioning = conditioning
    self._config = dict(resolution=resolution, channels=channels, num_classes=num_classes,
                        fmap_base=fmap_base, fmap_max=fmap_max,
                        mbstd_group_size=mbstd_group_size,
                        mbstd_num_features=mbstd_num_features, architecture=architecture,
                        fmap_decay=fmap_decay, conditioning=conditioning, cmap_dim=cmap_dim,
                        mapping_layers=mapping_layers,
                        mapping_lr_multiplier=mapping_lr_multiplier, conv_clamp=conv_clamp,
                        num_fp16_res=num_fp16_res)
    ch = {r: channels_at(r, fmap_base, fmap_max, fmap_decay)
          for r in _block_resolutions(resolution)}
    self.channels_dict = ch
    self.block_resolutions = tuple(r for r in reversed(_block_resolutions(resolution))
                                   if r > 4)  # the input resolution of each block
    self.blocks = []
    for r in self.block_resolutions:
      with _block_policy(r, resolution, num_fp16_res):
        self.blocks.append(DiscriminatorBlock(ch[r] if r < resolution else 0, ch[r],
                                              ch[r // 2], channels, architecture,
                                              conv_clamp=conv_clamp, name=f"b{r}"))
    with precision.policy_scope("float32"):
      self._build_epilogue(ch[4], num_classes, conditioning, cmap_dim, mbstd_group_size,
                           mbstd_num_features, mapping_layers, mapping_lr_multiplier,
                           conv_clamp)

  def _build_epilogue(self, c4, num_classes, conditioning, cmap_dim, mbstd_group_size,
                      mbstd_num_features, mapping_layers, mapping_lr_multiplier, conv_clamp):
    """The 4 px epilogue (float32 under mixed precision, as the reference's)."""
    self.feature_dim = c4
    self.mbstd = (L.MinibatchStd(mbstd_group_size, mbstd_num_features, name="mbstd")
                  if mbstd_num_features else None)
    self.conv = L.EqualizedConv2D(c4, c4 + mbstd_num_features, 3, activation="lrelu",
                                  conv_clamp=conv_clamp, name="b4_conv")
    self.fc = L.EqualizedDense(c4, c4 * 16, activation="lrelu", name="b4_fc")
    cmap = conditioning == "cmap" and num_classes
    self.cmap_dim = (cmap_dim or c4) if cmap else 0
    self.out = L.EqualizedDense(self.cmap_dim or 1, c4, name="b4_out")
    self.embed = (L.LabelEmbedding(num_classes, c4, name="projection")
                  if num_classes and not cmap else None)
    self.mapping = (MappingNetwork(0, self.cmap_dim, None, num_classes, mapping_layers,
                                   mapping_lr_multiplier, None, name="mapping")
                    if cmap else None)

  def build(self, input_shape=None):
    L.build_layers(*self.blocks, self.conv, self.fc, self.out, self.embed, self.mapping)

  def project(self, features, y):
    """<table[y], features> / sqrt(C): int y [B] (-1 -> 0) or soft y [B, num_classes]."""
    if self.mapping is not None:
      raise ValueError("project() needs projection conditioning; this discriminator uses "
                       "conditioning='cmap', whose logit has no unconditional part to add "
                       "a projection to (set StyleGAN2Discriminator.conditioning = "
                       "'projection').")
    if self.embed is None:
      raise ValueError("project() needs a conditional discriminator (num_classes > 0).")
    e = tf.cast(self.embed(y), features.dtype)
    return tf.reduce_sum(e * features, axis=-1) * (1.0 / math.sqrt(self.feature_dim))

  def call(self, x, y=None, training=False, segments=1):
    h = x
    for block in self.blocks:
      h = block(h)
    fmap = h
    if self.mbstd is not None:
      h = self.mbstd(h, segments=segments)
    h = self.conv(h)
    features = self.fc(tf.reshape(h, [-1, 16 * self.feature_dim]))
    features = tf.cast(features, tf.float32)  # float32 outputs under mixed precision too
    if self.mapping is not None:  # cmap: the logit is the label-mapped projection only
      if y is None:
        raise ValueError("This discriminator (conditioning='cmap') needs labels y.")
      cmap = tf.cast(self.mapping(None, y), tf.float32)
      out = tf.cast(self.out(features), tf.float32)
      logits = tf.reduce_sum(out * cmap, axis=-1) * (1.0 / math.sqrt(self.cmap_dim))
      return {"logits": logits, "features": features,
              "feature_map": tf.cast(fmap, tf.float32)}
    logits = tf.cast(tf.squeeze(self.out(features), -1), tf.float32)
    if y is not None and self.num_classes:
      logits = logits + self.project(features, y)
    return {"logits": logits, "features": features,
            "feature_map": tf.cast(fmap, tf.float32)}

  def transfer_layout(self):
    """Blocks b<resolution> ... b8 (input first), the output layer and the projection as
    heads (see `tfgan_eff.models.layout`)."""
    projection = tuple(m.name for m in (self.embed, self.mapping) if m is not None)
    return TransferLayout(
        layers=tuple(self.layers), names=BlockNames("b", descending=True),
        blocks=tuple(Block(b.name, r) for b, r in zip(self.blocks, self.block_resolutions)),
        conditional=projection, heads=(self.out.name,) + projection)

  def get_config(self):
    return {**super().get_config(), **self._config}
