"""AdaFM transfer: the modulated conv, loading/freezing/wrapping, the npz importer, the gate."""

import functools

import gin
import keras
import numpy as np
import pytest
import tensorflow as tf

from tfgan_eff.models import layers
from tfgan_eff.models import stylegan2_layers as L
from tfgan_eff.models.biggan import BigGANDiscriminator, BigGANGenerator
from tfgan_eff.models.layout import Block, BlockNames, TransferLayout
from tfgan_eff.models.stylegan2 import StyleGAN2Generator
from tfgan_eff.objectives import Adversarial
from tfgan_eff.training.gan import GAN
from tfgan_eff.transfer import (AdaFMMonitor, AdaFMTransfer, NpzImporter, SourceMismatchError,
                                adafm_layers, export_npz)

UNCOND = ["NUM_CLASSES = 0", "GAN.ema_decay = 0.5"]


def _source(tmp_path, seed=1):
  """A built (untrained) GAN of the tiny config saved as a checkpoint; returns (gan, prefix)."""
  with gin.unlock_config():
    gin.bind_parameter("GAN.seed", seed)
  gan = GAN()
  gan.build(2, (32, 32, 1))
  for v in gan.G_ema.weights:  # make G_ema differ from G, to see which one is loaded
    v.assign(v + 0.01)
  prefix = tf.train.Checkpoint(**gan.checkpoint_items()).save(str(tmp_path / "src" / "ckpt"))
  with gin.unlock_config():
    gin.bind_parameter("GAN.seed", 0)
  return gan, prefix


def _values(variables):
  return {v.path: v.numpy().copy() for v in variables}


def _build(batch=4):
  gan = GAN()
  gan.build(batch, (32, 32, 1))
  return gan


def _train(gan, steps, batch=4, resolution=32):
  """`steps` eager training steps (D steps, G step, EMA) on random images."""
  for step in range(steps):
    for i in range(gan.disc_iters + 1):
      images = tf.random.stateless_uniform([batch, resolution, resolution, 1], [step, i],
                                           -1.0, 1.0)
      data = {"images": images, "labels": tf.zeros([batch], tf.int32),
              "true_labels": tf.zeros([batch], tf.int32)}
      step_t = tf.constant(step, tf.int64)
      if i < gan.disc_iters:
        gan.d_step(data, step_t, tf.constant(i, tf.int64))
      else:
        metrics = gan.g_step(data, step_t)
    gan.update_ema(step + 1)
  return metrics


# -- the layer ------------------------------------------------------------------------------

def test_adafm_identity_reproduces_the_frozen_conv_exactly():
  x = tf.random.stateless_normal([2, 8, 8, 4], seed=[1, 2])
  conv = layers.SNConv2D(6, 3, name="c")
  for _ in range(3):  # a few power iterations, as in a trained source
    conv(x, training=True)
  want = conv(x, training=False).numpy()
  u = conv.sn_u.numpy().copy()
  conv.freeze_sigma()
  conv.set_kernel_transform(layers.AdaFM(name="adafm"))
  for training in (False, True):
    np.testing.assert_array_equal(conv(x, training=training).numpy(), want)
  np.testing.assert_array_equal(conv.sn_u.numpy(), u)  # σ frozen: u not updated

  # γ ⊙ W/σ + β with non-trivial γ, β equals the conv with that kernel, computed by hand.
  adafm = conv.kernel_transform
  adafm.gamma.assign(tf.random.stateless_uniform(adafm.gamma.shape, [3, 4], 0.5, 1.5))
  adafm.beta.assign(tf.random.stateless_normal(adafm.beta.shape, [5, 6], stddev=0.1))
  w = adafm.gamma * conv.sn_kernel(False) + adafm.beta
  np.testing.assert_allclose(conv(x).numpy(),
                             (tf.nn.conv2d(x, w, 1, "SAME") + conv.bias).numpy(), atol=1e-5)


