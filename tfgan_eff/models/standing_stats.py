"""Standing statistics: batch-norm statistics re-estimated for sampling (BigGAN).

Training keeps an exponential moving average of each batch-norm layer's batch statistics
(and the EMA generator averages those again). "Standing statistics" (BigGAN-PyTorch's
`accumulate_standing_stats`, compare_gan's accumulators) replace them before sampling by
the equal-weight mean over `num_batches` fresh batches of z (and uniform labels) run
through G in training mode:

    mean = 1/N Σ_i mean_i,    variance = 1/N Σ_i variance_i

with mean_i, variance_i the statistics batch i normalizes with in training mode (biased,
over the batch and the pixels). G then samples in inference mode with them.

    accumulate_standing_stats(gan.G_ema, num_batches=16, batch_size=64)
    images = gan.G_ema(z, y, training=False)

Only the moving statistics change. Every other variable, the power-iteration vectors of
spectral norm included (a training-mode call advances them), is put back after each batch,
so every batch is run with the weights inference uses; during the batches each layer's
momentum is 0, so its moving statistics are the batch's own, read and summed in float64.
Generators without batch norm (StyleGAN2) are left as they are. Runs eagerly, outside
`strategy.run` (the tools use the default strategy).
"""

import numpy as np
import tensorflow as tf
from absl import logging

from tfgan_eff.models import layers

# The seed of batch i is fold_in([seed, STREAM], i): another stream than the samples
# drawn from the same `seed` by the tools (`rng.sample_in_batches`, bin/sample).
STREAM = 0x57A5


def batch_norm_layers(model):
  """The batch-norm layers (`layers.CrossReplicaBatchNorm`) in `model`, in layer order."""
  return [sub for sub in layers.sublayers(model)
          if isinstance(sub, layers.CrossReplicaBatchNorm)]


def standing_stats_inputs(generator, index, batch_size=64, seed=0, num_classes=None):
  """(z, labels) of accumulation batch `index`: z ~ N(0, 1) [batch_size, z_dim] and labels
  uniform over the classes (None for an unconditional generator)."""
  num_classes = generator.num_classes if num_classes is None else num_classes
  key = tf.random.experimental.stateless_fold_in(
      tf.constant([seed, STREAM], tf.int64), index)
  key_z, key_y = tf.unstack(tf.random.experimental.stateless_split(key, 2))
  z = tf.random.stateless_normal([batch_size, generator.z_dim], seed=key_z)
  if not num_classes:
    return z, None
  y = tf.random.stateless_uniform([batch_size], seed=key_y, maxval=num_classes,
                                  dtype=tf.int32)
  return z, y


def accumulate_standing_stats(generator, num_batches=16, batch_size=64, seed=0,
                              num_classes=None, truncation=1.0):
  """Sets the moving statistics of every batch-norm layer of `generator` to the mean of
  its batch statistics over `num_batches` training-mode batches; -> the number of layers.

  Args:
    generator: a built generator `G(z, y, training, truncation)` with `z_dim` and
      `num_classes` (BigGAN). Without batch-norm layers nothing happens (0 is returned).
    num_batches: batches to average (BigGAN-PyTorch's `num_standing_accumulations`); 0
      changes nothing.
    batch_size: samples per batch.
    seed: the batches are a fixed function of it (`standing_stats_inputs`).
    num_classes: labels are uniform over [0, num_classes); default `generator.num_classes`.
    truncation: passed to G, as for the samples the statistics are meant for (BigGAN
      scales z by it; BigGAN-PyTorch re-accumulates for every z variance it samples at).
  """
  if int(num_batches) != num_batches or num_batches < 0:
    raise ValueError(f"Standing statistics need a number of batches >= 0 (0: off), got "
                     f"{num_batches}.")
  if int(batch_size) != batch_size or batch_size < 1:
    raise ValueError(f"Standing statistics need a batch size >= 1, got {batch_size}.")
  bns = batch_norm_layers(generator)
  if not bns:
    logging.info("Standing statistics: %s has no batch-norm layers; nothing to "
                 "accumulate, sampling is unchanged.", generator.name)
    return 0
  if not num_batches:
    return 0
  if not all(bn.built for bn in bns):  # a BuildOnCall network builds on its first call
    generator(*standing_stats_inputs(generator, 0, 1, seed, num_classes), training=False)
  variables = generator.variables
  saved = [v.numpy() for v in variables]
  momenta = [bn.momentum for bn in bns]
  sums = [[np.zeros(bn.moving_mean.shape, np.float64) for _ in range(2)] for bn in bns]
  try:
    for bn in bns:  # the moving statistics become the batch's own: m·old + (1 − m)·batch
      bn.momentum = 0.0
    for i in range(int(num_batches)):
      z, y = standing_stats_inputs(generator, i, batch_size, seed, num_classes)
      generator(z, y, training=True, truncation=truncation)
      for (mean, var), bn in zip(sums, bns):
        mean += bn.moving_mean.numpy()
        var += bn.moving_variance.numpy()
      for v, value in zip(variables, saved):  # the SN vectors (and anything else) back
        v.assign(value)
  except BaseException:
    for v, value in zip(variables, saved):
      v.assign(value)
    raise
  finally:
    for bn, m in zip(bns, momenta):
      bn.momentum = m
  for (mean, var), bn in zip(sums, bns):
    bn.moving_mean.assign((mean / num_batches).astype(np.float32))
    bn.moving_variance.assign((var / num_batches).astype(np.float32))
  logging.info("Standing statistics of %s: %d batch-norm layers, averaged over %d batches "
               "of %d.", generator.name, len(bns), num_batches, batch_size)
  return len(bns)
