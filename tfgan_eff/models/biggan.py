"""BigGAN generator and discriminator (Brock, Donahue, Simonyan 2019), 32-256 px.

Channel layouts follow the published BigGAN models (multiples of `ch`):

| res | G blocks (in -> out)                 | D blocks (out; last one keeps resolution)  |
|-----|--------------------------------------|--------------------------------------------|
| 32  | 4-4, 4-4, 4-4   (4x4 -> 32x32)       | 4, 4, 4, 4     (two down-samplings)        |
| 64  | 16-16, 16-8, 8-4, 4-2                | 1, 2, 4, 8, 16                             |
| 128 | 16-16, 16-8, 8-4, 4-2, 2-1           | 1, 2, 4, 8, 16, 16                         |
| 256 | 16-16, 16-8, 8-8, 8-4, 4-2, 2-1      | 1, 2, 4, 8, 8, 16, 16                      |

Choices (see docs/architecture.md): nearest-neighbour up-sampling in G blocks (BigGAN-PyTorch;
compare_gan inserts zeros), conditional BN gain `1 + W·c`, cross-replica batch statistics,
orthogonal init everywhere by default (`init`: BigGAN-PyTorch's `--G_init`/`--D_init`),
spectral norm in G and D, sum pooling and projection in D, the first D block without
pre-activation ReLU (inputs are in [-1, 1]).
"""

import keras
import tensorflow as tf

from tfgan_eff.config import configurable
from tfgan_eff.models import layers
from tfgan_eff.models.layout import Block, BlockNames, TransferLayout, with_widths

NAMES = BlockNames("block", attached=("attention",))  # block<i>, attention<i> after block i

G_ARCH = {
    32: ([4, 4, 4], [4, 4, 4]),
    64: ([16, 16, 8, 4], [16, 8, 4, 2]),
    128: ([16, 16, 8, 4, 2], [16, 8, 4, 2, 1]),
    256: ([16, 16, 8, 8, 4, 2], [16, 8, 8, 4, 2, 1]),
}
D_ARCH = {  # (out multipliers, downsample flags)
    32: ([4, 4, 4, 4], [True, True, False, False]),
    64: ([1, 2, 4, 8, 16], [True, True, True, True, False]),
    128: ([1, 2, 4, 8, 16, 16], [True, True, True, True, True, False]),
    256: ([1, 2, 4, 8, 8, 16, 16], [True, True, True, True, True, True, False]),
}


# `init` of G and D -> the initializer of every conv, linear and embedding kernel, as
# BigGAN-PyTorch's `init_weights` (`--G_init`, `--D_init`); batch-norm parameters and the
# attention gate keep their own (1/0 and 0).
INITS = {
    "ortho": layers.ORTHOGONAL,
    "N02": {"class_name": "RandomNormal", "config": {"mean": 0.0, "stddev": 0.02}},
    "glorot": "glorot_uniform",
    "xavier": "glorot_uniform",
}


def kernel_initializer(init, model):
  """The kernel initializer spec of `init` (a key of `INITS`); `model` names the caller."""
  if init not in INITS:
    raise ValueError(f"{model}: unknown init '{init}'; use one of {', '.join(INITS)} "
                     f"(BigGAN-PyTorch's --G_init/--D_init).")
  return INITS[init]


def _check_resolution(resolution):
  if resolution not in G_ARCH:
    raise ValueError(f"BigGAN supports resolutions {sorted(G_ARCH)}, got {resolution}. "
                     f"Set ImageData.resolution to one of them.")


def _layout_blocks(model):
  """The blocks of a BigGAN G or D for `TransferLayout`, each with its attention layer."""
  return tuple(Block(b.name, r, (model.attention[i].name,) if i in model.attention else ())
               for i, (b, r) in enumerate(zip(model.blocks, model.block_resolutions)))


def _upsample(x):
  return tf.repeat(tf.repeat(x, 2, axis=1), 2, axis=2)


def _downsample(x):
  return tf.nn.avg_pool2d(x, 2, 2, "VALID")


