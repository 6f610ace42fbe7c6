"""DiffAugment ops and policies, the ADA pipeline and its p controller, the exact warp."""

import conftest
import math

import gin
import numpy as np
import pytest
import tensorflow as tf

from tfgan_eff.augment import (AdaptiveAugment, DiffAugment, affine_warp, brightness,
                               contrast, cutout, diff_augment, parse_pipeline, parse_policy,
                               saturation, translation)
from tfgan_eff.rng import SampleRNG

SEED = [3, 11]


def rng(seed=SEED, **kw):
  return SampleRNG(seed, **kw)


def images(shape, seed=0, lo=-1.0, hi=1.0):
  return tf.random.stateless_uniform(shape, [seed, 99], lo, hi)


# -- helpers: the op's dense matrix vs the gradient TF computes ------------------------------
def dense_matrix(f, shape):
  """Matrix A and offset c with f(x) = A·x + c, from forward passes on basis images.

  Valid for ops that are affine in x for fixed random parameters (all ops here, since every
  parameter comes from a fresh SampleRNG with the same seed inside `f`).
  """
  n = int(np.prod(shape))
  run = tf.function(lambda v: tf.reshape(f(tf.reshape(v, shape)), [-1]))
  c = run(tf.zeros([n]))
  cols = [run(tf.one_hot(i, n)) - c for i in range(n)]
  return tf.stack(cols, axis=1).numpy(), c.numpy()


def autodiff_jacobian(f, x):
  with tf.GradientTape() as tape:
    tape.watch(x)
    y = f(x)
  n_out, n_in = int(np.prod(y.shape)), int(np.prod(x.shape))
  return tf.reshape(tape.jacobian(y, x), [n_out, n_in]).numpy()


def assert_gradient_exact(f, shape, seed=0):
  x = images(shape, seed)
  a, c = dense_matrix(f, shape)
  j = autodiff_jacobian(f, x)
  np.testing.assert_allclose(j, a, atol=1e-5)
  # and A, c really describe f at a generic x (affinity check)
  np.testing.assert_allclose(a @ x.numpy().ravel() + c, f(x).numpy().ravel(), atol=1e-5)
  return a


# -- DiffAugment: statistics of each op ------------------------------------------------------
def test_brightness_shift_is_per_image_and_in_range():
  x = images([2000, 2, 2, 3])
  d = (brightness(x, rng()) - x).numpy().reshape(2000, -1)
  np.testing.assert_allclose(d, d[:, :1].repeat(12, 1), atol=1e-6)   # one shift per image
  assert d.min() >= -0.5 and d.max() < 0.5
  assert d.min() < -0.48 and d.max() > 0.48                         # covers the range
  assert abs(d.mean()) < 0.03


def _factor(y, x, centre):
  """Per-image least-squares factor f with y - centre = f·(x - centre), and the residual."""
  u = (x - centre).numpy().reshape(len(x), -1)
  v = (y - centre).numpy().reshape(len(x), -1)
  f = (u * v).sum(1) / (u * u).sum(1)
  return f, np.abs(v - f[:, None] * u).max()


def test_saturation_and_contrast_factors():
  x = images([1000, 3, 3, 3])
  m = tf.reduce_mean(x, axis=3, keepdims=True)
  s, residual = _factor(saturation(x, rng()), x, m)
  assert residual < 1e-5 and s.min() >= 0 and s.max() < 2
  assert s.min() < 0.05 and s.max() > 1.95
  mm = tf.reduce_mean(x, axis=[1, 2, 3], keepdims=True)
  y = contrast(x, rng())
  np.testing.assert_allclose(tf.reduce_mean(y, [1, 2, 3]), mm[:, 0, 0, 0], atol=1e-5)
  c, residual = _factor(y, x, mm)
  assert residual < 1e-5 and c.min() >= 0.5 and c.max() < 1.5
  assert c.min() < 0.52 and c.max() > 1.48
  gray = images([4, 5, 5, 1])
  np.testing.assert_array_equal(saturation(gray, rng()), gray)      # identity for C = 1


