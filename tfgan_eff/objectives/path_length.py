"""StyleGAN2's path-length regularization of the generator (Karras et al. 2020, sec. 3.2).

For w ~ mapping(z) and images x = synthesis(w), the penalty keeps the length of
J_w^T y, y ~ N(0, I) / sqrt(H W), close to its running mean a:

    length_i = sqrt(mean_layers ‖∂(Σ x_i · y_i) / ∂w_i‖²)     (w_i: [num_ws, w_dim])
    a ← a + decay · (mean_i length_i − a)
    loss = weight · E_i (length_i − a)²

as stylegan2-ada-pytorch's `loss.py` (the gradient also flows through the new `a`, as there).
Lazy: applied every `interval` G steps and multiplied by `interval`, on a batch shrunk by
`batch_shrink`.

Departures, for replica independence: the regularization batch draws its own z, labels,
style mixing and noise from `ctx.rng` for a global batch of `global_batch / batch_shrink`
(the official code reuses the first rows of each GPU's z), and the batch mean of the
lengths is all-reduced over replicas before `a` is updated, so `a` (the non-trainable,
checkpointed `pl_mean`) is the same on every replica and for any replica count. The
regularization pass does not update G's `w_avg` (the main pass does).
"""

import math

import tensorflow as tf

from tfgan_eff.config import configurable
from tfgan_eff.models.stylegan2 import StyleBasedGenerator
from tfgan_eff.objectives.base import Term
from tfgan_eff.rng import SampleRNG


def path_lengths(G, ws, rng, y=None, noise_mode="random"):
  """Per-example sqrt(mean over layers of ‖J_w^T y‖²), y ~ N(0, 1)/sqrt(H·W) from `rng`.

  `ws` [b, num_ws, w_dim]; the synthesis network draws its noise inputs from `rng` too
  (`noise_mode` as `G.synthesis`'s). `y` [b, H, W, C]: fixed projection directions (already
  divided by sqrt(H·W)) instead of the draw. Differentiable with respect to G's weights (and
  `ws`).
  """
  with tf.GradientTape() as tape:
    tape.watch(ws)
    images = tf.cast(G.synthesis(ws, training=True, rng=rng, noise_mode=noise_mode),
                     tf.float32)
    if y is None:
      h, w = images.shape[1], images.shape[2]
      b = ws.shape[0] if ws.shape[0] is not None else tf.shape(ws)[0]  # images' may be lost
      y = rng.normal([b, *images.shape[1:]]) / math.sqrt(h * w)
    out = tf.reduce_sum(images * y)
  grad = tf.cast(tape.gradient(out, ws), tf.float32)
  return tf.sqrt(tf.reduce_mean(tf.reduce_sum(tf.square(grad), axis=2), axis=1))