class GBlock(layers.BuildOnCall, keras.layers.Layer):
  """BN -> ReLU -> up -> conv3 -> BN -> ReLU -> conv3, plus up -> conv1 shortcut."""

  def __init__(self, in_ch, out_ch, conditional, use_sn=True, bn_momentum=0.9, cbn_sn=None,
               kernel_initializer=layers.ORTHOGONAL, **kwargs):
    super().__init__(**kwargs)
    cbn_sn = use_sn if cbn_sn is None else cbn_sn
    init = dict(kernel_initializer=kernel_initializer)
    if conditional:
      self.bn1 = layers.ConditionalBatchNorm(in_ch, bn_momentum, use_sn=cbn_sn, name="bn1",
                                             **init)
      self.bn2 = layers.ConditionalBatchNorm(out_ch, bn_momentum, use_sn=cbn_sn, name="bn2",
                                             **init)
    else:
      self.bn1 = layers.CrossReplicaBatchNorm(bn_momentum, name="bn1")
      self.bn2 = layers.CrossReplicaBatchNorm(bn_momentum, name="bn2")
    self.conditional = conditional
    self.conv1 = layers.SNConv2D(out_ch, 3, use_sn=use_sn, name="conv1", **init)
    self.conv2 = layers.SNConv2D(out_ch, 3, use_sn=use_sn, name="conv2", **init)
    self.conv_sc = layers.SNConv2D(out_ch, 1, use_sn=use_sn, name="conv_sc", **init)

  def _bn(self, bn, x, cond, training):
    return bn(x, cond, training=training) if self.conditional else bn(x, training=training)

  def call(self, x, cond=None, training=False):
    h = tf.nn.relu(self._bn(self.bn1, x, cond, training))
    h = self.conv1(_upsample(h), training=training)
    h = tf.nn.relu(self._bn(self.bn2, h, cond, training))
    h = self.conv2(h, training=training)
    return h + self.conv_sc(_upsample(x), training=training)


class DBlock(layers.BuildOnCall, keras.layers.Layer):
  """(ReLU) -> conv3 -> ReLU -> conv3 -> (avg-pool), plus a 1x1 shortcut when needed."""

  def __init__(self, in_ch, out_ch, downsample, preactivation, use_sn=True,
               kernel_initializer=layers.ORTHOGONAL, **kwargs):
    super().__init__(**kwargs)
    self.downsample, self.preactivation = downsample, preactivation
    init = dict(kernel_initializer=kernel_initializer)
    self.conv1 = layers.SNConv2D(out_ch, 3, use_sn=use_sn, name="conv1", **init)
    self.conv2 = layers.SNConv2D(out_ch, 3, use_sn=use_sn, name="conv2", **init)
    self.learnable_sc = in_ch != out_ch or downsample
    self.conv_sc = (layers.SNConv2D(out_ch, 1, use_sn=use_sn, name="conv_sc", **init)
                    if self.learnable_sc else None)

  def call(self, x, training=False):
    h = tf.nn.relu(x) if self.preactivation else x
    h = self.conv2(tf.nn.relu(self.conv1(h, training=training)), training=training)
    if self.downsample:
      h = _downsample(h)
    sc = x
    if self.learnable_sc:
      if self.preactivation:  # conv then pool
        sc = self.conv_sc(sc, training=training)
        sc = _downsample(sc) if self.downsample else sc
      else:  # pool then conv
        sc = _downsample(sc) if self.downsample else sc
        sc = self.conv_sc(sc, training=training)
    return h + sc


