"""Tests of tfgan_eff.eval: metric maths against closed forms, the Inception loader on a tiny
fake graph with the real node names, the digits classifier, and the Evaluator end to end."""

import os
import tarfile

import gin
import numpy as np
import pytest
import tensorflow as tf

from tfgan_eff.eval import evaluator as evaluator_lib
from tfgan_eff.eval import features as features_lib
from tfgan_eff.eval import inception as inception_lib
from tfgan_eff.eval import metrics as m
from tfgan_eff.io import to_uint8

# Module-scoped fixtures: keep this file in one worker process (pytest -n 2 --dist loadgroup).
pytestmark = pytest.mark.xdist_group("eval")



# ---------------------------------------------------------------------------------------
# FID
# ---------------------------------------------------------------------------------------

def _moments(x):
  return x.mean(axis=0), np.cov(x, rowvar=False)


def test_fid_of_a_set_with_itself_is_zero():
  rng = np.random.RandomState(0)
  x = rng.randn(400, 64) @ rng.randn(64, 64) + 5.0
  mu, sigma = _moments(x)
  assert abs(m.frechet_distance(mu, sigma, mu, sigma)) <= 1e-6 * np.trace(sigma)


def test_fid_matches_closed_form_for_diagonal_gaussians():
  rng = np.random.RandomState(1)
  d = 96
  mu1, mu2 = rng.randn(d), rng.randn(d)
  s1, s2 = rng.rand(d) * 3 + 0.01, rng.rand(d) * 0.5
  s2[:10] = 0.0  # singular second covariance
  expected = np.sum((mu1 - mu2) ** 2) + np.sum(s1 + s2 - 2 * np.sqrt(s1 * s2))
  got = m.frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2))
  assert got == pytest.approx(expected, rel=1e-12)


def test_fid_with_equal_covariances_is_squared_mean_distance():
  rng = np.random.RandomState(2)
  a = rng.randn(256, 256) / 16
  sigma = a @ a.T
  got = m.frechet_distance(np.zeros(256), sigma, np.ones(256), sigma)
  assert got == pytest.approx(256.0, rel=1e-9)


@pytest.mark.parametrize("scale", [1.0, 1e3])
def test_fid_rank_deficient_matches_high_precision_reference(scale):
  # 50 samples in 128-d: both covariances have rank 49.
  rng = np.random.RandomState(3)
  x1 = rng.randn(50, 128) * scale + rng.rand(128)
  x2 = np.abs(rng.randn(50, 128) @ rng.randn(128, 128) / 11.0) * scale
  (mu1, s1), (mu2, s2) = _moments(x1), _moments(x2)
  got = m.frechet_distance(mu1, s1, mu2, s2)
  # Reference: with S_i = A_i A_iᵀ (A_i the centred samples / sqrt(n-1)),
  # tr sqrt(S1 S2) = the nuclear norm of A1ᵀ A2 (its singular values are the square roots of
  # the non-zero eigenvalues of S1 S2): an SVD of a small matrix, no sqrt of noise.
  a1 = (x1 - mu1) / np.sqrt(49.0)
  a2 = (x2 - mu2) / np.sqrt(49.0)
  trace_sqrt = np.linalg.svd(a1 @ a2.T, compute_uv=False).sum()
  ref = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * trace_sqrt
  assert isinstance(got, float) and np.isfinite(got) and got >= 0.0
  assert got == pytest.approx(ref, rel=1e-10)
  assert m.frechet_distance(mu1, s1, mu1, s1) <= 1e-9 * np.trace(s1)


def test_fid_rejects_mismatched_shapes():
  with pytest.raises(ValueError, match="same feature extractor"):
    m.frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


# ---------------------------------------------------------------------------------------
# Streaming moments
# ---------------------------------------------------------------------------------------

