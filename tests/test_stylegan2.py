"""StyleGAN2 networks and layers: shapes, resampling, equalized lr, modulation, styles,
noise and randomness, minibatch std, projection, gradients, XLA and tf.distribute."""

import conftest
import keras
import numpy as np
import pytest
import tensorflow as tf

from tfgan_eff.models import stylegan2_layers as L
from tfgan_eff.models.stylegan2 import (StyleGAN2Discriminator, StyleGAN2Generator,
                                        channels_at)
from tfgan_eff.rng import SampleRNG

TINY = dict(fmap_base=256, fmap_max=16)


def tiny_g(resolution=16, num_classes=0, **kw):
  args = dict(resolution=resolution, z_dim=8, w_dim=8, mapping_layers=2,
              num_classes=num_classes, channels=3, **TINY)
  args.update(kw)
  return StyleGAN2Generator(**args)


def tiny_d(resolution=16, num_classes=0, **kw):
  return StyleGAN2Discriminator(resolution=resolution, num_classes=num_classes, channels=3,
                                **{**TINY, **kw})


def set_noise_strength(g, value):
  if not g.built:
    g.build(None)
  n = 0
  for v in g.trainable_variables:
    if "strength" in v.path:
      v.assign(value)
      n += 1
  assert n == g.num_ws - 1  # one per synthesis layer


# --------------------------------------------------------------------------- numpy refs

def np_upfirdn2d(x, f, up=1, down=1, pad=(0, 0, 0, 0), gain=1.0):
  """Direct definition: zero insertion, pad/crop, true convolution, decimation."""
  b, h, w, c = x.shape
  u = np.zeros([b, h * up, w * up, c], np.float64)
  u[:, ::up, ::up] = x
  x0, x1, y0, y1 = pad
  u = np.pad(u, [(0, 0), (max(y0, 0), max(y1, 0)), (max(x0, 0), max(x1, 0)), (0, 0)])
  u = u[:, max(-y0, 0):u.shape[1] - max(-y1, 0), max(-x0, 0):u.shape[2] - max(-x1, 0)]
  fh, fw = f.shape
  oh, ow = u.shape[1] - fh + 1, u.shape[2] - fw + 1
  out = np.zeros([b, oh, ow, c])
  for i in range(oh):
    for j in range(ow):
      for a in range(fh):
        for bb in range(fw):
          out[:, i, j] += u[:, i + a, j + bb] * f[fh - 1 - a, fw - 1 - bb] * gain
  return out[:, ::down, ::down]


def test_upfirdn2d_matches_numpy_with_asymmetric_filter_and_padding():
  rng = np.random.default_rng(0)
  x = rng.normal(size=[2, 6, 5, 3]).astype(np.float32)
  f = rng.normal(size=[4, 3]).astype(np.float32)
  for up, down, pad in [(1, 1, (1, 2, 0, 1)), (2, 1, (2, 1, 2, 1)), (1, 2, (1, 1, 1, 1)),
                        (2, 2, (0, -1, 1, 0))]:
    ours = L.upfirdn2d(tf.constant(x), f, up=up, down=down, padding=pad, gain=1.5)
    ref = np_upfirdn2d(x, f, up, down, pad, 1.5)
    np.testing.assert_allclose(ours, ref, atol=1e-5, err_msg=f"{up} {down} {pad}")


def test_fir_up_and_down_sampling_match_numpy_and_run_under_xla():
  f = L.setup_filter([1, 3, 3, 1])
  np.testing.assert_allclose(f.sum(), 1.0, rtol=1e-6)
  x = np.random.default_rng(1).normal(size=[2, 8, 8, 4]).astype(np.float32)
  up = L.upsample2d(tf.constant(x), f)
  down = L.downsample2d(tf.constant(x), f)
  assert up.shape == (2, 16, 16, 4) and down.shape == (2, 4, 4, 4)
  np.testing.assert_allclose(up, np_upfirdn2d(x, f, 2, 1, (2, 1, 2, 1), 4.0), atol=1e-5)
  np.testing.assert_allclose(down, np_upfirdn2d(x, f, 1, 2, (1, 1, 1, 1)), atol=1e-5)
  # a constant image stays constant in the interior (gain 4 for up-sampling)
  ones = L.upsample2d(tf.ones([1, 8, 8, 1]), f)
  np.testing.assert_allclose(ones[0, 2:-2, 2:-2], 1.0, rtol=1e-6)
  jit_up = tf.function(lambda t: L.upsample2d(t, f), jit_compile=True)
  jit_down = tf.function(lambda t: L.downsample2d(t, f), jit_compile=True)
  np.testing.assert_allclose(jit_up(tf.constant(x)), up, atol=1e-5)
  np.testing.assert_allclose(jit_down(tf.constant(x)), down, atol=1e-5)


