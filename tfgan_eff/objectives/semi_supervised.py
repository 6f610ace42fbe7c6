"""Semi-supervised labels (S3GAN / S2GAN-CO, Lučić et al. 2019): a classifier head on D.

A linear head on D's pooled features is trained with cross-entropy on the **labelled**
reals only (label ≥ 0); the loss is the mean over the labelled examples of the whole global
batch, i.e. Σ CE over this replica's labelled rows / (labelled rows on all replicas), as
compare_gan's SUM_BY_NONZERO_WEIGHTS reduction. It is part of D's loss, so it trains the D
trunk too. Through `predict_labels` the same head labels the unlabelled reals (label −1):
the GAN projects their features on the predicted classes, hard argmax by default or the
softmax with `soft=True`, under stop-gradient (`GAN._label_unlabelled_reals`), so the
projection never trains the head. Fakes keep their sampled labels.

Monitoring (the "unlabelled" images of a benchmark have known labels, `ctx.true_labels`):
`class_loss`, `classifier_accuracy_labelled` (head on the labelled reals),
`label_accuracy_unlabelled` (predicted vs true labels of the unlabelled reals; 0 when a
batch has none) and `label_fraction` (the share of the batch that was labelled), all from
the reals of the step's last D step.
"""

import tensorflow as tf

from tfgan_eff.config import configurable
from tfgan_eff.heads import LinearHead
from tfgan_eff.objectives.base import Term


def replica_sum(x):
  """Σ of `x` over the replicas in sync (x itself outside tf.distribute)."""
  ctx = tf.distribute.get_replica_context()
  if ctx is None or ctx.num_replicas_in_sync == 1:
    return x
  return ctx.all_reduce(tf.distribute.ReduceOp.SUM, x)


def masked_mean_share(per_example, mask):
  """This replica's share of the global mean of `per_example` over the rows in `mask`.

  Σ over this replica's masked rows / the masked rows of all replicas (at least 1), so the
  shares of all replicas sum to the global masked mean and gradients stay replica-exact.
  """
  mask = tf.cast(mask, tf.float32)
  count = tf.stop_gradient(replica_sum(tf.reduce_sum(mask)))
  return tf.reduce_sum(tf.cast(per_example, tf.float32) * mask) / tf.maximum(count, 1.0)


@configurable
class ClassifierTerm(Term):
  """Cross-entropy on labelled reals; predicts labels for the unlabelled ones.

  Args:
    weight: weight of the class loss in D's loss (compare_gan: 1.0).
    soft: project unlabelled reals on the softmax of the head instead of its argmax
      (compare_gan's `use_soft_pred`).
    use_sn: spectral norm on the head; None follows the discriminator (`D.use_sn`).

  Needs a class-conditional GAN (NUM_CLASSES > 0).
  """

  _CACHE = "classifier_logits"

  def __init__(self, weight=1.0, soft=False, use_sn=None, name="classifier"):
    super().__init__(name=name)
    self.weight, self.soft, self.use_sn = weight, soft, use_sn
    self.head = None
    self.num_classes = 0

  def build(self, ctx):
    self.num_classes = ctx.gan.num_classes
    if not self.num_classes:
      raise ValueError(
          "ClassifierTerm predicts classes, but the GAN is unconditional (num_classes = 0). "
          "Set NUM_CLASSES to the number of classes of the data, or drop @ClassifierTerm() "
          "from GAN.terms (SS-GAN: rotation only).")
    use_sn = bool(ctx.D.use_sn) if self.use_sn is None else self.use_sn
    self.head = LinearHead(self.num_classes, use_sn=use_sn, name="classifier_head")
    self.head(ctx.d_real["features"])

  def d_variables(self):
    return list(self.head.trainable_variables)

  def logits(self, ctx):
    """The head's logits on this step's reals [b, classes] (computed once per step)."""
    if self._CACHE not in ctx.extras:
      ctx.extras[self._CACHE] = self.head(ctx.d_real["features"], training=ctx.phase == "d")
    return ctx.extras[self._CACHE]

  def predict_labels(self, ctx):
    logits = self.logits(ctx)
    if self.soft:
      return tf.nn.softmax(logits)
    return tf.argmax(logits, axis=-1, output_type=tf.int32)

  def d_loss(self, ctx):
    logits = self.logits(ctx)
    known = ctx.labels >= 0
    ce = tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=tf.maximum(ctx.labels, 0), logits=logits)
    loss = masked_mean_share(ce, known)
    pred = tf.argmax(logits, axis=-1, output_type=tf.int32)
    metrics = {
        "class_loss": loss,
        "classifier_accuracy_labelled": masked_mean_share(
            tf.equal(pred, ctx.labels), known),
        "label_accuracy_unlabelled": masked_mean_share(
            tf.equal(pred, ctx.true_labels), ~known),
        "label_fraction": ctx.mean(known),
    }
    return self.weight * loss, metrics
