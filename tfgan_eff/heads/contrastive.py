"""Contrastive heads on D's feature map (InsGen's instance discrimination, MoCo style).

A `ProjectionHead` maps D's last feature map to a unit vector:
global average pool -> Dense(C) -> ReLU -> Dense(128) -> L2-normalize (genforce/insgen's
`CLHead.mlp`, plain dense layers with PyTorch's default kernel init, no spectral norm).

An `InstanceHead` is one MoCo head: the online (query) projection, trained with D; its
momentum (key) copy, moved towards it by `momentum_update`; and a FIFO queue of keys, a
non-trainable [K, 128] variable with a write pointer. InsGen has two of them, one for real
and one for fake images. Heads know nothing of losses; `tfgan_eff/objectives/instance.py`
owns them.

Under `tf.distribute`, `enqueue` gathers the keys of all replicas **in replica order** and
every replica writes the same rows, so one replica with a global batch of 8 and two replicas
of 4 hold the same queue (tested).

Example:

    head = InstanceHead(queue_size=256, name="real")
    q = head.query(d_out["feature_map"], training=True)        # [B, 128], unit norm
    k = tf.stop_gradient(head.key(d_ema_out["feature_map"]))     # [B, 128]
    loss, correct = info_nce(q, k, head.queue, temperature=0.2)  # per example
    head.enqueue(k)                                              # after D's update
"""

import keras
import tensorflow as tf


def _torch_linear_init():
  """PyTorch's nn.Linear kernel init: U(±1/sqrt(fan_in))."""
  return keras.initializers.VarianceScaling(1.0 / 3.0, "fan_in", "uniform")


class ProjectionHead(keras.layers.Layer):
  """feature map [B, h, w, C] (or pooled [B, C]) -> unit vectors [B, dim], float32.

  Args:
    dim: output dimension (InsGen: 128).
    hidden: width of the hidden layer; None means C, the feature map's channels.

  >>> ProjectionHead(dim=8)(tf.ones([2, 4, 4, 16])).shape
  TensorShape([2, 8])
  """

  def __init__(self, dim=128, hidden=None, **kwargs):
    super().__init__(**kwargs)
    self.dim, self.hidden = dim, hidden
    self.fc1 = self.fc2 = None

  def build(self, input_shape):
    channels = int(input_shape[-1])
    hidden = self.hidden or channels
    self.fc1 = keras.layers.Dense(hidden, kernel_initializer=_torch_linear_init(),
                                  dtype="float32", name="fc1")
    self.fc2 = keras.layers.Dense(self.dim, kernel_initializer=_torch_linear_init(),
                                  dtype="float32", name="fc2")
    self.fc1.build((None, channels))
    self.fc2.build((None, hidden))

  def call(self, feature_map, training=False):
    del training
    x = tf.cast(feature_map, tf.float32)
    if x.shape.rank == 4:
      x = tf.reduce_mean(x, axis=[1, 2])
    x = self.fc2(tf.nn.relu(self.fc1(x)))
    return tf.math.l2_normalize(x, axis=-1)

  def get_config(self):
    return {**super().get_config(), "dim": self.dim, "hidden": self.hidden}


def replica_gather(x):
  """Concatenates `x` [b, ...] of all replicas in replica order -> [n·b, ...] (exact).

  Implemented as an all-reduce of zero-padded blocks (adding zeros is exact), which works
  under every strategy that can all-reduce. Outside tf.distribute it returns `x`.
  """
  ctx = tf.distribute.get_replica_context()
  if ctx is None or ctx.num_replicas_in_sync == 1:
    return x
  n, b = ctx.num_replicas_in_sync, x.shape[0]
  rid = tf.cast(ctx.replica_id_in_sync_group, tf.int32)
  padded = tf.scatter_nd(tf.reshape(rid * b + tf.range(b), [b, 1]), x, [n * b, *x.shape[1:]])
  return ctx.all_reduce(tf.distribute.ReduceOp.SUM, padded)


def info_nce(query, key, queue, temperature):
  """Per-example InfoNCE with the positive at index 0 (MoCo / InsGen).

  loss_i = −log softmax([q_i·k_i, q_i·queue_1, …, q_i·queue_K] / τ)[0]

  The key and the queue are constants (stop-gradient): only the query is trained.

  Args:
    query: [B, d] unit vectors (gradient flows).
    key: [B, d] unit vectors, the positive of each query.
    queue: [K, d] negatives.
    temperature: τ.
  Returns:
    (loss [B], correct [B] bool: the positive has the largest logit = top-1 accuracy).
  """
  query = tf.cast(query, tf.float32)
  key = tf.stop_gradient(tf.cast(key, tf.float32))
  queue = tf.stop_gradient(tf.cast(queue, tf.float32))
  l_pos = tf.reduce_sum(query * key, axis=-1, keepdims=True)      # [B, 1]
  l_neg = tf.matmul(query, queue, transpose_b=True)                # [B, K]
  logits = tf.concat([l_pos, l_neg], axis=1) / temperature
  loss = tf.reduce_logsumexp(logits, axis=1) - logits[:, 0]
  correct = tf.equal(tf.argmax(logits, axis=1, output_type=tf.int32), 0)
  return loss, correct