def _zero_rows(z):
  """Leading all-zero rows of each [H, W] plane in a batch: [B]."""
  nonzero = np.any(z != 0, axis=2)                                  # [B, H]
  return np.argmax(nonzero, axis=1)


def test_translation_offsets_uniform_over_minus4_to_4_at_32px():
  b = 3000
  y = translation(tf.ones([b, 32, 32, 1]), rng())[..., 0].numpy()
  for plane in (y, y.transpose(0, 2, 1)):                          # H then W
    ty = _zero_rows(plane) - _zero_rows(plane[:, ::-1])               # +: content moved down
    counts = np.array([(ty == v).sum() for v in range(-4, 5)])
    assert counts.sum() == b                                         # only values -4..4
    chi2 = ((counts - b / 9) ** 2 / (b / 9)).sum()
    assert chi2 < 26.1, counts                                       # 8 dof, p = 0.001
  # the content moves as a whole: out[i, j] = x[i - ty, j - tx], zero elsewhere
  x = tf.reshape(tf.range(8 * 32 * 32, dtype=tf.float32) + 1, [8, 32, 32, 1])
  yy = translation(x, rng())[..., 0].numpy()
  xx = x[..., 0].numpy()
  for k in range(8):
    inside = yy[k] != 0
    src = yy[k][inside].astype(int) - 1 - k * 1024
    rows, cols = np.nonzero(inside)
    dy, dx = rows - src // 32, cols - src % 32
    assert len(set(dy)) == 1 and len(set(dx)) == 1 and abs(dy[0]) <= 4 and abs(dx[0]) <= 4
    assert inside.sum() == (32 - abs(dy[0])) * (32 - abs(dx[0]))
    assert xx[k].min() > 0


def test_translation_ratio_scales_the_shift():
  y = translation(tf.ones([500, 16, 24, 1]), rng(), ratio=0.25)[..., 0].numpy()
  ty = _zero_rows(y) - _zero_rows(y[:, ::-1])
  tx = _zero_rows(y.transpose(0, 2, 1)) - _zero_rows(y.transpose(0, 2, 1)[:, ::-1])
  assert set(ty) == set(range(-4, 5)) and set(tx) == set(range(-6, 7))


def test_cutout_square_of_16_at_32px_zero_filled():
  b = 2000
  y = cutout(tf.ones([b, 32, 32, 1]), rng())[..., 0].numpy()
  assert set(np.unique(y)) <= {0.0, 1.0}
  full_squares = 0
  for k in range(b):
    rows, cols = np.nonzero(y[k] == 0)
    assert len(rows) > 0
    h = rows.max() - rows.min() + 1
    w = cols.max() - cols.min() + 1
    assert len(rows) == h * w                                        # one rectangle
    assert h <= 16 and w <= 16
    if 0 < rows.min() and rows.max() < 31:
      assert h == 16                                                 # not clipped -> side 16
    if 0 < cols.min() and cols.max() < 31:
      assert w == 16
    full_squares += h * w == 256
  assert full_squares > 0
  area = (y == 0).mean()
  assert 0.17 < area < 0.20                                          # reference: 18.6 %


# -- DiffAugment: gradients ------------------------------------------------------------------
@pytest.mark.parametrize("name", ["brightness", "saturation", "contrast", "translation",
                                  "cutout", "all"])
def test_gradient_is_exact(name):
  ops = {
      "brightness": brightness, "saturation": saturation, "contrast": contrast,
      "translation": lambda x, r: translation(x, r, ratio=0.25),
      "cutout": cutout,
      "all": lambda x, r: diff_augment(x, "color,translation,cutout", r, 0.25),
  }
  a = assert_gradient_exact(lambda x: ops[name](x, rng()), [2, 4, 5, 3])
  if name in ("translation", "cutout"):                            # 0/1 selection matrices
    assert set(np.unique(np.round(a, 6))) <= {0.0, 1.0}
    assert (a.sum(axis=1) <= 1).all()


