"""Side-by-side of our ADA pipeline (`AdaptiveAugment`) with stylegan2-ada-pytorch's
`AugmentPipe`, on real MNIST digits.

Needs PyTorch (`pip install -e .[reference]`; never in the core or CI) and a checkout of
https://github.com/NVlabs/stylegan2-ada-pytorch, which is imported, not copied:

  python tools/ada_reference_check.py --reference=/path/to/stylegan2-ada-pytorch \
      --mnist=../shared/data/mnist/t10k-images-idx3-ubyte.gz

Two comparisons:

1. Fixed parameters. The reference's `debug_percentile=q` replaces every random parameter by
   its q-quantile (and sets the post-rotation to 0). Our pipeline is run with a stand-in
   random source that returns the same quantiles in the order our ops draw them, so both sides
   apply the same transform; the table gives the error per group (blit, geom, color, all of
   bgc) and q. The reference also runs every geometric transform (blit included) through 2x
   upsampling and downsampling with sym6 filters, which we omit (documented in
   tfgan_eff/augment/ada.py); the row "reference filter at identity" measures what that
   filtering alone does to a digit.
2. Random draws at the p that ADA reached on 100 digits (0.065) and at 0.3: the share of images
   each side changes and the mean absolute change, over many draws.
"""

import argparse
import math
import sys

import numpy as np
from scipy.special import erfinv


def load_digits(path, n, resolution=32):
  """The first n digits as the study sees them: resized to 32x32, NHWC in [-1, 1]."""
  from tfgan_eff.data.pipeline import ImageData
  from tfgan_eff.data.sources import Arrays
  data = ImageData(source=Arrays(path=path), resolution=resolution, channels=1)
  return next(data.eval_batches(n)).astype(np.float32) / 127.5 - 1.0


class QuantileRNG:
  """Stands in for `SampleRNG`: every parameter is its q-quantile, every gate is open, and the
  second rotation of the geom group is 0 (as the reference's `debug_percentile`)."""

  def __init__(self, q, zero_second_rotation):
    self.q, self.zero_second = q, zero_second_rotation
    self.rotations = 0

  def uniform(self, shape, minval=0.0, maxval=1.0, dtype=None):
    import tensorflow as tf
    if (minval, maxval) == (0.0, 1.0):                                  # a gate: always open
      return tf.zeros(shape)
    value = minval + self.q * (maxval - minval)
    if len(shape) == 1:                                                 # a rotation angle
      self.rotations += 1
      if self.zero_second and self.rotations == 2:
        value = 0.5 * (minval + maxval)
    return tf.fill(shape, float(value))

  def normal(self, shape, dtype=None):
    import tensorflow as tf
    return tf.fill(shape, float(erfinv(2 * self.q - 1)))

  def integers(self, shape, minval, maxval, dtype=None):
    import tensorflow as tf
    return tf.fill(shape, int(minval + math.floor(self.q * (maxval - minval))))


REFERENCE_GROUPS = {
    "blit": dict(xflip=1, rotate90=1, xint=1),
    "geom": dict(scale=1, rotate=1, aniso=1, xfrac=1),
    "color": dict(brightness=1, contrast=1, lumaflip=1, hue=1, saturation=1),
    "bgc": dict(xflip=1, rotate90=1, xint=1, scale=1, rotate=1, aniso=1, xfrac=1,
                brightness=1, contrast=1, lumaflip=1, hue=1, saturation=1),
}
OUR_GROUPS = {"blit": "b", "geom": "g", "color": "c", "bgc": "bgc"}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--reference", required=True, help="stylegan2-ada-pytorch checkout")
  parser.add_argument("--mnist", default="../shared/data/mnist/t10k-images-idx3-ubyte.gz")
  parser.add_argument("--num_images", type=int, default=64)
  parser.add_argument("--draws", type=int, default=200, help="batches per random comparison")
  args = parser.parse_args()

  import tensorflow as tf
  import torch
  sys.path.insert(0, args.reference)
  from training.augment import AugmentPipe  # the reference, imported from its checkout

  from tfgan_eff.augment.ada import AdaptiveAugment
  from tfgan_eff.rng import SampleRNG

  x = load_digits(args.mnist, args.num_images)
  x_t = torch.from_numpy(np.transpose(x, [0, 3, 1, 2]).copy())

  def reference(spec, p, q=None, seed=0):
    torch.manual_seed(seed)
    pipe = AugmentPipe(**REFERENCE_GROUPS[spec])
    pipe.p.copy_(torch.as_tensor(p))
    with torch.no_grad():
      y = pipe(x_t, debug_percentile=q)
    return np.transpose(y.numpy(), [0, 2, 3, 1])

  def ours(spec, p, rng):
    aug = AdaptiveAugment(pipeline=OUR_GROUPS[spec], mode="fixed", initial_p=p)
    return aug(tf.constant(x), rng).numpy()

  def rel(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))

  print("1. Fixed parameters (debug_percentile q), 64 digits, 32x32, values in [-1, 1].")
  print("   relative L2 error ||ours - reference|| / ||reference||, and max |error|")
  ident = reference("geom", 0.0)
  print(f"   reference filter at identity (p = 0, geom): rel {rel(ident, x):.4f}, "
        f"max {np.abs(ident - x).max():.3f}")
  print(f"   {'group':6s} " + " ".join(f"{'q=' + str(q):>17s}" for q in (0.1, 0.3, 0.7, 0.9)))
  for spec in ("blit", "geom", "color", "bgc"):
    cells = []
    for q in (0.1, 0.3, 0.7, 0.9):
      r = reference(spec, 1.0, q)
      o = ours(spec, 1.0, QuantileRNG(q, zero_second_rotation=spec in ("geom", "bgc")))
      cells.append(f"{rel(o, r):7.4f} / {np.abs(o - r).max():5.3f}")
    print(f"   {spec:6s} " + " ".join(f"{c:>17s}" for c in cells))
  print()
  print("2. Random draws with the bgc pipeline: share of images changed (max |change| > 0.01,")
  print("   against the reference's own output at p = 0, so its filter does not count) and")
  print(f"   mean |y - x| per pixel, over {args.draws} batches of {args.num_images}.")
  for p in (0.065, 0.3):
    stats = {}
    for name in ("reference", "ours"):
      changed, mean_abs = [], []
      for i in range(args.draws):
        if name == "reference":
          y = reference("bgc", p, seed=i)
          base = ident
        else:
          y = ours("bgc", p, SampleRNG(tf.constant([7, i], tf.int64)))
          base = x
        d = np.abs(y - base).reshape(len(x), -1)
        changed.append((d.max(axis=1) > 0.01).mean())
        mean_abs.append(np.abs(y - x).mean())
      stats[name] = (np.mean(changed), np.mean(mean_abs))
    print(f"   p = {p}: changed reference {stats['reference'][0]:.3f} ours {stats['ours'][0]:.3f}"
          f" | mean |y - x| reference {stats['reference'][1]:.4f} ours {stats['ours'][1]:.4f}")


if __name__ == "__main__":
  main()
