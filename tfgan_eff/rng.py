"""Per-sample randomness that does not depend on the number of replicas.

Every random tensor in a training step (latents, labels, augmentation parameters, noise)
is drawn for the **global** batch from a stateless seed and sliced to this replica's rows.
One replica with a global batch of 8 and two replicas with 4 each therefore see exactly
the same numbers, and a resumed run repeats the draws of the run it continues.

Example:

    rng = SampleRNG(seed=[7, step])               # outside tf.distribute: offset 0
    z = rng.normal([batch, 128])                  # [batch, 128]
    shift = rng.integers([batch, 1], -4, 5)       # per-sample integer in [-4, 4]
    view1, view2 = rng.child(), rng.child()       # independent streams

**The same numbers with and without XLA.** Inside an XLA cluster TF's stateless float ops
turn Philox bits into floats differently from TF's CPU/GPU kernels (and 'auto_select' even
picks another generator), so an XLA-compiled step (`Trainer.jit_compile`) would draw other
latents, noise and augmentations than the plain step from the same seed. Here floats are made
from Philox's raw 32-bit words (on which both agree) as TF's kernels make them: uniforms from
the 23 mantissa bits (bit-identical to `tf.random.stateless_uniform`), normals by Box-Muller
over pairs of words (within 3e-7 of `tf.random.stateless_normal`). Integers use TF's op,
which XLA already matches.
"""

import math

import tensorflow as tf

ALG = "philox"


def _words(n, seed):
  """n raw Philox words (uint32) of `seed`: equal in plain TF and under XLA."""
  return tf.random.stateless_uniform([n], seed=seed, minval=None, maxval=None,
                                     dtype=tf.uint32, alg=ALG)


def _unit(words):
  """uint32 words -> U[0, 1) float32 from their low 23 bits, as TF's kernels do."""
  mantissa = tf.bitwise.bitwise_or(tf.bitwise.bitwise_and(words, 0x7fffff), 0x3f800000)
  return tf.bitcast(mantissa, tf.float32) - 1.0


def _size(shape):
  if all(isinstance(d, int) for d in shape):
    return math.prod(shape)
  return tf.reduce_prod(tf.stack([tf.cast(d, tf.int32) for d in shape]))


def stateless_uniform(shape, seed, minval=0.0, maxval=1.0, dtype=tf.float32):
  """`tf.random.stateless_uniform` (Philox), the same under XLA."""
  dtype = tf.as_dtype(dtype)
  if dtype.is_integer:
    return tf.random.stateless_uniform(shape, seed=seed, minval=minval, maxval=maxval,
                                       dtype=dtype, alg=ALG)
  u = tf.reshape(_unit(_words(_size(shape), seed)), shape)
  return tf.cast(u * (maxval - minval) + minval, dtype)


def stateless_normal(shape, seed, dtype=tf.float32):
  """`tf.random.stateless_normal` (Philox; to rounding), the same under XLA."""
  n = _size(shape)
  words = _words(n + n % 2, seed)
  u1 = tf.maximum(_unit(words[0::2]), 1.0e-7)
  theta = (2.0 * math.pi) * _unit(words[1::2])
  r = tf.sqrt(-2.0 * tf.math.log(u1))
  z = tf.reshape(tf.stack([tf.sin(theta) * r, tf.cos(theta) * r], axis=-1), [-1])
  return tf.cast(tf.reshape(z[:n], shape), dtype)


class SampleRNG:
  """Stateless per-sample draws for one replica's slice of a global batch.

  Args:
    seed: int tensor of shape [2] (e.g. `[config_seed, step]`).
    global_batch: the batch size across all replicas; `None` means the local batch.
    offset: index of this replica's first row in the global batch (scalar int tensor).
  """

  def __init__(self, seed, global_batch=None, offset=0):
    self.seed = tf.cast(tf.convert_to_tensor(seed), tf.int64)
    self.global_batch = global_batch
    self.offset = offset
    self._count = 0

  @classmethod
  def for_replica(cls, seed, local_batch):
    """The SampleRNG of the current replica (works outside tf.distribute too)."""
    ctx = tf.distribute.get_replica_context()
    if ctx is None or ctx.num_replicas_in_sync == 1:
      return cls(seed)
    rid = tf.cast(ctx.replica_id_in_sync_group, tf.int32)
    return cls(seed, global_batch=local_batch * ctx.num_replicas_in_sync,
               offset=rid * local_batch)

  def next_seed(self):
    """A fresh [2] seed; each call (at trace time) gives another stream."""
    self._count += 1
    return tf.random.experimental.stateless_fold_in(self.seed, self._count, alg=ALG)

  def child(self):
    """An independent SampleRNG over the same batch layout."""
    return SampleRNG(self.next_seed(), self.global_batch, self.offset)

  def _draw(self, fn, shape, **kwargs):
    shape = list(shape)
    if self.global_batch is None:
      return fn(shape, seed=self.next_seed(), **kwargs)
    full = fn([self.global_batch] + shape[1:], seed=self.next_seed(), **kwargs)
    return full[self.offset:self.offset + shape[0]]

  def uniform(self, shape, minval=0.0, maxval=1.0, dtype=tf.float32):
    """U[minval, maxval) of `shape`; shape[0] is the local batch."""
    return self._draw(stateless_uniform, shape, minval=minval, maxval=maxval, dtype=dtype)

  def normal(self, shape, dtype=tf.float32):
    """N(0, 1) of `shape`; shape[0] is the local batch."""
    return self._draw(stateless_normal, shape, dtype=dtype)

  def batch_uniform(self, minval=0.0, maxval=1.0, dtype=tf.float32):
    """One U[minval, maxval) value for the whole global batch (the same on every replica)."""
    return stateless_uniform([], self.next_seed(), minval, maxval, dtype)

  def integers(self, shape, minval, maxval, dtype=tf.int32):
    """Integers uniform in [minval, maxval) of `shape`; shape[0] is the local batch."""
    return self._draw(stateless_uniform, shape, minval=minval, maxval=maxval, dtype=dtype)


def sample_in_batches(generate, n, z_dim, num_classes, batch_size, seed,
                      return_labels=False):
  """n samples of `generate(z, labels)` (labels None when unconditional) as numpy; with
  `return_labels`, (samples, labels) (labels None when unconditional).

  Latents and uniform labels are a fixed function of (seed, sample index), so a run's EMA
  generator and its SavedModel export are fed exactly the same inputs for evaluation.
  """
  import numpy as np  # pylint: disable=import-outside-toplevel
  out, labels, done = [], [], 0
  while done < n:
    b = min(batch_size, n - done)
    z = tf.random.stateless_normal([b, z_dim], seed=[seed, done])
    y = (tf.random.stateless_uniform([b], seed=[seed + 1, done], maxval=num_classes,
                                     dtype=tf.int32) if num_classes else None)
    out.append(np.asarray(generate(z, y)))
    if y is not None:
      labels.append(y.numpy())
    done += b
  samples = np.concatenate(out)
  if return_labels:
    return samples, (np.concatenate(labels) if labels else None)
  return samples