# -- DiffAugment: policies, seeds, replicas, dtypes, XLA -------------------------------------
def test_same_seed_same_augmentation_and_different_seeds_differ():
  x = images([4, 16, 16, 3])
  pol = "color,translation,cutout"
  np.testing.assert_array_equal(diff_augment(x, pol, rng([1, 2])),
                                diff_augment(x, pol, rng([1, 2])))
  assert not np.allclose(diff_augment(x, pol, rng([1, 2])), diff_augment(x, pol, rng([1, 3])))


def test_replica_slice_matches_global_draw():
  x = images([8, 16, 16, 3])
  pol = "color,translation,cutout"
  full = diff_augment(x, pol, rng())
  part = diff_augment(x[4:], pol, rng(global_batch=8, offset=4))
  np.testing.assert_array_equal(part, full[4:])


def test_policies_compose_in_order():
  x = images([6, 16, 16, 3])
  r = rng()
  np.testing.assert_array_equal(
      diff_augment(x, "translation,cutout", rng()), cutout(translation(x, r), r))
  r = rng()
  np.testing.assert_array_equal(
      diff_augment(x, "color", rng()), contrast(saturation(brightness(x, r), r), r))
  r = rng()
  np.testing.assert_array_equal(diff_augment(x, "cutout, translation", rng()),
                                translation(cutout(x, r), r))
  assert not np.allclose(diff_augment(x, "cutout,translation", rng()),
                         diff_augment(x, "translation,cutout", rng()))
  np.testing.assert_array_equal(diff_augment(x, "", rng()), x)
  assert parse_policy(" color , translation ,cutout ") == ("color", "translation", "cutout")


def test_bad_policy_lists_valid_names():
  with pytest.raises(ValueError, match=r"'flip'.*color, translation, cutout"):
    diff_augment(tf.zeros([1, 4, 4, 1]), "color,flip", rng())
  with pytest.raises(ValueError, match="rotate"):
    DiffAugment("translation,rotate")


@pytest.mark.parametrize("dtype", [tf.float16, tf.bfloat16])
def test_low_precision_keeps_dtype(dtype):
  x = tf.cast(images([2, 8, 8, 3]), dtype)
  y = diff_augment(x, "color,translation,cutout", rng())
  assert y.dtype == dtype
  ref = diff_augment(tf.cast(x, tf.float32), "color,translation,cutout", rng())
  np.testing.assert_allclose(tf.cast(y, tf.float32), ref, atol=0.1)
  a = AdaptiveAugment(pipeline="bgc,cutout", initial_p=1.0)
  assert a(x, rng()).dtype == dtype


def test_diff_augment_under_xla():
  x = images([4, 16, 16, 3])

  @tf.function(jit_compile=True)
  def run(v, seed, policy):
    return diff_augment(v, policy, SampleRNG(seed))

  seed = tf.constant(SEED, tf.int64)
  # SampleRNG's draws under XLA differ from the non-XLA kernels (XLA lowers the stateless
  # generators differently), so check reproducibility and the ops' properties instead.
  y = run(x, seed, "color,translation,cutout")
  assert y.shape == x.shape and y.dtype == x.dtype
  np.testing.assert_array_equal(y, run(x, seed, "color,translation,cutout"))
  assert not np.allclose(y, run(x, tf.constant([3, 12], tf.int64), "color,translation,cutout"))
  d = (run(x, seed, "brightness") - x).numpy()
  assert np.ptp(d.reshape(4, -1), axis=1).max() < 1e-6 and np.abs(d).max() < 0.5
  t = run(tf.ones([64, 16, 16, 1]), seed, "translation")[..., 0].numpy()
  shifts = _zero_rows(t) - _zero_rows(t[:, ::-1])
  assert set(shifts) <= set(range(-2, 3)) and len(set(shifts)) > 2
  c = run(tf.ones([64, 16, 16, 1]), seed, "cutout").numpy()
  assert set(np.unique(c)) == {0.0, 1.0} and (c == 0).reshape(64, -1).sum(1).max() == 64