def test_adafm_identity_on_stylegan2_modulated_conv():
  x = tf.random.stateless_normal([2, 8, 8, 4], seed=[1, 2])
  s = tf.random.stateless_uniform([2, 4], seed=[3, 4], minval=0.5, maxval=1.5)
  conv = L.ModulatedConv2D(6, 4, 3, up=True, name="m")
  want = conv(x, s).numpy()
  conv.set_kernel_transform(layers.AdaFM(name="adafm"))
  np.testing.assert_array_equal(conv(x, s).numpy(), want)
  assert [v.name for v in conv.weights] == ["kernel", "gamma", "beta"]


def test_adafm_start_step_gates_the_gradient():
  step = tf.Variable(0, dtype=tf.int64)
  conv = layers.SNConv2D(3, 3, name="c")
  x = tf.random.stateless_normal([1, 8, 8, 2], seed=[1, 2])
  conv(x)
  adafm = layers.AdaFM(start_step=2, step_fn=lambda: step, name="adafm")
  conv.set_kernel_transform(adafm)

  def grads():
    with tf.GradientTape() as tape:
      loss = tf.reduce_sum(tf.square(conv(x)))
    return [float(tf.reduce_sum(tf.abs(g))) for g in tape.gradient(loss, [adafm.gamma,
                                                                         adafm.beta])]

  before = conv(x).numpy()
  assert grads() == [0.0, 0.0]
  step.assign(2)
  assert min(grads()) > 0.0
  np.testing.assert_array_equal(conv(x).numpy(), before)  # the gate changes no value
  with pytest.raises(ValueError, match="step_fn"):
    layers.AdaFM(start_step=5)


# -- the transfer ---------------------------------------------------------------------------

def test_transfer_freezes_low_level_wraps_convs_and_trains_the_rest(tiny_gin, tmp_path):
  tiny_gin(*UNCOND)
  source, prefix = _source(tmp_path)
  tiny_gin(*UNCOND, "GAN.warm_start = @AdaFMTransfer()", f"AdaFMTransfer.source = '{prefix}'",
           "GAN.terms = [@Adversarial(), @AdaFMMonitor()]")
  gan = _build()
  G, D = gan.G, gan.D
  transfer = gan.warm_start
  assert transfer.low_level_g(G) == ["block2", "bn_out", "conv_out"]  # 32 px + output
  # Loaded from the source's G_ema (low and high level); D but its final linear layer.
  np.testing.assert_array_equal(G.blocks[2].conv1.kernel.numpy(),
                                source.G_ema.blocks[2].conv1.kernel.numpy())
  np.testing.assert_array_equal(G.linear.kernel.numpy(), source.G_ema.linear.kernel.numpy())
  np.testing.assert_array_equal(D.blocks[1].conv1.kernel.numpy(),
                                source.D.blocks[1].conv1.kernel.numpy())
  assert not np.array_equal(D.linear.kernel.numpy(), source.D.linear.kernel.numpy())
  # Wrapped: the 3x3 convs of the 32px block, not its 1x1 shortcut; G_ema alike.
  assert len(adafm_layers(G)) == 2 and len(adafm_layers(gan.G_ema)) == 2  # conv1, conv2
  assert G.blocks[2].conv_sc.kernel_transform is None and G.conv_out.kernel_transform is None
  assert [w.shape for w in G.weights] == [w.shape for w in gan.G_ema.weights]
  frozen_g = [v for v in G.weights if v.path.split("/")[1] in ("block2", "bn_out", "conv_out")
              and "adafm" not in v.path and "moving" not in v.path]
  frozen_d = [v for v in D.weights if v.path.split("/")[1] == "block0"]
  assert not any(v.trainable for v in frozen_g + frozen_d)
  gammas = [v for v in G.trainable_variables if v.name in ("gamma", "beta")
            and "adafm" in v.path]
  assert len(gammas) == 4
  # The optimizers hold slots only for trainable variables: none for frozen ones.
  slot_names = [v.name for v in gan.g_optimizer.variables + gan.d_optimizer.variables]
  for v in frozen_g + frozen_d:
    stem = v.path.replace("/", "_")
    assert not any(n.startswith(stem) for n in slot_names), stem
  assert not any(n.startswith("generator_block2_conv1_adafm_gamma") for n in slot_names)
  own = [v.name for v in gan._own["g"][0][1].variables]  # pylint: disable=protected-access
  assert any(n.startswith("generator_block2_conv1_adafm_gamma") for n in own)  # γ/β: their own
  assert transfer.summary["g_adafm"] == sum(int(np.prod(v.shape)) for v in gammas)

  # G_ema's copies of the frozen weights too: its update must not round them away.
  frozen_ema = [e for e, w in zip(gan.G_ema.weights, G.weights) if any(w is v for v in frozen_g)]
  assert len(frozen_ema) == len(frozen_g)
  frozen_before = _values(frozen_g + frozen_d + frozen_ema)
  moving_before = _values(gammas + [G.linear.kernel, G.blocks[0].conv1.kernel,
                                    D.blocks[1].conv1.kernel])
  gan.ema_decay = 0.999  # the default (0.5 above would average exactly in floating point)
  metrics = _train(gan, 2)
  for path, value in _values(frozen_g + frozen_d + frozen_ema).items():
    np.testing.assert_array_equal(value, frozen_before[path], err_msg=path)
  for path, value in _values(gammas + [G.linear.kernel, G.blocks[0].conv1.kernel,
                                       D.blocks[1].conv1.kernel]).items():
    assert np.abs(value - moving_before[path]).max() > 1e-6, path
  assert float(metrics["adafm_gamma_dev"]) > 0 and float(metrics["adafm_active"]) == 1.0
  assert float(metrics["params_g_trainable"]) == transfer.summary["g_trainable"]


