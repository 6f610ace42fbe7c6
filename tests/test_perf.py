"""FLOPs of a training step (tfgan_eff.perf), as bin/benchmark prints them."""

import numpy as np
import pytest
import tensorflow as tf

from tfgan_eff import perf
from tfgan_eff.training.trainer import Trainer


def test_profiler_counts_a_conv_and_both_of_its_gradients():
  x = tf.random.normal([8, 32, 32, 16])
  w = tf.Variable(tf.random.normal([3, 3, 16, 32]))

  @tf.function
  def forward_backward(x):
    with tf.GradientTape() as tape:
      y = tf.reduce_sum(tf.nn.conv2d(x, w, 1, "SAME"))
    return tape.gradient(y, [w, x])

  conv = 2 * 8 * 32 * 32 * 3 * 3 * 16 * 32  # multiply-adds x 2
  flops = perf.graph_flops(forward_backward.get_concrete_function(x).graph)
  assert flops == pytest.approx(3 * conv, rel=0.01)  # forward, d/dw, d/dx


def test_step_flops_grow_with_the_batch_and_name_the_largest_conv(tiny_gin, tmp_path):
  counts = {}
  tiny_gin("Trainer.batch_size = 8")
  t = Trainer(model_dir=str(tmp_path))
  for batch in (8, 16):  # the same networks on batches of 8 and 16
    it = iter(t.strategy.distribute_datasets_from_function(t.data.dataset_fn(batch)))
    cost = perf.step_cost(t, it)
    counts[batch] = cost["flops"]
    assert not cost["lower_bound"]  # the BigGAN quickstart step has no conditionals
    x_shape, w_shape, _ = cost["conv"]
    assert x_shape[0] in (batch, 2 * batch) and w_shape[:2] == (3, 3)
  # Everything in a step is per sample except the weight-sized work (optimizer, SN).
  assert counts[16] == pytest.approx(2 * counts[8], rel=0.05)
  assert counts[8] > 1e7
  # The G forward alone, counted separately, is part of the step's count.
  g = t.gan.G
  fwd = tf.function(lambda z: g(z, tf.zeros([8], tf.int32), training=True))
  g_flops = perf.graph_flops(fwd.get_concrete_function(tf.zeros([8, g.z_dim])).graph)
  assert 0 < g_flops < counts[8] / 3 and np.isfinite(g_flops)
