"""BigGAN networks and layers: shapes, spectral norm, projection, attention."""

import conftest
import keras
import numpy as np
import pytest
import tensorflow as tf

from tfgan_eff.models import layers
from tfgan_eff.models.biggan import BigGANDiscriminator, BigGANGenerator
from tfgan_eff.params import count_params


@pytest.mark.parametrize("resolution", [32, 64, 128, 256])
@pytest.mark.parametrize("num_classes", [0, 5])
def test_shapes(resolution, num_classes):
  g = BigGANGenerator(resolution=resolution, ch=2, z_dim=28, num_classes=num_classes,
                      shared_dim=4, channels=3)
  d = BigGANDiscriminator(resolution=resolution, ch=2, num_classes=num_classes, channels=3)
  y = tf.constant([0, 1]) if num_classes else None
  x = g(tf.random.normal([2, g.z_dim]), y, training=True)
  assert x.shape == (2, resolution, resolution, 3)
  assert float(tf.reduce_max(tf.abs(x))) <= 1.0
  out = d(x, y, training=True)
  assert out["logits"].shape == (2,)
  assert out["features"].shape == (2, d.feature_dim)
  fmap = out["feature_map"]
  assert fmap.shape[0] == 2 and fmap.shape[-1] == d.feature_dim
  np.testing.assert_allclose(tf.reduce_sum(fmap, [1, 2]), out["features"], rtol=1e-5)


def test_hierarchical_z_rounds_to_chunks():
  assert BigGANGenerator(resolution=128, ch=2, z_dim=120).z_dim == 120  # 6 chunks of 20
  assert BigGANGenerator(resolution=128, ch=2, z_dim=128).z_dim == 126  # 6 chunks of 21
  assert BigGANGenerator(resolution=32, ch=2, z_dim=128).z_dim == 128   # 4 chunks of 32


def test_imagenet128_parameter_counts_match_compare_gan(monkeypatch):
  # Counting needs shapes, not values: skip the orthogonal initializer's 160M-entry QRs.
  monkeypatch.setattr(layers.Orthogonal, "__call__",
                      lambda self, shape, dtype=None: tf.zeros(shape, dtype or "float32"))
  g = BigGANGenerator(resolution=128, ch=96, z_dim=120, num_classes=1000)
  d = BigGANDiscriminator(resolution=128, ch=96, num_classes=1000)
  d(g(tf.zeros([1, 120]), tf.constant([0])), tf.constant([0]))
  assert count_params(g.trainable_variables) == 70_433_988
  assert count_params(d.trainable_variables) == 87_982_370


def test_cifar_config_matches_the_diffaugment_scripts_parameter_count():
  """gin/biggan/biggan_cifar10.gin: per-layer class embeddings, no hierarchical z, as the
  DiffAugment BigGAN-CIFAR scripts (BigGAN-PyTorch G_shared=False): G 4,304,387."""
  import gin  # pylint: disable=import-outside-toplevel
  from tfgan_eff import config  # pylint: disable=import-outside-toplevel
  gin.clear_config()
  try:
    config.parse(["gin/biggan/biggan_cifar10.gin"], [], finalize=False)
    g = BigGANGenerator()
  finally:
    gin.clear_config()
  y = tf.constant([3, 7])
  x = g(tf.random.normal([2, 128]), y)
  assert g.per_layer_embedding and g.embed is None and g.z_dim == 128
  assert count_params(g.trainable_variables) == 4_304_387
  # The tables are read as embeddings: soft one-hot labels give the same images.
  np.testing.assert_allclose(g(tf.zeros([2, 128]), tf.one_hot(y, 10)),
                             g(tf.zeros([2, 128]), y), rtol=1e-5, atol=1e-6)
  assert x.shape == (2, 32, 32, 3)
  with pytest.raises(ValueError, match="per-layer class embeddings .* hierarchical_z"):
    BigGANGenerator(resolution=32, ch=4, num_classes=10, shared_dim=0)


def test_spectral_norm_bounds_largest_singular_value():
  layer = layers.SNConv2D(16, 3)
  x = tf.random.normal([2, 8, 8, 6])
  layer(x)
  layer.kernel.assign(layer.kernel * 50.0)
  for _ in range(30):  # power iterations happen in training calls
    layer(x, training=True)
  assert abs(float(layer.singular_value()) - 1.0) < 1e-2
  dense = layers.SNDense(7)
  dense(tf.zeros([1, 13]))
  for _ in range(30):
    dense(tf.zeros([1, 13]), training=True)
  assert abs(float(dense.singular_value()) - 1.0) < 1e-2


def test_spectral_norm_u_only_updates_in_training():
  layer = layers.SNDense(4)
  layer(tf.zeros([1, 3]))
  u0 = layer.sn_u.numpy().copy()
  layer(tf.zeros([1, 3]), training=False)
  np.testing.assert_array_equal(layer.sn_u.numpy(), u0)
  layer(tf.zeros([1, 3]), training=True)
  assert not np.allclose(layer.sn_u.numpy(), u0)


