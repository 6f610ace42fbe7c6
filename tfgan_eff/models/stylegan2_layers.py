"""StyleGAN2 building blocks (Karras et al. 2020), NHWC, plain TF ops (CPU, GPU and XLA).

* FIR resampling with `upfirdn2d` semantics (zero-insertion up-sampling, padding, true 2-D
  convolution with a normalised separable filter, decimation), implemented with
  `tf.nn.depthwise_conv2d`; no custom kernels.
* Equalized learning rate: every kernel is stored as N(0, 1) / lr_multiplier and scaled at
  run time by lr_multiplier / sqrt(fan_in); biases are stored / lr_multiplier and scaled by
  lr_multiplier.
* `bias_act`: bias, then leaky ReLU(0.2) with gain sqrt(2) (or linear with gain 1), times
  an extra `gain`.
* Modulated convolution with demodulation (the non-fused form: scale the input channels by
  the styles, convolve with the shared kernel, scale the output channels by the
  demodulation coefficients; identical in value to per-sample kernels).
* Noise injection with a learned scalar strength (initialised to 0), minibatch standard
  deviation, label embeddings.

Kernels that a wrapper may want to transform (AdaFM: W' = gamma * W + beta, applied before
modulation and demodulation) are explicit variables `layer.kernel` of shape
[kh, kw, in, out]; `layer.set_kernel_transform(fn)` installs `fn(kernel) -> kernel`,
applied to the stored kernel before the equalized-lr scale (if `fn` is a Keras layer, its
variables become part of the layer's variables).
"""

import math

import keras
import numpy as np
import tensorflow as tf

from tfgan_eff.models.layers import KernelTransformMixin

SQRT2 = math.sqrt(2.0)
LRELU_SLOPE = 0.2
ACTIVATION_GAINS = {"linear": 1.0, "lrelu": SQRT2}


# ---------------------------------------------------------------------------------------
# FIR resampling
# ---------------------------------------------------------------------------------------

def setup_filter(f=(1, 3, 3, 1)):
  """The normalised 2-D filter (outer product of `f` with itself, summing to 1)."""
  f = np.asarray(f, dtype=np.float64)
  if f.ndim == 1:
    f = np.outer(f, f)
  return (f / f.sum()).astype(np.float32)


def _pads(padding):
  """(x0, x1, y0, y1) from an int, a (p0, p1) pair for both axes, or a 4-tuple."""
  if isinstance(padding, int):
    return padding, padding, padding, padding
  padding = tuple(int(p) for p in padding)
  if len(padding) == 2:
    return padding[0], padding[1], padding[0], padding[1]
  if len(padding) == 4:
    return padding
  raise ValueError(f"padding must be an int, a pair or (x0, x1, y0, y1); got {padding}.")


def upfirdn2d(x, f, up=1, down=1, padding=0, gain=1.0):
  """Up-samples (zero insertion), pads, FIR-filters and down-samples NHWC `x`.

  Same semantics as the reference `upfirdn2d` of stylegan2-ada: sample i goes to index
  i * up, `padding` = (x0, x1, y0, y1) (negative values crop), the filter `f` (2-D numpy
  array, e.g. from `setup_filter`) is applied as a true convolution (flipped) and multiplied
  by `gain`, and every `down`-th output is kept, starting at 0.

  Output size per axis: (in * up + p0 + p1 - taps) // down + 1.
  """
  f = np.asarray(f, np.float32)
  if f.ndim == 1:
    f = np.outer(f, f)
  x0, x1, y0, y1 = _pads(padding)
  c = x.shape[-1]
  if c is None:
    raise ValueError("upfirdn2d needs a static channel dimension.")
  if up > 1:
    b, h, w = tf.shape(x)[0], tf.shape(x)[1], tf.shape(x)[2]
    x = tf.reshape(x, [b, h, 1, w, 1, c])
    x = tf.pad(x, [[0, 0], [0, 0], [0, up - 1], [0, 0], [0, up - 1], [0, 0]])
    x = tf.reshape(x, [b, h * up, w * up, c])
  x = tf.pad(x, [[0, 0], [max(y0, 0), max(y1, 0)], [max(x0, 0), max(x1, 0)], [0, 0]])
  if min(x0, x1, y0, y1) < 0:
    hh, ww = tf.shape(x)[1], tf.shape(x)[2]
    x = x[:, max(-y0, 0):hh - max(-y1, 0), max(-x0, 0):ww - max(-x1, 0), :]
  kernel = (f[::-1, ::-1] * gain).astype(np.float32)  # true convolution
  kernel = np.tile(kernel[:, :, None, None], [1, 1, c, 1])
  return tf.nn.depthwise_conv2d(x, tf.constant(kernel, dtype=x.dtype),
                                strides=[1, down, down, 1], padding="VALID")