def test_transfer_start_step_and_reinit_high_level(tiny_gin, tmp_path):
  tiny_gin(*UNCOND)
  source, prefix = _source(tmp_path)
  tiny_gin(*UNCOND, "GAN.warm_start = @AdaFMTransfer()", f"AdaFMTransfer.source = '{prefix}'",
           "AdaFMTransfer.adafm_start_step = 2", "AdaFMTransfer.high_level = 'reinit'",
           "AdaFMTransfer.generator = 'G'")
  gan = _build()
  G = gan.G
  np.testing.assert_array_equal(G.conv_out.kernel.numpy(), source.G.conv_out.kernel.numpy())
  assert not np.array_equal(G.linear.kernel.numpy(), source.G.linear.kernel.numpy())
  gammas = [v for v in G.trainable_variables if "adafm" in v.path]
  before = _values(gammas + [G.linear.kernel])
  _train(gan, 2)  # G steps 0, 1 < 2: γ/β get no gradient (Adam with zero gradients: no move)
  after = _values(gammas + [G.linear.kernel])
  for v in gammas:
    np.testing.assert_array_equal(after[v.path], before[v.path])
  assert np.abs(after[G.linear.kernel.path] - before[G.linear.kernel.path]).max() > 1e-6
  opt = gan._own["g"][0][1]  # pylint: disable=protected-access
  assert int(opt.iterations.numpy()) == 0 and int(gan.g_optimizer.iterations.numpy()) == 2
  _train(gan, 1)  # G step 2: they move, by a fresh Adam's first step (own step count)
  assert int(opt.iterations.numpy()) == 1
  # Adam's first update with beta_1 = 0 is lr * g / (|g| + eps / sqrt(1 - beta_2)): the
  # learning rate wherever |g| >> 3e-7. Under the G optimizer's count (3 steps) it would be
  # sqrt((1 - beta_2 ** 3) / (1 - beta_2)) ~ 1.73x that.
  lr = float(gan.g_optimizer.learning_rate.numpy())
  steps = np.concatenate([np.abs(v.numpy() - before[v.path]).ravel() for v in gammas]) / lr
  assert steps.max() <= 1.001 and np.median(steps) > 0.99, (steps.max(), np.median(steps))  # f32
  # Their optimizer is in the checkpoint.
  assert any(k == "g_optimizer_adafm" for k in gan.checkpoint_items())


