"""Building blocks shared by the networks: spectral norm, cross-replica (conditional) batch
norm, self-attention, AdaFM. NHWC throughout.

Variables that change during training without gradients (power-iteration vectors, batch-norm
statistics) are created with `aggregation="only_first_replica"`: every replica computes the
same value for them (the statistics are all-reduced first), so they can be assigned inside
`strategy.run`.
"""

import collections

import keras
import tensorflow as tf
from keras import ops


def _children(layer):
  """The Keras layers in `layer`'s public attributes (directly, or in lists, tuples and
  dict values), in attribute order."""
  out = []
  for key, value in vars(layer).items():
    if key.startswith("_"):
      continue
    items = (value.values() if isinstance(value, dict) else
             value if isinstance(value, (list, tuple)) else (value,))
    out += [item for item in items if isinstance(item, keras.layers.Layer)]
  return out


def sublayers(layer):
  """`layer` and every Keras layer inside it, recursively (public attributes only).

  The order is that of Keras' own (private) `Layer._flatten_layers`: each layer, then its
  children depth first, the last child first; so sums over the result keep their order.
  """
  found, seen = [layer], {id(layer)}
  queue = collections.deque(_children(layer))
  while queue:
    sub = queue.popleft()
    if id(sub) in seen:
      continue
    seen.add(id(sub))
    found.append(sub)
    queue.extendleft(_children(sub))
  return found


@keras.saving.register_keras_serializable(package="tfgan_eff")
class Orthogonal(keras.initializers.Orthogonal):
  """Keras' orthogonal initializer, ~10x faster on tall matrices: the same Gaussian draw,
  orthonormalised by Cholesky QR (Q = A R^-1 with R^T R = A^T A) instead of Householder QR.

  With R's diagonal positive both give the QR whose Q Keras returns (Keras flips Q's columns
  by the signs of R's diagonal), so the kernels equal Keras' to float round-off (tested).
  Cholesky QR squares A's condition number, so it is used only when the flattened kernel has
  at least `TALL` times as many rows as columns (a Gaussian matrix is then well conditioned:
  cond(A) < 3); squarer kernels keep Householder QR. Householder QR runs in TF's
  single-threaded kernel: 42 of them took 22 of the 24 s that creating BigGAN-128's G took.
  """

  TALL = 4

  def __call__(self, shape, dtype=None):
    if len(shape) < 2:
      return super().__call__(shape, dtype)
    rows = 1
    for dim in shape[:-1]:
      rows *= dim
    cols = shape[-1]
    m, n = max(rows, cols), min(rows, cols)
    a = keras.random.normal((m, n), seed=self.seed, dtype=dtype)
    q = None
    if m >= self.TALL * n and tf.executing_eagerly():  # (variables initialise eagerly)
      chol = tf.linalg.cholesky(tf.matmul(a, a, transpose_a=True))  # R^T
      if bool(tf.reduce_all(tf.math.is_finite(chol))):
        r_inv = tf.linalg.triangular_solve(chol, tf.eye(n, dtype=a.dtype), lower=True)
        q = tf.matmul(a, r_inv, transpose_b=True)
    if q is None:
      q, r = tf.linalg.qr(a)
      q *= tf.sign(tf.linalg.diag_part(r))
    if rows < cols:
      q = tf.transpose(q)
    return self.gain * tf.reshape(q, shape)


ORTHOGONAL = "tfgan_eff>Orthogonal"  # the default kernel initializer of BigGAN's layers


def initializer_spec(initializer):
  """`initializer` as a string or config dict (an instance is serialized), for a layer that
  hands it on to several sublayers: each of them then makes an initializer of its own, with
  a seed of its own (one shared unseeded Keras initializer gives every kernel the same
  values)."""
  if isinstance(initializer, (str, dict)):
    return initializer
  return keras.initializers.serialize(keras.initializers.get(initializer))


def _normalize(v, eps=1e-12):
  return v * tf.math.rsqrt(tf.maximum(tf.reduce_sum(tf.square(v)), eps))


