"""SampleRNG: per-replica slices of global draws."""

import numpy as np
import tensorflow as tf

from tfgan_eff.rng import SampleRNG


def test_replica_slices_equal_the_global_draw():
  full = SampleRNG([3, 9])
  a = full.normal([8, 5]).numpy()
  b = full.integers([8, 2], 0, 100).numpy()
  for offset in (0, 4):
    part = SampleRNG([3, 9], global_batch=8, offset=offset)
    np.testing.assert_array_equal(part.normal([4, 5]), a[offset:offset + 4])
    np.testing.assert_array_equal(part.integers([4, 2], 0, 100), b[offset:offset + 4])


def test_streams_are_reproducible_and_independent():
  r1, r2 = SampleRNG([1, 2]), SampleRNG([1, 2])
  np.testing.assert_array_equal(r1.uniform([4]), r2.uniform([4]))
  c1, c2 = r1.child(), r1.child()
  assert not np.allclose(c1.uniform([4]), c2.uniform([4]))
  assert not np.allclose(SampleRNG([1, 3]).uniform([4]), SampleRNG([1, 2]).uniform([4]))


def test_works_inside_tf_function():
  f = tf.function(lambda s: SampleRNG(tf.stack([tf.constant(0, tf.int64), s])).normal([2]))
  np.testing.assert_array_equal(f(tf.constant(5, tf.int64)), f(tf.constant(5, tf.int64)))



def _draws(seed):
  rng = SampleRNG(seed, global_batch=8, offset=4)
  return [rng.normal([4, 3]), rng.normal([4, 5, 3]), rng.uniform([4, 3]),
          rng.uniform([4], -2.0, 3.0), rng.integers([4], 0, 100), rng.batch_uniform(),
          rng.batch_uniform(1, 9, tf.int32), rng.child().normal([4])]


def test_xla_draws_the_same_numbers_as_plain_tf():
  """Trainer.jit_compile changes how a step runs, not which latents, noise or augmentations
  it draws; and the draws are TF's own (Philox) stateless ones, so runs started before this
  module made its floats itself resume with the same numbers (normals to rounding)."""
  seed = tf.constant([7, 11], tf.int64)
  plain = _draws(seed)
  xla = tf.function(_draws, jit_compile=True)(seed)
  for a, b in zip(plain, xla):
    assert a.dtype == b.dtype and a.shape == b.shape
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-6 if a.dtype == tf.float32 else 0)
  np.testing.assert_array_equal(plain[2], xla[2])  # U[0, 1) exactly (an affine map may fuse)
  rng = SampleRNG(seed)
  seeds = [rng.next_seed() for _ in range(3)]
  tf_normal = tf.random.stateless_normal([8, 5, 3], seed=seeds[1])[4:]
  np.testing.assert_allclose(plain[1], tf_normal, rtol=0, atol=1e-6)
  np.testing.assert_array_equal(plain[2], tf.random.stateless_uniform([8, 3], seed=seeds[2])[4:])
  big = SampleRNG([1, 2]).normal([10001])  # odd size; N(0, 1)
  assert big.shape == [10001] and abs(float(tf.reduce_mean(big))) < 0.03
  assert abs(float(tf.math.reduce_std(big)) - 1) < 0.03