def test_dynamic_shapes():
  x = images([4, 16, 12, 3])
  spec = [tf.TensorSpec([None, None, None, 3])]
  f = tf.function(lambda v: diff_augment(v, "color,translation,cutout", rng()),
                  input_signature=spec)
  np.testing.assert_array_equal(f(x), diff_augment(x, "color,translation,cutout", rng()))
  a = AdaptiveAugment(pipeline="bgc,cutout", initial_p=1.0)
  g = tf.function(lambda v: a(v, rng()), input_signature=spec)
  np.testing.assert_allclose(g(x), a(x, rng()), atol=1e-5)


def test_diffaugment_class_and_gin():
  x = images([4, 16, 16, 3])
  np.testing.assert_array_equal(DiffAugment()(x, rng()),
                                diff_augment(x, "color,translation,cutout", rng()))
  gin.clear_config()
  try:
    gin.parse_config(["DiffAugment.policy = 'translation'",
                      "AdaptiveAugment.pipeline = 'bg'", "AdaptiveAugment.target = 0.7"])
    assert DiffAugment().policy == ("translation",)
    ada = AdaptiveAugment()
    assert ada.groups == ("blit", "geom") and ada.target == 0.7
  finally:
    gin.clear_config()


# -- the exact warp -------------------------------------------------------------------------
def _inverse_affine(angle, zoom, tx=0.0, ty=0.0):
  c, s = math.cos(angle), math.sin(angle)
  return np.array([[c / zoom, s / zoom, tx], [-s / zoom, c / zoom, ty], [0, 0, 1]], np.float32)


@pytest.mark.parametrize("angle,zoom,tx,ty", [(0.5, 1.2, 0.0, 0.0), (0.5, 0.8, 0.3, -1.7),
                                              (2.5, 0.6, 2.2, 0.4)])
def test_warp_matches_tf_forward_and_has_exact_gradient(angle, zoom, tx, ty):
  h, w = 8, 8
  inv = _inverse_affine(angle, zoom, tx, ty)
  f = lambda x: affine_warp(x, inv[None])
  assert_gradient_exact(f, [1, h, w, 1])
  # forward = ImageProjectiveTransformV3(BILINEAR, REFLECT) with uncentred coordinates
  centre = np.array([[1, 0, (w - 1) / 2], [0, 1, (h - 1) / 2], [0, 0, 1]], np.float32)
  m = centre @ inv @ np.linalg.inv(centre)
  x = images([1, h, w, 1])
  ref = tf.raw_ops.ImageProjectiveTransformV3(
      images=x, transforms=tf.constant([list(m[0]) + list(m[1]) + [0, 0]], tf.float32),
      output_shape=[h, w], fill_value=0.0, interpolation="BILINEAR", fill_mode="REFLECT")
  np.testing.assert_allclose(f(x), ref, atol=1e-5)


def test_warp_identity_is_exact_and_non_square_shapes_work():
  x = images([2, 6, 10, 3])
  np.testing.assert_array_equal(affine_warp(x, np.tile(np.eye(3, dtype=np.float32), [2, 1, 1])), x)
  y = affine_warp(x, np.tile(_inverse_affine(0.3, 1.1)[None], [2, 1, 1]))
  assert y.shape == x.shape


# -- ADA pipeline ---------------------------------------------------------------------------
def test_pipeline_strings():
  assert parse_pipeline("bgc") == ("blit", "geom", "color")
  assert parse_pipeline("bg") == ("blit", "geom")
  assert parse_pipeline("cutout, bgc") == ("blit", "geom", "color", "cutout")
  assert parse_pipeline("geom,blit") == ("blit", "geom")
  with pytest.raises(ValueError, match="'bgcf'.*blit, geom, color, cutout"):
    AdaptiveAugment(pipeline="bgcf")


@pytest.mark.parametrize("shape", [[4, 16, 16, 3], [4, 12, 16, 1]])
def test_ada_identity_at_p0_and_changes_every_image_at_p1(shape):
  x = images(shape)
  a = AdaptiveAugment(pipeline="bgc,cutout")
  np.testing.assert_array_equal(a(x, rng()), x)
  a.p.assign(1.0)
  y = a(x, rng())
  assert y.shape == x.shape and y.dtype == x.dtype
  assert (np.abs(y - x).reshape(shape[0], -1).max(axis=1) > 1e-3).all()
  for groups in ("b", "g", "c", "cutout"):
    assert AdaptiveAugment(pipeline=groups, initial_p=1.0)(x, rng()).shape == x.shape


