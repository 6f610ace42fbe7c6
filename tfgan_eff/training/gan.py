"""The GAN: composes G, D, loss terms and an augmenter into one D step and one G step.

Both steps run in replica context (inside `strategy.run`); `update_ema` runs in
cross-replica context after the G step. The whole training step reads top to bottom:

    D step (x disc_iters, each with fresh reals, z and augmentation):
      z, y_fake = draws of the step's SampleRNG
      fakes = G(z, y_fake, rng=child)           # no gradient to G
      real and fake augmentation seeds
      d_real, d_fake = D(T(reals), y), D(T(fakes), y_fake)
      unlabelled reals: + D.project(features, term.predict_labels(ctx))   # e.g. S3GAN
      loss = Σ term.d_loss(ctx)                 # adversarial, R1, heads' losses ...
      step D (+ term.d_variables()); term.after_d_step; augment.update(d_real logits)
      due lazy regularization (terms' regularization_interval('d')): an extra D step on
      Σ term.d_reg_loss(ctx) alone (the reference's Dreg phase; the same for G: Greg),
      with the step's augmentation draw or, `reg_step_augmentation='fresh'`, a new one
      metrics: the terms', d_loss, d_grad_norm, augment.metrics()
    G step:
      z, y_fake; real and fake augmentation seeds
      fakes = G(z, y_fake, rng=child); d_fake = D(T(fakes), y_fake)
      loss = Σ term.g_loss(ctx); step G; term.after_g_step
    G_ema ← decay·G_ema + (1 − decay)·G

Every draw of a step comes from one SampleRNG, seeded by (GAN.seed, step, phase), in the
order written above (D: z, y_fake, G's rng, real seed, fake seed; G: z, y_fake, real seed,
fake seed, G's rng); terms draw after that (a 'fresh' regularization step's real and fake
seeds are the next two draws after the ordinary step's terms). The order is part of a run's
reproducibility: changing it changes every run.

Two more hooks keep methods out of this file: `warm_start(gan)` runs once the networks exist
and before the optimizers do (transfer learning: load, freeze, wrap; it may give variables
an optimizer of their own, `own_optimizer`); `make_discriminator` gives terms a fresh D of
the same configuration (momentum copies, as InsGen's).
"""

import dataclasses

import gin
import keras
import tensorflow as tf

from tfgan_eff import precision
from tfgan_eff.augment.base import Augmenter, Identity
from tfgan_eff.config import configurable
from tfgan_eff.objectives.adversarial import Adversarial
from tfgan_eff.objectives.base import Term
from tfgan_eff.rng import SampleRNG
from tfgan_eff.training import checkpoints
from tfgan_eff.training.context import StepContext
from tfgan_eff.training.optimizers import adam


def _grad_norm(grads):
  """This replica's gradient norm. Summed over replicas (as step metrics are) it is the
  norm itself on one replica and an upper bound on several; non-finite when any gradient
  is, which is what the trainer's divergence guard looks at."""
  return tf.linalg.global_norm([g for g in grads if g is not None])


def _replicas():
  ctx = tf.distribute.get_replica_context()
  return ctx.num_replicas_in_sync if ctx is not None else 1


