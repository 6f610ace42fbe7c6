"""Pixel-space checks of generated images: memorisation of the training set, leaked augmentations.

    memorisation_rate(fakes, train_images)  # {"memorisation_rate", "nn_distance_median", ...}
    augmentation_leak(fakes)                # {"leak_square", "leak_border", "leak_any"}

Both take uint8 images [N, H, W, C] (quantize generator outputs with
`tfgan_eff.eval.to_uint8`) and are plain numpy. With 100 – 10,000 training images a GAN
may copy its training set, or learn the augmentation itself (the "leak" that DiffAugment
and ADA are meant to avoid); FID sees neither clearly, these two numbers do.
"""

import math

import numpy as np

from tfgan_eff.eval.features import as_uint8_batch


def _flat_pixels(images, who):
  images = as_uint8_batch(images, who=who)
  return images, images.reshape(len(images), -1)


def _nn_distances(queries, keys, exclude_self=False, max_elements=2 ** 23):
  """L2 distance of each row of `queries` [n, D] to its nearest row of `keys` [m, D].

  The nearest key is found with ||q − k||² = ||q||² + ||k||² − 2 q·k, one float32 matrix
  multiply per chunk of queries (at most `max_elements` entries of the [chunk, m] distance
  block at a time; both sides centred on the keys' mean to keep the products small); the
  distance to it is then recomputed exactly in float64, so duplicates are at exactly 0.
  `exclude_self`: queries are the keys, and row i is not compared with key i.
  """
  mean = keys.astype(np.float64).mean(axis=0)
  k = (keys - mean).astype(np.float32)
  k_sq = np.einsum("ij,ij->i", k, k, dtype=np.float64)
  chunk = max(1, int(max_elements) // max(1, len(k)))
  nearest = np.empty(len(queries), np.int64)
  for lo in range(0, len(queries), chunk):
    q = (queries[lo:lo + chunk] - mean).astype(np.float32)
    d2 = k_sq[None, :] - 2.0 * (q @ k.T).astype(np.float64)  # + ||q||², same for a row
    if exclude_self:
      rows = np.arange(len(q))
      d2[rows, lo + rows] = np.inf
    nearest[lo:lo + len(q)] = d2.argmin(axis=1)
  out = np.empty(len(queries), np.float64)
  for lo in range(0, len(queries), chunk):
    diff = (queries[lo:lo + chunk].astype(np.float64)
            - keys[nearest[lo:lo + chunk]].astype(np.float64))
    out[lo:lo + len(diff)] = np.sqrt(np.einsum("ij,ij->i", diff, diff))
  return out


def memorisation_rate(samples, train_images, threshold_fraction=0.5, *, mirror=False,
                      max_elements=2 ** 23):
  """Share of samples that are near-copies of a training image, by pixel L2 distance.

  A sample counts as memorised when its nearest training image (L2 distance of the uint8
  pixels, cast to float32 and flattened) is closer than `threshold_fraction` × the median,
  over training images, of the distance to their nearest *other* training image: closer
  to the training set than its images are to each other. Real held-out images score ≈ 0,
  the training set itself 1.0.

      memorisation_rate(to_uint8(G(z)), train_images)["memorisation_rate"]

  Exact duplicates inside the training set count as distance 0 in that median (another
  index, the same pixels); if over half the training images have a duplicate the threshold
  is 0 and nothing counts as memorised. Pixel distance catches copies, not near-copies
  that are shifted or re-stroked.

  `mirror=True` is for a generator trained on x-flipped images (`ImageData.random_flip`):
  the mirror image of a training image is then a training image too, so a sample's nearest
  training image is sought among both, and the threshold's "nearest other" image among
  the others and their mirrors (not an image's own mirror).

  Args:
    samples: uint8 [N, H, W, C] (e.g. generated images).
    train_images: uint8 [M, H, W, C], M >= 2, the same H, W, C as `samples`.
    threshold_fraction: the threshold as a fraction of the training set's median
      nearest-neighbour distance.
    mirror: count the training images' left-right mirror images as training images.
    max_elements: entries of a distance block held in memory at once (float64); 2**23 keeps
      10,000 × 10,000 images of 32×32 under ~300 MB.

  Returns:
    {"memorisation_rate": share of samples under the threshold,
     "nn_distance_median": median over samples of the distance to the nearest training
       image, "train_nn_median": the training set's median nearest-neighbour distance}.
  """
  samples, s = _flat_pixels(samples, "memorisation_rate (samples)")
  train_images, t = _flat_pixels(train_images, "memorisation_rate (train_images)")
  if samples.shape[1:] != train_images.shape[1:]:
    raise ValueError(
        f"memorisation_rate compares pixels, so samples and training images need the same "
        f"[H, W, C]: got samples {samples.shape[1:]} and train_images "
        f"{train_images.shape[1:]}. Resize the training images as the data pipeline does "
        f"(tfgan_eff.data, antialiased bilinear) before calling it.")
  if len(train_images) < 2:
    raise ValueError(f"memorisation_rate needs at least 2 training images (got "
                     f"{len(train_images)}): the threshold is their median distance to "
                     f"each other.")
  if len(samples) < 1:
    raise ValueError("memorisation_rate got no samples.")
  if not threshold_fraction > 0:
    raise ValueError(f"threshold_fraction must be > 0, got {threshold_fraction}.")
  train_nn = _nn_distances(t, t, exclude_self=True, max_elements=max_elements)
  sample_nn = _nn_distances(s, t, max_elements=max_elements)
  if mirror:
    # Row i of the mirrored keys is image i's own mirror: exclude_self leaves it out.
    t_mirror = train_images[:, :, ::-1].reshape(len(train_images), -1)
    train_nn = np.minimum(train_nn, _nn_distances(t, t_mirror, exclude_self=True,
                                                  max_elements=max_elements))
    sample_nn = np.minimum(sample_nn, _nn_distances(s, t_mirror, max_elements=max_elements))
  train_median = float(np.median(train_nn))
  return {"memorisation_rate": float(np.mean(sample_nn < threshold_fraction * train_median)),
          "nn_distance_median": float(np.median(sample_nn)),
          "train_nn_median": train_median}


def _box_sums(integral, size_h, size_w):
  """Sums of the mask over every size_h × size_w window, from its integral image."""
  return (integral[:, size_h:, size_w:] - integral[:, :-size_h, size_w:]
          - integral[:, size_h:, :-size_w] + integral[:, :-size_h, :-size_w])


def _leak_flags(images, fill, tol, side, band, max_elements=2 ** 24):
  """(has_square, has_border) booleans [N] for uint8 images [N, H, W, C]."""
  n, h, w, _ = images.shape
  square, border = np.zeros(n, bool), np.zeros(n, bool)
  chunk = max(1, int(max_elements) // (h * w))
  for lo in range(0, n, chunk):
    x = images[lo:lo + chunk].astype(np.int16)
    mask = np.all(np.abs(x - int(fill)) <= int(tol), axis=-1)  # [b, H, W]
    ii = np.zeros([len(x), h + 1, w + 1], np.int32)
    ii[:, 1:, 1:] = mask.cumsum(axis=1, dtype=np.int32).cumsum(axis=2, dtype=np.int32)
    square[lo:lo + len(x)] = (_box_sums(ii, side, side) == side * side).any(axis=(1, 2))
    total = ii[:, h, w]
    sides = np.stack([ii[:, band, w] == band * w,                     # top
                      total - ii[:, h - band, w] == band * w,         # bottom
                      ii[:, h, band] == band * h,                     # left
                      total - ii[:, h, w - band] == band * h], 1)     # right
    border[lo:lo + len(x)] = sides.any(axis=1)
  return square, border


def augmentation_leak(images, fill=128, tol=8, square_fraction=0.2, border_px=None):
  """Share of images showing DiffAugment's fill: a flat grey square or a flat grey edge band.

  DiffAugment fills with 0 in the model's [-1, 1] space, i.e. uint8 128: the cutout square
  (half the side, a quarter of the area) and the border that translation uncovers. A
  generator that learned the augmentation (a "leak") draws such regions itself. Per image,
  a pixel is *fill* when every channel is within `tol` of `fill`; the image has

  - a leaked square: an axis-aligned square of side ceil(sqrt(square_fraction) · min(H, W))
    (15 px at 32 px) made only of fill pixels;
  - a leaked border: on one of its 4 sides, the outer band of width `border_px` (default
    max(1, min(H, W) // 16), 2 px at 32 px) made only of fill pixels.

  Computed with an integral image of the fill mask (box sums), vectorised over the batch.

  What it does not see: cutouts clipped by the image edge to less than the square's side
  (DiffAugment centres cutouts anywhere in the image, so at 32 px only ~1/3 of them keep a
  15 px square: the share is a lower bound of the cutout leak), translations by fewer than
  `border_px` pixels, fills other than `fill` (e.g. zero-padding of an image in [0, 1]),
  and ADA's augmentations, which pad by reflection and rotate (a leak there shows as
  mirrored or rotated content, not as flat regions). Real images with large flat
  mid-grey areas are flagged too: measure real images first (real MNIST digits, black
  background and white strokes, give 0.0) and read generated shares against that.

      augmentation_leak(to_uint8(G(z)))  # {"leak_square": 0.0, "leak_border": 0.01, ...}

  Args:
    images: uint8 [N, H, W, C].
    fill: the fill value in uint8 (128 = 0.0 in [-1, 1]).
    tol: largest |pixel − fill| that still counts as fill, per channel.
    square_fraction: the square's area as a fraction of min(H, W)².
    border_px: width of the edge band; None: max(1, min(H, W) // 16).

  Returns:
    {"leak_square", "leak_border", "leak_any"}: shares of `images` (floats in [0, 1]).
  """
  images = as_uint8_batch(images, who="augmentation_leak")
  n, h, w, _ = images.shape
  if n == 0:
    raise ValueError("augmentation_leak got no images.")
  if not 0 <= fill <= 255 or tol < 0:
    raise ValueError(f"augmentation_leak needs 0 <= fill <= 255 and tol >= 0 (uint8 "
                     f"levels), got fill={fill}, tol={tol}.")
  if not 0 < square_fraction <= 1:
    raise ValueError(f"square_fraction must be in (0, 1], got {square_fraction}.")
  side = min(min(h, w), max(1, math.ceil(math.sqrt(square_fraction) * min(h, w) - 1e-9)))
  band = max(1, min(h, w) // 16) if border_px is None else int(border_px)
  if not 1 <= band <= min(h, w):
    raise ValueError(f"border_px must be between 1 and min(H, W) = {min(h, w)}, got "
                     f"{border_px}.")
  square, border = _leak_flags(images, fill, tol, side, band)
  return {"leak_square": float(square.mean()), "leak_border": float(border.mean()),
          "leak_any": float((square | border).mean())}
