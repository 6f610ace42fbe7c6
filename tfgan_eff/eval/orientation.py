"""Orientation leak check: does a generator draw its images flipped or rotated?

An augmentation with x-flips or 90° rotations (ADA's pipeline) leaks when the generator
learns to draw what the augmentation makes: mirrored or sideways samples (a reported ADA
failure, stylegan2-ada-pytorch#232). The pixel checks of `memorisation.augmentation_leak`
(constant squares, zero borders) cannot see it.

`OrientationProbe` is a small classifier (the LeNet of the digit extractors) trained on real
images, each shown in a random one of the flips/rotations, to tell which one was applied. Its
statistic is the **mean probability it gives the upright orientation**, over a set of
samples, divided by the same mean over unseen upright real images (`upright_ratio`): 1 when
the samples are as upright as real images, towards 1/8 (digits) or 1/4 (photos) when their
orientation is random, lower when they are drawn in one wrong orientation. Content that
looks alike under a flip or rotation (the digits 0, 1, 8) keeps the reals' own mean below 1;
the ratio divides that out. The ratio is what proved steady across the probe's seeds (its
arg-max share of "not upright" samples did not: on upright real digits it moved from 0.05
to 0.48 between seeds of a smaller prototype; docs/results.md, issue 13).

    probe = OrientationProbe(real_images)          # uint8 [N, H, W, C]; ~30 s on digits
    probe.heldout_accuracy, probe.real_upright
    probe.upright_ratio(samples)                    # samples: uint8 [n, H, W, C]

`transforms="dihedral"` (8: 4 rotations, each with and without an x-flip) suits content with
a handedness (digits, text); `"rotations"` (4) suits photos, whose mirror image is natural.
With `weights_dir` the trained weights are kept there (keyed by the real images' hash, the
transforms and the seed) and loaded next time: seeded training is not bit-reproducible across
CPUs, and every score of a study must come from one probe.
"""

import hashlib
import json
import math
import os

import numpy as np
from absl import logging

from tfgan_eff.eval.features import _build_lenet, _resize_uint8, as_uint8_batch
from tfgan_eff.eval.features import fit_classifier, save_weights

TRANSFORMS = {"dihedral": 8, "rotations": 4}


