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
    """-> (scalar loss for this replica, {name: metric}) in the D step."""
    return tf.constant(0.0), {}

  def g_loss(self, ctx):
    """-> (scalar loss for this replica, {name: metric}) in the G step."""
    return tf.constant(0.0), {}

  def after_d_step(self, ctx):
    """State updates after D's gradients are applied (replica context)."""
    del ctx

  def after_g_step(self, ctx):
    """State updates after G's gradients are applied (replica context)."""
    del ctx