def test_projection_ignores_unknown_labels_and_accepts_soft_labels():
  d = BigGANDiscriminator(resolution=32, ch=2, num_classes=4, channels=1)
  x = tf.random.normal([3, 32, 32, 1])
  plain = d(x)["logits"]
  hidden = d(x, tf.constant([-1, -1, -1]))["logits"]
  np.testing.assert_allclose(plain, hidden, rtol=1e-6)
  hard = d(x, tf.constant([0, 2, 3]))["logits"]
  soft = d(x, tf.one_hot([0, 2, 3], 4))["logits"]
  np.testing.assert_allclose(hard, soft, rtol=1e-5)
  assert not np.allclose(hard, plain)


def test_truncation_zero_gives_class_mean():
  g = BigGANGenerator(resolution=32, ch=2, z_dim=16, num_classes=3, channels=1)
  y = tf.constant([1, 1])
  a = g(tf.random.normal([2, g.z_dim]), y, truncation=0.0)
  np.testing.assert_allclose(a[0], a[1], atol=1e-6)


def test_cross_replica_batch_norm_matches_global_statistics():
  bn = layers.CrossReplicaBatchNorm(center=False, scale=False)
  x = tf.random.normal([8, 4, 4, 3]) * 3.0 + 1.0
  y = bn(x, training=True)
  np.testing.assert_allclose(tf.reduce_mean(y, [0, 1, 2]), 0.0, atol=1e-5)
  np.testing.assert_allclose(tf.math.reduce_std(y, [0, 1, 2]), 1.0, atol=1e-3)
  strategy = conftest.mirrored()
  with strategy.scope():
    bn2 = layers.CrossReplicaBatchNorm(center=False, scale=False)
    bn2.build(x.shape)
  dist = strategy.experimental_distribute_values_from_function(
      lambda ctx: x[ctx.replica_id_in_sync_group * 4:(ctx.replica_id_in_sync_group + 1) * 4])
  out = strategy.run(lambda v: bn2(v, training=True), args=(dist,))
  y2 = tf.concat(strategy.experimental_local_results(out), 0)
  np.testing.assert_allclose(y2, y, atol=1e-5)


def _kernels(model):
  """{path: kernel} of every conv, linear and embedding layer of a BigGAN G or D."""
  kinds = (layers.SNConv2D, layers.SNDense, layers.SNEmbedding)
  return {l.path: l.kernel.numpy() for l in layers.sublayers(model) if isinstance(l, kinds)}


def _biggan_pair(**kw):
  g = BigGANGenerator(resolution=32, ch=16, z_dim=64, num_classes=10, shared_dim=16,
                      attention_resolution=16, name="g", **kw)
  d = BigGANDiscriminator(resolution=32, ch=16, num_classes=10, attention_resolution=16,
                          name="d", **kw)
  y = tf.constant([1, 2])
  d(g(tf.zeros([2, g.z_dim]), y), y)
  return g, d


@pytest.mark.parametrize("shape", [(3, 3, 64, 32), (3, 3, 16, 128), (1000, 128), (64, 48),
                                   (16, 100), (128, 128)])
def test_fast_orthogonal_equals_keras(shape):
  """layers.Orthogonal (Cholesky QR on tall kernels, Householder otherwise) gives Keras'
  orthogonal kernels for the same seed, to round-off, in every orientation."""
  ours = layers.Orthogonal(seed=3, gain=2.0)(shape).numpy()
  keras_q = keras.initializers.Orthogonal(seed=3, gain=2.0)(shape).numpy()
  np.testing.assert_allclose(ours, keras_q, rtol=0, atol=1e-6)
  flat = ours.reshape(-1, shape[-1]) / 2.0
  gram = flat.T @ flat if flat.shape[0] >= flat.shape[1] else flat @ flat.T
  np.testing.assert_allclose(gram, np.eye(len(gram)), rtol=0, atol=2e-6)
  assert not np.allclose(ours, layers.Orthogonal(seed=4, gain=2.0)(shape))
  assert keras.initializers.get(layers.ORTHOGONAL).__class__ is layers.Orthogonal