def test_ada_gates_are_per_sample():
  b = 2000
  a = AdaptiveAugment(pipeline="cutout", initial_p=0.3)
  y = a(tf.ones([b, 8, 8, 1]), rng()).numpy()
  frac = (y.reshape(b, -1).min(axis=1) == 0).mean()
  assert 0.27 < frac < 0.33
  # geom at p = 0.5: a mix of untouched and warped images
  g = AdaptiveAugment(pipeline="g", initial_p=0.5)
  x = images([200, 8, 8, 1])
  changed = (np.abs(g(x, rng()) - x).reshape(200, -1).max(axis=1) > 0).mean()
  assert 0.6 < changed < 0.95      # 1 - (1-p)^3·(1-p_rot)^2 = 1 - 0.5^4 ≈ 0.94 at most


def test_ada_blit_moves_pixels_without_interpolation():
  x = images([16, 8, 8, 3])
  y = AdaptiveAugment(pipeline="b", initial_p=1.0)(x, rng()).numpy()
  xv = x.numpy()
  for k in range(16):                                               # each output pixel is an
    src = {tuple(v) for v in xv[k].reshape(-1, 3)}                   # input pixel
    assert all(tuple(v) in src for v in y[k].reshape(-1, 3))


def test_ada_grayscale_color_is_the_rgb_action_on_grey():
  x1 = images([8, 6, 6, 1])
  a = AdaptiveAugment(pipeline="c", initial_p=1.0)
  rgb = a(tf.tile(x1, [1, 1, 1, 3]), rng()).numpy()
  gray = a(x1, rng()).numpy()
  np.testing.assert_allclose(rgb, np.repeat(gray, 3, axis=3), atol=1e-5)
  with pytest.raises(ValueError, match="1 or 3 channels"):
    a(tf.zeros([1, 4, 4, 2]), rng())


def test_ada_gradient_is_exact():
  a = AdaptiveAugment(pipeline="bgc,cutout", initial_p=1.0)
  assert_gradient_exact(lambda x: a(x, rng()), [2, 5, 5, 3])


def test_ada_seed_and_replica_slice():
  x = images([8, 8, 8, 3])
  a = AdaptiveAugment(pipeline="bgc,cutout", initial_p=0.7)
  full = a(x, rng())
  np.testing.assert_array_equal(full, a(x, rng()))
  assert not np.allclose(full, a(x, rng([5, 5])))
  # same draws; float rounding of the batched matrix products may differ in the last bit
  np.testing.assert_allclose(a(x[4:], rng(global_batch=8, offset=4)), full[4:], atol=1e-5)


def test_ada_under_xla():
  a = AdaptiveAugment(pipeline="bgc,cutout", initial_p=0.8)
  run = tf.function(lambda v: a(v, SampleRNG(tf.constant(SEED, tf.int64))), jit_compile=True)
  x = images([2, 8, 8, 3])
  y = run(x)
  assert y.shape == x.shape
  np.testing.assert_array_equal(y, run(x))