def test_fused_upsampling_modconv_equals_upsample_then_conv():
  rng = np.random.default_rng(2)
  x = tf.constant(rng.normal(size=[2, 5, 5, 3]), tf.float32)
  k = tf.constant(rng.normal(size=[3, 3, 3, 4]), tf.float32)
  s = tf.constant(rng.uniform(0.5, 1.5, size=[2, 3]), tf.float32)
  f = L.setup_filter()
  fused = L.modulated_conv2d(x, k, s, up=True, f=f, fused=True)
  plain = L.modulated_conv2d(x, k, s, up=True, f=f, fused=False)
  assert fused.shape == (2, 10, 10, 4)
  np.testing.assert_allclose(fused, plain, atol=1e-5)
  jit = tf.function(lambda a: L.modulated_conv2d(a, k, s, up=True, f=f), jit_compile=True)
  np.testing.assert_allclose(jit(x), fused, atol=1e-5)


# --------------------------------------------------------------------------- layers

def test_equalized_lr_stores_unit_normal_weights_and_scales_at_runtime():
  x = tf.random.normal([256, 1024], seed=1)
  for lr in (1.0, 0.01):
    dense = L.EqualizedDense(512, 1024, lr_multiplier=lr)
    y = dense(x)
    assert abs(float(tf.math.reduce_std(dense.kernel)) * lr - 1.0) < 0.02
    assert abs(float(tf.math.reduce_std(y)) - 1.0) < 0.05  # N(0,1)/sqrt(fan_in) effective
  conv = L.EqualizedConv2D(64, 128, 3)
  y = conv(tf.random.normal([4, 16, 16, 128], seed=2))
  assert abs(float(tf.math.reduce_std(conv.kernel)) - 1.0) < 0.02
  assert abs(float(tf.math.reduce_std(y[:, 1:-1, 1:-1])) - 1.0) < 0.05
  assert conv.weight_gain == pytest.approx(1 / np.sqrt(128 * 9))
  # bias of an lr-multiplied layer: stored bias_init / lr, effective bias_init
  d = L.EqualizedDense(4, 3, lr_multiplier=0.01, bias_init=0.5)
  np.testing.assert_allclose(d(tf.zeros([1, 3])), 0.5, rtol=1e-6)


def test_demodulation_keeps_unit_output_std():
  conv = L.ModulatedConv2D(64, 128, 3)
  x = tf.random.normal([4, 24, 24, 128], seed=3)
  styles = tf.exp(tf.random.normal([4, 128], seed=4))  # very uneven input scales
  y = conv(x, styles)
  std = tf.math.reduce_std(y[:, 1:-1, 1:-1], axis=[1, 2, 3])
  np.testing.assert_allclose(std, 1.0, atol=0.08)
  nodemod = L.ModulatedConv2D(64, 128, 3, demodulate=False)
  assert float(tf.math.reduce_std(nodemod(x, styles))) > 1.5  # the styles are not undone