def test_source_of_another_architecture_fails_naming_the_first_tensor(tiny_gin, tmp_path):
  tiny_gin(*UNCOND)
  _, prefix = _source(tmp_path)
  tiny_gin(*UNCOND, "GAN.warm_start = @AdaFMTransfer()", f"AdaFMTransfer.source = '{prefix}'",
           "BigGANGenerator.ch = 8")
  with pytest.raises(SourceMismatchError, match=r"'G_ema/linear/kernel' is \(4, 256\) but "
                                                r"the model's 'G/linear/kernel' is \(4, 512\)"):
    GAN().build(2, (32, 32, 1))
  tiny_gin(*UNCOND, "GAN.warm_start = @AdaFMTransfer()", f"AdaFMTransfer.source = '{prefix}'",
           "BigGANDiscriminator.attention_resolution = 8")  # a layer the source lacks
  with pytest.raises(SourceMismatchError, match="has no tensor 'D/attention1/"):
    GAN().build(2, (32, 32, 1))
  tiny_gin(*UNCOND, "GAN.warm_start = @AdaFMTransfer()",
           f"AdaFMTransfer.source = '{tmp_path / 'nowhere'}'")
  with pytest.raises(FileNotFoundError, match="nowhere"):
    GAN().build(2, (32, 32, 1))


def test_npz_importer_round_trips_and_names_bad_tensors(tiny_gin, tmp_path):
  tiny_gin()
  source, _ = _source(tmp_path)
  path = str(tmp_path / "w.npz")
  names = export_npz(source, path)
  assert "G/block2/conv1/kernel" in names and "D/linear/kernel" in names
  tiny_gin("GAN.warm_start = @NpzImporter()", f"NpzImporter.path = '{path}'")
  gan = GAN()  # another seed's init, overwritten by the import
  gan.build(2, (32, 32, 1))
  for a, b in ((gan.G, source.G), (gan.D, source.D), (gan.G_ema, source.G)):
    for x, y in zip(a.weights, b.weights):
      np.testing.assert_array_equal(x.numpy(), y.numpy(), err_msg=x.path)

  # A name map with PyTorch layouts; a wrong shape names the tensor.
  k = source.G.conv_out.kernel.numpy()
  lin = source.D.linear.kernel.numpy()
  np.savez(tmp_path / "torch.npz", **{"conv_img.weight": k.transpose(3, 2, 0, 1),
                                      "fc.weight": lin.T, "fc.bias": np.zeros([5])})
  imp = NpzImporter(str(tmp_path / "torch.npz"), name_map={
      "conv_img.weight": "G/conv_out/kernel|torch_conv",
      "fc.weight": "D/linear/kernel|torch_linear", "fc.bias": "D/linear/bias"},
      allow_missing=True)
  np.testing.assert_array_equal(imp.get("G", "conv_out/kernel"), k)
  np.testing.assert_array_equal(imp.get("D", "linear/kernel"), lin)
  with pytest.raises(SourceMismatchError, match=r"'D/linear/bias' is \(5,\) but the model's "
                                                r"'D/linear/bias' is \(1,\)"):
    imp(gan)
  with pytest.raises(SourceMismatchError, match="'nope'"):
    NpzImporter(str(tmp_path / "torch.npz"), name_map={"nope": "G/x"})


SG2 = ["GAN.generator = @StyleGAN2Generator", "GAN.discriminator = @StyleGAN2Discriminator",
       "StyleGAN2Generator.channels = 1", "StyleGAN2Generator.z_dim = 8",
       "StyleGAN2Generator.w_dim = 8", "StyleGAN2Generator.mapping_layers = 2",
       "StyleGAN2Generator.fmap_base = 1024", "StyleGAN2Generator.fmap_max = 8",
       "StyleGAN2Discriminator.channels = 1", "StyleGAN2Discriminator.fmap_base = 1024",
       "StyleGAN2Discriminator.fmap_max = 8", "GAN.disc_iters = 1"]


