"""DiffAugment (Zhao et al., NeurIPS 2020): differentiable augmentation of reals and fakes.

The same family of transforms is applied to real and fake images, in the D step and in the
G step, and G's gradient flows through it. Every listed op is applied to every image (no
probability); each parameter is drawn per sample.

Ops (all NHWC, images in [-1, 1], any channel count, no clipping, dtype preserved):

  brightness(x, rng)              x + b,                     b ~ U[-0.5, 0.5)
  saturation(x, rng)              (x - m_c)·s + m_c,         s ~ U[0, 2), m_c = channel mean
                                  (identity for C = 1: the pixel is its own channel mean)
  contrast(x, rng)                (x - m)·c + m,             c ~ U[0.5, 1.5), m = image mean
  translation(x, rng, ratio)      integer shift per sample, independently along H and W,
                                  uniform over {-s..s} with s = int(size·ratio + 0.5),
                                  zero fill (gather + mask: the gradient is exact)
  cutout(x, rng, ratio)           one zeroed square of side int(size·ratio + 0.5) per sample;
                                  its centre is uniform over {0..size} (even side) or
                                  {0..size-1} (odd side), so it may hang over the border

Policies are comma-separated, applied in the order written:
  "color" = brightness, saturation, contrast;  "translation";  "cutout";
  and the single colour ops "brightness", "saturation", "contrast".
Spaces around commas are ignored and "" is the identity.

All randomness comes from the `SampleRNG` passed as `rng` (`tfgan_eff.rng`), drawn for the
global batch and sliced to this replica's rows, so a given seed gives the same augmentation
of the same image whatever the number of replicas. Everything works in eager mode, inside
`tf.function`, under `strategy.run` and with `jit_compile=True`.

Example:

    rng = SampleRNG([seed, step])
    y = diff_augment(x, "color,translation,cutout", rng)
    aug = DiffAugment("translation,cutout"); y = aug(x, rng)
"""

import tensorflow as tf

from tfgan_eff.augment.base import Augmenter
from tfgan_eff.augment.warp import dim
from tfgan_eff.config import configurable

__all__ = ["brightness", "saturation", "contrast", "translation", "cutout",
           "diff_augment", "parse_policy", "DiffAugment", "POLICY_ENTRIES"]


def _check_images(x):
  x = tf.convert_to_tensor(x)
  if not x.dtype.is_floating:
    raise TypeError(f"DiffAugment expects float images in [-1, 1], got dtype {x.dtype.name}.")
  if x.shape.rank is not None and x.shape.rank != 4:
    raise ValueError(f"DiffAugment expects NHWC images of rank 4, got shape {x.shape}.")
  return x


def _pixels(size, ratio):
  """int(size·ratio + 0.5) for a static (int) or dynamic (tensor) size."""
  if isinstance(size, int):
    return int(size * ratio + 0.5)
  return tf.cast(tf.cast(size, tf.float32) * ratio + 0.5, tf.int32)


def brightness(x, rng):
  """Adds one shift b ~ U[-0.5, 0.5) per image."""
  x = _check_images(x)
  b = rng.uniform([dim(x, 0), 1, 1, 1], -0.5, 0.5)
  return x + tf.cast(b, x.dtype)


def saturation(x, rng):
  """Scales each pixel's deviation from its channel mean by s ~ U[0, 2) (identity if C = 1)."""
  x = _check_images(x)
  s = tf.cast(rng.uniform([dim(x, 0), 1, 1, 1], 0.0, 2.0), x.dtype)
  mean = tf.reduce_mean(x, axis=3, keepdims=True)
  return (x - mean) * s + mean


def contrast(x, rng):
  """Scales each image's deviation from its mean (over H, W, C) by c ~ U[0.5, 1.5)."""
  x = _check_images(x)
  c = tf.cast(rng.uniform([dim(x, 0), 1, 1, 1], 0.5, 1.5), x.dtype)
  mean = tf.reduce_mean(x, axis=[1, 2, 3], keepdims=True)
  return (x - mean) * c + mean


def _shift_zero_fill(x, shift, axis):
  """`out[b, .., i, ..] = x[b, .., i - shift[b], ..]` along `axis` (1 or 2), 0 outside."""
  n = dim(x, axis)
  source = tf.range(n)[tf.newaxis, :] - shift                       # [B, n]
  inside = tf.logical_and(source >= 0, source < n)
  moved = tf.gather(x, tf.clip_by_value(source, 0, n - 1), axis=axis, batch_dims=1)
  mask = tf.cast(inside, x.dtype)
  mask = mask[:, :, tf.newaxis, tf.newaxis] if axis == 1 else mask[:, tf.newaxis, :, tf.newaxis]
  return moved * mask


