"""The loss-term contract. A method is a list of terms, not a subclass of the GAN."""

import tensorflow as tf


class Term(tf.Module):
  """A loss term with a D part and a G part.

  Subclasses override what they need; the defaults contribute nothing. Variables a term
  creates in `build` (heads, queues) are checkpointed with the GAN; those it lists in
  `d_variables()` are updated by D's optimizer in the D step.
  """

  def build(self, ctx):
    """Creates heads/state from a dry run's context (once, inside strategy.scope())."""
    del ctx

  def d_variables(self):
    """The variables D's optimizer trains with D (e.g. heads on D's features); none here."""
    return []

  def predict_labels(self, ctx):
    """Labels for unlabelled reals (S3GAN), from `ctx.d_real`, or None (the default).

    Int [b] or probabilities [b, classes]; the GAN projects D's features of the reals
    labelled -1 on them, under stop-gradient, before any term's `d_loss` runs.
    """
    del ctx
    return None

  def d_loss(self, ctx):
    """-> (scalar loss for this replica, {name: metric}) in the D step.

    Metrics are this replica's share (the Trainer sums them over replicas). A term that runs
    on some steps only (lazy regularization) reports `<prefix>_applied` (1 when it ran, else
    0; its share, `ctx.scalar`) beside its metrics `<prefix>_*`: on the other steps the
    Trainer's logs and summaries show those metrics' values from the latest step it ran.
    """
    return tf.constant(0.0), {}

  def g_loss(self, ctx):
    """-> (scalar loss for this replica, {name: metric}) in the G step."""
    return tf.constant(0.0), {}

  def regularization_interval(self, network):
    """Lazy regularization as a separate optimizer step (the reference's Dreg / Greg
    phases): the interval, in D steps (`network` 'd') or G steps ('g'), at which the GAN
    takes an extra step of that network's optimizer on this term's `d_reg_loss` /
    `g_reg_loss` alone, after the ordinary step; 0 (the default): none."""
    del network
    return 0

  def d_reg_loss(self, ctx):
    """-> (scalar loss, {name: metric}) of D's separate regularization step (on the steps
    `regularization_interval('d')` makes due; computed after the ordinary D update)."""
    del ctx
    return tf.constant(0.0), {}

  def g_reg_loss(self, ctx):
    """-> (scalar loss, {name: metric}) of G's separate regularization step."""
    del ctx
    return tf.constant(0.0), {}

  def after_d_step(self, ctx):
    """State updates after D's gradients are applied (replica context)."""
    del ctx

  def after_g_step(self, ctx):
    """State updates after G's gradients are applied (replica context)."""
    del ctx