def orient(images, k, transforms="dihedral"):
  """Orientation `k` of images [N, H, W, C]: k = 0 is the identity; with "dihedral", a
  rotation by 90° · (k // 2) counter-clockwise, then an x-flip if k is odd; with
  "rotations", a rotation by 90° · k."""
  if transforms not in TRANSFORMS:
    raise ValueError(f"transforms must be one of {sorted(TRANSFORMS)}, got {transforms!r}.")
  if not 0 <= k < TRANSFORMS[transforms]:
    raise ValueError(f"Orientation {k} is out of range for {transforms!r} "
                     f"(0..{TRANSFORMS[transforms] - 1}).")
  turns, flip = (k // 2, k % 2) if transforms == "dihedral" else (k, 0)
  out = np.rot90(images, turns, axes=(1, 2))
  return np.ascontiguousarray(out[:, :, ::-1] if flip else out)


class OrientationProbe:
  """A small CNN, trained on real images, that tells which orientation an image is in.

  Args:
    images: real uint8 images [N, H, W, C], square (H = W), N >= 20: the probe's training
      set and, for a held-out share of them, its accuracy and the reals' upright mean.
    transforms: "dihedral" (8 orientations) or "rotations" (4).
    resolution: the probe's input size (images are resized to it, antialiased bilinear;
      channels are kept).
    heldout_fraction: the share of `images` kept out of training.
    train_size: oriented training images (each training image in about
      train_size / N_train random orientations).
    epochs: passes over them.
    seed: the split, the orientations, the initial weights and the batch order.
    batch_size: images per prediction.
    weights_dir: keep (and load) the trained weights here; None: train every time.

  Attributes:
    heldout_accuracy: accuracy on the held-out images, each in a random orientation.
    real_upright: mean probability of "upright" on the held-out images, upright.
    name: identifies the probe (its data, transforms, seed); `tag` adds its weights' hash.
  """

  version = 1  # bump when the architecture or the training recipe changes
  _train_batch = 64
  _learning_rate = 1e-3

  def __init__(self, images, transforms="dihedral", resolution=32, heldout_fraction=0.2,
               train_size=24000, epochs=4, seed=0, batch_size=256, weights_dir=None):
    images = as_uint8_batch(images, who="OrientationProbe")
    if transforms not in TRANSFORMS:
      raise ValueError(f"OrientationProbe.transforms must be one of {sorted(TRANSFORMS)}, "
                       f"got {transforms!r}.")
    if images.shape[1] != images.shape[2]:
      raise ValueError(f"OrientationProbe needs square images (a rotation by 90° changes "
                       f"the shape of others), got {images.shape[1]}x{images.shape[2]}.")
    if len(images) < 20 or not 0.0 < heldout_fraction < 1.0:
      raise ValueError(f"OrientationProbe needs at least 20 real images and 0 < "
                       f"heldout_fraction < 1, got {len(images)} and {heldout_fraction}.")
    self.transforms, self.num = transforms, TRANSFORMS[transforms]
    self.resolution, self.channels = int(resolution), images.shape[-1]
    self.batch_size, self.shape = batch_size, images.shape[1:]
    digest = hashlib.sha256(str(images.shape).encode() + images.tobytes()).hexdigest()
    self.name = (f"orientation-{transforms}-lenet{self.resolution}-v{self.version}-"
                 f"{digest[:12]}-seed{seed}")
    self.model = _build_lenet(self.resolution, seed, name="orientation_probe",
                              num_classes=self.num, channels=self.channels)
    path = os.path.join(os.path.expanduser(weights_dir), self.name + ".weights.h5") \
        if weights_dir else None
    if path and os.path.exists(path):
      self.model.load_weights(path)
      with open(path[:-len(".weights.h5")] + ".json") as f:
        info = json.load(f)
      self.heldout_accuracy, self.real_upright = info["heldout_accuracy"], info["real_upright"]
      how = f"loaded from {path}"
    else:
      self._train(images, heldout_fraction, train_size, epochs, seed)
      how = f"trained ({epochs} epochs on {train_size} oriented images)"
      if path:
        save_weights(self.model, path, {"heldout_accuracy": self.heldout_accuracy,
                                        "real_upright": self.real_upright, "name": self.name})
        how += f", kept in {path}"
    self.tag = self.name
    if path:
      with open(path, "rb") as f:
        self.tag += "-" + hashlib.sha256(f.read()).hexdigest()[:12]
    logging.info("Orientation probe %s %s; held-out accuracy %.3f, upright reals' mean "
                 "P(upright) %.3f", self.name, how, self.heldout_accuracy, self.real_upright)

  def _train(self, images, heldout_fraction, train_size, epochs, seed):
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(images))
    n_held = max(1, int(round(len(images) * heldout_fraction)))
    held, train = images[order[:n_held]], images[order[n_held:]]
    copies = max(1, math.ceil(train_size / len(train)))
    x, k = self._oriented(np.concatenate([train] * copies), rng)
    fit_classifier(self.model, self._scaled(x), k, epochs, self._train_batch,
                   self._learning_rate, seed)
    xh, kh = self._oriented(held, rng)
    self.heldout_accuracy = float((self._probabilities(xh).argmax(axis=1) == kh).mean())
    self.real_upright = self.upright(held)

  def _oriented(self, images, rng):
    """Each image in a random orientation: (images, orientations)."""
    k = rng.integers(0, self.num, len(images))
    out = np.empty_like(images)
    for j in range(self.num):
      rows = np.flatnonzero(k == j)
      out[rows] = orient(images[rows], j, self.transforms)
    return out, k

  def _scaled(self, images):
    if images.shape[1] != self.resolution:
      images = _resize_uint8(images, self.resolution, "bilinear", antialias=True)
    return images.astype(np.float32) / 255.0

  def _probabilities(self, images):
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    out = []
    for i in range(0, len(images), self.batch_size):
      x = tf.constant(self._scaled(images[i:i + self.batch_size]))
      out.append(tf.nn.softmax(self.model(x, training=False)["logits"]).numpy())
    return np.concatenate(out).astype(np.float64)

  def probabilities(self, images):
    """[n, num]: the probe's probability of each orientation (0 upright) for each image."""
    images = as_uint8_batch(images, who="OrientationProbe")
    if images.shape[1:] != self.shape:
      raise ValueError(f"The probe was trained on images {self.shape}, got "
                       f"{images.shape[1:]}; give images of the real set's shape.")
    return self._probabilities(images)

  def upright(self, images):
    """The mean probability of the upright orientation over `images`."""
    return float(self.probabilities(images)[:, 0].mean())

  def upright_ratio(self, images):
    """`upright(images)` over the unseen reals' (1: as upright as real images)."""
    return self.upright(images) / self.real_upright