def test_stylegan2_transfer_maps_blocks_from_the_output_side(tmp_path):
  """A 32px source into a 16px target: G's b16 <- b32 (output side), D's b16 <- b32 (input)."""
  gin.clear_config()
  try:
    gin.parse_config(SG2 + ["StyleGAN2Generator.resolution = 32",
                            "StyleGAN2Discriminator.resolution = 32"])
    src = GAN()
    src.build(2, (32, 32, 1))
    prefix = tf.train.Checkpoint(**src.checkpoint_items()).save(str(tmp_path / "s" / "ckpt"))
    gin.clear_config()
    gin.parse_config(SG2 + ["StyleGAN2Generator.resolution = 16",
                            "StyleGAN2Discriminator.resolution = 16",
                            "GAN.warm_start = @AdaFMTransfer()",
                            f"AdaFMTransfer.source = '{prefix}'",
                            "AdaFMTransfer.low_level_resolution = 16"])
    gan = GAN()
    x = tf.random.stateless_normal([2, 8], seed=[1, 2])
    gan.build(2, (16, 16, 1))
    G = gan.G
    assert gan.warm_start.low_level_g(G) == ["b16"]
    np.testing.assert_array_equal(G.blocks[-1].conv1.conv.kernel.numpy(),
                                  src.G_ema.blocks[-1].conv1.conv.kernel.numpy())  # b16 <- b32
    np.testing.assert_array_equal(G.blocks[1].conv1.conv.kernel.numpy(),
                                  src.G_ema.blocks[2].conv1.conv.kernel.numpy())  # b8 <- b16
    np.testing.assert_array_equal(gan.D.blocks[0].conv0.kernel.numpy(),
                                  src.D.blocks[0].conv0.kernel.numpy())  # D b16 <- b32
    wrapped = adafm_layers(G)
    assert len(wrapped) == 2  # conv0, conv1 of b16; not its 1x1 toRGB
    assert G.blocks[-1].torgb.conv.kernel_transform is None
    assert not G.blocks[-1].conv1.conv.kernel.trainable
    # γ = 1, β = 0: the generator still computes what it did before wrapping.
    y = G(x, training=False, noise_mode="const").numpy()
    for a in wrapped:
      a.gamma.assign(a.gamma + 0.1)
    assert not np.allclose(G(x, training=False, noise_mode="const").numpy(), y)
    for a in wrapped:
      a.gamma.assign(tf.ones_like(a.gamma))
    np.testing.assert_array_equal(G(x, training=False, noise_mode="const").numpy(), y)
  finally:
    gin.clear_config()


# -- a third backbone: transfer reads only `transfer_layout()` ------------------------------

class _Gate(keras.layers.Layer):
  """x · w, one learned scalar: a layer attached to a block (as BigGAN's attention)."""

  def build(self, input_shape):
    self.w = self.add_weight(name="w", shape=(), initializer="ones")

  def call(self, x, training=False):
    return x * self.w