class SpectralNormMixin:
  """Divides `self.kernel` by its largest singular value (one power iteration per step).

  The left singular vector estimate `u` is a persistent non-trainable variable, updated only
  when training. `sigma` is treated as a function of the kernel with `u`, `v` held fixed,
  as in Miyato et al. (2018). After `freeze_sigma()` (a frozen, transferred layer) `u` is
  never updated again, so σ stays the value the source network used at inference.
  """

  sigma_frozen = False
  sn_transpose = False  # power iteration on the transposed kernel matrix: u over its rows

  def freeze_sigma(self):
    """Stops the power iteration: σ is then a constant of the (frozen) kernel and `u`."""
    self.sigma_frozen = True

  def _build_sn(self, out_dim):
    self.sn_u = self.add_weight(name="sn_u", shape=(out_dim,), trainable=False,
                                initializer=keras.initializers.RandomNormal(stddev=1.0),
                                aggregation="only_first_replica", autocast=False)

  def sn_kernel(self, training):
    """W/σ in float32 (the kernel and `u` are never autocast: under a mixed-precision
    policy callers cast the result to their compute dtype)."""
    w = tf.convert_to_tensor(self.kernel)
    if not self.use_sn:
      return w
    w_mat = tf.reshape(w, [-1, w.shape[-1]])  # [fan_in, out]
    if self.sn_transpose:
      w_mat = tf.transpose(w_mat)
    u = tf.convert_to_tensor(self.sn_u)
    v = _normalize(tf.linalg.matvec(w_mat, u))          # [fan_in]
    u_new = _normalize(tf.linalg.matvec(w_mat, v, transpose_a=True))  # [out]
    u_new, v = tf.stop_gradient(u_new), tf.stop_gradient(v)
    sigma = tf.tensordot(v, tf.linalg.matvec(w_mat, u_new), 1)
    if training and not self.sigma_frozen:
      self.sn_u.assign(u_new)
    return w / sigma

  def singular_value(self):
    """The exact largest singular value of the normalized kernel (for tests and logs)."""
    w = tf.reshape(self.sn_kernel(training=False), [-1, self.kernel.shape[-1]])
    return tf.linalg.svd(w, compute_uv=False)[0]


class SNDense(SpectralNormMixin, keras.layers.Layer):
  """A dense layer with optional spectral normalization of its kernel.

  >>> layer = SNDense(16)
  >>> layer(tf.zeros([2, 8])).shape
  TensorShape([2, 16])
  """

  def __init__(self, units, use_bias=True, use_sn=True, kernel_initializer=ORTHOGONAL,
               **kwargs):
    super().__init__(**kwargs)
    self.units, self.use_bias, self.use_sn = units, use_bias, use_sn
    self.kernel_initializer = keras.initializers.get(kernel_initializer)

  def build(self, input_shape):
    self.kernel = self.add_weight(name="kernel", shape=(input_shape[-1], self.units),
                                  initializer=self.kernel_initializer, autocast=False)
    self.bias = (self.add_weight(name="bias", shape=(self.units,), initializer="zeros")
                 if self.use_bias else None)
    if self.use_sn:
      self._build_sn(self.units)

  def call(self, x, training=False):
    y = ops.matmul(x, tf.cast(self.sn_kernel(training), x.dtype))
    return y + self.bias if self.use_bias else y

  def get_config(self):
    return {**super().get_config(), "units": self.units, "use_bias": self.use_bias,
            "use_sn": self.use_sn,
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer)}


class KernelTransformMixin:
  """The AdaFM hook: an optional `fn(kernel) -> kernel` applied to a layer's kernel.

  `fn` may be a Keras layer, whose variables then become part of this layer's variables
  (after this layer's own). `SNConv2D` applies it to W/σ; the StyleGAN2 layers to their
  stored N(0, 1) kernel before the equalized-lr scale.
  """

  kernel_transform = None

  def set_kernel_transform(self, fn):
    """Installs `fn` (a callable or a Keras layer; None removes it), also after build."""
    locked = self._tracker.locked
    self._tracker.unlock()
    try:
      self.kernel_transform = fn
    finally:
      if locked:
        self._tracker.lock()

  def _transformed(self, w):
    return self.kernel_transform(w) if self.kernel_transform is not None else w