class InstanceHead(keras.layers.Layer):
  """One MoCo head: query projection, its momentum key copy and a FIFO queue of keys.

  Args:
    queue_size: K, the number of keys (negatives) kept.
    dim: key dimension (128).
    hidden: hidden width of the projections (None: the feature map's channels).
    seed: seeds the queue's initial (random, unit-norm) keys.

  Weights: `query/*` (trainable), `key/*` (momentum copy, updated by `momentum_update`),
  `queue` [K, dim], `queue_ptr` (next row to write), `queue_count` (rows ever written,
  capped at K; `fill()` = count / K). Queue state is written identically on every replica
  (`only_first_replica` aggregation), so it is checkpointed like any variable.
  """

  def __init__(self, queue_size, dim=128, hidden=None, seed=0, **kwargs):
    super().__init__(**kwargs)
    if queue_size < 1:
      raise ValueError(f"An instance-discrimination queue needs at least one key, got "
                       f"queue_size={queue_size}.")
    self.queue_size, self.dim, self.hidden, self.seed = int(queue_size), dim, hidden, seed
    self.query = ProjectionHead(dim, hidden, name="query")
    self.key = ProjectionHead(dim, hidden, name="key")

  def build(self, input_shape):
    self.query.build(input_shape)
    self.key.build(input_shape)
    self.key.trainable = False
    for k, q in zip(self.key.weights, self.query.weights):
      k.assign(q)
    seed = [self.seed, 0]

    def unit_normal(shape, dtype=None):
      return tf.math.l2_normalize(tf.random.stateless_normal(shape, seed=seed), axis=-1)

    self.queue = self.add_weight(name="queue", shape=(self.queue_size, self.dim),
                                 initializer=unit_normal, trainable=False,
                                 aggregation="only_first_replica")
    self.queue_ptr = self.add_weight(name="queue_ptr", shape=(), dtype="int64",
                                     initializer="zeros", trainable=False,
                                     aggregation="only_first_replica")
    self.queue_count = self.add_weight(name="queue_count", shape=(), dtype="int64",
                                       initializer="zeros", trainable=False,
                                       aggregation="only_first_replica")

  def call(self, feature_map, training=False):
    return self.query(feature_map, training=training)

  def fill(self):
    """The share of the queue holding real keys (the rest are the random initial ones)."""
    return tf.cast(self.queue_count, tf.float32) / self.queue_size

  def enqueue(self, keys):
    """Writes this step's keys of all replicas (replica order) at the pointer, FIFO.

    Call in replica context (or outside tf.distribute). With more keys than K, the first K
    are written and the whole queue is replaced.
    """
    keys = replica_gather(tf.stop_gradient(tf.cast(keys, tf.float32)))
    n = min(int(keys.shape[0]), self.queue_size)
    ptr = tf.convert_to_tensor(self.queue_ptr)
    rows = (ptr + tf.range(n, dtype=tf.int64)) % self.queue_size
    self.queue.assign(tf.tensor_scatter_nd_update(
        tf.convert_to_tensor(self.queue), rows[:, None], keys[:n]))
    self.queue_ptr.assign((ptr + n) % self.queue_size)
    self.queue_count.assign(tf.minimum(tf.convert_to_tensor(self.queue_count) + n,
                                       self.queue_size))

  def momentum_pairs(self):
    """(key weight, query weight) pairs for the momentum update."""
    return list(zip(self.key.weights, self.query.weights))

  def get_config(self):
    return {**super().get_config(), "queue_size": self.queue_size, "dim": self.dim,
            "hidden": self.hidden, "seed": self.seed}


class InstanceHeads(keras.layers.Layer):
  """InsGen's pair of heads, `real` and `fake`, under one owner (checkpoint paths
  `real/...` and `fake/...`).

  Args:
    real_queue_size, fake_queue_size, dim, hidden: as `InstanceHead`.
    seed: the real queue is seeded with 2·seed, the fake one with 2·seed + 1.
  """

  def __init__(self, real_queue_size, fake_queue_size, dim=128, hidden=None, seed=0,
               **kwargs):
    super().__init__(**kwargs)
    self.real = InstanceHead(real_queue_size, dim, hidden, seed=2 * seed, name="real")
    self.fake = InstanceHead(fake_queue_size, dim, hidden, seed=2 * seed + 1, name="fake")

  def build(self, input_shape):
    self.real.build(input_shape)
    self.fake.build(input_shape)

  def call(self, feature_map, training=False):
    return self.real(feature_map, training), self.fake(feature_map, training)


def momentum_update(pairs, momentum):
  """target ← m·target + (1 − m)·source for each (target, source) pair.

  Safe in replica context (the assignment runs once, in cross-replica context, through
  `merge_call`; all replicas hold the same source values) and outside tf.distribute.
  """
  def update(*_):
    for target, source in pairs:
      target.assign(momentum * tf.convert_to_tensor(target) +
                    (1.0 - momentum) * tf.cast(tf.convert_to_tensor(source), target.dtype))

  ctx = tf.distribute.get_replica_context()
  if ctx is None:  # cross-replica context already
    update()
  else:
    ctx.merge_call(update)