def test_streaming_moments_equal_one_shot_moments(tmp_path):
  rng = np.random.RandomState(4)
  x = (rng.randn(300, 24) @ rng.randn(24, 24) + 1000.0).astype(np.float32)  # large mean
  mu, sigma = x.astype(np.float64).mean(0), np.cov(x.astype(np.float64), rowvar=False)
  acc = m.StreamingMoments()
  for lo, hi in [(0, 1), (1, 8), (8, 108), (108, 141), (141, 143), (143, 300)]:
    acc.update(x[lo:hi])
  assert acc.count == 300
  np.testing.assert_allclose(acc.mean, mu, rtol=1e-12)
  np.testing.assert_allclose(acc.covariance, sigma, rtol=1e-9, atol=1e-9 * np.abs(sigma).max())

  a = m.StreamingMoments().update(x[:37])
  b = m.StreamingMoments().update(x[37:200]).update(x[200:])
  merged = a.merge(b)
  np.testing.assert_allclose(merged.mean, mu, rtol=1e-12)
  np.testing.assert_allclose(merged.covariance, sigma, rtol=1e-9,
                             atol=1e-9 * np.abs(sigma).max())

  path = tmp_path / "stats.npz"
  merged.save(str(path))
  loaded = m.StreamingMoments.load(str(path))
  assert loaded.count == 300
  np.testing.assert_array_equal(loaded.covariance, merged.covariance)
  ref_mu, ref_sigma = m.load_reference_stats(str(path))  # TTUR keys mu / sigma
  np.testing.assert_array_equal(ref_mu, merged.mean)
  np.testing.assert_array_equal(ref_sigma, merged.covariance)


# ---------------------------------------------------------------------------------------
# Inception score, KID, precision/recall
# ---------------------------------------------------------------------------------------

def test_inception_score_extremes():
  k, n = 10, 1000
  uniform = np.full([n, k], 1.0 / k)
  assert m.inception_score(uniform) == pytest.approx((1.0, 0.0), abs=1e-12)
  onehot = np.eye(k)[np.arange(n) % k]  # every split holds each class equally often
  mean, std = m.inception_score(onehot, splits=10)
  assert mean == pytest.approx(k, rel=1e-12) and std == pytest.approx(0.0, abs=1e-9)
  assert m.inception_score(onehot, splits=1)[0] == pytest.approx(k, rel=1e-12)
  # Logits are detected (or flagged) and soft-maxed in float64.
  assert m.inception_score(onehot * 60.0, from_logits=True)[0] == pytest.approx(k, rel=1e-6)
  assert m.inception_score(np.zeros([n, k]))[0] == pytest.approx(1.0)


def test_kid_is_unbiased_and_detects_a_shift():
  rng = np.random.RandomState(5)
  draws = []
  for _ in range(10):
    a, b = rng.randn(400, 16), rng.randn(400, 16)
    draws.append(m.kernel_inception_distance(a, b, num_subsets=20, subset_size=100,
                                             seed=rng.randint(1 << 30))[0])
  draws = np.array(draws)
  assert abs(draws.mean()) < 4 * draws.std() / np.sqrt(len(draws))
  shifted, spread = m.kernel_inception_distance(rng.randn(400, 16), rng.randn(400, 16) + 0.5,
                                                num_subsets=20, subset_size=100)
  assert shifted > 10 * draws.std() and spread > 0
  # subset_size clamps to the smaller set.
  assert np.isfinite(m.kernel_inception_distance(rng.randn(30, 4), rng.randn(50, 4))[0])


def test_intra_fid_sees_swapped_classes_that_pooled_fid_cannot():
  rng = np.random.RandomState(7)
  means = rng.randn(3, 8) * 4.0

  def draw(n):
    y = np.repeat(np.arange(3), n)
    return means[y] + rng.randn(3 * n, 8), y
  real, real_y = draw(500)
  fake, fake_y = draw(400)
  out = m.intra_fid(fake, fake_y, real, real_y)
  for c in range(3):  # each class: plain FID of its two subsets
    f, r = fake[fake_y == c], real[real_y == c]
    assert out["per_class"][c] == pytest.approx(m.frechet_distance(*_moments(f), *_moments(r)))
    assert out["per_class"][c] < 0.5
  assert out["intra_fid"] == pytest.approx(np.mean(list(out["per_class"].values())))
  # A generator that draws class 1 when asked for 0 and 0 when asked for 1: the pooled
  # statistics are the same samples, so FID over all classes cannot move; intra-FID can.
  swapped = np.where(fake_y == 0, 1, np.where(fake_y == 1, 0, fake_y))
  bad = m.intra_fid(fake, swapped, real, real_y)
  gap = np.sum((means[0] - means[1]) ** 2)
  assert bad["per_class"][0] == pytest.approx(gap, rel=0.2)
  assert bad["per_class"][1] == pytest.approx(gap, rel=0.2)
  assert bad["per_class"][2] == out["per_class"][2]
  with pytest.raises(ValueError, match="class 2 has 400 samples and 1 real"):
    m.intra_fid(fake, fake_y, real[:1001], real_y[:1001])
  with pytest.raises(ValueError, match="expected"):
    m.intra_fid(fake, fake_y[:-1], real, real_y)


