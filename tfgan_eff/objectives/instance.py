"""Instance discrimination (InsGen, Yang et al., NeurIPS 2021): D tells every image apart.

Besides real vs fake, D learns to recognise each individual real image and each individual
generated image among many others (MoCo-style InfoNCE, temperature 0.2, the positive at
index 0), and G is rewarded for samples D can tell apart. Two `InstanceHead`s
(`tfgan_eff/heads/contrastive.py`) sit on D's last feature map: one for reals, one for
fakes. Keys come from a momentum copy of D (`D_ema`, m = 0.999, spectral-norm vectors
included) through the heads' momentum copies, under stop-gradient; negatives are FIFO queues
of past keys. The three losses, each a gin switch and weight (the paper's ablation rows):

  D step, real (weight 1.0):  q = head_r(D(T(x)))            the main pass' own view
                              k = head_r'(D_ema(T'(x)))       a second, independent view
                              enqueue k into the real queue
  D step, fake (weight 1.0):  q = head_f(D(T(G(z))))         the main pass' fakes
                              k = head_f'(D_ema(T'(G(z + σε))))  σ = 0.15, same labels
                              enqueue head_f'(D(T(G(z)))) (the reference enqueues the
                              momentum head of the *online* D's query features)
  G step, diversity (0.1):    q = head_f(D(T(G(z))))         the G step's main pass
                              k = head_f'(D_ema(T'(G(z))))    nothing enqueued

Only G's variables are stepped in the G step, so the diversity loss trains G alone. The
queries reuse the GAN's main D pass; the extra cost per D step is one G forward (z + σε)
and one D_ema forward on 2b images, per G step one D_ema forward on b images, all without
gradient. `after_d_step` moves D_ema and both key heads by (1 − m) towards D and the query
heads, then enqueues (so a step's loss always sees the queue of the previous steps).

Queue sizes: genforce/insgen uses 5% of the training images (×2 with x-flips) for both
queues. The GAN never sees the data set, so the term cannot count it: give `num_images`
(and `x_flip`) and the size is max(`min_queue_size`, 5%·N·(2 if flips)), or set
`queue_size` / `fake_queue_size` directly. Without either the size is 256
(`DEFAULT_QUEUE_SIZE`). The floor (64) keeps 100-shot data from getting a queue of 5.

Metrics: `instance_real_loss`, `instance_fake_loss`, `instance_accuracy_real`,
`instance_accuracy_fake` (top-1: the positive beats every queued key), `queue_fill_real`,
`queue_fill_fake` (D step); `instance_diversity_loss`, `instance_accuracy_diversity`
(G step). A switched-off part reports nothing and costs nothing.
"""

import tensorflow as tf

from tfgan_eff.config import configurable
from tfgan_eff.heads.contrastive import InstanceHeads, info_nce, momentum_update
from tfgan_eff.objectives.base import Term

DEFAULT_QUEUE_SIZE = 256


def default_queue_size(num_images=None, x_flip=False, fraction=0.05, floor=64):
  """InsGen's queue size: max(floor, ⌊fraction·N⌋·(2 if x-flips)); 256 if N is unknown."""
  if num_images is None:
    return DEFAULT_QUEUE_SIZE
  return max(int(floor), int(fraction * num_images) * (2 if x_flip else 1))


def _strip_owner(path):
  return path.split("/", 1)[-1]