@configurable
class BigGANGenerator(layers.BuildOnCall, keras.Model):
  """BigGAN generator: hierarchical z, shared class embedding, conditional BN.

  Args:
    resolution: 32, 64, 128 or 256.
    channels: output image channels.
    ch: base width (96 for ImageNet 128, 256 for the CIFAR setting).
    z_dim: latent size; with `hierarchical_z` it is rounded down to a multiple of the
      number of chunks (blocks + 1), and `self.z_dim` holds the value used.
    num_classes: 0 for an unconditional generator.
    shared_dim: size of the shared class embedding; 0 (with classes): per-layer class
      embeddings instead, as BigGAN-PyTorch's `G_shared=False` (the DiffAugment CIFAR
      scripts): every conditional BN's gain and bias are tables [num_classes, channels] of
      their own, without spectral norm (a linear map of one-hot y); needs
      `hierarchical_z=False`.
    hierarchical_z: split z into one chunk for the input layer and one per block.
    attention_resolution: resolution after whose block self-attention sits (0: none).
    widths: {resolution: channels} overriding the published widths (`G_ARCH` x `ch`) of the
      features at that resolution: 4 is the input layer's, any other the output of the
      block that makes it (e.g. a narrower high-level part: AdaFM's `high_level =
      'new_small'`). `self.widths` holds every resolution's width.
    init: the initializer of every conv, linear and embedding kernel (the shared class
      embedding, the conditional BN maps and attention included), as BigGAN-PyTorch's
      `--G_init`: "ortho" (orthogonal, its default), "N02" (normal, std 0.02; its CIFAR
      scripts), "glorot" or "xavier" (Glorot uniform).

  >>> g = BigGANGenerator(resolution=32, ch=8, num_classes=10)
  >>> g(tf.zeros([2, g.z_dim]), tf.constant([1, 2])).shape
  TensorShape([2, 32, 32, 3])
  """

  def __init__(self, resolution=128, channels=3, ch=96, z_dim=120, num_classes=0,
               shared_dim=128, hierarchical_z=True, attention_resolution=64,
               use_sn=True, bn_momentum=0.9, widths=None, init="ortho", **kwargs):
    super().__init__(**kwargs)
    _check_resolution(resolution)
    self.resolution, self.channels, self.num_classes = resolution, channels, num_classes
    self.use_sn = use_sn
    kw = dict(kernel_initializer=kernel_initializer(init, "BigGANGenerator"))
    ins, outs = G_ARCH[resolution]
    n_blocks = len(ins)
    self.widths = with_widths({4 * 2 ** i: c * ch for i, c in enumerate([ins[0]] + outs)},
                              widths, "BigGANGenerator")
    self._config = dict(resolution=resolution, channels=channels, ch=ch, z_dim=z_dim,
                        num_classes=num_classes, shared_dim=shared_dim,
                        hierarchical_z=hierarchical_z,
                        attention_resolution=attention_resolution, use_sn=use_sn,
                        bn_momentum=bn_momentum, widths=dict(widths or {}), init=init)
    self.hierarchical_z = hierarchical_z
    if hierarchical_z:
      self.chunk = z_dim // (n_blocks + 1)
      if self.chunk == 0:
        raise ValueError(f"z_dim={z_dim} is too small to split into {n_blocks + 1} chunks.")
      self.z_dim = self.chunk * (n_blocks + 1)
    else:
      self.chunk, self.z_dim = 0, z_dim
    self.per_layer_embedding = bool(num_classes) and not shared_dim
    if self.per_layer_embedding and hierarchical_z:
      raise ValueError("BigGANGenerator: per-layer class embeddings (shared_dim = 0) need "
                       "hierarchical_z = False (as BigGAN-PyTorch's G_shared=False); set both, "
                       "or a shared_dim > 0.")
    self.embed = (layers.SNEmbedding(num_classes, shared_dim, use_sn=False, name="shared", **kw)
                  if num_classes and shared_dim else None)
    cond_dim = ((self.chunk if hierarchical_z else 0) +
                ((shared_dim or num_classes) if num_classes else 0))
    self.conditional = cond_dim > 0
    self.bottom_channels = self.widths[4]
    self.linear = layers.SNDense(4 * 4 * self.bottom_channels, use_sn=use_sn, name="linear",
                                 **kw)
    self.blocks, self.attention, block_res = [], {}, []
    res = 4
    for i in range(n_blocks):
      self.blocks.append(GBlock(self.widths[res], self.widths[2 * res], self.conditional,
                                use_sn, bn_momentum, name=f"block{i}",
                                cbn_sn=False if self.per_layer_embedding else None, **kw))
      res *= 2
      block_res.append(res)
      if res == attention_resolution:
        self.attention[i] = layers.SelfAttention(use_sn, name=f"attention{i}", **kw)
    self.attention_layers = list(self.attention.values())
    self.block_resolutions = tuple(block_res)  # the output resolution of each block
    self.bn_out = layers.CrossReplicaBatchNorm(bn_momentum, name="bn_out")
    self.conv_out = layers.SNConv2D(channels, 3, use_sn=use_sn, name="conv_out", **kw)

  def call(self, z, y=None, training=False, truncation=1.0, rng=None):
    """z [B, z_dim], y int [B] or float [B, num_classes] -> images [B, H, W, C] in [-1, 1].

    `truncation` scales z (1.0: unchanged, 0.0: the class mean); sample z from a truncated
    normal for the usual truncation trick. `rng` is unused (BigGAN G is deterministic).
    """
    z = z * tf.cast(truncation, z.dtype)
    if self.hierarchical_z:
      zs = tf.split(z, len(self.blocks) + 1, axis=-1)
      z0, z_blocks = zs[0], zs[1:]
    else:
      z0, z_blocks = z, [None] * len(self.blocks)
    emb = None
    if self.num_classes:
      if y is None:
        raise ValueError("This generator is class-conditional: pass labels y.")
      if self.embed is not None:
        emb = self.embed(y, training=training)
      else:  # per-layer tables: each conditional BN maps one-hot (or soft) y itself
        emb = (tf.one_hot(y, self.num_classes, dtype=z.dtype) if y.dtype.is_integer
               else tf.cast(y, z.dtype))
    h = tf.reshape(self.linear(z0, training=training), [-1, 4, 4, self.bottom_channels])
    for i, block in enumerate(self.blocks):
      parts = [p for p in (z_blocks[i], emb) if p is not None]
      cond = tf.concat(parts, axis=-1) if parts else None
      h = block(h, cond, training=training)
      if i in self.attention:
        h = self.attention[i](h, training=training)
    h = tf.nn.relu(self.bn_out(h, training=training))
    return tf.cast(tf.tanh(self.conv_out(h, training=training)), tf.float32)

  def transfer_layout(self):
    """Blocks by output resolution (attention follows its block), the output BN and conv,
    the shared class embedding (see `tfgan_eff.models.layout`)."""
    return TransferLayout(
        layers=tuple(self.layers), names=NAMES,
        blocks=_layout_blocks(self),
        output=(self.bn_out.name, self.conv_out.name),
        conditional=(self.embed.name,) if self.embed is not None else ())

  def get_config(self):
    return {**super().get_config(), **self._config}


