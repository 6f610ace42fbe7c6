"""ADA (Karras et al., NeurIPS 2020): stylegan2-ada's augmentation pipeline, with its
probability p tuned online from the discriminator's overfitting signal r_t = E[sign(D(T(reals)))].

    GAN.augment = @AdaptiveAugment()
    AdaptiveAugment.pipeline = 'bgc'      # blit + geom + color; 'bgc,cutout', 'bg', 'b', ...
    AdaptiveAugment.mode = 'adaptive'     # or 'linear', 'fixed'; target r_t 0.6

Pipeline (`AdaptiveAugment.__call__`): every op is gated per sample (applied when u < p),
and the groups run in this order whatever the order of the `pipeline` string: blit (x-flip,
90° rotations, integer translation; exact gathers), geom (isotropic and anisotropic scale,
rotation, fractional translation: one affine matrix, one bilinear warp with reflect
extension), color (brightness, contrast, luma flip, hue, saturation: one colour matrix;
grayscale images get its action on grey pixels), cutout. The warp is our own gather-based
sampler (`warp.affine_warp`): TF's gradient of `ImageProjectiveTransformV3` is not the
adjoint of its forward op.

Controller (`AdaptiveAugment.update`, once per D step in replica context): every `interval`
D steps p moves by sign(r_t − target) · global_batch · interval / (speed_kimg · 1000),
clipped to [0, p_max]. p, r_t and the accumulators are checkpointed with the GAN.

Every op and its strength, the measured gradient error of TF's warp, and what differs from
the reference: docs/architecture.md, "ADA pipeline and controller".
"""

import math

import tensorflow as tf

from tfgan_eff.augment import warp
from tfgan_eff.augment.base import Augmenter
from tfgan_eff.augment.warp import dim
from tfgan_eff.config import configurable

__all__ = ["AdaptiveAugment", "parse_pipeline", "PIPELINE_GROUPS"]

PIPELINE_GROUPS = ("blit", "geom", "color", "cutout")
_LETTERS = {"b": "blit", "g": "geom", "c": "color"}
_MODES = ("adaptive", "linear", "fixed")


def parse_pipeline(pipeline):
  """"bgc" / "bg" / "blit,geom" / "bgc,cutout" -> groups in execution order (a tuple)."""
  if not isinstance(pipeline, str):
    raise TypeError(f"AdaptiveAugment.pipeline must be a string such as 'bgc', got {pipeline!r}.")
  groups = set()
  for token in pipeline.split(","):
    token = token.strip().lower()
    if not token:
      continue
    if token in PIPELINE_GROUPS:
      groups.add(token)
    elif all(ch in _LETTERS for ch in token):
      groups.update(_LETTERS[ch] for ch in token)
    else:
      raise ValueError(
          f"Unknown AdaptiveAugment pipeline entry '{token}' in {pipeline!r}. Valid entries: "
          f"{', '.join(PIPELINE_GROUPS)}, or letters of 'bgc' (b=blit, g=geom, c=color), "
          f"comma-separated, e.g. 'bgc' or 'bgc,cutout'.")
  return tuple(g for g in PIPELINE_GROUPS if g in groups)


# -- small per-sample matrix helpers (all float32, leading batch dimension) ------------------
def _matrix(rows):
  """A [B, n, n] matrix from nested lists of [B] tensors."""
  return tf.stack([tf.stack(r, axis=-1) for r in rows], axis=-2)


def _scale2d_inv(sx, sy):
  one, zero = tf.ones_like(sx), tf.zeros_like(sx)
  return _matrix([[1 / sx, zero, zero], [zero, 1 / sy, zero], [zero, zero, one]])


def _rotate2d_inv(theta):
  c, s = tf.cos(theta), tf.sin(theta)
  one, zero = tf.ones_like(theta), tf.zeros_like(theta)
  return _matrix([[c, s, zero], [-s, c, zero], [zero, zero, one]])


def _translate2d_inv(tx, ty):
  one, zero = tf.ones_like(tx), tf.zeros_like(tx)
  return _matrix([[one, zero, -tx], [zero, one, -ty], [zero, zero, one]])


def _grey():
  """The unit grey axis (1, 1, 1)/√3; built per call so importing starts no TF runtime."""
  return tf.fill([3], 1.0 / math.sqrt(3.0))


def _grey_projector():
  return tf.tensordot(_grey(), _grey(), axes=0)                      # v v^T, [3, 3]


def _rotate_about_grey(theta):
  """Rodrigues rotation by theta [B] about the unit grey axis v: [B, 3, 3]."""
  v = _grey()
  cross = tf.constant([[0.0, -1.0, 1.0], [1.0, 0.0, -1.0], [-1.0, 1.0, 0.0]]) * v[0]
  c = tf.cos(theta)[:, tf.newaxis, tf.newaxis]
  s = tf.sin(theta)[:, tf.newaxis, tf.newaxis]
  return c * tf.eye(3) + s * cross + (1 - c) * _grey_projector()