def test_init_n02_as_biggan_pytorch_and_orthogonal_by_default():
  """init="N02" (BigGAN-PyTorch --G_init/--D_init N02): every conv, linear and embedding
  kernel ~ N(0, 0.02), the shared embedding, conditional BN maps and attention included."""
  g, d = _biggan_pair(init="N02")
  kernels = {**_kernels(g), **_kernels(d)}
  # G: shared, linear, 3 x (3 convs + 4 BN maps), 4 attention convs, conv_out; D: 10 block
  # convs, 4 attention convs, linear, projection.
  assert len(_kernels(g)) == 28 and len(_kernels(d)) == 16
  big = {p: w for p, w in kernels.items() if w.size >= 1000}
  assert len(big) >= 20
  for path, w in big.items():
    assert abs(w.std() / 0.02 - 1) < 0.1 and abs(w.mean()) < 0.002, path
  for w in kernels.values():
    assert np.abs(w).max() < 0.02 * 6
  np.testing.assert_array_compare(np.not_equal, *[
      kernels[f"g/attention1/{n}"] for n in ("theta", "phi")])  # own seeds
  g2, d2 = _biggan_pair()  # the default: orthogonal
  assert g2.get_config()["init"] == d2.get_config()["init"] == "ortho"
  for path, w in {**_kernels(g2), **_kernels(d2)}.items():
    w = w.reshape(-1, w.shape[-1])
    gram = w.T @ w if w.shape[0] >= w.shape[1] else w @ w.T
    np.testing.assert_allclose(gram, np.eye(len(gram)), atol=1e-4, err_msg=path)
  for model in (g, d):  # get_config round trip: the copy is N(0, 0.02) again
    config = model.get_config()
    assert config["init"] == "N02"
    copy = type(model).from_config(config)
    assert copy.get_config() == config
    if model is g:
      copy(tf.zeros([2, g.z_dim]), tf.constant([0, 1]))
    else:
      copy(tf.zeros([2, 32, 32, 3]), tf.constant([0, 1]))
    conv = _kernels(copy)[f"{copy.name}/block1/conv1"]
    assert abs(conv.std() / 0.02 - 1) < 0.1
  # Per-layer class embeddings (G_shared=False): the tables are N(0, 0.02) too.
  g3 = BigGANGenerator(resolution=32, ch=16, z_dim=16, num_classes=10, shared_dim=0,
                       hierarchical_z=False, attention_resolution=0, init="N02", name="g3")
  g3(tf.zeros([2, 16]), tf.constant([1, 2]))
  gain = _kernels(g3)["g3/block0/bn1/gain"]
  assert gain.shape == (10, 64) and abs(gain.std() / 0.02 - 1) < 0.1
  with pytest.raises(ValueError, match="unknown init 'normal'; use one of ortho, N02"):
    BigGANDiscriminator(resolution=32, ch=2, init="normal")


def _shapes(layer):
  return [(w.path.split("/", 1)[-1], tuple(w.shape)) for w in layer.weights]


_ROUND_TRIP = {  # name: (make, call on a fresh layer)
    "SNDense": (lambda: layers.SNDense(6, use_bias=False, use_sn=False, name="l"),
                lambda l: l(tf.zeros([2, 3]))),
    "SNConv2D": (lambda: layers.SNConv2D(6, 1, kernel_initializer="he_normal", name="l"),
                 lambda l: l(tf.zeros([2, 4, 4, 3]))),
    "SNEmbedding": (lambda: layers.SNEmbedding(5, 7, use_sn=False, name="l"),
                    lambda l: l(tf.constant([0, 4]))),
    "CrossReplicaBatchNorm": (
        lambda: layers.CrossReplicaBatchNorm(0.5, 1e-3, center=False, name="l"),
        lambda l: l(tf.zeros([2, 4, 4, 3]))),
    "ConditionalBatchNorm": (
        lambda: layers.ConditionalBatchNorm(3, 0.5, 1e-3, use_sn=False, name="l"),
        lambda l: l(tf.zeros([2, 4, 4, 3]), tf.zeros([2, 5]))),
    "SelfAttention": (lambda: layers.SelfAttention(use_sn=False, name="l"),
                      lambda l: l(tf.zeros([2, 4, 4, 16]))),
    "BigGANGenerator": (
        lambda: BigGANGenerator(resolution=64, channels=1, ch=2, z_dim=26, num_classes=3,
                                shared_dim=4, hierarchical_z=True, attention_resolution=32,
                                use_sn=False, bn_momentum=0.5, name="l"),
        lambda l: l(tf.zeros([2, l.z_dim]), tf.constant([0, 2]))),
    "BigGANDiscriminator": (
        lambda: BigGANDiscriminator(resolution=64, channels=1, ch=2, num_classes=3,
                                    attention_resolution=16, use_sn=False, name="l"),
        lambda l: l(tf.zeros([2, 64, 64, 1]), tf.constant([0, 2]))),
}


@pytest.mark.parametrize("name", sorted(_ROUND_TRIP))
def test_get_config_round_trip_rebuilds_the_same_layer(name):
  make, call = _ROUND_TRIP[name]
  layer = make()
  call(layer)
  config = layer.get_config()
  copy = type(layer).from_config(config)
  assert copy.get_config() == config
  call(copy)
  assert _shapes(copy) == _shapes(layer) and _shapes(layer)