@configurable
class BigGANDiscriminator(layers.BuildOnCall, keras.Model):
  """BigGAN discriminator: residual down-blocks, attention, sum pooling, projection.

  `call(x, y=None, training=False, segments=1)` returns `{"logits": [B], "features": [B, C],
  "feature_map": [B, h, w, C]}`; it computes nothing across samples, so `segments` (the
  number of independent parts of the batch) changes nothing. `projection_transpose_sn`:
  the projection's power iteration with `u` over the classes, as BigGAN-PyTorch (for
  converted weights; see `layers.SNEmbedding`). `init`: the initializer of every conv, linear
  and embedding kernel, as BigGAN-PyTorch's `--D_init` (see `BigGANGenerator`).

  >>> d = BigGANDiscriminator(resolution=32, ch=8, num_classes=10)
  >>> d(tf.zeros([2, 32, 32, 3]), tf.constant([1, -1]))["logits"].shape
  TensorShape([2])
  """

  def __init__(self, resolution=128, channels=3, ch=96, num_classes=0,
               attention_resolution=64, use_sn=True, projection_transpose_sn=False,
               init="ortho", **kwargs):
    super().__init__(**kwargs)
    _check_resolution(resolution)
    self.resolution, self.channels, self.num_classes = resolution, channels, num_classes
    self.use_sn = use_sn
    kw = dict(kernel_initializer=kernel_initializer(init, "BigGANDiscriminator"))
    self._config = dict(resolution=resolution, channels=channels, ch=ch,
                        num_classes=num_classes, attention_resolution=attention_resolution,
                        use_sn=use_sn, projection_transpose_sn=projection_transpose_sn,
                        init=init)
    outs, downs = D_ARCH[resolution]
    self.blocks, self.attention, block_res = [], {}, []
    res, in_ch = resolution, channels
    for i, (m, down) in enumerate(zip(outs, downs)):
      self.blocks.append(DBlock(in_ch, m * ch, down, preactivation=i > 0, use_sn=use_sn,
                                name=f"block{i}", **kw))
      block_res.append(res)
      in_ch = m * ch
      res = res // 2 if down else res
      if res == attention_resolution and not self.attention:  # after the first such block
        self.attention[i] = layers.SelfAttention(use_sn, name=f"attention{i}", **kw)
    self.attention_layers = list(self.attention.values())
    self.block_resolutions = tuple(block_res)  # the input resolution of each block
    self.feature_dim = in_ch
    # The epilogue (linear output, class projection) computes in float32 whatever the
    # mixed-precision policy.
    self.linear = layers.SNDense(1, use_sn=use_sn, name="linear", dtype="float32", **kw)
    self.embed = (layers.SNEmbedding(num_classes, in_ch, use_sn=use_sn, name="projection",
                                     transpose_sn=projection_transpose_sn, dtype="float32",
                                     **kw)
                  if num_classes else None)

  def project(self, features, y, training=False):
    """The projection term <embed(y), features>; -1 labels contribute 0."""
    return tf.reduce_sum(self.embed(y, training=training) * features, axis=-1)

  def call(self, x, y=None, training=False, segments=1):
    del segments  # no statistics across samples
    h = x
    for i, block in enumerate(self.blocks):
      h = block(h, training=training)
      if i in self.attention:
        h = self.attention[i](h, training=training)
    fmap = tf.cast(tf.nn.relu(h), tf.float32)  # float32 from here (mixed precision)
    features = tf.reduce_sum(fmap, axis=[1, 2])
    logits = tf.squeeze(self.linear(features, training=training), -1)
    if y is not None and self.num_classes:
      logits = logits + self.project(features, y, training=training)
    return {"logits": logits, "features": features, "feature_map": fmap}

  def transfer_layout(self):
    """Blocks by input resolution (attention follows its block), the final linear layer
    and the projection as heads (see `tfgan_eff.models.layout`)."""
    projection = (self.embed.name,) if self.embed is not None else ()
    return TransferLayout(
        layers=tuple(self.layers), names=NAMES,
        blocks=_layout_blocks(self),
        conditional=projection, heads=(self.linear.name,) + projection)

  def get_config(self):
    return {**super().get_config(), **self._config}