class ToyGenerator(keras.Model):
  """fc -> 4x4 -> per block: 2x up, 3x3 conv ("up<i>"), gate ("gate<i>") -> 3x3 "to_image".

  Its own names throughout, a class table "labels", no BigGAN or StyleGAN2 code."""

  use_sn = True

  def __init__(self, resolution=16, channels=1, z_dim=4, num_classes=3, ch=4, **kwargs):
    super().__init__(**kwargs)
    self.resolution, self.channels, self.z_dim, self.num_classes = (resolution, channels,
                                                                    z_dim, num_classes)
    self.ch = ch
    self.labels = layers.SNEmbedding(num_classes, z_dim, use_sn=False, name="labels")
    self.fc = layers.SNDense(4 * 4 * ch, name="fc")
    self.res = [8 * 2 ** i for i in range(int(np.log2(resolution)) - 2)]
    self.ups = [layers.SNConv2D(ch, 3, name=f"up{i}") for i in range(len(self.res))]
    self.gates = [_Gate(name=f"gate{i}") for i in range(len(self.res))]
    self.to_image = layers.SNConv2D(channels, 3, name="to_image")

  def call(self, z, y=None, training=False, truncation=1.0, rng=None):
    h = z * truncation + self.labels(y, training=training)
    h = tf.reshape(self.fc(h, training=training), [-1, 4, 4, self.ch])
    for up, gate in zip(self.ups, self.gates):
      h = tf.repeat(tf.repeat(h, 2, axis=1), 2, axis=2)
      h = gate(tf.nn.relu(up(h, training=training)))
    return tf.tanh(self.to_image(h, training=training))

  def transfer_layout(self):
    return TransferLayout(
        layers=tuple(self.layers), names=BlockNames("up", attached=("gate",)),
        blocks=tuple(Block(u.name, r, (g.name,))
                     for u, g, r in zip(self.ups, self.gates, self.res)),
        output=(self.to_image.name,), conditional=(self.labels.name,))