class SNConv2D(KernelTransformMixin, SpectralNormMixin, keras.layers.Layer):
  """A stride-1 'same' convolution with optional spectral normalization.

  `set_kernel_transform(fn)` applies `fn` to W/σ (AdaFM: γ ⊙ W/σ + β).

  >>> SNConv2D(8, 3)(tf.zeros([2, 16, 16, 4])).shape
  TensorShape([2, 16, 16, 8])
  """

  def __init__(self, filters, kernel_size=3, use_bias=True, use_sn=True,
               kernel_initializer=ORTHOGONAL, **kwargs):
    super().__init__(**kwargs)
    self.filters, self.kernel_size = filters, kernel_size
    self.use_bias, self.use_sn = use_bias, use_sn
    self.kernel_initializer = keras.initializers.get(kernel_initializer)

  def build(self, input_shape):
    k = self.kernel_size
    self.kernel = self.add_weight(name="kernel", shape=(k, k, input_shape[-1], self.filters),
                                  initializer=self.kernel_initializer, autocast=False)
    self.bias = (self.add_weight(name="bias", shape=(self.filters,), initializer="zeros")
                 if self.use_bias else None)
    if self.use_sn:
      self._build_sn(self.filters)

  def call(self, x, training=False):
    w = tf.cast(self._transformed(self.sn_kernel(training)), x.dtype)
    y = tf.nn.conv2d(x, w, strides=1, padding="SAME")
    return y + self.bias if self.use_bias else y

  def get_config(self):
    return {**super().get_config(), "filters": self.filters,
            "kernel_size": self.kernel_size, "use_bias": self.use_bias, "use_sn": self.use_sn,
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer)}


class SNEmbedding(SpectralNormMixin, keras.layers.Layer):
  """A class-embedding table [num_classes, dim], optionally spectrally normalized.

  `call(y)` accepts int labels [B] (rows with -1 give zeros) or a float distribution
  [B, num_classes] (soft labels), and returns [B, dim].

  `transpose_sn=True` runs the power iteration on the transposed table, `u` [num_classes]
  over the classes, as BigGAN-PyTorch's `SNEmbedding` (`u` [dim] otherwise). σ converges to
  the same value; the one-step estimate, hence W/σ for a given `u`, differs.
  """

  def __init__(self, num_classes, dim, use_sn=True, kernel_initializer=ORTHOGONAL,
               transpose_sn=False, **kwargs):
    super().__init__(**kwargs)
    self.num_classes, self.dim, self.use_sn = num_classes, dim, use_sn
    self.kernel_initializer = keras.initializers.get(kernel_initializer)
    self.sn_transpose = bool(transpose_sn)

  def build(self, input_shape=None):
    self.kernel = self.add_weight(name="kernel", shape=(self.num_classes, self.dim),
                                  initializer=self.kernel_initializer, autocast=False)
    if self.use_sn:
      self._build_sn(self.num_classes if self.sn_transpose else self.dim)

  def call(self, y, training=False):
    table = tf.cast(self.sn_kernel(training), self.compute_dtype)
    if y.dtype.is_integer:
      y = tf.one_hot(y, self.num_classes, dtype=table.dtype)  # -1 -> all zeros
    return ops.matmul(tf.cast(y, table.dtype), table)

  def get_config(self):
    return {**super().get_config(), "num_classes": self.num_classes, "dim": self.dim,
            "use_sn": self.use_sn, "transpose_sn": self.sn_transpose,
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer)}