def translation(x, rng, ratio=0.125):
  """Shifts each image by integers (t_y, t_x), each uniform over {-s..s}, zero fill.

  s = int(size·ratio + 0.5) per axis (4 at 32 px, 8 at 64 px). Positive t moves the content
  down / right. Implemented with `tf.gather` and a 0/1 mask, so the gradient is exact.
  """
  x = _check_images(x)
  b, h, w = dim(x, 0), dim(x, 1), dim(x, 2)
  sy, sx = _pixels(h, ratio), _pixels(w, ratio)
  ty = rng.integers([b, 1], -sy, sy + 1)
  tx = rng.integers([b, 1], -sx, sx + 1)
  return _shift_zero_fill(_shift_zero_fill(x, ty, 1), tx, 2)


def cutout(x, rng, ratio=0.5):
  """Zeroes one square (side int(size·ratio + 0.5) per axis) per image, via a 0/1 mask.

  The square covers rows [c_y - side//2, c_y - side//2 + side) clipped to the image, with
  c_y uniform over {0..H - side % 2} (and likewise for columns), as in the reference code;
  so at 32 px the side is 16 and the mean zeroed area is about 19%, not 25%.
  """
  x = _check_images(x)
  b, h, w = dim(x, 0), dim(x, 1), dim(x, 2)
  side_y, side_x = _pixels(h, ratio), _pixels(w, ratio)
  cy = rng.integers([b, 1], 0, h + 1 - side_y % 2)
  cx = rng.integers([b, 1], 0, w + 1 - side_x % 2)
  top, left = cy - side_y // 2, cx - side_x // 2
  rows = tf.range(h)[tf.newaxis, :]
  cols = tf.range(w)[tf.newaxis, :]
  in_rows = tf.logical_and(rows >= top, rows < top + side_y)        # [B, H]
  in_cols = tf.logical_and(cols >= left, cols < left + side_x)      # [B, W]
  hole = tf.logical_and(in_rows[:, :, tf.newaxis], in_cols[:, tf.newaxis, :])
  mask = 1 - tf.cast(hole, x.dtype)[..., tf.newaxis]
  return x * mask


_POLICY_OPS = {
    "color": ("brightness", "saturation", "contrast"),
    "translation": ("translation",),
    "cutout": ("cutout",),
    "brightness": ("brightness",),
    "saturation": ("saturation",),
    "contrast": ("contrast",),
}
POLICY_ENTRIES = tuple(_POLICY_OPS)


def parse_policy(policy):
  """Splits a policy string ("color,translation,cutout") into a tuple of entries.

  Accepts a comma-separated string (spaces around commas ignored, "" or None = identity) or
  a list/tuple of entries. Raises ValueError naming the bad entry and the valid ones.
  """
  if policy is None:
    return ()
  if isinstance(policy, (list, tuple)):
    entries = [str(e).strip() for e in policy]
  elif isinstance(policy, str):
    entries = [e.strip() for e in policy.split(",")]
  else:
    raise TypeError(f"DiffAugment policy must be a string such as 'color,translation,cutout', "
                    f"got {policy!r}.")
  entries = tuple(e for e in entries if e)
  for e in entries:
    if e not in _POLICY_OPS:
      raise ValueError(
          f"Unknown DiffAugment policy entry '{e}' in {policy!r}. Valid entries: "
          f"{', '.join(POLICY_ENTRIES)} (comma-separated, applied in the order written).")
  return entries


def diff_augment(x, policy, rng, translation_ratio=0.125, cutout_ratio=0.5):
  """Applies the ops of `policy` to `x` in order, with per-sample parameters from `rng`.

  Args:
    x: float [B, H, W, C] in [-1, 1].
    policy: e.g. "color,translation,cutout" (see `parse_policy`); "" returns `x`.
    rng: a `tfgan_eff.rng.SampleRNG`.
    translation_ratio, cutout_ratio: the `ratio` of `translation` and `cutout`.
  """
  ops = {
      "brightness": brightness,
      "saturation": saturation,
      "contrast": contrast,
      "translation": lambda v, r: translation(v, r, translation_ratio),
      "cutout": lambda v, r: cutout(v, r, cutout_ratio),
  }
  entries = parse_policy(policy)
  if not entries:
    return x
  x = _check_images(x)
  for entry in entries:
    for name in _POLICY_OPS[entry]:
      x = ops[name](x, rng)
  return x


@configurable
class DiffAugment(Augmenter):
  """DiffAugment as an augmenter: `DiffAugment(policy)(images, rng) -> images`.

  Args:
    policy: comma-separated entries among color, translation, cutout, brightness,
      saturation, contrast; applied in the order written. Validated here.
    translation_ratio: maximum shift as a fraction of the image size (0.125 -> 4 px at 32).
    cutout_ratio: side of the cutout square as a fraction of the image size.
  """

  def __init__(self, policy="color,translation,cutout", translation_ratio=0.125,
               cutout_ratio=0.5):
    self.policy = parse_policy(policy)
    self.translation_ratio = float(translation_ratio)
    self.cutout_ratio = float(cutout_ratio)

  def __call__(self, images, rng):
    return diff_augment(images, self.policy, rng, self.translation_ratio, self.cutout_ratio)

  def __repr__(self):
    return f"DiffAugment(policy={','.join(self.policy)!r})"