@configurable
class AdaptiveAugment(Augmenter, tf.Module):
  """ADA: the stylegan2-ada augmentation pipeline with a tuned probability p.

  Use as an augmenter, `aug(images, rng) -> images`, and call `aug.update(real_logits, step,
  global_batch)` once per D step in replica context (`GAN` does both).

  Args:
    pipeline: groups to apply, e.g. "bgc" (default), "bg", "b", "bgc,cutout" (see the module
      docstring).
    mode: "adaptive" (tune p from r_t), "linear" (ramp p to p_max over linear_total_steps
      G steps) or "fixed" (keep initial_p).
    target: r_t target for mode "adaptive".
    interval: D steps between two adjustments of p.
    speed_kimg: thousands of images for p to move by 1.
    initial_p: starting p.
    p_max: upper bound of p.
    linear_total_steps: length of the ramp of mode "linear" (required there).
    xint_max, scale_std, rotate_max, aniso_std, xfrac_std, brightness_std, contrast_std,
      hue_max, saturation_std, cutout_size: op strengths, with stylegan2-ada's defaults.
  """

  def __init__(self, pipeline="bgc", mode="adaptive", target=0.6, interval=4, speed_kimg=500,
               initial_p=0.0, p_max=1.0, linear_total_steps=None, xint_max=0.125,
               scale_std=0.2, rotate_max=1.0, aniso_std=0.2, xfrac_std=0.125,
               brightness_std=0.2, contrast_std=0.5, hue_max=1.0, saturation_std=1.0,
               cutout_size=0.5, name="adaptive_augment"):
    super().__init__(name=name)
    self.groups = parse_pipeline(pipeline)
    if mode not in _MODES:
      raise ValueError(f"AdaptiveAugment.mode must be one of {', '.join(_MODES)}; got {mode!r}.")
    if mode == "linear" and not linear_total_steps:
      raise ValueError("AdaptiveAugment(mode='linear') needs linear_total_steps > 0.")
    if int(interval) < 1:
      raise ValueError(f"AdaptiveAugment.interval must be >= 1, got {interval}.")
    if speed_kimg <= 0:
      raise ValueError(f"AdaptiveAugment.speed_kimg must be > 0, got {speed_kimg}.")
    if not 0.0 <= initial_p <= p_max:
      raise ValueError(f"AdaptiveAugment needs 0 <= initial_p <= p_max, got {initial_p}, "
                       f"{p_max}.")
    self.mode, self.target = mode, float(target)
    self.interval, self.speed_kimg = int(interval), float(speed_kimg)
    self.initial_p, self.p_max = float(initial_p), float(p_max)
    self.linear_total_steps = linear_total_steps
    self.xint_max, self.scale_std, self.rotate_max = xint_max, scale_std, rotate_max
    self.aniso_std, self.xfrac_std = aniso_std, xfrac_std
    self.brightness_std, self.contrast_std = brightness_std, contrast_std
    self.hue_max, self.saturation_std, self.cutout_size = hue_max, saturation_std, cutout_size

    def state(value, var_name):
      return tf.Variable(value, dtype=tf.float32, trainable=False, name=var_name,
                         synchronization=tf.VariableSynchronization.ON_WRITE,
                         aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)

    self.p = state(self.initial_p, "p")
    self._sign_sum = state(0.0, "sign_sum")      # Σ sign(logits) since the last adjustment
    self._count = state(0.0, "count")            # number of logits since the last adjustment
    self._calls = state(0.0, "calls")            # update() calls since the last adjustment
    self._rt = state(0.0, "rt")                  # r_t of the last completed interval

  # -- augmentation ----------------------------------------------------------------------
  def __call__(self, images, rng):
    """Augments `images` (float [B, H, W, C] in [-1, 1]) with per-sample gates u < p."""
    x = tf.convert_to_tensor(images)
    if not x.dtype.is_floating:
      raise TypeError(f"AdaptiveAugment expects float images, got dtype {x.dtype.name}.")
    p = tf.cast(tf.convert_to_tensor(self.p), tf.float32)
    if "blit" in self.groups:
      x = self._blit(x, rng, p)
    if "geom" in self.groups:
      x = self._geom(x, rng, p)
    if "color" in self.groups:
      x = self._color(x, rng, p)
    if "cutout" in self.groups:
      x = self._cutout(x, rng, p)
    return x

  @staticmethod
  def _gate(rng, b, p):
    """Per-sample gate, bool [B]: True with probability p."""
    return rng.uniform([b]) < p

  def _blit(self, x, rng, p):
    b, h, w = dim(x, 0), dim(x, 1), dim(x, 2)
    # x-flip: a coin in {0, 1}, kept where the gate is open.
    flip = tf.logical_and(self._gate(rng, b, p), rng.integers([b], 0, 2) > 0)
    x = tf.where(flip[:, None, None, None], tf.reverse(x, [2]), x)
    # rotation by k·90°, k in 0..3.
    k = tf.where(self._gate(rng, b, p), rng.integers([b], 0, 4), 0)[:, None, None, None]
    if isinstance(h, int) and isinstance(w, int) and h == w:
      turned = tf.transpose(x, [0, 2, 1, 3])
      x = tf.where(k == 1, tf.reverse(turned, [1]),                  # 90° counter-clockwise
          tf.where(k == 2, tf.reverse(x, [1, 2]),                    # 180°
          tf.where(k == 3, tf.reverse(turned, [2]), x)))             # 270°
    else:
      x = tf.where(k >= 2, tf.reverse(x, [1, 2]), x)                 # non-square: 180° only
    # integer translation, reflect fill.
    t = rng.uniform([b, 2], -1.0, 1.0) * self.xint_max
    t = tf.where(self._gate(rng, b, p)[:, None], t, 0.0)
    shift_x = tf.cast(tf.round(t[:, 0] * tf.cast(w, tf.float32)), tf.int32)
    shift_y = tf.cast(tf.round(t[:, 1] * tf.cast(h, tf.float32)), tf.int32)
    return warp.shift_reflect(x, shift_y, shift_x)

  def geometric_matrix(self, rng, b, h, w, p):
    """The per-sample inverse affine matrix [B, 3, 3] of the geom group (centred pixels)."""
    inv = tf.eye(3, batch_shape=[b])
    ones = tf.ones([b])
    # isotropic scale
    s = tf.pow(2.0, rng.normal([b]) * self.scale_std)
    s = tf.where(self._gate(rng, b, p), s, ones)
    inv = inv @ _scale2d_inv(s, s)
    p_rot = 1.0 - tf.sqrt(tf.clip_by_value(1.0 - p, 0.0, 1.0))
    # pre-rotation
    theta = rng.uniform([b], -1.0, 1.0) * (math.pi * self.rotate_max)
    theta = tf.where(self._gate(rng, b, p_rot), theta, 0.0)
    inv = inv @ _rotate2d_inv(-theta)
    # anisotropic scale
    s = tf.pow(2.0, rng.normal([b]) * self.aniso_std)
    s = tf.where(self._gate(rng, b, p), s, ones)
    inv = inv @ _scale2d_inv(s, 1.0 / s)
    # post-rotation
    theta = rng.uniform([b], -1.0, 1.0) * (math.pi * self.rotate_max)
    theta = tf.where(self._gate(rng, b, p_rot), theta, 0.0)
    inv = inv @ _rotate2d_inv(-theta)
    # fractional translation
    t = rng.normal([b, 2]) * self.xfrac_std
    t = tf.where(self._gate(rng, b, p)[:, None], t, 0.0)
    inv = inv @ _translate2d_inv(t[:, 0] * tf.cast(w, tf.float32),
                                 t[:, 1] * tf.cast(h, tf.float32))
    return inv

  def _geom(self, x, rng, p):
    b, h, w = dim(x, 0), dim(x, 1), dim(x, 2)
    return warp.affine_warp(x, self.geometric_matrix(rng, b, h, w, p))

  def color_transform(self, rng, b, p):
    """The per-sample colour map y = A x + t as (A [B, 3, 3], t [B, 3]), float32."""
    eye = tf.eye(3, batch_shape=[b])
    ones, zeros = tf.ones([b]), tf.zeros([b])
    proj = _grey_projector()
    # brightness: t = b·(1, 1, 1)
    shift = tf.where(self._gate(rng, b, p), rng.normal([b]) * self.brightness_std, zeros)
    a, t = eye, tf.tile(shift[:, None], [1, 3])
    # contrast
    c = tf.where(self._gate(rng, b, p), tf.pow(2.0, rng.normal([b]) * self.contrast_std), ones)
    m = c[:, None, None] * eye
    a, t = m @ a, tf.linalg.matvec(m, t)
    # luma flip (Householder reflection about the grey axis)
    flip = tf.logical_and(self._gate(rng, b, p), rng.integers([b], 0, 2) > 0)
    m = eye - 2.0 * tf.cast(flip, tf.float32)[:, None, None] * proj
    a, t = m @ a, tf.linalg.matvec(m, t)
    # hue rotation about the grey axis
    theta = tf.where(self._gate(rng, b, p),
                     rng.uniform([b], -1.0, 1.0) * (math.pi * self.hue_max), zeros)
    m = _rotate_about_grey(theta)
    a, t = m @ a, tf.linalg.matvec(m, t)
    # saturation
    s = tf.where(self._gate(rng, b, p), tf.pow(2.0, rng.normal([b]) * self.saturation_std),
                 ones)
    m = proj + (tf.eye(3) - proj) * s[:, None, None]
    a, t = m @ a, tf.linalg.matvec(m, t)
    return a, t

  def _color(self, x, rng, p):
    channels = x.shape[-1]
    if channels not in (1, 3):
      raise ValueError(f"AdaptiveAugment's 'color' group needs 1 or 3 channels, got {channels}"
                       f"; drop 'c' from the pipeline for other images.")
    a, t = self.color_transform(rng, dim(x, 0), p)
    if channels == 3:
      a = tf.cast(a, x.dtype)[:, None, None]                          # [B, 1, 1, 3, 3]
      t = tf.cast(t, x.dtype)[:, None, None]                          # [B, 1, 1, 3]
      return tf.linalg.matvec(a, x) + t
    # Grey input (g, g, g): every op maps grey to grey, so A·1 = λ·1 with λ = Σ A / 3.
    gain = tf.reduce_sum(a, axis=[1, 2]) / 3.0
    bias = tf.reduce_mean(t, axis=1)
    return x * tf.cast(gain, x.dtype)[:, None, None, None] + tf.cast(bias, x.dtype)[
        :, None, None, None]

  def _cutout(self, x, rng, p):
    b, h, w = dim(x, 0), dim(x, 1), dim(x, 2)
    size = tf.where(self._gate(rng, b, p), self.cutout_size, 0.0)[:, None]   # [B, 1]
    centre = rng.uniform([b, 2])
    ys = (tf.range(h, dtype=tf.float32)[None, :] + 0.5) / tf.cast(h, tf.float32)
    xs = (tf.range(w, dtype=tf.float32)[None, :] + 0.5) / tf.cast(w, tf.float32)
    keep_rows = tf.abs(ys - centre[:, 1:2]) >= size / 2                # [B, H]
    keep_cols = tf.abs(xs - centre[:, 0:1]) >= size / 2                # [B, W]
    keep = tf.logical_or(keep_rows[:, :, None], keep_cols[:, None, :])
    return x * tf.cast(keep, x.dtype)[..., None]

  # -- controller ------------------------------------------------------------------------
  def update(self, real_logits, step, global_batch):
    """Accumulates sign(D(T(reals))) and adjusts p every `interval` calls (replica context).

    Args:
      real_logits: this replica's D logits on augmented reals, any shape.
      step: completed G steps (drives mode "linear").
      global_batch: batch size over all replicas (the images per D step).

    Returns:
      {"ada_p": p after this call, "ada_rt": r_t of the last completed interval}, float32
      scalars with the same value on every replica.
    """
    logits = tf.cast(tf.reshape(real_logits, [-1]), tf.float32)
    stats = tf.stack([tf.reduce_sum(tf.sign(logits)), tf.cast(tf.size(logits), tf.float32)])
    ctx = tf.distribute.get_replica_context()
    if ctx is None:
      raise RuntimeError("AdaptiveAugment.update must be called in replica context "
                         "(inside strategy.run, or outside any strategy).")
    stats = ctx.all_reduce(tf.distribute.ReduceOp.SUM, stats)
    sign_sum = self._sign_sum + stats[0]
    count = self._count + stats[1]
    calls = self._calls + 1.0
    done = calls >= self.interval
    rt = tf.where(done, sign_sum / tf.maximum(count, 1.0), tf.convert_to_tensor(self._rt))
    p = tf.convert_to_tensor(self.p)
    if self.mode == "adaptive":
      step_size = (tf.cast(global_batch, tf.float32) * self.interval
                   / (self.speed_kimg * 1000.0))
      adjusted = tf.clip_by_value(p + tf.sign(rt - self.target) * step_size, 0.0, self.p_max)
      p = tf.where(done, adjusted, p)
    elif self.mode == "linear":
      progress = tf.cast(step, tf.float32) / float(self.linear_total_steps)
      p = self.p_max * tf.clip_by_value(progress, 0.0, 1.0)
    zero = tf.zeros([])
    self.p.assign(p)
    self._rt.assign(rt)
    self._sign_sum.assign(tf.where(done, zero, sign_sum))
    self._count.assign(tf.where(done, zero, count))
    self._calls.assign(tf.where(done, zero, calls))
    return {"ada_p": tf.identity(p), "ada_rt": tf.identity(rt)}

  def metrics(self):
    """{"ada_p": p, "ada_rt": r_t of the last completed interval}: the controller's state,
    float32 scalars (what the GAN logs after each D step)."""
    return {"ada_p": tf.identity(self.p), "ada_rt": tf.identity(self._rt)}
