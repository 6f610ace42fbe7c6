"""Exploratory orientation probe for the augment_mnist study's sample grids (issue 13).

ADA's pipeline flips and rotates by 90°; a generator that leaks it draws digits mirrored or
sideways, which the study's leak check (constant squares, zero borders) cannot see. This
probe trains a small 8-way classifier on real MNIST digits (the extractor's 8,000-digit
training split, each under a random one of the 8 flips/rotations), reports its held-out
accuracy and the share of *upright* unseen real digits it calls non-upright (the base rate:
0, 1 and 8 look alike under some of them), then that share, and the samples' mean
probability of the upright orientation over the real digits' (steadier across probe
seeds), on every k = 100 cell's 36-sample final grid (`cells/*/study_grid.png`), or on the
sample grids given (e.g. 400 samples of a run's last checkpoint: `bin/sample
--model_dir=<cell> --num=400`). A prototype for an evaluator check, not one: its
calibration moves with its seed, grids of 32 px tiles only.

  python tools/orientation_probe.py [--mnist=<t10k-images-idx3-ubyte.gz>] [--seed=0] [grid.png ...]
"""

import argparse
import glob
import os

import keras
import matplotlib.pyplot as plt
import numpy as np

from tfgan_eff.eval import features

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def dihedral(images, k):
  """The k-th of the 8 flips/rotations of [n, h, w, c] images (k = 0: identity)."""
  r = np.rot90(images, k // 2, axes=(1, 2))
  return r[:, :, ::-1] if k % 2 else r


def transformed(images, rng):
  ks = rng.integers(0, 8, len(images))
  return np.stack([dihedral(images[i:i + 1], k)[0] for i, k in enumerate(ks)]), ks


def grid_tiles(path, size=32):
  g = plt.imread(path)
  g = g[..., 0] if g.ndim == 3 else g
  if g.shape[0] != g.shape[1] or g.shape[0] % size:
    raise SystemExit(f"{path}: {g.shape[0]}x{g.shape[1]} is not a square grid of {size} px "
                     f"tiles (bin/sample writes one for a 32 px run).")
  n = g.shape[0] // size
  g = g[:n * size, :n * size].reshape(n, size, n, size).transpose(0, 2, 1, 3)
  return g.reshape(-1, size, size, 1).astype("float32")


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--mnist", default=os.path.join(ROOT, "..", "shared", "data", "mnist",
                                                  "t10k-images-idx3-ubyte.gz"))
  ap.add_argument("--study", default=os.path.join(ROOT, "docs", "studies", "augment_mnist"))
  ap.add_argument("--seed", type=int, default=0, help="the probe's seed (data order, "
                  "orientations, initial weights)")
  ap.add_argument("grids", nargs="*", help="sample grids of 32 px tiles (default: the "
                  "study's k = 100 final grids)")
  args = ap.parse_args()
  images, _ = features._load_mnist(args.mnist)  # pylint: disable=protected-access
  train, test = features.mnist_split(len(images))
  x = features._resize_uint8(images, 32, "bilinear",  # pylint: disable=protected-access
                             antialias=True).astype("float32") / 255.0
  rng = np.random.default_rng(args.seed)
  xt, kt = transformed(np.concatenate([x[train]] * 3), rng)
  xv, kv = transformed(x[test], rng)
  keras.utils.set_random_seed(args.seed)
  model = keras.Sequential([
      keras.Input((32, 32, 1)), keras.layers.Conv2D(32, 5, activation="relu"),
      keras.layers.MaxPool2D(), keras.layers.Conv2D(64, 5, activation="relu"),
      keras.layers.MaxPool2D(), keras.layers.Flatten(),
      keras.layers.Dense(128, activation="relu"), keras.layers.Dense(8)])
  model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                metrics=["accuracy"])
  model.fit(xt, kt, batch_size=128, epochs=4, verbose=0)

  def scores(a):
    """(share called not upright, mean probability of upright)."""
    logits = model.predict(a, verbose=0)
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    return float((logits.argmax(1) != 0).mean()), float(p[:, 0].mean())

  print(f"held-out 8-way accuracy {model.evaluate(xv, kv, verbose=0)[1]:.3f}")
  real_share, real_p = scores(x[test])
  print(f"unseen real upright digits: non-upright {real_share:.3f}, P(upright) {real_p:.3f}")
  grids = args.grids or sorted(glob.glob(os.path.join(args.study, "cells", "*-k100-s*",
                                                     "study_grid.png")))
  for path in grids:
    tiles = grid_tiles(path)
    name = os.path.basename(os.path.dirname(path)) if not args.grids else path
    share, p_up = scores(tiles)
    print(f"{name:48s} non-upright {share:.2f}  P(upright) / reals' {p_up / real_p:.2f} "
          f"(n={len(tiles)})")


if __name__ == "__main__":
  main()
