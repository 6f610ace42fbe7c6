"""The adversarial loss (hinge, non-saturating, Wasserstein) and the R1 penalty."""

import tensorflow as tf

from tfgan_eff.config import configurable
from tfgan_eff.objectives.base import Term

LOSSES = ("hinge", "non_saturating", "wasserstein")


def d_losses(real, fake, loss):
  """Per-example D losses on real and fake logits."""
  if loss == "hinge":
    return tf.nn.relu(1.0 - real), tf.nn.relu(1.0 + fake)
  if loss == "non_saturating":
    return tf.nn.softplus(-real), tf.nn.softplus(fake)
  return -real, fake


def g_losses(fake, loss):
  """Per-example G losses on fake logits."""
  if loss == "non_saturating":
    return tf.nn.softplus(-fake)
  return -fake


@configurable
class Adversarial(Term):
  """The GAN game itself.

  Args:
    loss: "hinge" (BigGAN), "non_saturating" (StyleGAN2) or "wasserstein".
  """

  def __init__(self, loss="hinge", name="adversarial"):
    super().__init__(name=name)
    if loss not in LOSSES:
      raise ValueError(f"Adversarial.loss must be one of {LOSSES}, got '{loss}'.")
    self.loss = loss

  def d_loss(self, ctx):
    real, fake = ctx.d_real["logits"], ctx.d_fake["logits"]
    l_real, l_fake = d_losses(tf.cast(real, tf.float32), tf.cast(fake, tf.float32), self.loss)
    metrics = {
        "d_loss_real": ctx.mean(l_real), "d_loss_fake": ctx.mean(l_fake),
        "d_logits_real": ctx.mean(real), "d_logits_fake": ctx.mean(fake),
        "d_accuracy_real": ctx.mean(tf.cast(real > 0, tf.float32)),
        "d_accuracy_fake": ctx.mean(tf.cast(fake < 0, tf.float32)),
    }
    return ctx.mean(l_real) + ctx.mean(l_fake), metrics

  def g_loss(self, ctx):
    fake = tf.cast(ctx.d_fake["logits"], tf.float32)
    loss = ctx.mean(g_losses(fake, self.loss))
    return loss, {"g_logits_fake": ctx.mean(fake)}


@configurable
class R1Penalty(Term):
  """R1 = γ/2 · E‖∇_x D(x)‖² on reals (Mescheder et al. 2018).

  Args:
    gamma: the weight γ.
    interval: lazy regularization: apply every `interval` D steps, scaled by `interval`
      (StyleGAN2 uses 16); 1 applies it every step.
    wrt: "reals" takes the gradient with respect to the un-augmented reals through the
      augmentation (ADA, DiffAugment's ns_DiffAugment_r1); "augmented" with respect to the
      augmented reals (DiffAugment's ns_r1_DiffAugment).
    separate_step: with `interval > 1`, the penalty takes an optimizer step of its own
      after the ordinary D step (stylegan2-ada-pytorch's Dreg phase, on the same reals, with D
      as updated by that step; the augmentation draw: `GAN.reg_step_augmentation`) instead of
      being added to the ordinary step's loss; pair it with `lazy_adam`'s lr and beta
      factors, as the reference.
  """

  def __init__(self, gamma=10.0, interval=1, wrt="reals", separate_step=False, name="r1"):
    super().__init__(name=name)
    if wrt not in ("reals", "augmented"):
      raise ValueError(f"R1Penalty.wrt must be 'reals' or 'augmented', got '{wrt}'.")
    if interval < 1:
      raise ValueError(f"R1Penalty.interval must be >= 1, got {interval}.")
    self.gamma, self.interval, self.wrt = gamma, interval, wrt
    self.separate_step = bool(separate_step) and interval > 1

  def regularization_interval(self, network):
    return self.interval if self.separate_step and network == "d" else 0

  def penalty(self, ctx):
    """Per-example ‖∇_x D(x)‖² at the context's augmentation draw of the reals."""
    x = ctx.reals if self.wrt == "reals" else ctx.augment_reals(ctx.reals)
    with tf.GradientTape() as tape:
      tape.watch(x)
      x_in = ctx.augment_reals(x) if self.wrt == "reals" else x
      logits = ctx.D(x_in, ctx.real_labels_for_d, training=True)["logits"]
      total = tf.reduce_sum(tf.cast(logits, tf.float32))
    grad = tape.gradient(total, x)
    return tf.reduce_sum(tf.square(tf.cast(grad, tf.float32)), axis=[1, 2, 3])

  def _loss(self, ctx):
    def apply():
      return ctx.mean(self.penalty(ctx))

    if self.interval == 1:
      due = tf.constant(True)
      sq = apply()
    else:
      due = tf.equal(ctx.d_step % self.interval, 0)
      sq = tf.cond(due, apply, lambda: tf.constant(0.0))
    loss = 0.5 * self.gamma * self.interval * sq
    # `r1_applied`: logs show the penalty of the latest step it ran (Trainer).
    return loss, {"r1_penalty": sq, "r1_applied": ctx.scalar(tf.cast(due, tf.float32))}

  def d_loss(self, ctx):
    return (tf.constant(0.0), {}) if self.separate_step else self._loss(ctx)

  def d_reg_loss(self, ctx):
    return self._loss(ctx) if self.separate_step else (tf.constant(0.0), {})