def test_precision_recall():
  rng = np.random.RandomState(6)
  real = rng.randn(500, 32).astype(np.float32)
  assert m.precision_recall(real, real.copy(), k=3) == (1.0, 1.0)
  far = rng.randn(400, 32) + 100.0
  assert m.precision_recall(real, far, k=3) == (0.0, 0.0)
  # Half of the fakes on the real manifold: precision ~ 0.5; small batches exercise the
  # row-batched distance computation.
  # Precision counts fakes inside the real manifold: adding as many far-away fakes halves
  # it. Small batches (max_elements) give the same numbers as one big distance matrix.
  near = rng.randn(250, 32)
  p_near, r_near = m.precision_recall(real, near, k=3)
  assert 0.3 < p_near < 1.0 and 0.0 < r_near < 1.0
  p, r = m.precision_recall(real, np.concatenate([near, far[:250]]), k=3, max_elements=1000)
  assert p == pytest.approx(p_near / 2, abs=1e-12)


# ---------------------------------------------------------------------------------------
# Inception loader on a fake graph with the real node names
# ---------------------------------------------------------------------------------------

def _write_fake_inception(path):
  """A tiny GraphDef shaped like classify_image_graph_def.pb: DecodeJpeg -> Cast ->
  ExpandDims -> ResizeBilinear(299, legacy) -> Sub/Mul -> conv + BatchNormWithGlobal-
  Normalization (producer version 5, as the 2015 graph) -> pool_3 [1,1,1,2048] ->
  pool_3/_reshape [1, 2048] (batch 1 baked in) -> softmax/logits/MatMul [1, 1008]."""
  rng = np.random.RandomState(0)
  g = tf.Graph()
  with g.as_default():
    contents = tf.compat.v1.placeholder(tf.string, [], name="DecodeJpeg/contents")
    image = tf.io.decode_jpeg(contents, channels=3, name="DecodeJpeg")
    x = tf.expand_dims(tf.cast(image, tf.float32, name="Cast"), 0, name="ExpandDims")
    x = tf.raw_ops.ResizeBilinear(images=x, size=tf.constant([299, 299]), align_corners=False,
                                  half_pixel_centers=False, name="ResizeBilinear")
    x = tf.multiply(tf.subtract(x, 128.0, name="Sub"), 1.0 / 128.0, name="Mul")
    x = tf.nn.avg_pool2d(x, 37, 37, "VALID", name="stem_pool")  # [1, 8, 8, 3]
    w = tf.constant(rng.randn(1, 1, 3, 2048).astype(np.float32), name="conv/conv2d_params")
    x = tf.nn.conv2d(x, w, 1, "SAME", name="conv/Conv2D")
    for n in ("mean", "variance", "beta", "gamma"):
      v = rng.rand(2048) + (0.5 if n in ("variance", "gamma") else 0.0)
      tf.constant(v.astype(np.float32), name="conv/batchnorm/" + n)
    x = tf.nn.relu(tf.identity(x, name="conv/batchnorm"), name="conv")
    pool = tf.nn.avg_pool2d(x, 8, 1, "VALID", name="pool_3")
    flat = tf.reshape(pool, tf.constant([1, 2048]), name="pool_3/_reshape")
    weights = tf.constant(rng.randn(2048, 1008).astype(np.float32) * 0.05,
                          name="softmax/weights")
    biases = tf.constant(rng.randn(1008).astype(np.float32), name="softmax/biases")
    logits = tf.nn.bias_add(tf.matmul(flat, weights, name="softmax/logits/MatMul"), biases,
                            name="softmax/logits")
    tf.nn.softmax(logits, name="softmax")
  graph_def = g.as_graph_def()
  for node in graph_def.node:  # the op removed in GraphDef version 9, as in the real file
    if node.name == "conv/batchnorm":
      node.op = "BatchNormWithGlobalNormalization"
      del node.input[:]
      node.input.extend(["conv/Conv2D"] + [f"conv/batchnorm/{n}" for n in
                                           ("mean", "variance", "beta", "gamma")])
      node.attr["variance_epsilon"].f = 1e-3
      node.attr["scale_after_normalization"].b = True
  graph_def.versions.producer = 5
  with open(path, "wb") as f:
    f.write(graph_def.SerializeToString())
  return graph_def