class CrossReplicaBatchNorm(keras.layers.Layer):
  """Batch normalization whose statistics span the global batch across replicas.

  In training the mean and variance are all-reduced over replicas, so one replica with
  batch 8 and two with 4 each normalize identically. Moving statistics (momentum) are kept
  for inference; `center`/`scale` add the usual learned affine.
  """

  def __init__(self, momentum=0.9, epsilon=1e-5, center=True, scale=True, **kwargs):
    super().__init__(**kwargs)
    self.momentum, self.epsilon, self.center, self.scale = momentum, epsilon, center, scale

  def build(self, input_shape):
    c = input_shape[-1]
    # float32 statistics and affine whatever the compute dtype (never autocast).
    kw = dict(trainable=False, aggregation="only_first_replica", autocast=False)
    self.moving_mean = self.add_weight(name="moving_mean", shape=(c,), initializer="zeros",
                                       **kw)
    self.moving_variance = self.add_weight(name="moving_variance", shape=(c,),
                                           initializer="ones", **kw)
    self.gamma = (self.add_weight(name="gamma", shape=(c,), initializer="ones", autocast=False)
                  if self.scale else None)
    self.beta = (self.add_weight(name="beta", shape=(c,), initializer="zeros", autocast=False)
                 if self.center else None)

  def _global_moments(self, x):
    axes = list(range(len(x.shape) - 1))
    xf = tf.cast(x, tf.float32)
    count = tf.cast(tf.reduce_prod(tf.shape(xf)[:-1]), tf.float32)
    s, ss = tf.reduce_sum(xf, axes), tf.reduce_sum(tf.square(xf), axes)
    ctx = tf.distribute.get_replica_context()
    if ctx is not None and ctx.num_replicas_in_sync > 1:
      s, ss, count = ctx.all_reduce(tf.distribute.ReduceOp.SUM, [s, ss, count])
    mean = s / count
    return mean, tf.maximum(ss / count - tf.square(mean), 0.0)

  def call(self, x, training=False):
    if training:
      mean, var = self._global_moments(x)
      m = self.momentum
      self.moving_mean.assign(m * self.moving_mean + (1 - m) * mean)
      self.moving_variance.assign(m * self.moving_variance + (1 - m) * var)
    else:
      mean, var = self.moving_mean, self.moving_variance
    inv = tf.math.rsqrt(var + self.epsilon)
    y = (tf.cast(x, tf.float32) - mean) * inv
    if self.scale:
      y = y * self.gamma
    if self.center:
      y = y + self.beta
    return tf.cast(y, x.dtype)

  def get_config(self):
    return {**super().get_config(), "momentum": self.momentum, "epsilon": self.epsilon,
            "center": self.center, "scale": self.scale}


class BuildOnCall:
  """For a layer made of sublayers that build themselves: each builds on its first call.

  Keras 3 builds a layer that has no `build` method, but unbuilt sublayers, by first tracing
  its whole `call` symbolically in a scratch graph. For a network that tracing is most of
  the cost of creating it (a small BigGAN G: ~6 s on a CPU, for each of G, G_ema and D);
  with this `build`, the first real call builds the sublayers, in the same order.
  """

  def build(self, *args, **kwargs):
    del args, kwargs


class ConditionalBatchNorm(BuildOnCall, keras.layers.Layer):
  """Cross-replica batch norm with gain and bias predicted from a conditioning vector.

  γ = 1 + W_γ·c and β = W_β·c (spectrally normalized linear maps without bias), as in
  BigGAN (Brock et al. 2019). The `1 +` keeps the initial gain at 1 (compare_gan omits it,
  its issue #54). `kernel_initializer` initializes W_γ and W_β.
  """

  def __init__(self, channels, momentum=0.9, epsilon=1e-5, use_sn=True,
               kernel_initializer=ORTHOGONAL, **kwargs):
    super().__init__(**kwargs)
    self.channels, self.momentum, self.epsilon, self.use_sn = channels, momentum, epsilon, use_sn
    self.kernel_initializer = initializer_spec(kernel_initializer)
    self.bn = CrossReplicaBatchNorm(momentum, epsilon, center=False, scale=False, name="bn")
    self.gain = SNDense(channels, use_bias=False, use_sn=use_sn,
                        kernel_initializer=self.kernel_initializer, name="gain")
    self.offset = SNDense(channels, use_bias=False, use_sn=use_sn,
                          kernel_initializer=self.kernel_initializer, name="offset")

  def call(self, x, cond, training=False):
    y = self.bn(x, training=training)
    g = 1.0 + self.gain(cond, training=training)
    b = self.offset(cond, training=training)
    return y * g[:, None, None, :] + b[:, None, None, :]

  def get_config(self):
    return {**super().get_config(), "channels": self.channels, "momentum": self.momentum,
            "epsilon": self.epsilon, "use_sn": self.use_sn,
            "kernel_initializer": self.kernel_initializer}