class ToyDiscriminator(keras.Model):
  """per block: 3x3 conv ("down<i>"), 2x down -> sum -> "score", projection "classes"."""

  use_sn = True

  def __init__(self, resolution=16, num_classes=3, ch=4, **kwargs):
    super().__init__(**kwargs)
    self.num_classes, self.feature_dim = num_classes, ch
    self.res = [resolution // 2 ** i for i in range(int(np.log2(resolution)) - 2)]
    self.downs = [layers.SNConv2D(ch, 3, name=f"down{i}") for i in range(len(self.res))]
    self.score = layers.SNDense(1, name="score")
    self.classes = layers.SNEmbedding(num_classes, ch, name="classes")

  def project(self, features, y, training=False):
    return tf.reduce_sum(self.classes(y, training=training) * features, axis=-1)

  def call(self, x, y=None, training=False, segments=1):
    del segments
    h = x
    for down in self.downs:
      h = tf.nn.avg_pool2d(tf.nn.relu(down(h, training=training)), 2, 2, "VALID")
    features = tf.reduce_sum(h, axis=[1, 2])
    logits = tf.squeeze(self.score(features, training=training), -1)
    if y is not None:
      logits += self.project(features, y, training=training)
    return {"logits": logits, "features": features, "feature_map": h}

  def transfer_layout(self):
    return TransferLayout(
        layers=tuple(self.layers), names=BlockNames("down"),
        blocks=tuple(Block(d.name, r) for d, r in zip(self.downs, self.res)),
        conditional=(self.classes.name,), heads=(self.score.name, self.classes.name))


def _toy_gan(resolution, **kwargs):
  return GAN(generator=functools.partial(ToyGenerator, resolution=resolution),
             discriminator=functools.partial(ToyDiscriminator, resolution=resolution),
             ema_decay=0.5, **kwargs)


def test_transfer_works_on_a_backbone_it_has_never_seen(tmp_path):
  """A 16 px source into an 8 px target of a toy backbone defined here: G's up0 (+ gate0)
  <- up1 (+ gate1) from the output side, D's down0 <- down0 from the input side; the class
  table and D's heads are not loaded; up0's 3x3 conv is AdaFM-wrapped, to_image is not."""
  gin.clear_config()
  try:
    src = _toy_gan(16)
    src.build(2, (16, 16, 1))
    for v in src.G_ema.weights:
      v.assign(v + 0.01)
    prefix = tf.train.Checkpoint(**src.checkpoint_items()).save(str(tmp_path / "s" / "ckpt"))
    transfer = AdaFMTransfer(source=prefix, low_level_resolution=8)
    gan = _toy_gan(8, warm_start=transfer, terms=[Adversarial(), AdaFMMonitor()])
    gan.build(4, (8, 8, 1))
    G, D, source_G = gan.G, gan.D, src.G_ema
    assert transfer.low_level_g(G) == ["up0", "gate0", "to_image"]
    assert transfer.low_level_d(D) == ["down0"]
    for target, source in ((G.ups[0], source_G.ups[1]), (G.gates[0], source_G.gates[1]),
                           (G.fc, source_G.fc), (G.to_image, source_G.to_image),
                           (D.downs[0], src.D.downs[0])):
      for a, b in zip(target.weights, source.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)
    for target, source in ((G.labels, source_G.labels), (D.score, src.D.score),
                           (D.classes, src.D.classes)):
      assert not np.array_equal(target.kernel.numpy(), source.kernel.numpy()), target.name
    assert len(adafm_layers(G)) == 1 and len(adafm_layers(gan.G_ema)) == 1
    assert G.ups[0].kernel_transform is not None and G.to_image.kernel_transform is None
    frozen = [G.ups[0].kernel, G.gates[0].w, G.to_image.kernel, D.downs[0].kernel]
    assert not any(v.trainable for v in frozen)
    before = _values(frozen + [G.fc.kernel, *adafm_layers(G)[0].weights])
    metrics = _train(gan, 2, resolution=8)
    after = _values(frozen + [G.fc.kernel, *adafm_layers(G)[0].weights])
    for v in frozen:
      np.testing.assert_array_equal(after[v.path], before[v.path], err_msg=v.path)
    for v in [G.fc.kernel, *adafm_layers(G)[0].weights]:
      assert np.abs(after[v.path] - before[v.path]).max() > 1e-6, v.path
    assert float(metrics["adafm_gamma_dev"]) > 0
  finally:
    gin.clear_config()


def test_sublayers_visit_what_keras_visits_in_its_order():
  """`layers.sublayers` (public attributes) finds exactly Keras' own `_flatten_layers`,
  in the same order within each top-level layer, AdaFM transforms included."""
  g = BigGANGenerator(resolution=32, channels=1, ch=4, z_dim=16, num_classes=3, shared_dim=8,
                      attention_resolution=16)
  d = BigGANDiscriminator(resolution=32, channels=1, ch=4, num_classes=3,
                          attention_resolution=16)
  d(g(tf.zeros([2, g.z_dim]), tf.constant([0, 1])), tf.constant([0, 1]))
  sg2 = StyleGAN2Generator(resolution=16, z_dim=8, w_dim=8, mapping_layers=2, num_classes=3,
                           fmap_base=64, fmap_max=8)
  sg2(tf.zeros([2, 8]), tf.constant([0, 1]))
  for conv in (g.blocks[2].conv1, g.blocks[2].conv2, d.blocks[0].conv1,
               sg2.blocks[-1].conv1.conv):
    conv.set_kernel_transform(layers.AdaFM(name="adafm"))
  for model in (g, d, sg2):
    # pylint: disable-next=protected-access
    assert {id(l) for l in layers.sublayers(model)} == {id(l) for l in model._flatten_layers()}
    for top in model.layers:
      # pylint: disable-next=protected-access
      assert layers.sublayers(top) == list(top._flatten_layers()), top.name
  assert [len(adafm_layers(m)) for m in (g, d, sg2)] == [2, 1, 1]


@pytest.mark.slow
def test_late_start_own_optimizer_on_two_replicas_matches_one(tiny_gin, tmp_path):
  """γ/β's own optimizer (gated, its step count reset until the start) under
  MirroredStrategy: 2 replicas give the weights of 1, before and after the start step."""
  import conftest  # pylint: disable=import-outside-toplevel
  tiny_gin(*UNCOND)
  _, prefix = _source(tmp_path)
  tiny_gin(*UNCOND, "GAN.warm_start = @AdaFMTransfer()", f"AdaFMTransfer.source = '{prefix}'",
           "AdaFMTransfer.adafm_start_step = 2", "g/adam.epsilon = 1.0",
           "d/adam.epsilon = 1.0", "GAN.g_optimizer = @g/adam()", "GAN.d_optimizer = @d/adam()")
  runs = conftest.one_and_two_replicas(tmp_path, train_steps=3)
  own = [t.gan._own["g"][0][1] for t in runs]  # pylint: disable=protected-access
  assert [int(o.iterations.numpy()) for o in own] == [1, 1]
  for a, b in zip(runs[0].gan.G.weights, runs[1].gan.G.weights):
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-3, atol=5e-5, err_msg=a.path)