def _ttur_reference(graph_def, images):
  """The unmodified graph in a TF1 Session, fed one image at a time at ExpandDims:0."""
  g = tf.Graph()
  with g.as_default():
    tf.graph_util.import_graph_def(graph_def, name="")
  with tf.compat.v1.Session(graph=g) as sess:
    outs = [sess.run(["pool_3:0", "softmax/logits/MatMul:0"],
                     {"ExpandDims:0": images[i:i + 1].astype(np.float32)})
            for i in range(len(images))]
  return (np.concatenate([o[0].reshape(1, -1) for o in outs]),
          np.concatenate([o[1] for o in outs]))


@pytest.fixture(scope="module")
def fake_inception(tmp_path_factory):
  folder = tmp_path_factory.mktemp("inception")
  path = str(folder / inception_lib.GRAPH_FILENAME)
  return path, _write_fake_inception(path)


def test_inception_missing_file_fails_clearly(tmp_path):
  missing = str(tmp_path / "nowhere" / "classify_image_graph_def.pb")
  with pytest.raises(inception_lib.InceptionNotFoundError) as e:
    inception_lib.load_inception(missing, cache_dir=str(tmp_path / "cache"))
  msg = str(e.value)
  assert msg.startswith("Inception weights not found: put classify_image_graph_def.pb "
                        "(or inception-2015-12-05.tgz) at ")
  assert missing in msg and "--inception_path" in msg
  with pytest.raises(inception_lib.InceptionNotFoundError, match="empty_cache"):
    inception_lib.load_inception(cache_dir=str(tmp_path / "empty_cache"))
  with pytest.raises(inception_lib.InceptionNotFoundError, match="--inception_path"):
    evaluator_lib.Evaluator(cache_dir=str(tmp_path / "c2")).extractor  # pylint: disable=expression-not-assigned