def test_minibatch_std_matches_numpy_and_handles_small_or_odd_batches():
  layer = L.MinibatchStd(group_size=4, num_features=2)
  for b, g in [(8, 4), (2, 2), (6, 3), (5, 1), (1, 1)]:
    x = np.random.default_rng(b).normal(size=[b, 4, 4, 6]).astype(np.float32)
    y = layer(tf.constant(x)).numpy()
    assert y.shape == (b, 4, 4, 8)
    np.testing.assert_array_equal(y[..., :6], x)
    for i in range(b):
      members = x[(i // g) * g + np.arange(g)]  # group of sample i: consecutive samples
      std = np.sqrt(members.var(axis=0) + 1e-8)  # [4, 4, 6]
      ref = std.reshape(4, 4, 2, 3).mean(axis=(0, 1, 3))
      np.testing.assert_allclose(y[i, 0, 0, 6:], ref, rtol=1e-4, atol=1e-5)
      np.testing.assert_allclose(y[i, :, :, 6:], np.broadcast_to(ref, (4, 4, 2)), rtol=1e-5)
  dyn = tf.function(layer, input_signature=[tf.TensorSpec([None, 4, 4, 6])])
  x = tf.random.normal([6, 4, 4, 6])
  np.testing.assert_allclose(dyn(x), layer(x), rtol=1e-5)


def test_minibatch_std_groups_never_span_reals_and_fakes():
  """D's [reals; fakes] with `segments=2`: the reals' logits do not depend on the fakes,
  for a half-batch the group size does not divide (6 with group 4: today's grouping of the
  12 would put samples 4-7 in one group) and one smaller than it (batch 8, group 32)."""
  for half, group in ((6, 4), (8, 32)):
    d = StyleGAN2Discriminator(resolution=16, channels=1, fmap_base=64, fmap_max=8,
                               mbstd_group_size=group)
    reals = tf.random.stateless_normal([half, 16, 16, 1], [half, 0])
    a, b = (s * tf.random.stateless_normal([half, 16, 16, 1], [half, s]) for s in (1, 10))
    split = [d(tf.concat([reals, f], 0), segments=2)["logits"][:half] for f in (a, b)]
    np.testing.assert_allclose(split[0], split[1], rtol=1e-6)
    np.testing.assert_allclose(split[0], d(reals)["logits"], rtol=1e-5, atol=1e-6)
    mixed = [d(tf.concat([reals, f], 0))["logits"][:half] for f in (a, b)]  # one segment
    assert np.abs(mixed[0] - mixed[1]).max() > 1e-4
  with pytest.raises(ValueError, match="does not split into 2 equal segments"):
    L.MinibatchStd()(tf.zeros([5, 4, 4, 2]), segments=2)


# --------------------------------------------------------------------------- networks

def test_channel_schedule_reproduces_official_widths():
  paper256 = [channels_at(r, 16384, 512) for r in (4, 8, 16, 32, 64, 128, 256)]
  assert paper256 == [512, 512, 512, 512, 256, 128, 64]
  config_f = [channels_at(r, 32768, 512) for r in (64, 128, 256, 512, 1024)]
  assert config_f == [512, 256, 128, 64, 32]
  g = StyleGAN2Generator(resolution=256, fmap_base=16384)
  assert g.channels_dict == dict(zip((4, 8, 16, 32, 64, 128, 256), paper256))
  assert g.num_ws == 14


def test_invalid_resolution_names_valid_ones():
  with pytest.raises(ValueError, match="16, 32, 64, 128, 256, 512, 1024"):
    StyleGAN2Generator(resolution=48)
  with pytest.raises(ValueError, match="16, 32"):
    StyleGAN2Discriminator(resolution=8)


@pytest.mark.parametrize("resolution", [16, 32, 64, 256])
@pytest.mark.parametrize("num_classes", [0, 3])
def test_shapes(resolution, num_classes):
  kw = {} if resolution < 256 else dict(fmap_base=1024, fmap_max=16)
  g = tiny_g(resolution, num_classes, **kw)
  d = tiny_d(resolution, num_classes, **kw)
  y = tf.constant([0, 2]) if num_classes else None
  x = g(tf.random.normal([2, 8]), y, training=True)
  assert x.shape == (2, resolution, resolution, 3)
  # std is ~1 at init for real widths; tiny random nets vary more
  assert np.isfinite(x.numpy()).all() and float(tf.math.reduce_std(x)) < 10.0
  out = d(x, y, training=True)
  assert out["logits"].shape == (2,)
  assert out["features"].shape == (2, d.feature_dim)
  assert out["feature_map"].shape == (2, 4, 4, d.feature_dim)
  assert (g.z_dim, g.num_classes, g.resolution, g.channels) == (8, num_classes, resolution, 3)


def test_generator_requires_labels_when_conditional():
  with pytest.raises(ValueError, match="labels"):
    tiny_g(num_classes=3)(tf.zeros([2, 8]))


def test_truncation_zero_maps_every_z_to_the_average_image():
  g = tiny_g()
  g.mapping(tf.random.normal([16, 8]), training=True)  # moves w_avg away from 0
  assert float(tf.reduce_max(tf.abs(g.w_avg))) > 0
  w_avg = g.w_avg.numpy().copy()
  g.mapping(tf.random.normal([16, 8]), training=False)
  np.testing.assert_array_equal(g.w_avg.numpy(), w_avg)  # only training updates it
  x = g(tf.random.normal([3, 8]), truncation=0.0, noise_mode="const")
  np.testing.assert_allclose(x[0], x[1], atol=1e-5)
  np.testing.assert_allclose(x[0], x[2], atol=1e-5)
  ref = g.synthesis(tf.constant(w_avg)[None], noise_mode="const")
  np.testing.assert_allclose(x[:1], ref, atol=1e-5)
  y = g(tf.random.normal([2, 8]), truncation=0.5, noise_mode="const")
  assert not np.allclose(y[0], y[1], atol=1e-4)


def test_style_mixing_per_batch_is_one_decision_and_one_crossover_for_the_batch():
  g = tiny_g(style_mixing_prob=0.5)  # the default: per batch, as the reference
  assert g.style_mixing == "per_batch"
  ws = g.mapping(tf.random.normal([6, 8]))
  decisions = set()
  for step in range(12):
    mixed, cutoff = g.style_mix(ws, rng=SampleRNG([0, step]))
    assert len(set(cutoff.numpy().tolist())) == 1  # the whole batch alike
    c = int(cutoff[0])
    decisions.add(c < g.num_ws)
    np.testing.assert_array_equal(mixed[:, :c], ws[:, :c])
  assert decisions == {True, False}  # mixed in some steps, not in others (p = 0.5)
  # 2 replicas of 3 draw what 1 replica of 6 does: a global decision.
  whole = g.style_mix(ws, rng=SampleRNG([0, 3]))[1]
  for offset in (0, 3):
    part = g.style_mix(ws[offset:offset + 3], rng=SampleRNG([0, 3], 6, offset))[1]
    np.testing.assert_array_equal(part, whole[offset:offset + 3])


def test_style_mixing_switches_to_the_second_w_at_the_crossover():
  g = tiny_g(style_mixing_prob=1.0, style_mixing="per_sample")
  ws = g.mapping(tf.random.normal([6, 8]))
  mixed, cutoff = g.style_mix(ws, rng=SampleRNG([0, 1]))
  mixed, ws, cutoff = mixed.numpy(), ws.numpy(), cutoff.numpy()
  assert ((cutoff >= 1) & (cutoff < g.num_ws)).all()
  for b, c in enumerate(cutoff):
    np.testing.assert_array_equal(mixed[b, :c], ws[b, :c])  # layers before: w1
    np.testing.assert_allclose(mixed[b, c:], np.broadcast_to(mixed[b, c], mixed[b, c:].shape))
    assert not np.allclose(mixed[b, c], ws[b, c])  # layers from the crossover: w2
  unmixed, cut0 = g.style_mix(tf.constant(ws), rng=SampleRNG([0, 1]), prob=0.0)
  np.testing.assert_array_equal(unmixed, ws)
  assert (cut0.numpy() == g.num_ws).all()
  # every style index is read by the synthesis network, each by its own layer
  base = g.synthesis(ws[:1], noise_mode="none").numpy()
  for j in range(g.num_ws):
    w2 = ws[:1].copy()
    w2[0, j] += 3.0
    assert not np.allclose(g.synthesis(w2, noise_mode="none"), base, atol=1e-6), j
  # the 4x4 block reads ws[0] (conv) and ws[1] (toRGB) only
  ws4 = tf.constant(ws[:1, :2])
  x4, _ = g.blocks[0](None, ws4, noise_mode="none")
  x4b, _ = g.blocks[0](None, tf.concat([ws4, tf.ones([1, 3, 8])], 1), noise_mode="none")
  np.testing.assert_array_equal(x4, x4b)


def test_same_rng_seed_same_image_different_seed_differs():
  g = tiny_g()
  set_noise_strength(g, 1.0)  # strengths start at 0, which would hide the noise
  z = tf.random.normal([2, 8])
  a = g(z, rng=SampleRNG([5, 1]))
  b = g(z, rng=SampleRNG([5, 1]))
  c = g(z, rng=SampleRNG([5, 2]))
  np.testing.assert_array_equal(a, b)
  assert not np.allclose(a, c)
  const1, const2 = g(z, noise_mode="const"), g(z, noise_mode="const")
  np.testing.assert_array_equal(const1, const2)
  assert not np.allclose(g(z, noise_mode="none"), const1)
  # training calls (style mixing + noise) are reproducible too
  g2 = tiny_g(style_mixing_prob=1.0)
  t1 = g2(z, training=True, rng=SampleRNG([9, 9]))
  t2 = g2(z, training=True, rng=SampleRNG([9, 9]))
  np.testing.assert_array_equal(t1, t2)
  assert not np.allclose(t1, g2(z, training=False, noise_mode="none"))
  with pytest.raises(ValueError, match="noise_mode"):
    g(z, noise_mode="fixed")


def test_feature_map_is_the_last_block_output_before_minibatch_std():
  d = tiny_d(32, num_classes=0)
  x = tf.random.normal([4, 32, 32, 3])
  out = d(x)
  h = x
  for block in d.blocks:
    h = block(h)
  np.testing.assert_allclose(out["feature_map"], h, rtol=1e-5)
  stats = d.mbstd(out["feature_map"])
  assert stats.shape == (4, 4, 4, d.feature_dim + 1)
  feats = d.fc(tf.reshape(d.conv(stats), [4, -1]))
  np.testing.assert_allclose(out["features"], feats, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(out["logits"], d.out(feats)[:, 0], rtol=1e-5, atol=1e-6)


def test_projection_ignores_unknown_labels_and_accepts_soft_labels():
  d = tiny_d(num_classes=4)
  x = tf.random.normal([3, 16, 16, 3])
  plain = d(x)["logits"]
  np.testing.assert_allclose(d(x, tf.constant([-1, -1, -1]))["logits"], plain, rtol=1e-6)
  hard = d(x, tf.constant([0, 2, 3]))["logits"]
  soft = d(x, tf.one_hot([0, 2, 3], 4))["logits"]
  np.testing.assert_allclose(hard, soft, rtol=1e-5, atol=1e-6)
  assert not np.allclose(hard, plain)
  feats = d(x)["features"]
  np.testing.assert_allclose(hard - plain, d.project(feats, tf.constant([0, 2, 3])),
                             rtol=1e-4, atol=1e-5)
  mixed = d.project(feats, tf.constant([[0.5, 0.5, 0, 0]] * 3))
  halves = 0.5 * (d.project(feats, tf.constant([0] * 3)) + d.project(feats, tf.constant([1] * 3)))
  np.testing.assert_allclose(mixed, halves, rtol=1e-5, atol=1e-6)


def test_gradients_reach_every_trainable_variable():
  g, d = tiny_g(num_classes=3), tiny_d(num_classes=3)
  z, y = tf.random.normal([4, 8]), tf.constant([0, 1, 2, -1])
  with tf.GradientTape(persistent=True) as tape:
    x = g(z, y, training=True, rng=SampleRNG([1, 1]))
    loss = tf.reduce_mean(tf.nn.softplus(-d(x, y, training=True)["logits"]))
  for model in (g, d):
    grads = tape.gradient(loss, model.trainable_variables)
    missing = [v.path for v, gr in zip(model.trainable_variables, grads) if gr is None]
    assert not missing, missing
  assert all(not v.trainable for v in g.non_trainable_variables)
  assert {v.path.split("/")[-1] for v in g.non_trainable_variables} == {"w_avg", "noise_const"}


def test_kernel_transform_hook_wraps_the_base_weight_after_build():
  g = tiny_g()
  z = tf.random.normal([2, 8])
  before = g(z, noise_mode="const")

  class Scale(keras.layers.Layer):
    def build(self, input_shape=None):
      self.gamma = self.add_weight(name="gamma", shape=(), initializer="ones")

    def call(self, w):
      return w * self.gamma + 0.1

  conv = g.blocks[1].conv0.conv
  n = len(g.trainable_variables)
  adafm = Scale()
  adafm.build()
  conv.set_kernel_transform(adafm)
  assert len(g.trainable_variables) == n + 1
  after = g(z, noise_mode="const")
  assert not np.allclose(before, after)
  with tf.GradientTape() as tape:
    loss = tf.reduce_sum(g(z, noise_mode="const") ** 2)
  assert tape.gradient(loss, adafm.gamma) is not None


def test_networks_run_under_xla():
  g, d = tiny_g(num_classes=3), tiny_d(num_classes=3)
  z, y = tf.random.normal([2, 8]), tf.constant([1, 2])
  eager = d(g(z, y, noise_mode="const"), y)["logits"]

  @tf.function(jit_compile=True)
  def run(z, y, seed):
    return d(g(z, y, training=True, rng=SampleRNG(seed)), y, training=True)["logits"]

  assert run(z, y, tf.constant([1, 2])).shape == (2,)
  compiled = tf.function(lambda z, y: d(g(z, y, noise_mode="const"), y)["logits"],
                         jit_compile=True)
  np.testing.assert_allclose(compiled(z, y), eager, rtol=1e-4, atol=1e-5)


def test_two_replicas_match_one_replica_and_update_w_avg():
  devices = tf.config.list_logical_devices("CPU")
  if len(devices) < 2:
    pytest.skip("needs two logical CPU devices")
  strategy = conftest.mirrored()
  z = tf.random.normal([4, 8])
  g1 = tiny_g(style_mixing_prob=0.5)
  g1.build(None)
  with strategy.scope():
    g2 = tiny_g(style_mixing_prob=0.5)
    g2.build(None)
  g2.set_weights(g1.get_weights())
  set_noise_strength(g1, 0.5)
  set_noise_strength(g2, 0.5)
  ref = g1(z, training=True, rng=SampleRNG([3, 4]))

  @tf.function
  def step():
    def fn():
      ctx = tf.distribute.get_replica_context()
      zr = z[ctx.replica_id_in_sync_group * 2:][:2]
      zr = tf.ensure_shape(zr, [2, 8])
      return g2(zr, training=True, rng=SampleRNG.for_replica([3, 4], 2))
    return strategy.gather(strategy.run(fn), axis=0)

  np.testing.assert_allclose(step(), ref, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(g2.w_avg.numpy(), g1.w_avg.numpy(), rtol=1e-5, atol=1e-7)


def test_mixed_precision_keeps_w_avg_and_outputs_in_float32():
  keras.mixed_precision.set_global_policy("mixed_float16")
  try:
    g, d = tiny_g(num_classes=2), tiny_d(num_classes=2)
    y = tf.constant([0, 1])
    with tf.GradientTape() as tape:
      x = g(tf.random.normal([2, 8]), y, training=True, rng=SampleRNG([0, 0]))
      out = d(x, y, training=True)
      loss = tf.reduce_mean(out["logits"])
  finally:
    keras.mixed_precision.set_global_policy("float32")
  assert x.dtype == tf.float32 and g.w_avg.dtype == tf.float32
  assert all(v.dtype == tf.float32 for v in out.values())
  grads = tape.gradient(loss, g.trainable_variables + d.trainable_variables)
  assert all(gr is not None and np.isfinite(gr.numpy()).all() for gr in grads)