def test_d_freeze_depth_follows_the_reference_by_target_size():
  D = ToyDiscriminator(resolution=32)  # blocks down0 (32 px), down1, down2
  D(tf.zeros([1, 32, 32, 1]))
  depth = lambda **kw: AdaFMTransfer(source="x", **kw).low_level_d(D)  # noqa: E731
  assert depth() == ["down0"]  # no target size: the first block
  assert depth(num_images=25) == ["down0", "down1"]  # Flowers-25: all but the last
  assert depth(num_images=26) == ["down0"]  # Flowers (8,189): fromRGB + first stage
  assert depth(num_images=10, d_frozen_blocks=0) == []
  assert depth(d_frozen_blocks=3) == ["down0", "down1", "down2"]
  assert depth(d_frozen_blocks=-2) == ["down0"]
  with pytest.raises(ValueError, match="d_frozen_blocks = 4, but the discriminator has 3"):
    depth(d_frozen_blocks=4)
  with pytest.raises(ValueError, match="not both"):
    AdaFMTransfer(source="x", d_frozen_blocks=1, d_low_level=["down0"])


def test_new_small_rebuilds_a_narrower_fresh_high_level_and_loads_the_low_level(tiny_gin,
                                                                                tmp_path):
  """A source 32 wide at 4-8 px and 16 at 16-32 px: 'new_small' makes the target's 4-16 px
  features as wide as the frozen 32 px block's input (16), fresh; block2 (16 -> 32 px) and
  the output layers come from the source, frozen and wrapped."""
  wide = ["BigGANGenerator.widths = {4: 32, 8: 32}"]
  tiny_gin(*UNCOND, *wide)
  source, prefix = _source(tmp_path)
  assert source.G.widths == {4: 32, 8: 32, 16: 16, 32: 16}
  tiny_gin(*UNCOND, *wide, "GAN.warm_start = @AdaFMTransfer()",
           f"AdaFMTransfer.source = '{prefix}'", "AdaFMTransfer.high_level = 'new_small'")
  gan = _build()
  G = gan.G
  assert G.widths == gan.G_ema.widths == {4: 16, 8: 16, 16: 16, 32: 16}
  assert G.linear.kernel.shape[-1] == 4 * 4 * 16 < source.G.linear.kernel.shape[-1]
  src = {v.path.split("/", 1)[1]: v for v in source.G_ema.weights}
  loaded = [v for v in G.blocks[2].weights + G.conv_out.weights if "adafm" not in v.path]
  assert len(loaded) > 6
  for v in loaded:
    np.testing.assert_array_equal(v.numpy(), src[v.path.split("/", 1)[1]].numpy(),
                                  err_msg=v.path)
  assert not G.blocks[2].trainable and G.blocks[1].trainable
  assert len(adafm_layers(G)) == 2 and [w.shape for w in G.weights] == [
      w.shape for w in gan.G_ema.weights]
  frozen = _values(G.blocks[2].conv1.weights)
  _train(gan, 1)
  for v in G.blocks[2].conv1.weights:
    if "adafm" not in v.path:
      np.testing.assert_array_equal(v.numpy(), frozen[v.path])
  with pytest.raises(ValueError, match="no low-level block with a high-level block"):
    AdaFMTransfer(source=prefix, high_level="new_small", g_low_level=["bn_out"]
                  ).new_small_widths(G)