@configurable
class InstanceDiscrimination(Term):
  """InsGen's real and fake instance discrimination on D, and its diversity loss on G.

  Args:
    real, fake, diversity: switch each loss on or off (the paper's ablation).
    real_weight, fake_weight, diversity_weight: their weights (1.0, 1.0, 0.1); a weight of
      0 switches the loss off too.
    sigma: std of the latent perturbation of the fake positive, G(z + σ·ε). 0 disables the
      perturbation (the positive is then a second augmentation of the same G(z)). The
      relative size ‖σε‖/‖z‖ ≈ σ does not depend on z's dimension, so 0.15 is kept for
      BigGAN's 64–128-d z as for StyleGAN2's 512-d z.
    temperature: τ of InfoNCE (0.2).
    momentum: m of the momentum D and the key heads (0.999).
    dim, hidden: key dimension (128) and the heads' hidden width (None: D's channels).
    queue_size, fake_queue_size: explicit queue sizes (the fake one defaults to the real).
    num_images, x_flip, queue_fraction, min_queue_size: the default size (module doc).
    seed: seeds the queues' initial keys.
  """

  def __init__(self, real=True, fake=True, diversity=True, real_weight=1.0,
               fake_weight=1.0, diversity_weight=0.1, sigma=0.15, temperature=0.2,
               momentum=0.999, dim=128, hidden=None, queue_size=None, fake_queue_size=None,
               num_images=None, x_flip=False, queue_fraction=0.05, min_queue_size=64, seed=0,
               name="instance"):
    super().__init__(name=name)
    if not 0.0 <= momentum < 1.0:
      raise ValueError(f"InstanceDiscrimination.momentum must be in [0, 1), got {momentum}.")
    if temperature <= 0:
      raise ValueError(f"InstanceDiscrimination.temperature must be > 0, got {temperature}.")
    if sigma < 0:
      raise ValueError(f"InstanceDiscrimination.sigma must be >= 0, got {sigma}.")
    self.use_real = bool(real) and real_weight != 0
    self.use_fake = bool(fake) and fake_weight != 0
    self.use_diversity = bool(diversity) and diversity_weight != 0
    self.real_weight, self.fake_weight = real_weight, fake_weight
    self.diversity_weight = diversity_weight
    self.sigma, self.temperature, self.momentum = sigma, temperature, momentum
    self.dim, self.hidden = dim, hidden
    size = queue_size or default_queue_size(num_images, x_flip, queue_fraction,
                                            min_queue_size)
    self.real_queue_size, self.fake_queue_size = int(size), int(fake_queue_size or size)
    self.seed = seed
    self.heads = self.d_ema = None
    self._pairs = []

  @property
  def real_head(self):
    return self.heads.real

  @property
  def fake_head(self):
    return self.heads.fake

  # -- set-up ----------------------------------------------------------------------------
  def build(self, ctx):
    fmap_shape = ctx.d_real["feature_map"].shape
    self.heads = InstanceHeads(self.real_queue_size, self.fake_queue_size, self.dim,
                               self.hidden, self.seed, name="instance_heads")
    self.heads.build(fmap_shape)
    # The momentum D: same configuration, starts as a copy of D, never trained.
    self.d_ema = ctx.gan.make_discriminator(name="discriminator_momentum")
    y = tf.zeros([ctx.local_batch], tf.int32) if ctx.gan.num_classes else None
    self.d_ema(ctx.reals, y, training=False)  # labels build the projection weights
    self.d_ema.trainable = False
    mine = {_strip_owner(w.path): w for w in self.d_ema.weights}
    pairs = []
    for w in ctx.D.weights:
      e = mine.get(_strip_owner(w.path))
      if e is None or tuple(e.shape) != tuple(w.shape):
        raise ValueError(
            f"InstanceDiscrimination: the momentum discriminator has no weight matching "
            f"D's '{w.path}' {tuple(w.shape)}; D was changed after it was built (e.g. by "
            f"GAN.warm_start). Give make_discriminator the same structure, or drop "
            f"@InstanceDiscrimination() from GAN.terms.")
      e.assign(w)
      pairs.append((e, w))
    self._pairs = pairs

  def d_variables(self):
    vs = []
    if self.use_real:
      vs += list(self.real_head.query.trainable_variables)
    if self.use_fake:
      vs += list(self.fake_head.query.trainable_variables)
    return vs

  def momentum_pairs(self):
    """(momentum copy, online) weight pairs: D_ema's weights (SN vectors too) and heads'."""
    return self._pairs + self.real_head.momentum_pairs() + self.fake_head.momentum_pairs()

  # -- keys --------------------------------------------------------------------------------
  def _ema_feature_map(self, images):
    return self.d_ema(tf.stop_gradient(images), None, training=False)["feature_map"]

  def _loss(self, ctx, head, query_map, key_map):
    query = head.query(query_map, training=True)
    key = tf.stop_gradient(head.key(key_map))
    loss, correct = info_nce(query, key, head.queue, self.temperature)
    return ctx.mean(loss), ctx.mean(correct), key

  # -- losses ------------------------------------------------------------------------------
  def d_loss(self, ctx):
    if not (self.use_real or self.use_fake):
      return tf.constant(0.0), {}
    # Streams in a fixed order, whichever parts are on: a switch changes nothing else.
    rng = ctx.rng.child()
    real_view, noise, g_rng, fake_view = (rng.child() for _ in range(4))
    b = ctx.local_batch
    key_images = []
    if self.use_real:
      key_images.append(ctx.augment_with(ctx.reals, real_view))
    if self.use_fake:
      fakes = ctx.fakes
      if self.sigma > 0:  # G's own noise/style mixing are fresh draws, as in the reference
        z = ctx.z + self.sigma * noise.normal(ctx.z.shape)
        fakes = tf.stop_gradient(ctx.G(z, ctx.fake_labels, training=True, rng=g_rng))
      key_images.append(ctx.augment_with(fakes, fake_view))
    key_maps = self._ema_feature_map(tf.concat(key_images, 0))  # one D_ema pass
    total, metrics, i = tf.constant(0.0), {}, 0
    if self.use_real:
      loss, acc, key = self._loss(ctx, self.real_head, ctx.d_real["feature_map"],
                                  key_maps[:b])
      ctx.extras["instance_real_keys"] = key
      total += self.real_weight * loss
      metrics.update(instance_real_loss=loss, instance_accuracy_real=acc,
                     queue_fill_real=ctx.scalar(self.real_head.fill()))
      i = b
    if self.use_fake:
      loss, acc, _ = self._loss(ctx, self.fake_head, ctx.d_fake["feature_map"],
                                key_maps[i:i + b])
      ctx.extras["instance_fake_keys"] = tf.stop_gradient(
          self.fake_head.key(tf.stop_gradient(ctx.d_fake["feature_map"])))
      total += self.fake_weight * loss
      metrics.update(instance_fake_loss=loss, instance_accuracy_fake=acc,
                     queue_fill_fake=ctx.scalar(self.fake_head.fill()))
    return total, metrics

  def g_loss(self, ctx):
    if not self.use_diversity:
      return tf.constant(0.0), {}
    key_map = self._ema_feature_map(ctx.augment_with(ctx.fakes, ctx.rng.child()))
    loss, acc, _ = self._loss(ctx, self.fake_head, ctx.d_fake["feature_map"], key_map)
    return self.diversity_weight * loss, {"instance_diversity_loss": loss,
                                          "instance_accuracy_diversity": acc}

  # -- state -------------------------------------------------------------------------------
  def after_d_step(self, ctx):
    momentum_update(self.momentum_pairs(), self.momentum)
    if "instance_real_keys" in ctx.extras:
      self.real_head.enqueue(ctx.extras["instance_real_keys"])
    if "instance_fake_keys" in ctx.extras:
      self.fake_head.enqueue(ctx.extras["instance_fake_keys"])