@configurable
class PathLengthPenalty(Term):
  """Path-length regularization of a StyleGAN2 generator (a G-step term).

  Args:
    weight: pl_weight (StyleGAN2: 2).
    interval: lazy regularization: every `interval` G steps, loss multiplied by `interval`
      (StyleGAN2: 4); 1 applies it every step.
    decay: pl_decay of the running mean of the lengths (StyleGAN2: 0.01).
    batch_shrink: the regularization batch is the batch divided by this (StyleGAN2: 2);
      must divide the per-replica batch.
    separate_step: with `interval > 1`, the penalty takes an optimizer step of its own after
      the ordinary G step (stylegan2-ada-pytorch's Greg phase) instead of being added to
      that step's loss; pair it with `lazy_adam`'s factors, as the reference.

  Needs a style-based generator (`StyleBasedGenerator`: `mapping`, `style_mix`, `synthesis`;
  StyleGAN2Generator).
  Metrics: `pl_penalty` (E (length − a)², unweighted), `pl_length` (mean length) and
  `pl_mean` (a); 0 on the steps it skips, where the Trainer's logs and summaries show the
  values of the latest step it ran (`pl_applied`).
  """

  def __init__(self, weight=2.0, interval=4, decay=0.01, batch_shrink=2, separate_step=False,
               name="path_length"):
    super().__init__(name=name)
    if interval < 1:
      raise ValueError(f"PathLengthPenalty.interval must be >= 1, got {interval}.")
    if batch_shrink < 1:
      raise ValueError(f"PathLengthPenalty.batch_shrink must be >= 1, got {batch_shrink}.")
    if not 0.0 <= decay <= 1.0:
      raise ValueError(f"PathLengthPenalty.decay must be in [0, 1], got {decay}.")
    self.weight, self.interval = float(weight), int(interval)
    self.decay, self.batch_shrink = float(decay), int(batch_shrink)
    self.separate_step = bool(separate_step) and self.interval > 1
    self.pl_mean = None

  def regularization_interval(self, network):
    return self.interval if self.separate_step and network == "g" else 0

  def build(self, ctx):
    if not isinstance(ctx.G, StyleBasedGenerator):
      raise ValueError(
          f"PathLengthPenalty needs a style-based generator, with a mapping and a synthesis "
          f"network (StyleGAN2Generator); {type(ctx.G).__name__} is not one. Remove "
          f"@PathLengthPenalty() from GAN.terms.")
    self.pl_mean = tf.Variable(0.0, trainable=False, name="pl_mean",
                               synchronization=tf.VariableSynchronization.ON_WRITE,
                               aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)

  def _rng(self, ctx):
    """A SampleRNG over the shrunk global batch, sliced like the step's own."""
    s = self.batch_shrink
    seed = ctx.rng.next_seed()
    if ctx.num_replicas == 1:
      return SampleRNG(seed)
    return SampleRNG(seed, global_batch=ctx.global_batch // s, offset=ctx.rng.offset // s)

  def lengths(self, ctx):
    """Path lengths [local_batch / batch_shrink] of a fresh regularization batch."""
    G = ctx.G
    b = ctx.local_batch // self.batch_shrink
    rng = self._rng(ctx)
    z = rng.normal([b, G.z_dim])
    y = ctx.gan.sample_labels(rng, b)
    ws = G.mapping(z, y, training=False)
    if G.style_mixing_prob > 0:
      ws, _ = G.style_mix(ws, y, rng=rng)
    return path_lengths(G, ws, rng)

  def g_loss(self, ctx):
    return (tf.constant(0.0), {}) if self.separate_step else self._loss(ctx)

  def g_reg_loss(self, ctx):
    return self._loss(ctx) if self.separate_step else (tf.constant(0.0), {})

  def _loss(self, ctx):
    # Checked here, not in build: load_gan builds with a batch of 1 for sampling.
    if ctx.local_batch % self.batch_shrink:
      raise ValueError(
          f"PathLengthPenalty.batch_shrink = {self.batch_shrink} does not divide the "
          f"per-replica batch {ctx.local_batch}; choose a batch size (per replica) that is a "
          f"multiple of it, or set PathLengthPenalty.batch_shrink = 1.")
    b = ctx.local_batch // self.batch_shrink
    global_b = ctx.global_batch // self.batch_shrink
    if self.interval == 1:
      apply = tf.constant(True)
      lengths = self.lengths(ctx)
    else:
      apply = tf.equal(ctx.step % self.interval, 0)
      # Only the regularization pass sits in the cond: all-reduce and the variable update
      # (synchronization points) must run unconditionally on every replica.
      lengths = tf.cond(apply, lambda: self.lengths(ctx), lambda: tf.zeros([b]))
    mean = tf.reduce_mean(lengths)
    rctx = tf.distribute.get_replica_context()
    if rctx is not None and ctx.num_replicas > 1:
      mean = rctx.all_reduce(tf.distribute.ReduceOp.MEAN, mean)
    old = tf.convert_to_tensor(self.pl_mean)
    new = tf.where(apply, old + self.decay * (mean - old), old)
    self.pl_mean.assign(tf.stop_gradient(new))
    on = tf.cast(apply, tf.float32)
    penalty = tf.reduce_sum(tf.square(lengths - new)) * on / global_b
    loss = self.weight * self.interval * penalty
    return loss, {"pl_penalty": penalty, "pl_length": tf.reduce_sum(lengths) / global_b,
                  "pl_mean": ctx.scalar(new), "pl_applied": ctx.scalar(on)}