# -- ADA controller -------------------------------------------------------------------------
def test_controller_moves_p_by_exact_steps_and_clips():
  a = AdaptiveAugment(interval=4, speed_kimg=0.1, p_max=1.0)      # step = 8·4/100 = 0.32
  update = tf.function(a.update)
  step = tf.constant(0, tf.int64)
  ps = [float(update(tf.ones([8]), step, 8)["ada_p"]) for _ in range(16)]
  np.testing.assert_allclose(ps, [0.0] * 3 + [0.32] * 4 + [0.64] * 4 + [0.96] * 4 + [1.0],
                             atol=1e-6)
  for _ in range(40):                                              # overconfident D: p -> 1
    m = update(tf.ones([8]), step, 8)
  assert float(m["ada_p"]) == 1.0 and float(m["ada_rt"]) == 1.0
  ps = [float(update(-tf.ones([8]), step, 8)["ada_p"]) for _ in range(8)]
  np.testing.assert_allclose(ps[3], 0.68, atol=1e-6)
  np.testing.assert_allclose(ps[7], 0.36, atol=1e-6)
  for _ in range(40):
    m = update(-tf.ones([8]), step, 8)
  assert float(m["ada_p"]) == 0.0 and float(m["ada_rt"]) == -1.0
  # r_t = 0.5 < 0.6 (3 of 4 logits positive) lowers p; 0.75 > 0.6 raises it
  a.p.assign(0.5)
  for _ in range(4):
    m = update(tf.constant([1.0, 1.0, 1.0, -1.0]), step, 4)
  np.testing.assert_allclose([m["ada_p"], m["ada_rt"]], [0.5 - 0.16, 0.5], atol=1e-6)
  b = AdaptiveAugment(interval=2, speed_kimg=0.05, p_max=0.5)
  for _ in range(20):
    m = b.update(tf.ones([4, 1]), 0, 4)
  assert abs(float(m["ada_p"]) - 0.5) < 1e-7 and abs(float(b.p) - 0.5) < 1e-7


def test_controller_default_speed_is_500_kimg():
  a = AdaptiveAugment()
  for _ in range(4):
    m = a.update(tf.ones([32]), 0, 64)
  np.testing.assert_allclose(float(m["ada_p"]), 64 * 4 / 500000, rtol=1e-6)


def test_linear_and_fixed_modes():
  a = AdaptiveAugment(mode="linear", linear_total_steps=10, p_max=0.8)
  for step, want in [(0, 0.0), (5, 0.4), (10, 0.8), (25, 0.8)]:
    assert abs(float(a.update(tf.ones([4]), step, 4)["ada_p"]) - want) < 1e-6
  f = AdaptiveAugment(mode="fixed", initial_p=0.3)
  for _ in range(12):
    m = f.update(tf.ones([4]), 0, 4)
  assert abs(float(m["ada_p"]) - 0.3) < 1e-7 and float(m["ada_rt"]) == 1.0
  with pytest.raises(ValueError, match="linear_total_steps"):
    AdaptiveAugment(mode="linear")
  with pytest.raises(ValueError, match="mode"):
    AdaptiveAugment(mode="auto")


def test_controller_and_pipeline_under_mirrored_strategy():
  strategy = conftest.mirrored()
  with strategy.scope():
    a = AdaptiveAugment(interval=2, speed_kimg=0.1, pipeline="bgc,cutout")
  single = AdaptiveAugment(interval=2, speed_kimg=0.1, pipeline="bgc,cutout")
  logits = tf.constant([1.0, 1.0, 1.0, -1.0, 1.0, -1.0, 1.0, 1.0])   # r_t = 0.5 globally
  x = images([8, 8, 8, 3])

  def replica_fn(step):
    ctx = tf.distribute.get_replica_context()
    i = ctx.replica_id_in_sync_group
    local_logits = tf.gather(tf.reshape(logits, [2, 4]), i)
    local_x = tf.gather(tf.reshape(x, [2, 4, 8, 8, 3]), i)
    out = a(local_x, SampleRNG.for_replica(tf.constant(SEED, tf.int64), 4))
    return out, a.update(local_logits, step, 8)

  run = tf.function(lambda s: strategy.run(replica_fn, args=(s,)))
  a.p.assign(0.5)
  single.p.assign(0.5)
  for step in range(4):
    out, m = run(tf.constant(step, tf.int64))
    want_out = single(x, rng())
    want = single.update(logits, step, 8)
    got = tf.concat(strategy.experimental_local_results(out), 0)
    np.testing.assert_allclose(got, want_out, atol=1e-5)
    for k in ("ada_p", "ada_rt"):
      for v in strategy.experimental_local_results(m[k]):
        np.testing.assert_allclose(v, want[k], atol=1e-6)
  # two intervals with r_t = 0.5 < 0.6: p fell twice by 8·2/100
  np.testing.assert_allclose(a.p.numpy(), 0.5 - 2 * 0.16, atol=1e-6)
  np.testing.assert_allclose([v.numpy() for v in a.p.values], [0.18, 0.18], atol=1e-6)
