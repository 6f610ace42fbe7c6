"""Rotation self-supervision (SS-GAN, Chen et al. 2019; the "S3" of S3GAN, Lučić et al. 2019).

D has a 4-way linear head on its pooled features that predicts by how much an image was
rotated (0°, 90°, 180°, 270°). D learns it on **real** images (weight 1.0); G is trained so
that D recognises the rotation of its **fakes** too (weight 0.2); D is never trained on the
rotation of fakes. The adversarial loss sees only the upright images: the GAN's main pass
is upright, and the rotated copies go through an extra D pass that only feeds this head.

Which images are rotated (compare_gan's `rotated_batch_fraction`, here `fraction`): of each
per-replica batch of b images, n = ⌊⌊b·fraction⌋ / 4⌋ images form the rotation group; each
appears upright (its features come from the main pass) and rotated by 90°, 180° and 270°
(3n extra images through D), so the rotation loss is a mean over 4n = b·fraction examples.
compare_gan's `rotated_batch_fraction = r` is `fraction = 1/r` (its S3GAN test uses r = 2).
compare_gan takes the *last* n images of each per-core batch; we take n *evenly spaced*
rows (b/n − 1, 2b/n − 1, …). The data order is random, so the two choices are the same in
distribution, but ours selects the same global rows for any number of replicas whenever
4/fraction divides the per-replica batch, which keeps runs independent of the replica count.

Augmentation (DiffAugment / ADA): a rotated image is the rotation of the *augmented* image
of the main pass, rot_k(T(x)), with T the step's own draw (`ctx.augment_reals` /
`ctx.augment_fakes`): the four orientations of a group are then the same augmented image,
the label stays exact, and G's gradient flows through T as in the adversarial loss.
DiffAugment's transforms are symmetric under rotation, so rot(T(x)) and T(rot(x)) have the
same distribution. (ADA's own 90° rotations make the task ambiguous; prefer DiffAugment.)

Loss: cross-entropy computed as −log(softmax + 1e-10), as compare_gan does.
"""

import tensorflow as tf

from tfgan_eff.config import configurable
from tfgan_eff.heads import LinearHead
from tfgan_eff.objectives.base import Term


def rotation_rows(batch, fraction):
  """The rows of a per-replica batch of `batch` images that form the rotation group."""
  if not 0.0 < fraction <= 1.0:
    raise ValueError(f"RotationTerm.fraction must be in (0, 1], got {fraction}.")
  n = int(batch * fraction) // 4
  if n < 1:
    raise ValueError(
        f"RotationTerm.fraction={fraction} of a per-replica batch of {batch} images rotates "
        f"no image (it needs batch·fraction >= 4); raise the fraction (at most 1.0) or the "
        f"batch size.")
  return [(i + 1) * batch // n - 1 for i in range(n)]


def rotate(images, k):
  """Rotates NHWC square images counter-clockwise by k·90° (k a Python int)."""
  return tf.image.rot90(images, k)


def rotated_copies(images):
  """images [n, H, W, C] -> ([3n, H, W, C] rotated by 90°, 180°, 270°, labels [3n] = 1, 2, 3).

  The copies are ordered by rotation: rows 0..n-1 are rotated by 90°, n..2n-1 by 180° ...
  """
  n = images.shape[0]
  rotated = tf.concat([rotate(images, k) for k in (1, 2, 3)], axis=0)
  return rotated, tf.repeat(tf.range(1, 4, dtype=tf.int32), n)


def rotation_cross_entropy(logits, labels):
  """Per-example −log(softmax(logits)[label] + 1e-10) (compare_gan's form)."""
  probs = tf.nn.softmax(tf.cast(logits, tf.float32))
  return -tf.reduce_sum(tf.one_hot(labels, 4) * tf.math.log(probs + 1e-10), axis=-1)


@configurable
class RotationTerm(Term):
  """Rotation prediction on D's features: reals train D, fakes train G.

  Args:
    fraction: the share of each per-replica batch in the rotation group (compare_gan's
      1 / rotated_batch_fraction; see the module docstring).
    weight_d: weight of the rotation loss on reals in D's loss (compare_gan: 1.0).
    weight_g: weight of the rotation loss on fakes in G's loss (compare_gan: 0.2).
    use_sn: spectral norm on the head; None follows the discriminator (`D.use_sn`).

  Metrics: `d_rotation_loss`, `rotation_accuracy_real` (D step), `g_rotation_loss`,
  `rotation_accuracy_fake` (G step); accuracies over the whole rotation group (4n images).
  """

  def __init__(self, fraction=0.5, weight_d=1.0, weight_g=0.2, use_sn=None,
               name="rotation"):
    super().__init__(name=name)
    if not 0.0 < fraction <= 1.0:
      raise ValueError(f"RotationTerm.fraction must be in (0, 1], got {fraction}.")
    self.fraction, self.weight_d, self.weight_g = fraction, weight_d, weight_g
    self.use_sn = use_sn
    self.head = None

  def build(self, ctx):
    use_sn = bool(ctx.D.use_sn) if self.use_sn is None else self.use_sn
    self.head = LinearHead(4, use_sn=use_sn, name="rotation_head")
    self.head(ctx.d_real["features"])

  def d_variables(self):
    return list(self.head.trainable_variables)

  def _group(self, ctx, images, features):
    """Loss, accuracy (replica shares of global means) of the rotation group of a batch."""
    rows = rotation_rows(images.shape[0], self.fraction)
    upright = tf.gather(images, rows)
    rotated, rot_labels = rotated_copies(upright)
    rot_features = ctx.D(rotated, None, training=True)["features"]
    feats = tf.concat([tf.gather(features, rows), tf.cast(rot_features, features.dtype)], 0)
    labels = tf.concat([tf.zeros([len(rows)], tf.int32), rot_labels], 0)
    logits = self.head(feats, training=True)
    count = 4 * len(rows) * ctx.num_replicas  # the group's global size
    loss = tf.reduce_sum(rotation_cross_entropy(logits, labels)) / count
    correct = tf.equal(tf.argmax(logits, -1, output_type=tf.int32), labels)
    return loss, tf.reduce_sum(tf.cast(correct, tf.float32)) / count

  def d_loss(self, ctx):
    loss, acc = self._group(ctx, ctx.augment_reals(ctx.reals), ctx.d_real["features"])
    return self.weight_d * loss, {"d_rotation_loss": loss, "rotation_accuracy_real": acc}

  def g_loss(self, ctx):
    loss, acc = self._group(ctx, ctx.augment_fakes(ctx.fakes), ctx.d_fake["features"])
    return self.weight_g * loss, {"g_rotation_loss": loss, "rotation_accuracy_fake": acc}