@configurable
class GAN(tf.Module):
  """G, D, terms, augmentation, optimizers and the EMA generator.

  Args:
    generator: a generator class or factory (gin: `@BigGANGenerator`); called twice, for G
      and for its EMA copy.
    discriminator: a discriminator class or factory (gin: `@BigGANDiscriminator`).
    terms: loss terms; default `[Adversarial()]`.
    augment: an `Augmenter` applied to reals and fakes in both steps (gin:
      `@DiffAugment()`, `@AdaptiveAugment()`); None: no augmentation (`Identity()`).
    g_optimizer, d_optimizer: Keras optimizers (gin: `@g/adam()`); default Adam(2e-4, 0, 0.999).
    disc_iters: D steps per G step, each with fresh data and noise.
    ema_decay: decay of the generator EMA; 0 disables it (G_ema tracks G).
    ema_start_step: before this G step the EMA copies G (decay 0).
    ema_kimg: if set, StyleGAN2's EMA instead of `ema_decay`: a half-life of `ema_kimg`
      thousand images, decay = 0.5 ** (global_batch / (1000·ema_kimg)).
    ema_rampup: with `ema_kimg`, caps the half-life at `ema_rampup` × images seen so far
      (StyleGAN2-ADA: 0.05; None: no ramp-up).
    warm_start: a callable `f(gan)` run after the networks are built and before the
      optimizers are (e.g. `@AdaFMTransfer()`: load a source model, freeze, wrap layers;
      `@RunWarmStart()`: fine-tune a run). G_ema then starts as a copy of G, unless the
      warm start has a true attribute `loads_g_ema`.
    reg_step_augmentation: the augmentation draw of the separate lazy-regularization steps
      (terms with `separate_step`, e.g. R1 through ADA): 'same' reuses the ordinary step's
      real and fake draws (R1 at the very augmented reals D was just stepped on); 'fresh'
      draws new ones, as stylegan2-ada-pytorch's Dreg phase, which runs D anew through the
      augmentation pipe. No effect without separate steps or without augmentation.
    seed: seeds all per-step randomness (latents, labels, augmentation).
    mixed_precision: None (float32), 'mixed_bfloat16' or 'mixed_float16' (with dynamic loss
      scaling): the compute dtype of G and D; see `tfgan_eff.precision` for what stays
      float32 (losses, penalties, augmentation, EMA, optimizer state, checkpoints).
  """

  def __init__(self, generator=gin.REQUIRED, discriminator=gin.REQUIRED, terms=None,
               augment=None, g_optimizer=None, d_optimizer=None, disc_iters=1,
               ema_decay=0.999, ema_start_step=0, ema_kimg=None, ema_rampup=None,
               warm_start=None, reg_step_augmentation="same", seed=0, mixed_precision=None,
               name="gan"):
    super().__init__(name=name)
    if disc_iters < 1:
      raise ValueError(f"GAN.disc_iters must be >= 1, got {disc_iters}.")
    if reg_step_augmentation not in ("same", "fresh"):
      raise ValueError(f"GAN.reg_step_augmentation must be 'same' or 'fresh', got "
                       f"{reg_step_augmentation!r}.")
    self.reg_step_augmentation = reg_step_augmentation
    self.mixed_precision = precision.check_policy(mixed_precision)
    keras.utils.set_random_seed(seed)  # initial weights follow the config seed
    self._generator_factory = generator
    self._discriminator_factory = discriminator
    with self.precision_scope():
      self.G = generator(name="generator")
      self.G_ema = generator(name="generator_ema")
      self.D = discriminator(name="discriminator")
    # float16: one dynamic loss scale per network (bfloat16 has float32's range: none).
    self.loss_scale = ({"d": precision.LossScale(name="d_loss_scale"),
                        "g": precision.LossScale(name="g_loss_scale")}
                       if self.mixed_precision == "mixed_float16" else {})
    self.terms = list(terms) if terms is not None else [Adversarial()]
    for t in self.terms:
      if not isinstance(t, Term):
        raise TypeError(f"GAN.terms holds {t!r}, which is not a loss term (a subclass of "
                        f"tfgan_eff.objectives.base.Term); list terms such as @Adversarial().")
    self.augment = augment if augment is not None else Identity()
    if not isinstance(self.augment, Augmenter):
      raise TypeError(f"GAN.augment is {augment!r}, which is not an augmenter (a subclass of "
                      f"tfgan_eff.augment.Augmenter); use @DiffAugment(), "
                      f"@AdaptiveAugment() or None.")
    self.g_optimizer = g_optimizer or adam()
    self.d_optimizer = d_optimizer or adam()
    self.disc_iters = disc_iters
    self.ema_decay, self.ema_start_step = ema_decay, ema_start_step
    if ema_kimg is not None and ema_kimg <= 0:
      raise ValueError(f"GAN.ema_kimg must be > 0 (or None), got {ema_kimg}.")
    self.ema_kimg, self.ema_rampup = ema_kimg, ema_rampup
    self.warm_start = warm_start
    self.global_batch = None
    self.seed = seed
    # Set by the Trainer (`Trainer.on_nonfinite = 'skip_step'`): a step whose loss or
    # gradients are non-finite on any replica changes no state (see `_update`).
    self.skip_nonfinite = False
    if self.G.num_classes != self.D.num_classes:
      raise ValueError(f"Generator has {self.G.num_classes} classes but discriminator has "
                       f"{self.D.num_classes}; set both num_classes alike.")
    self.num_classes = self.G.num_classes
    self._own = {"g": [], "d": []}  # own_optimizer groups: (name, optimizer, vars, start)
    self.built = False

  # -- set-up ----------------------------------------------------------------------------
  def precision_scope(self):
    """The networks' dtype policy (`mixed_precision`): layers created or built inside it
    compute in its dtype. `build` (warm starts, terms' momentum copies of D) runs inside."""
    return precision.policy_scope(self.mixed_precision)

  def make_discriminator(self, name):
    """A new, unbuilt discriminator of the same configuration as D (for momentum copies);
    build it inside `precision_scope()` (as terms' `build` is)."""
    with self.precision_scope():
      return self._discriminator_factory(name=name)

  def rebuild_generators(self, **overrides):
    """Replaces G and G_ema by new, built generators of the same configuration with
    constructor `overrides` (e.g. `widths=`); for a `warm_start` that changes G's
    architecture (AdaFM's 'new_small'), before the optimizers are built."""
    if self.built:
      raise RuntimeError("rebuild_generators must be called before GAN.build ends (from a "
                         "warm_start).")
    with self.precision_scope():
      G = self._generator_factory(name="generator", **overrides)
      G_ema = self._generator_factory(name="generator_ema", **overrides)
      z = tf.zeros([1, G.z_dim])
      y = tf.zeros([1], tf.int32) if self.num_classes else None
      for g in (G, G_ema):
        g(z, y, training=False)
    self.G, self.G_ema = G, G_ema

  def d_variables(self):
    vs = list(self.D.trainable_variables)
    for t in self.terms:
      vs += list(t.d_variables())
    return vs

  def g_variables(self):
    return list(self.G.trainable_variables)

  def own_optimizer(self, network, name, variables, start_step=0):
    """Gives `variables` (trainable variables of G, network 'g', or of D, 'd') an optimizer
    of their own: a fresh copy of that network's optimizer, checkpointed as
    `<network>_optimizer_<name>`. It steps them from the network's step `start_step` on
    (counted in completed steps of the network's optimizer) and not before, and its own step
    count, which Adam's bias correction reads, starts there.

    This is PyTorch's per-parameter optimizer state, which a Keras optimizer (one step
    count for all its variables) lacks: variables unfrozen late under a shared optimizer
    would take their first steps with the bias correction of step 10,000, i.e. updates up
    to 1/sqrt(1 - beta_2) times the learning rate. Call it from a `warm_start` (before the
    optimizers are built); AdaFM's γ/β use it.
    """
    if network not in self._own:
      raise ValueError(f"own_optimizer: network must be 'g' or 'd', got '{network}'.")
    if self.built:
      raise RuntimeError("own_optimizer must be called before GAN.build makes the "
                         "optimizers (from a warm_start).")
    main = self.g_optimizer if network == "g" else self.d_optimizer
    config = dict(main.get_config(), name=f"{main.name}_{name}")
    self._own[network].append(
        (name, type(main).from_config(config), list(variables), int(start_step)))

  def _optimizers(self, network):
    """[(optimizer, variables, start_step)] of `network`: the main one first (every
    trainable variable of the network not given its own), then the own ones."""
    main = self.g_optimizer if network == "g" else self.d_optimizer
    variables = self.g_variables() if network == "g" else self.d_variables()
    own_ids = {id(v) for _, _, vs, _ in self._own[network] for v in vs}
    return ([(main, [v for v in variables if id(v) not in own_ids], 0)] +
            [(opt, vs, start) for _, opt, vs, start in self._own[network]])

  def _apply_gradients(self, network, grads, variables):
    """Applies `grads` (of `variables`) with the network's optimizers; an own optimizer
    whose `start_step` is not reached yet gets zero gradients and its step count stays 0
    (Adam with zero moments and zero gradients moves nothing)."""
    optimizers = self._optimizers(network)
    if len(optimizers) == 1:
      optimizers[0][0].apply_gradients(zip(grads, variables))
      return
    by_id = {id(v): g for v, g in zip(variables, grads)}
    done = tf.identity(optimizers[0][0].iterations)  # this network's completed steps
    for opt, vs, start in optimizers:
      gs = [by_id.get(id(v)) for v in vs]
      gs = [tf.zeros_like(v) if g is None else g for g, v in zip(gs, vs)]
      if not start:
        opt.apply_gradients(zip(gs, vs))
        continue
      on = tf.cast(done >= start, tf.float32)
      opt.apply_gradients(zip([g * tf.cast(on, g.dtype) for g in gs], vs))
      opt.iterations.assign(opt.iterations * tf.cast(on, opt.iterations.dtype))

  def build(self, local_batch, image_shape):
    """Creates every variable (networks, heads, optimizer slots) by a dry run.

    Call once inside `strategy.scope()`, in cross-replica context, before the first step.
    """
    with self.precision_scope():  # layers built on their first call take the policy
      self._build(local_batch, image_shape)

  def _build(self, local_batch, image_shape):
    self.global_batch = local_batch * tf.distribute.get_strategy().num_replicas_in_sync
    z = tf.zeros([local_batch, self.G.z_dim])
    y = tf.zeros([local_batch], tf.int32) if self.num_classes else None
    reals = tf.zeros([local_batch, *image_shape])
    for g in (self.G, self.G_ema):
      g(z, y, training=False)
    self.D(reals, y, training=False)
    if self.warm_start is not None:
      self.warm_start(self)
    ctx = self._context("d", tf.constant(0, tf.int64), 0, {
        "images": reals, "labels": tf.zeros([local_batch], tf.int32),
        "true_labels": tf.zeros([local_batch], tf.int32)})
    ctx.fakes = self.G(ctx.z, ctx.fake_labels, training=False, rng=ctx.rng.child())
    ctx.real_aug_seed, ctx.fake_aug_seed = ctx.rng.next_seed(), ctx.rng.next_seed()
    ctx.d_real = self.D(reals, ctx.real_labels_for_d, training=False)
    ctx.d_fake = self.D(ctx.fakes, ctx.fake_labels, training=False)
    for t in self.terms:
      t.build(ctx)
    self.augment.build(image_shape)
    for network in ("g", "d"):
      for opt, variables, _ in self._optimizers(network):
        opt.build(variables)
    if not getattr(self.warm_start, "loads_g_ema", False):  # else the warm start's G_ema
      for e, w in zip(self.G_ema.weights, self.G.weights):
        e.assign(w)
    self.built = True

  def checkpoint_items(self):
    """Everything a checkpoint holds, as flat path-keyed variable dicts."""
    items = {"G": self.G, "G_ema": self.G_ema, "D": self.D, "g_optimizer": self.g_optimizer,
             "d_optimizer": self.d_optimizer}
    for network, groups in self._own.items():
      for name, opt, _, _ in groups:
        items[f"{network}_optimizer_{name}"] = opt
    for i, t in enumerate(self.terms):
      items[f"term{i}_{t.name}"] = t
    if isinstance(self.augment, tf.Module):  # an augmenter with state (ADA)
      items["augment"] = self.augment
    return {k: checkpoints.variables_by_path(v) for k, v in items.items()}

  # -- randomness --------------------------------------------------------------------------
  def _rng(self, step, phase, local_batch):
    """The SampleRNG of D step `phase` (0..disc_iters-1) or the G step (phase=disc_iters)."""
    counter = tf.cast(step, tf.int64) * (self.disc_iters + 1) + phase
    seed = tf.stack([tf.constant(self.seed, tf.int64), counter])
    return SampleRNG.for_replica(seed, local_batch)

  def sample_labels(self, rng, batch):
    if not self.num_classes:
      return None
    return rng.integers([batch], 0, self.num_classes)

  def _context(self, phase, step, index, batch):
    """The context of D step `index` (0..disc_iters-1) or of the G step: this replica's
    batch, the step's SampleRNG and its first two draws, z and the fake labels."""
    n = _replicas()
    b = batch["images"].shape[0]
    if b is None:  # multi-worker input pipelines lose the static batch size
      b = self.global_batch // n
      batch = {k: tf.ensure_shape(v, [b, *v.shape[1:]]) for k, v in batch.items()}
    rng = self._rng(step, index, b)
    z = rng.normal([b, self.G.z_dim])
    y_fake = self.sample_labels(rng, b)
    labels = batch["labels"]
    return StepContext(
        gan=self, phase=phase, step=step,
        d_step=tf.cast(step, tf.int64) * self.disc_iters + index, rng=rng,
        global_batch=b * n, local_batch=b, num_replicas=n, reals=batch["images"],
        labels=labels, true_labels=batch["true_labels"], z=z, fake_labels=y_fake,
        # One class (an unconditional model with a conditional architecture, e.g. a
        # transfer from a class-conditional source): every real is class 0.
        real_labels_for_d=(tf.zeros_like(labels) if self.num_classes == 1 else labels)
        if self.num_classes else None)

  # -- steps (replica context) ------------------------------------------------------------
  def d_step(self, batch, step, index):
    """One D update on one replica's batch; returns metrics (summed over replicas)."""
    ctx = self._context("d", step, index, batch)
    rng = ctx.rng
    ctx.fakes = tf.stop_gradient(self.G(ctx.z, ctx.fake_labels, training=True, rng=rng.child()))
    ctx.real_aug_seed, ctx.fake_aug_seed = rng.next_seed(), rng.next_seed()
    with tf.GradientTape() as tape:
      x = tf.concat([ctx.augment_reals(ctx.reals), ctx.augment_fakes(ctx.fakes)], 0)
      y = None
      if self.num_classes:
        y = tf.concat([ctx.real_labels_for_d, ctx.fake_labels], 0)
      out = self.D(x, y, training=True, segments=2)  # no batch statistic spans both halves
      b = ctx.local_batch
      ctx.d_real = {k: v[:b] for k, v in out.items()}
      ctx.d_fake = {k: v[b:] for k, v in out.items()}
      self._label_unlabelled_reals(ctx)
      total, metrics = self._sum_terms(ctx, "d_loss")
      scaled = self._scaled("d", total)
    variables = self.d_variables()
    grads = self._gradients("d", tape, scaled, variables)
    metrics["d_grad_norm"] = _grad_norm(grads)

    def update(ctx, grads):
      self._apply_gradients("d", grads, variables)
      for t in self.terms:
        t.after_d_step(ctx)
      self.augment.update(ctx.d_real["logits"], ctx.step, ctx.global_batch)

    self._step_update("d", update, ctx, grads, total, metrics)
    metrics["d_skipped"] += self._regularization_step("d", ctx, metrics)
    for k, v in self.augment.metrics().items():
      metrics[k] = ctx.scalar(v)
    metrics["d_loss"] = total
    return metrics

  def g_step(self, batch, step):
    """One G update on one replica's batch; returns metrics (summed over replicas)."""
    ctx = self._context("g", step, self.disc_iters, batch)
    rng = ctx.rng
    ctx.real_aug_seed, ctx.fake_aug_seed = rng.next_seed(), rng.next_seed()
    with tf.GradientTape() as tape:
      ctx.fakes = self.G(ctx.z, ctx.fake_labels, training=True, rng=rng.child())
      ctx.d_fake = self.D(ctx.augment_fakes(ctx.fakes), ctx.fake_labels, training=True)
      total, metrics = self._sum_terms(ctx, "g_loss")
      scaled = self._scaled("g", total)
    variables = self.g_variables()
    grads = self._gradients("g", tape, scaled, variables)
    metrics["g_grad_norm"] = _grad_norm(grads)

    def update(ctx, grads):
      self._apply_gradients("g", grads, variables)
      for t in self.terms:
        t.after_g_step(ctx)

    self._step_update("g", update, ctx, grads, total, metrics)
    metrics["g_skipped"] += self._regularization_step("g", ctx, metrics)
    metrics["g_loss"] = total
    return metrics

  def _regularization_step(self, network, ctx, metrics):
    """The separate lazy-regularization step of `network` ('d' or 'g'; the reference's
    Dreg / Greg phase): on the steps due (D step or G step index % interval == 0), an extra
    step of the network's optimizer on the terms' `d_reg_loss` / `g_reg_loss` alone, with
    the same context (reals, latents; augmentation seeds: `reg_step_augmentation`) and the
    weights the ordinary step just made. Terms compute their loss as 0 on other steps (their
    own `tf.cond`), and the optimizer step is taken only when due. Adds its metrics
    (`<network>_reg_loss`, `<network>_reg_applied` and the terms') to `metrics`; -> this
    replica's share of 1.0 if the update was skipped as non-finite (`skip_nonfinite`), else
    0."""
    intervals = {t.regularization_interval(network) for t in self.terms} - {0}
    if not intervals:
      return tf.constant(0.0)
    if len(intervals) > 1:
      raise ValueError(f"Loss terms ask for separate {network.upper()} regularization steps "
                       f"at different intervals {sorted(intervals)}; give them one interval.")
    counter = ctx.d_step if network == "d" else ctx.step
    due = tf.equal(tf.cast(counter, tf.int64) % intervals.pop(), 0)
    method = "d_reg_loss" if network == "d" else "g_reg_loss"
    variables = self.d_variables() if network == "d" else self.g_variables()
    if self.reg_step_augmentation == "fresh":
      ctx = dataclasses.replace(ctx, real_aug_seed=ctx.rng.next_seed(),
                                fake_aug_seed=ctx.rng.next_seed())
    with tf.GradientTape() as tape:
      total, reg_metrics = self._sum_terms(ctx, method)
      scaled = self._scaled(network, total)
    for k, v in reg_metrics.items():
      if k in metrics:
        raise ValueError(f"Two loss terms report the metric '{k}'; rename one.")
      metrics[k] = v
    grads = [tf.zeros_like(v) if g is None else g
             for g, v in zip(self._gradients(network, tape, scaled, variables), variables)]
    norm = _grad_norm(grads)

    def update(ctx, grads):
      del ctx
      self._apply_gradients(network, grads, variables)

    metrics[f"{network}_reg_loss"] = total
    metrics[f"{network}_reg_applied"] = ctx.scalar(tf.cast(due, tf.float32))
    skipped, overflow = self._update(update, ctx, grads, total, norm, when=due,
                                     network=network)
    if network in self.loss_scale:
      metrics[f"{network}_overflow"] += overflow
    return skipped

  # -- loss scaling (mixed_float16) --------------------------------------------------------
  def _scaled(self, network, loss):
    """The loss to differentiate: `loss` times the network's loss scale, if it has one."""
    scale = self.loss_scale.get(network)
    return loss if scale is None else scale.scaled(loss)

  def _gradients(self, network, tape, scaled_loss, variables):
    grads = tape.gradient(scaled_loss, variables)
    scale = self.loss_scale.get(network)
    return grads if scale is None else scale.unscale(grads)

  def _step_update(self, network, update, ctx, grads, total, metrics):
    """The ordinary D or G update through `_update`, with its metrics: `<network>_skipped`
    and, with loss scaling, `<network>_overflow` (1 when the scaled gradients overflowed
    and the update was skipped; the grad norm of such a step is reported as 0) and
    `<network>_loss_scale`."""
    norm_key = f"{network}_grad_norm"
    skipped, overflow = self._update(update, ctx, grads, total, metrics[norm_key],
                                     network=network)
    metrics[f"{network}_skipped"] = skipped
    scale = self.loss_scale.get(network)
    if scale is not None:
      metrics[norm_key] = tf.where(overflow > 0, 0.0, metrics[norm_key])
      metrics[f"{network}_overflow"] = overflow
      metrics[f"{network}_loss_scale"] = ctx.scalar(scale.scale)

  def _update(self, update, ctx, grads, loss, grad_norm, when=None, network=None):
    """Runs `update(ctx, grads)` (the optimizer step and every state update of the step);
    with `skip_nonfinite`, only where the loss and gradients are finite on every replica,
    and nowhere otherwise; with `when` (a boolean every replica agrees on), only when it is
    true; with a loss scale (`network`'s, float16), not when the scaled gradients overflowed
    on any replica (the scale then halves; see `precision.LossScale`).
    -> (this replica's share of 1.0 if the step was skipped as non-finite, else 0;
        the same for a skip on loss-scale overflow).

    The decision is taken once for all replicas in cross-replica context (`merge_call`), as
    Keras' LossScaleOptimizer does: a `tf.cond` in replica context cannot hold the
    optimizer's own `merge_call`. `update` must read replica values only from its
    arguments (each replica gets its own `ctx` and `grads`).
    """
    scale = self.loss_scale.get(network)
    if not self.skip_nonfinite and when is None and scale is None:
      update(ctx, grads)
      return tf.constant(0.0), tf.constant(0.0)
    replica = tf.distribute.get_replica_context()

    def everywhere(ok):  # `ok` on every replica
      bad = tf.cast(tf.logical_not(ok), tf.float32)
      return tf.equal(replica.all_reduce(tf.distribute.ReduceOp.SUM, bad), 0.0)

    grads_finite = everywhere(tf.math.is_finite(grad_norm))
    overflow = scale.benign(grads_finite) if scale is not None else tf.constant(False)
    finite = tf.constant(True)
    if self.skip_nonfinite:
      finite = tf.logical_and(everywhere(tf.math.is_finite(loss)),
                              tf.logical_or(grads_finite, overflow))
    when = tf.constant(True) if when is None else tf.convert_to_tensor(when)

    def cross_replica(strategy, finite, overflow, grads_finite, when, ctx, grads):
      # Equal on every replica:
      finite, overflow, grads_finite, when = (strategy.experimental_local_results(x)[0]
                                              for x in (finite, overflow, grads_finite, when))

      def apply():
        strategy.extended.call_for_each_replica(update, args=(ctx, grads))
        return tf.constant(True)

      applied = tf.cond(finite & ~overflow & when, apply, lambda: tf.constant(False))
      if scale is not None:
        def rescale():
          scale.update(grads_finite)
          return tf.constant(True)
        with tf.control_dependencies([applied]):
          tf.cond(when, rescale, lambda: tf.constant(False))
      return applied

    applied = replica.merge_call(cross_replica,
                                 args=(finite, overflow, grads_finite, when, ctx, grads))
    skipped = when & ~finite
    with tf.control_dependencies([applied]):
      return (ctx.scalar(tf.cast(skipped, tf.float32)),
              ctx.scalar(tf.cast(when & overflow, tf.float32)))

  def _label_unlabelled_reals(self, ctx):
    """Projects the unlabelled reals (label -1) on labels a term predicts for them.

    The predictions come from `term.predict_labels(ctx)` (int [b] or probabilities
    [b, classes]) and are used under stop-gradient; labelled reals keep their own label.
    `ctx.real_labels_for_d` becomes the labels actually used (so R1 sees the same D).
    """
    if not self.num_classes:
      return
    for t in self.terms:
      pred = t.predict_labels(ctx)
      if pred is None:
        continue
      pred = tf.stop_gradient(pred)
      known = ctx.labels >= 0
      if pred.shape.rank == 1:
        only_unknown = tf.where(known, -1, tf.cast(pred, tf.int32))
        used = tf.where(known, ctx.labels, tf.cast(pred, tf.int32))
      else:
        pred = tf.cast(pred, tf.float32)
        only_unknown = pred * tf.cast(~known, tf.float32)[:, None]
        used = tf.where(known[:, None], tf.one_hot(tf.maximum(ctx.labels, 0),
                                                   self.num_classes), pred)
      ctx.d_real["logits"] += self.D.project(ctx.d_real["features"], only_unknown)
      ctx.real_labels_for_d = used
      return

  def _sum_terms(self, ctx, method):
    total, metrics = tf.constant(0.0), {}
    for t in self.terms:
      loss, m = getattr(t, method)(ctx)
      total += loss
      for k, v in m.items():
        if k in metrics:
          raise ValueError(f"Two loss terms report the metric '{k}'; rename one.")
        metrics[k] = v
    return total, metrics

  # -- EMA (cross-replica context) -------------------------------------------------------
  def ema_decay_at(self, step):
    """The EMA decay after G step `step` (1-based)."""
    step = tf.cast(step, tf.int64)
    if self.ema_kimg is not None:
      half_life = tf.constant(self.ema_kimg * 1000.0, tf.float32)
      if self.ema_rampup is not None:
        seen = tf.cast(step * self.global_batch, tf.float32)
        half_life = tf.minimum(half_life, seen * self.ema_rampup)
      decay = tf.pow(0.5, self.global_batch / tf.maximum(half_life, 1e-8))
    else:
      decay = tf.constant(self.ema_decay, tf.float32)
    return tf.where(step < self.ema_start_step, 0.0, decay)

  def update_ema(self, step):
    """G_ema ← d·G_ema + (1 − d)·G on all weights (BN statistics and SN vectors too).

    Written as G + d·(G_ema − G), which is the same average but exact where the two are
    equal: the copies of frozen weights (a transfer's) stay bit-identical to them."""
    d = self.ema_decay_at(step)
    for e, w in zip(self.G_ema.weights, self.G.weights):
      e.assign(w + d * (e - w))

  # -- sampling --------------------------------------------------------------------------
  def generate(self, z, y=None, truncation=1.0):
    """EMA-generator samples in [-1, 1] (inference mode)."""
    return self.G_ema(z, y, training=False, truncation=truncation)
