"""The augment_mnist study's orientation leak check on sample grids (issue 13).

Scores sample grid PNGs with the study's orientation probe (tfgan_eff.eval.orientation: the
8 flips/rotations, trained on the 10,000 reference digits; loaded from the study's
`extractor/` folder, where `bin/study` keeps it, or trained there on first use), e.g. 400
samples of a run's last checkpoint (`bin/sample --model_dir=<cell> --num=400`), or by default
every k = 100 cell's 36-sample final grid (`cells/*/study_grid.png`). Prints the probe's
held-out accuracy, then per grid the samples' mean probability of the upright orientation
over unseen real digits' (1: as upright as real digits). `--seed` other than the study's 0
trains a probe of that seed (in a temporary folder), to see how much the reading moves with it.

  python tools/orientation_probe.py [--mnist=<t10k-images-idx3-ubyte.gz>] [--seed=0] [grid.png ...]
"""

import argparse
import glob
import os
import tempfile

import matplotlib.pyplot as plt
import numpy as np

from tfgan_eff.eval import features
from tfgan_eff.eval.orientation import OrientationProbe

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def grid_tiles(path, size=32):
  """uint8 [n, size, size, 1]: the tiles of a square grid PNG of size-px tiles."""
  g = plt.imread(path)
  g = g[..., 0] if g.ndim == 3 else g
  if g.shape[0] != g.shape[1] or g.shape[0] % size:
    raise SystemExit(f"{path}: {g.shape[0]}x{g.shape[1]} is not a square grid of {size} px "
                     f"tiles (bin/sample writes one for a 32 px run).")
  n = g.shape[0] // size
  g = g.reshape(n, size, n, size).transpose(0, 2, 1, 3).reshape(-1, size, size, 1)
  return np.clip(np.round(g * 255.0), 0, 255).astype(np.uint8)


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--mnist", default=os.path.join(ROOT, "..", "shared", "data", "mnist",
                                                  "t10k-images-idx3-ubyte.gz"))
  ap.add_argument("--study", default=os.path.join(ROOT, "docs", "studies", "augment_mnist"))
  ap.add_argument("--seed", type=int, default=0, help="the probe's seed (the study's: 0)")
  ap.add_argument("grids", nargs="*", help="sample grids of 32 px tiles (default: the "
                  "study's k = 100 final grids)")
  args = ap.parse_args()
  images, _ = features._load_mnist(args.mnist)  # pylint: disable=protected-access
  # The study's reference images: 28 -> 32 px, antialiased bilinear (tfgan_eff.data's).
  x = features._resize_uint8(images, 32, "bilinear",  # pylint: disable=protected-access
                             antialias=True)
  weights_dir = (os.path.join(args.study, "extractor") if args.seed == 0
                 else tempfile.mkdtemp(prefix="orientation-probe-"))
  probe = OrientationProbe(x, seed=args.seed, weights_dir=weights_dir)
  print(f"held-out 8-way accuracy {probe.heldout_accuracy:.3f}; unseen upright reals' mean "
        f"P(upright) {probe.real_upright:.3f}")
  grids = args.grids or sorted(glob.glob(os.path.join(args.study, "cells", "*-k100-s*",
                                                     "study_grid.png")))
  for path in grids:
    tiles = grid_tiles(path)
    name = os.path.basename(os.path.dirname(path)) if not args.grids else path
    print(f"{name:48s} P(upright) / reals' {probe.upright_ratio(tiles):.2f} (n={len(tiles)})")


if __name__ == "__main__":
  main()
