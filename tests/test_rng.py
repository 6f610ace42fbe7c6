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