class SelfAttention(keras.layers.Layer):
  """Non-local self-attention (SAGAN / BigGAN) with a learned gate initialized at 0.

  θ and φ project to C/8 channels, g to C/2; φ and g are 2x2 max-pooled.
  `kernel_initializer` initializes the four 1x1 convs (the gate starts at 0 whatever it is).
  """

  def __init__(self, use_sn=True, kernel_initializer=ORTHOGONAL, **kwargs):
    super().__init__(**kwargs)
    self.use_sn = use_sn
    self.kernel_initializer = initializer_spec(kernel_initializer)

  def build(self, input_shape):
    c = input_shape[-1]
    kw = dict(use_bias=False, use_sn=self.use_sn, kernel_initializer=self.kernel_initializer)
    self.theta = SNConv2D(max(c // 8, 1), 1, name="theta", **kw)
    self.phi = SNConv2D(max(c // 8, 1), 1, name="phi", **kw)
    self.g = SNConv2D(max(c // 2, 1), 1, name="g", **kw)
    self.o = SNConv2D(c, 1, name="o", **kw)
    self.gate = self.add_weight(name="gate", shape=(), initializer="zeros")

  def call(self, x, training=False):
    b, h, w = tf.shape(x)[0], x.shape[1], x.shape[2]
    theta = tf.reshape(self.theta(x, training=training), [b, h * w, -1])
    phi = tf.nn.max_pool2d(self.phi(x, training=training), 2, 2, "VALID")
    phi = tf.reshape(phi, [b, (h // 2) * (w // 2), -1])
    attn = tf.nn.softmax(tf.matmul(theta, phi, transpose_b=True), axis=-1)
    g = tf.nn.max_pool2d(self.g(x, training=training), 2, 2, "VALID")
    g = tf.reshape(g, [b, (h // 2) * (w // 2), -1])
    o = tf.reshape(tf.matmul(attn, g), [b, h, w, -1])
    return x + self.gate * self.o(o, training=training)

  def get_config(self):
    return {**super().get_config(), "use_sn": self.use_sn,
            "kernel_initializer": self.kernel_initializer}


class AdaFM(keras.layers.Layer):
  """Adaptive filter modulation of a frozen kernel (Zhao, Cong, Carin 2020).

  `call(W)` with W [kh, kw, in, out] returns Ŵ = γ ⊙ W + β, with γ, β of shape
  [1, 1, in, out] (one scale and one shift per input/output kernel slice, broadcast over the
  taps), initialized to 1 and 0, so a fresh AdaFM is the identity. Installed as a kernel
  transform (`conv.set_kernel_transform(AdaFM(...))`) it modulates W/σ of a spectrally
  normalized conv, or a StyleGAN2 base weight before modulation/demodulation.

  Args:
    start_step: γ and β get no gradient before this step (the reference keeps them frozen
      for the first 10,000 iterations); their values are used all along.
    step_fn: a function returning the current step (e.g. the G optimizer's iteration count);
      needed when `start_step > 0`.

  >>> conv = SNConv2D(8, 3)
  >>> _ = conv(tf.zeros([1, 8, 8, 4]))
  >>> conv.set_kernel_transform(AdaFM())
  >>> conv(tf.zeros([1, 8, 8, 4])).shape
  TensorShape([1, 8, 8, 8])
  """

  def __init__(self, start_step=0, step_fn=None, **kwargs):
    super().__init__(**kwargs)
    if start_step and step_fn is None:
      raise ValueError("AdaFM with start_step > 0 needs a step_fn giving the current step.")
    self.start_step, self.step_fn = int(start_step), step_fn

  def build(self, kernel_shape):
    shape = (1, 1, kernel_shape[-2], kernel_shape[-1])
    self.gamma = self.add_weight(name="gamma", shape=shape, initializer="ones")
    self.beta = self.add_weight(name="beta", shape=shape, initializer="zeros")

  def modulation(self):
    """(γ, β); before `start_step` they pass their values but no gradient."""
    g, b = self.gamma, self.beta
    if self.start_step > 0:
      on = tf.cast(tf.cast(self.step_fn(), tf.int64) >= self.start_step, g.dtype)
      g = on * g + (1.0 - on) * tf.stop_gradient(g)
      b = on * b + (1.0 - on) * tf.stop_gradient(b)
    return g, b

  def call(self, kernel):
    g, b = self.modulation()
    return tf.cast(g, kernel.dtype) * kernel + tf.cast(b, kernel.dtype)

  def get_config(self):
    return {**super().get_config(), "start_step": self.start_step}