def filter2d(x, f, padding=0, gain=1.0):
  """FIR-filters `x` with `f` (no resampling)."""
  return upfirdn2d(x, f, padding=padding, gain=gain)


def upsample2d(x, f, factor=2, gain=1.0):
  """2x (or `factor`x) FIR up-sampling: [B, H, W, C] -> [B, fH, fW, C], gain factor**2."""
  fw = np.asarray(f).shape[-1]
  pad = ((fw + factor - 1) // 2, (fw - factor) // 2)
  return upfirdn2d(x, f, up=factor, padding=pad, gain=gain * factor * factor)


def downsample2d(x, f, factor=2, gain=1.0):
  """2x (or `factor`x) FIR down-sampling: [B, H, W, C] -> [B, H/f, W/f, C]."""
  fw = np.asarray(f).shape[-1]
  pad = ((fw - factor + 1) // 2, (fw - factor) // 2)
  return upfirdn2d(x, f, down=factor, padding=pad, gain=gain)


# ---------------------------------------------------------------------------------------
# Small functions
# ---------------------------------------------------------------------------------------

def bias_act(x, b=None, activation="linear", gain=1.0, clamp=None):
  """x + b (broadcast over the last axis), then the activation, times its gain * `gain`,
  then clipped to [-clamp, clamp] (`clamp=None`: not clipped)."""
  if b is not None:
    x = x + tf.cast(b, x.dtype)
  if activation == "lrelu":
    x = tf.nn.leaky_relu(x, alpha=LRELU_SLOPE)
  elif activation != "linear":
    raise ValueError(f"Unknown activation '{activation}': use 'linear' or 'lrelu'.")
  g = ACTIVATION_GAINS[activation] * gain
  x = x * tf.cast(g, x.dtype) if g != 1.0 else x
  return tf.clip_by_value(x, -clamp, clamp) if clamp is not None else x


def normalize_2nd_moment(x, axis=-1, eps=1e-8):
  """x / sqrt(mean(x^2) + eps) along `axis` (StyleGAN's pixel norm on latents)."""
  xf = tf.cast(x, tf.float32)
  y = xf * tf.math.rsqrt(tf.reduce_mean(tf.square(xf), axis=axis, keepdims=True) + eps)
  return tf.cast(y, x.dtype)


def labels_to_distribution(y, num_classes, dtype=tf.float32):
  """int labels [B] (-1: none -> all zeros) or soft labels [B, num_classes] -> [B, K]."""
  y = tf.convert_to_tensor(y)
  if y.dtype.is_integer:
    return tf.one_hot(y, num_classes, dtype=dtype)
  return tf.cast(y, dtype)


class _KernelTransformMixin(KernelTransformMixin):
  """The AdaFM hook (`layers.KernelTransformMixin`), applied to the stored N(0, 1) kernel."""

  def base_kernel(self):
    """The stored kernel after the optional transform, before the equalized-lr scale."""
    return self._transformed(self.kernel)


class EqualizedDense(_KernelTransformMixin, keras.layers.Layer):
  """Dense layer with equalized learning rate: y = act(x @ (W * lr/sqrt(in)) + b * lr).

  `W` is stored as N(0, 1/lr^2) (i.e. N(0, 1) / lr) and the bias as bias_init / lr, so the
  effective initial bias is `bias_init` and the effective weights ~ N(0, 1/in).

  >>> EqualizedDense(8, 4, activation="lrelu")(tf.zeros([2, 4])).shape
  TensorShape([2, 8])
  """

  def __init__(self, units, in_features, lr_multiplier=1.0, bias_init=0.0, use_bias=True,
               activation="linear", **kwargs):
    super().__init__(**kwargs)
    self.units, self.in_features = int(units), int(in_features)
    self.lr_multiplier, self.bias_init = float(lr_multiplier), float(bias_init)
    self.use_bias, self.activation = use_bias, activation
    self.weight_gain = self.lr_multiplier / math.sqrt(self.in_features)

  def build(self, input_shape=None):
    lr = self.lr_multiplier
    self.kernel = self.add_weight(
        name="kernel", shape=(self.in_features, self.units),
        initializer=keras.initializers.RandomNormal(stddev=1.0 / lr))
    self.bias = (self.add_weight(name="bias", shape=(self.units,),
                                 initializer=keras.initializers.Constant(self.bias_init / lr))
                 if self.use_bias else None)

  def call(self, x):
    w = self.base_kernel() * self.weight_gain
    y = tf.matmul(x, tf.cast(w, x.dtype))
    b = self.bias * self.lr_multiplier if self.use_bias else None
    return bias_act(y, b, self.activation)

  def get_config(self):
    return {**super().get_config(), "units": self.units, "in_features": self.in_features,
            "lr_multiplier": self.lr_multiplier, "bias_init": self.bias_init,
            "use_bias": self.use_bias, "activation": self.activation}


class _ConvKernelLayer(_KernelTransformMixin, keras.layers.Layer):
  """Shared set-up of the k x k convolutions: sizes, FIR filter, the N(0, 1) kernel."""

  def __init__(self, filters, in_channels, kernel_size, resample_filter, **kwargs):
    super().__init__(**kwargs)
    self.filters, self.in_channels, self.kernel_size = int(filters), int(in_channels), \
        int(kernel_size)
    self.resample_filter = tuple(resample_filter)
    self._f = setup_filter(resample_filter)
    self.weight_gain = 1.0 / math.sqrt(self.in_channels * self.kernel_size ** 2)

  def build(self, input_shape=None):
    k = self.kernel_size
    self.kernel = self.add_weight(name="kernel", shape=(k, k, self.in_channels, self.filters),
                                  initializer=keras.initializers.RandomNormal(stddev=1.0))

  def get_config(self):
    return {**super().get_config(), "filters": self.filters,
            "in_channels": self.in_channels, "kernel_size": self.kernel_size,
            "resample_filter": self.resample_filter}


class EqualizedConv2D(_ConvKernelLayer):
  """Equalized-lr convolution, 'same' padding, optional 2x FIR down-sampling.

  With `down=True`: a k x k kernel (k > 1) filters with [1,3,3,1] (pad 2, 2 for k = 3) and
  then convolves with stride 2 ('valid'); a 1x1 kernel down-samples first, then convolves.
  Output: act(conv(x, W / sqrt(in * k * k)) + b) * act_gain * gain, clipped to
  +-(conv_clamp * gain) when `conv_clamp` is set (the reference's fp16 guard).

  >>> EqualizedConv2D(8, 4, 3, down=True)(tf.zeros([2, 16, 16, 4])).shape
  TensorShape([2, 8, 8, 8])
  """

  def __init__(self, filters, in_channels, kernel_size=3, down=False, use_bias=True,
               activation="linear", gain=1.0, resample_filter=(1, 3, 3, 1), conv_clamp=None,
               **kwargs):
    super().__init__(filters, in_channels, kernel_size, resample_filter, **kwargs)
    self.down, self.use_bias, self.activation, self.gain = down, use_bias, activation, gain
    self.conv_clamp = conv_clamp

  def build(self, input_shape=None):
    super().build(input_shape)
    self.bias = (self.add_weight(name="bias", shape=(self.filters,), initializer="zeros")
                 if self.use_bias else None)

  def call(self, x):
    w = tf.cast(self.base_kernel() * self.weight_gain, x.dtype)
    k = self.kernel_size
    if not self.down:
      y = tf.nn.conv2d(x, w, strides=1, padding="SAME")
    elif k == 1:
      y = tf.nn.conv2d(downsample2d(x, self._f), w, strides=1, padding="VALID")
    else:
      fw = self._f.shape[-1]
      p = k // 2
      x = filter2d(x, self._f, padding=(p + (fw - 1) // 2, p + (fw - 2) // 2))
      y = tf.nn.conv2d(x, w, strides=2, padding="VALID")
    clamp = self.conv_clamp * self.gain if self.conv_clamp is not None else None
    return bias_act(y, self.bias if self.use_bias else None, self.activation, self.gain, clamp)

  def get_config(self):
    return {**super().get_config(), "down": self.down, "use_bias": self.use_bias,
            "activation": self.activation, "gain": self.gain, "conv_clamp": self.conv_clamp}


# ---------------------------------------------------------------------------------------
# Modulated convolution
# ---------------------------------------------------------------------------------------

def modulated_conv2d(x, kernel, styles, demodulate=True, up=False, f=None, fused=True,
                     eps=1e-8):
  """Modulated (and demodulated) 'same' convolution of NHWC `x`.

  Args:
    x: [B, H, W, I].
    kernel: [k, k, I, O], already scaled (equalized lr).
    styles: [B, I] per-sample input-channel scales.
    demodulate: divide each output channel by sqrt(sum_{i,taps} (s_i w)^2 + eps).
    up: 2x up-sampling with the FIR filter `f` (gain 4).
    fused: with `up`, use a stride-2 transposed convolution of the spatially flipped kernel
      followed by the FIR filter (as the official code); otherwise FIR up-sample (keeping
      the filter's tails: k // 2 extra pixels per side) and convolve 'valid'. Both give the
      same values (tested). Note that FIR up-sampling to exactly 2H x 2W followed by a
      zero-padded 'same' convolution differs from both at the border pixels.

  Returns [B, H, W, O] (or [B, 2H, 2W, O] with `up`).
  """
  dtype = x.dtype
  k = kernel.shape[0]
  s = tf.cast(styles, dtype)
  w = tf.cast(kernel, dtype)
  x = x * s[:, None, None, :]
  if not up:
    y = tf.nn.conv2d(x, w, strides=1, padding="SAME")
  elif not fused:
    fw, p = np.asarray(f).shape[-1], k // 2
    x = upfirdn2d(x, f, up=2, padding=((fw + 1) // 2 + p, (fw - 2) // 2 + p), gain=4.0)
    y = tf.nn.conv2d(x, w, strides=1, padding="VALID")
  else:
    b, h, wd = tf.shape(x)[0], tf.shape(x)[1], tf.shape(x)[2]
    out_ch = w.shape[-1]
    wt = tf.transpose(tf.reverse(w, axis=[0, 1]), [0, 1, 3, 2])  # [k, k, O, I]
    y = tf.nn.conv2d_transpose(x, wt, output_shape=tf.stack([b, 2 * h + k - 2,
                                                             2 * wd + k - 2, out_ch]),
                               strides=2, padding="VALID")
    fw = np.asarray(f).shape[-1]
    p0 = (fw + 1) // 2 + k // 2 - k + 1
    p1 = fw + 1 - k - p0
    y = upfirdn2d(y, f, padding=(p0, p1), gain=4.0)
  if demodulate:
    wsq = tf.reduce_sum(tf.square(tf.cast(kernel, tf.float32)), axis=[0, 1])  # [I, O]
    d = tf.math.rsqrt(tf.matmul(tf.square(tf.cast(styles, tf.float32)), wsq) + eps)
    y = y * tf.cast(d, dtype)[:, None, None, :]
  return y


class ModulatedConv2D(_ConvKernelLayer):
  """StyleGAN2 modulated convolution: call(x [B,H,W,I], styles [B,I]) -> [B,H',W',O].

  The base kernel `self.kernel` [k, k, I, O] is stored N(0, 1) and scaled by
  1/sqrt(I k k) at run time (demodulation cancels the scale; without demodulation, as in
  toRGB, it is the equalized-lr scale). No bias, noise or activation here.

  >>> conv = ModulatedConv2D(8, 4, 3, up=True)
  >>> conv(tf.zeros([2, 8, 8, 4]), tf.ones([2, 4])).shape
  TensorShape([2, 16, 16, 8])
  """

  def __init__(self, filters, in_channels, kernel_size=3, demodulate=True, up=False,
               resample_filter=(1, 3, 3, 1), **kwargs):
    super().__init__(filters, in_channels, kernel_size, resample_filter, **kwargs)
    self.demodulate, self.up = demodulate, up

  def call(self, x, styles):
    return modulated_conv2d(x, self.base_kernel() * self.weight_gain, styles,
                            demodulate=self.demodulate, up=self.up, f=self._f)

  def get_config(self):
    return {**super().get_config(), "demodulate": self.demodulate, "up": self.up}


# ---------------------------------------------------------------------------------------
# Noise, minibatch std, label embedding
# ---------------------------------------------------------------------------------------

NOISE_MODES = ("random", "const", "none")


class NoiseInjection(keras.layers.Layer):
  """x + strength * noise, noise [B, H, W, 1] shared by all channels.

  `strength` is a learned scalar initialised to 0. `noise_mode`: "random" draws N(0, 1)
  from `rng` (a SampleRNG; `None` uses tf.random), "const" uses a fixed per-layer buffer
  (non-trainable, drawn at construction), "none" adds nothing.
  """

  def __init__(self, resolution, **kwargs):
    super().__init__(**kwargs)
    self.resolution = int(resolution)

  def build(self, input_shape=None):
    r = self.resolution
    self.strength = self.add_weight(name="strength", shape=(), initializer="zeros")
    self.noise_const = self.add_weight(
        name="noise_const", shape=(r, r), trainable=False,
        initializer=keras.initializers.RandomNormal(stddev=1.0))

  def call(self, x, noise_mode="random", rng=None):
    if noise_mode not in NOISE_MODES:
      raise ValueError(f"noise_mode must be one of {NOISE_MODES}, got '{noise_mode}'.")
    if noise_mode == "none":
      return x
    if noise_mode == "const":
      noise = tf.cast(self.noise_const, x.dtype)[None, :, :, None]
    else:
      b = x.shape[0] if x.shape[0] is not None else tf.shape(x)[0]
      shape = [b, self.resolution, self.resolution, 1]
      noise = rng.normal(shape) if rng is not None else tf.random.normal(shape)
      noise = tf.cast(noise, x.dtype)
    return x + noise * tf.cast(self.strength, x.dtype)

  def get_config(self):
    return {**super().get_config(), "resolution": self.resolution}


def _group_size(batch, group_size):
  """The largest divisor of `batch` that is <= group_size (static or dynamic batch)."""
  if isinstance(batch, int):
    g = min(group_size, batch)
    while batch % g:
      g -= 1
    return g
  cands = tf.range(group_size, 0, -1)
  ok = tf.logical_and(tf.equal(batch % cands, 0), cands <= batch)
  return tf.gather(cands, tf.argmax(tf.cast(ok, tf.int32)))


class MinibatchStd(keras.layers.Layer):
  """Appends `num_features` minibatch-standard-deviation channels (Karras et al. 2018).

  Samples are split into groups of G = min(group_size, S) consecutive samples (sample i
  belongs to group i // G), where S = B / `segments` is the size of each independent part of
  the batch (`call(x, segments=2)`: D's [reals; fakes], so that no group spans both, as in
  the reference, which runs D on them separately). If S is not divisible by that, G falls
  back to the largest divisor of S below it (e.g. S = 6, group 4 -> G = 3; S = 5 -> G = 5
  or 1), so any per-replica batch works. For each group, the std over the group of every feature is
  averaged over space and the C / num_features channels of each feature slice, giving
  [B, H, W, C + num_features].

  Departure from the official code, which groups with a stride (sample i in group
  i mod (B / G)): consecutive groups never mix the reals and fakes that D sees concatenated
  in one batch, and when G divides the per-replica batch they are the same groups for any
  number of replicas (a strided group of one device's batch of 8 would span what two
  replicas hold separately), as the replica-equivalence tests require.
  """

  def __init__(self, group_size=4, num_features=1, **kwargs):
    super().__init__(**kwargs)
    self.group_size, self.num_features = int(group_size), int(num_features)

  def call(self, x, segments=1):
    b_static, h, w, c = x.shape
    f = self.num_features
    if c % f:
      raise ValueError(f"MinibatchStd: channels {c} are not divisible by num_features {f}.")
    if b_static is not None and b_static % segments:
      raise ValueError(f"MinibatchStd: a batch of {b_static} does not split into {segments} "
                       f"equal segments.")
    b = b_static if b_static is not None else tf.shape(x)[0]
    g = _group_size(b // segments, self.group_size)
    y = tf.reshape(tf.cast(x, tf.float32), [-1, g, h, w, f, c // f])
    y = y - tf.reduce_mean(y, axis=1, keepdims=True)
    y = tf.sqrt(tf.reduce_mean(tf.square(y), axis=1) + 1e-8)  # [B/G, H, W, F, c]
    y = tf.reduce_mean(y, axis=[1, 2, 4])  # [B/G, F]
    # Row i gets group i // G: a broadcast and a reshape (tf.repeat's Tile gradient does
    # not compile with XLA inside the lazy-R1 cond).
    y = tf.reshape(tf.broadcast_to(y[:, None, :], [tf.shape(y)[0], g, f]), [-1, f])
    y = tf.broadcast_to(tf.cast(y, x.dtype)[:, None, None, :], tf.concat(
        [tf.shape(x)[:3], [f]], 0))
    return tf.concat([x, y], axis=-1)

  def get_config(self):
    return {**super().get_config(), "group_size": self.group_size,
            "num_features": self.num_features}


class LabelEmbedding(keras.layers.Layer):
  """A table [num_classes, dim] (stored N(0, 1)) looked up by int labels or soft labels.

  `call(y)`: y int [B] (-1 gives a zero row) or float [B, num_classes] (y @ table).
  """

  def __init__(self, num_classes, dim, **kwargs):
    super().__init__(**kwargs)
    self.num_classes, self.dim = int(num_classes), int(dim)

  def build(self, input_shape=None):
    self.table = self.add_weight(name="table", shape=(self.num_classes, self.dim),
                                 initializer=keras.initializers.RandomNormal(stddev=1.0))

  def call(self, y):
    table = tf.convert_to_tensor(self.table)
    return tf.matmul(labels_to_distribution(y, self.num_classes, table.dtype), table)

  def get_config(self):
    return {**super().get_config(), "num_classes": self.num_classes, "dim": self.dim}


def build_layers(*layers):
  """Builds every not-yet-built layer (all of ours know their shapes from __init__)."""
  for layer in layers:
    if layer is not None and not layer.built:
      layer.build(None)