def test_inception_loader_on_fake_graph(fake_inception, tmp_path):
  path, graph_def = fake_inception
  ex = inception_lib.load_inception(path, cache_dir=str(tmp_path / "cache"))
  rng = np.random.RandomState(7)
  images = rng.randint(0, 256, [3, 40, 40, 3]).astype(np.uint8)
  out = ex(images)
  assert out["pool"].shape == (3, 2048) and out["logits"].shape == (3, 1008)
  ref_pool, ref_logits = _ttur_reference(graph_def, images)
  np.testing.assert_allclose(out["pool"], ref_pool, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(out["logits"], ref_logits, rtol=1e-4, atol=1e-4)
  # Grayscale is tiled to RGB; the batch is split into forward passes of batch_size.
  gray = rng.randint(0, 256, [5, 28, 28, 1]).astype(np.uint8)
  ex.batch_size = 2
  np.testing.assert_allclose(ex(gray)["pool"], ex(np.repeat(gray, 3, axis=-1))["pool"])
  assert ex.comparable_to_published and ex.resize == "legacy_tf"
  assert len(ex.sha256) == 64 and os.path.exists(path + ".sha256")
  with pytest.raises(TypeError, match="to_uint8"):
    ex(images.astype(np.float32))


def test_inception_tgz_clean_resize_and_hash_check(fake_inception, tmp_path):
  path, _ = fake_inception
  tgz = str(tmp_path / inception_lib.TGZ_FILENAME)
  with tarfile.open(tgz, "w:gz") as tar:
    tar.add(path, arcname="./" + inception_lib.GRAPH_FILENAME)
  cache = str(tmp_path / "cache")
  legacy = inception_lib.load_inception(tgz, cache_dir=cache)
  assert os.path.exists(os.path.join(cache, inception_lib.GRAPH_FILENAME))
  clean = inception_lib.load_inception(cache_dir=cache, resize="clean")  # found in cache
  assert clean.sha256 == legacy.sha256
  rng = np.random.RandomState(8)
  small = rng.randint(0, 256, [2, 32, 32, 3]).astype(np.uint8)
  a, b = legacy(small)["pool"], clean(small)["pool"]
  assert np.all(np.isfinite(b)) and np.abs(a - b).max() > 1e-3  # bilinear != bicubic
  # At 299x299 both modes are the identity resize.
  big = rng.randint(0, 256, [1, 299, 299, 3]).astype(np.uint8)
  np.testing.assert_allclose(legacy(big)["pool"], clean(big)["pool"], atol=1e-5)
  with pytest.raises(ValueError, match="SHA-256"):
    inception_lib.load_inception(path, cache_dir=cache, expected_sha256="0" * 64)
  assert inception_lib.load_inception(path, cache_dir=cache,
                                      expected_sha256=legacy.sha256).sha256 == legacy.sha256


def test_inception_falls_back_to_a_session(fake_inception, tmp_path, monkeypatch):
  """If the tf.function import fails on an op removed from current GraphDef versions, the
  graph runs in a tf.compat.v1.Session (TTUR's way) with the same outputs."""
  path, graph_def = fake_inception
  copy = str(tmp_path / inception_lib.GRAPH_FILENAME)  # a new file: not memoized yet
  with open(path, "rb") as src, open(copy, "wb") as dst:
    dst.write(src.read())

  class Failing:
    def __init__(self, *args):
      pass

    def __call__(self, images):
      raise tf.errors.UnimplementedError(None, None, "Op X is not available in GraphDef")

  monkeypatch.setattr(inception_lib, "_FunctionRunner", Failing)
  ex = inception_lib.load_inception(copy, cache_dir=str(tmp_path))
  assert isinstance(ex._runner, inception_lib._SessionRunner)  # pylint: disable=protected-access
  images = np.random.RandomState(11).randint(0, 256, [2, 20, 20, 3]).astype(np.uint8)
  ref_pool, _ = _ttur_reference(graph_def, images)
  np.testing.assert_allclose(ex(images)["pool"], ref_pool, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------
# Digits classifier and the Evaluator
# ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def digits_cache(tmp_path_factory):
  return str(tmp_path_factory.mktemp("digits_cache"))


@pytest.fixture(scope="module")
def digits_extractor(digits_cache):
  return features_lib.DigitsClassifierExtractor(cache_dir=digits_cache)


def test_digits_classifier_extractor(digits_extractor, digits_cache):
  images, labels = features_lib.heldout_digits()
  assert digits_extractor.accuracy(images, labels) > 0.9
  assert not digits_extractor.comparable_to_published
  out = digits_extractor(np.repeat(images[:4], 3, axis=-1))  # RGB works too
  assert out["pool"].shape == (4, 128) and out["logits"].shape == (4, 10)
  # Cached: a second instance loads the same weights instead of training.
  assert os.path.exists(digits_extractor.weights_path)
  again = features_lib.DigitsClassifierExtractor(cache_dir=digits_cache)
  np.testing.assert_allclose(again(images[:8])["pool"], digits_extractor(images[:8])["pool"],
                             rtol=1e-5, atol=1e-6)


def test_an_extractor_keeps_its_own_weights_when_given_a_folder(digits_extractor, digits_cache,
                                                                 tmp_path):
  """A study pins its extractor: the folder's copy is seeded from the cache, and once there
  it wins over the cache (a retrained cache must not move the study's feature space)."""
  pinned = str(tmp_path / "study" / "extractor")
  a = features_lib.DigitsClassifierExtractor(cache_dir=digits_cache, weights_dir=pinned)
  assert a.weights_path.startswith(pinned) and a.sha256 == digits_extractor.sha256
  assert a.heldout_accuracy == digits_extractor.heldout_accuracy
  # The cache's weights change (another machine retrained them); the study's do not.
  cached = digits_extractor.weights_path
  with open(cached, "rb") as f:
    original = f.read()
  try:
    other = features_lib.DigitsClassifierExtractor(cache_dir=digits_cache)
    other.model.weights[0].assign_add(tf.ones_like(other.model.weights[0]) * 0.01)
    other.model.save_weights(str(tmp_path / "w.weights.h5"))
    os.replace(str(tmp_path / "w.weights.h5"), cached)
    b = features_lib.DigitsClassifierExtractor(cache_dir=digits_cache, weights_dir=pinned)
    assert b.sha256 == a.sha256
    assert features_lib.DigitsClassifierExtractor(cache_dir=digits_cache).sha256 != a.sha256
  finally:
    with open(cached, "wb") as f:
      f.write(original)


def _digits_32px():
  from sklearn.datasets import load_digits
  x = np.round(load_digits().images * (255.0 / 16.0))[..., None]
  x = tf.image.resize(x, [32, 32], method="bilinear", antialias=True).numpy()
  return np.clip(np.round(x), 0, 255).astype(np.uint8)


def test_evaluator_end_to_end_with_digits(digits_extractor, digits_cache):
  reals = _digits_32px()
  passes = []

  def real_batches_fn():
    passes.append(1)
    for i in range(0, len(reals), 256):
      yield reals[i:i + 256]

  rng = np.random.RandomState(9)
  real_gen = lambda n: reals[rng.randint(0, len(reals), n)]  # noqa: E731
  noise_gen = lambda n: rng.randint(0, 256, [n, 32, 32, 1]).astype(np.uint8)  # noqa: E731
  ev = evaluator_lib.Evaluator(metrics=("fid", "is", "kid", "pr"), num_samples=300,
                               feature_extractor="digits", cache_dir=digits_cache,
                               kid_subsets=10, kid_subset_size=200, batch_size=128)
  good = ev.evaluate(real_gen, real_batches_fn, "digits-train-32px-all")
  assert len(passes) == 1
  path = ev.reference_path("digits-train-32px-all")
  assert os.path.exists(path)
  ev2 = evaluator_lib.Evaluator(metrics=("fid", "kid", "pr"), num_samples=300,
                                feature_extractor=digits_extractor, cache_dir=digits_cache,
                                kid_subsets=10, kid_subset_size=200, num_runs=2)
  bad = ev2.evaluate(noise_gen, real_batches_fn, "digits-train-32px-all")
  assert len(passes) == 1  # the reals were not iterated again
  assert good["fid"] < 0.1 * bad["fid"]
  assert good["kid_mean"] < 0.1 * bad["kid_mean"]
  assert good["precision"] > 0.5 and bad["precision"] < 0.1
  assert good["is_mean"] > 5.0  # ten well-classified digit classes
  assert "fid_std" in bad and "fid_std" not in good and bad["num_runs"] == 2
  assert "kid_mean_std" in bad and "kid_std_std" not in bad
  assert good["extractor"] == "digits-lenet32-v1" and not good["comparable_to_published"]
  assert good["resize"] == "bilinear-antialias-32" and good["num_real"] == len(reals)
  with pytest.raises(TypeError, match="to_uint8"):
    ev.evaluate(lambda n: reals[:n].astype(np.float32), real_batches_fn, "digits-train-32px-all")


def test_evaluator_with_fake_inception_and_gin(fake_inception, tmp_path):
  path, _ = fake_inception
  gin.clear_config()
  try:
    gin.parse_config(["Evaluator.num_samples = 20", f"Evaluator.inception_path = '{path}'",
                      f"Evaluator.cache_dir = '{tmp_path}'", "Evaluator.batch_size = 10"])
    ev = evaluator_lib.Evaluator(metrics=("is", "kid"))  # (a 2048-d FID takes ~10 s here)
  finally:
    gin.clear_config()
  assert ev.num_samples == 20
  rng = np.random.RandomState(10)
  reals = rng.randint(0, 256, [30, 16, 16, 3]).astype(np.uint8)
  out = ev.evaluate(lambda n: reals[rng.randint(0, 30, n)], lambda: iter([reals[:15], reals[15:]]),
                    "random-16px")
  assert np.isfinite(out["kid_mean"]) and out["is_mean"] >= 1.0 and "fid" not in out
  assert out["extractor"] == "inception-2015-12-05" and out["resize"] == "legacy_tf"
  assert len(out["extractor_sha256"]) == 64 and out["comparable_to_published"]


def test_to_uint8():
  x = np.array([-1.0, -0.999, 0.0, 0.5, 1.0, 3.0])
  np.testing.assert_array_equal(to_uint8(x), [0, 0, 128, 191, 255, 255])
  assert isinstance(to_uint8(x), np.ndarray) and to_uint8(x).dtype == np.uint8
  # Halves round up (stylegan2-ada's x * 127.5 + 128), not to even as tf.round would.
  halves = np.array([0.5, 1.5, 2.5, 253.5, 254.5])
  np.testing.assert_array_equal(to_uint8(halves, value_range=(0.0, 255.0)), [1, 2, 3, 254, 255])
  # A tensor in gives a tensor out, in a tf.function too (the SavedModel's generate).
  t = tf.function(to_uint8)(tf.constant(x, tf.float32))
  assert tf.is_tensor(t) and t.dtype == tf.uint8
  np.testing.assert_array_equal(t.numpy(), [0, 0, 128, 191, 255, 255])


# ---------------------------------------------------------------------------------------
# The real FID network, when it is on the machine
# ---------------------------------------------------------------------------------------

def _real_inception_path():
  for p in (os.environ.get("TFGAN_EFF_INCEPTION"),
            os.path.join(os.path.expanduser(features_lib.DEFAULT_CACHE_DIR),
                         inception_lib.GRAPH_FILENAME)):
    if p and os.path.exists(p):
      return p
  return None


def _ttur_fid(f1, f2):
  """TTUR's fid.py calculate_frechet_distance: scipy sqrtm, eps offset if singular."""
  import scipy.linalg  # pylint: disable=import-outside-toplevel
  mu1, s1 = f1.mean(0), np.cov(f1, rowvar=False)
  mu2, s2 = f2.mean(0), np.cov(f2, rowvar=False)
  covmean, _ = scipy.linalg.sqrtm(s1.dot(s2), disp=False)
  if not np.isfinite(covmean).all():
    offset = np.eye(s1.shape[0]) * 1e-6
    covmean = scipy.linalg.sqrtm((s1 + offset).dot(s2 + offset))
  covmean = covmean.real
  return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def _openai_is(logits, splits=10):
  """OpenAI's inception_score: softmax of pool_3 @ W, exp(E KL(p(y|x) || p(y))) per split."""
  p = np.exp(logits - logits.max(1, keepdims=True))
  p /= p.sum(1, keepdims=True)
  scores = []
  for part in np.array_split(p, splits):
    kl = part * (np.log(part) - np.log(part.mean(0, keepdims=True)))
    scores.append(np.exp(kl.sum(1).mean()))
  return float(np.mean(scores))


@pytest.mark.slow
@pytest.mark.skipif(_real_inception_path() is None, reason=(
    "the FID Inception graph (classify_image_graph_def.pb from inception-2015-12-05.tgz) is "
    "not on this machine and tests never download; put it in ~/.cache/tfgan_eff/ or set "
    "TFGAN_EFF_INCEPTION=/path/to/classify_image_graph_def.pb to run this check"))
def test_real_inception_fid_and_is_match_the_ttur_and_openai_reference():
  """Ours (tf.function graph, batched, FID by our stable sqrt) vs the reference procedure
  (TTUR: the unmodified graph in a TF1 Session fed one image at a time at ExpandDims:0;
  FID by scipy.linalg.sqrtm as TTUR's fid.py; IS by OpenAI's formula), on 2 × 500 fixed
  images (the sklearn digits, upscaled to 64 px RGB): within 0.1%."""
  from sklearn.datasets import load_digits  # pylint: disable=import-outside-toplevel
  path = _real_inception_path()
  digits = load_digits().images[:1000]  # 0..16
  img = np.repeat(np.kron(digits, np.ones((8, 8)))[..., None], 3, -1)
  images = np.clip(img * 16, 0, 255).astype(np.uint8)
  a, b = images[:500], images[500:]
  ex = inception_lib.load_inception(path)
  ours_a, ours_b = ex(a), ex(b)
  moments = []
  for feats in (ours_a["pool"], ours_b["pool"]):
    s = m.StreamingMoments()
    for i in range(0, len(feats), 64):
      s.update(feats[i:i + 64])
    moments.append(s)
  fid = m.frechet_distance(moments[0].mean, moments[0].covariance, moments[1].mean,
                           moments[1].covariance)
  is_ours, _ = m.inception_score(ours_a["logits"], splits=10, from_logits=True)
  with open(path, "rb") as f:
    graph_def = tf.compat.v1.GraphDef.FromString(f.read())
  ref_a, ref_logits_a = _ttur_reference(graph_def, a)
  ref_b, _ = _ttur_reference(graph_def, b)
  assert fid == pytest.approx(_ttur_fid(ref_a, ref_b), rel=1e-3)
  assert is_ours == pytest.approx(_openai_is(ref_logits_a), rel=1e-3)
