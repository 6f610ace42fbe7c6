"""The step context: everything a loss term may read in one D or G step."""

import dataclasses
from typing import Any, Optional

import tensorflow as tf

from tfgan_eff.rng import SampleRNG


@dataclasses.dataclass
class StepContext:
  """One replica's view of one D or G step.

  Per-example losses become scalars with `mean`, which divides by the **global** batch so
  that gradients summed over replicas equal the single-replica gradient.
  """
  gan: Any
  phase: str                    # "d" or "g"
  step: tf.Tensor               # completed G steps before this one
  d_step: tf.Tensor             # global count of D steps (for lazy regularization)
  rng: SampleRNG
  global_batch: int
  local_batch: int
  num_replicas: int
  reals: tf.Tensor              # float [b, H, W, C] in [-1, 1]
  labels: tf.Tensor             # int [b], -1 where hidden
  true_labels: tf.Tensor        # int [b], for monitoring only
  z: tf.Tensor
  fake_labels: Optional[tf.Tensor]
  fakes: Optional[tf.Tensor] = None            # set by the step (G(z, fake_labels))
  real_aug_seed: Optional[tf.Tensor] = None    # set by the step; the reals' augmentation draw
  fake_aug_seed: Optional[tf.Tensor] = None    # set by the step; the fakes' augmentation draw
  real_labels_for_d: Optional[tf.Tensor] = None
  d_real: Optional[dict] = None
  d_fake: Optional[dict] = None
  extras: dict = dataclasses.field(default_factory=dict)

  @property
  def G(self):
    return self.gan.G

  @property
  def D(self):
    return self.gan.D

  def mean(self, per_example):
    """This replica's share of the global-batch mean of a per-example quantity."""
    return tf.reduce_sum(tf.cast(per_example, tf.float32)) / self.global_batch

  def scalar(self, value):
    """This replica's share of a value every replica agrees on (sums back to `value`)."""
    return tf.cast(value, tf.float32) / self.num_replicas

  def _augment(self, x, seed):
    return self.gan.augment(x, SampleRNG(seed, self.rng.global_batch, self.rng.offset))

  def augment_reals(self, x):
    """The augmentation draw of this step's reals (repeatable, e.g. for R1)."""
    return self._augment(x, self.real_aug_seed)

  def augment_fakes(self, x):
    """The augmentation draw of this step's fakes."""
    return self._augment(x, self.fake_aug_seed)

  def augment_with(self, x, rng: SampleRNG):
    """A fresh augmentation draw from `rng` (e.g. a second view for contrastive terms)."""
    return self.gan.augment(x, rng)
