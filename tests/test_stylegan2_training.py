"""StyleGAN2 training: path-length and R1 regularization, EMA by half-life, replica
equivalence through the Trainer, and the SavedModel export with truncation_psi/noise_mode."""

import functools
import math
import os
import subprocess
import sys
import types

import conftest
import numpy as np
import pytest
import tensorflow as tf

from conftest import ROOT
from test_training import LINEAR_ADAM, _one_device, _weights
from tfgan_eff import export
from tfgan_eff.augment.base import Augmenter
from tfgan_eff.augment.diffaugment import DiffAugment
from tfgan_eff.models.stylegan2 import StyleGAN2Discriminator, StyleGAN2Generator
from tfgan_eff.objectives.adversarial import R1Penalty
from tfgan_eff.objectives.path_length import PathLengthPenalty, path_lengths
from tfgan_eff.rng import SampleRNG
from tfgan_eff.training.gan import GAN
from tfgan_eff.training.trainer import Trainer

TINY_G = dict(resolution=16, z_dim=8, w_dim=8, mapping_layers=2, fmap_base=128, fmap_max=8)


def tiny_g(**kw):
  g = StyleGAN2Generator(**{**TINY_G, "channels": 1, **kw})
  g.build(None)
  return g


def set_noise_strength(g, value):
  for v in g.trainable_variables:
    if "strength" in v.path:
      v.assign(value)


class _Ctx:
  """The parts of a StepContext the regularizers read (one replica)."""

  def __init__(self, G=None, step=0, seed=0, batch=8, reals=None, D=None, augment=None):
    self.G, self.D = G, D
    self.gan = types.SimpleNamespace(sample_labels=lambda rng, b: None)
    self.rng = SampleRNG([seed, 0])
    self.step = self.d_step = tf.constant(step, tf.int64)
    self.local_batch = self.global_batch = batch
    self.num_replicas = 1
    self.reals, self.real_labels_for_d = reals, None
    self._augment = augment or (lambda x: x)

  def mean(self, per_example):
    return tf.reduce_sum(per_example) / self.global_batch

  def scalar(self, v):
    return v

  def augment_reals(self, x):
    return self._augment(x)


# ------------------------------------------------------------------ path-length penalty

def test_path_lengths_match_an_explicit_jacobian():
  g = tiny_g()
  set_noise_strength(g, 0.5)  # the noise inputs must come from the same draws
  ws = g.mapping(tf.random.normal([3, 8]), truncation=1.0)
  ws = ws + tf.random.normal(ws.shape, stddev=0.3)  # different w per layer
  ours = path_lengths(g, ws, SampleRNG([4, 2]))
  rng = SampleRNG([4, 2])
  with tf.GradientTape() as tape:
    tape.watch(ws)
    images = g.synthesis(ws, training=True, rng=rng)
  jac = tape.batch_jacobian(images, ws)  # [3, 16, 16, 1, num_ws, 8]
  y = rng.normal(images.shape) / math.sqrt(16 * 16)
  jty = np.einsum("bhwc,bhwcld->bld", y.numpy(), jac.numpy())
  ref = np.sqrt((jty ** 2).sum(-1).mean(-1))
  np.testing.assert_allclose(ours, ref, rtol=1e-4)
  assert (ref > 0).all()


def test_path_length_penalty_value_pl_mean_update_and_lazy_steps():
  g = tiny_g()
  term = PathLengthPenalty(weight=2.0, interval=4, decay=0.01, batch_shrink=2)
  term.build(_Ctx(g))
  with tf.GradientTape() as tape:
    loss, m = term.g_loss(_Ctx(g, step=0, seed=1))
  lengths = PathLengthPenalty(batch_shrink=2).lengths(_Ctx(g, seed=1)).numpy()  # same draws
  assert lengths.shape == (4,)
  a1 = 0.0 + 0.01 * (lengths.mean() - 0.0)
  np.testing.assert_allclose(term.pl_mean.numpy(), a1, rtol=1e-5)
  np.testing.assert_allclose(m["pl_penalty"], ((lengths - a1) ** 2).mean(), rtol=1e-4)
  np.testing.assert_allclose(loss, 2.0 * 4 * ((lengths - a1) ** 2).mean(), rtol=1e-4)
  grads = tape.gradient(loss, g.trainable_variables)
  by_name = {v.path: gr for v, gr in zip(g.trainable_variables, grads)}
  assert all(gr is not None for p, gr in by_name.items() if "fc0/kernel" in p)  # mapping
  assert any("fc0/kernel" in p for p in by_name)
  assert all(by_name[p] is not None for p in by_name if "conv" in p and "kernel" in p)
  # steps 1-3 are skipped (no loss, a unchanged), step 4 applies it again
  for step in (1, 2, 3):
    loss, m = term.g_loss(_Ctx(g, step=step, seed=step))
    assert float(loss) == 0.0 and float(m["pl_penalty"]) == 0.0
    np.testing.assert_allclose(term.pl_mean.numpy(), a1, rtol=1e-6)
  term.g_loss(_Ctx(g, step=4, seed=4))
  l4 = PathLengthPenalty(batch_shrink=2).lengths(_Ctx(g, seed=4)).numpy()
  np.testing.assert_allclose(term.pl_mean.numpy(), a1 + 0.01 * (l4.mean() - a1), rtol=1e-5)
  # lazy scaling: the same draw with interval 1 gives a quarter of the loss
  every = PathLengthPenalty(weight=2.0, interval=1, batch_shrink=2)
  every.build(_Ctx(g))
  np.testing.assert_allclose(4 * every.g_loss(_Ctx(g, step=0, seed=1))[0],
                             2.0 * 4 * ((lengths - a1) ** 2).mean(), rtol=1e-4)


def test_path_length_penalty_errors_name_the_fix():
  with pytest.raises(ValueError, match="batch_shrink = 3 does not divide.*8"):
    term = PathLengthPenalty(batch_shrink=3)
    term.build(_Ctx(tiny_g(), batch=1))  # load_gan builds with a batch of 1: no error yet
    term.g_loss(_Ctx(tiny_g()))
  with pytest.raises(ValueError, match="mapping.*Remove @PathLengthPenalty"):
    PathLengthPenalty().build(_Ctx(types.SimpleNamespace()))


# ------------------------------------------------------------------ R1

def test_r1_on_a_linear_discriminator_is_the_analytic_gradient_norm():
  rng = np.random.default_rng(0)
  w = tf.Variable(rng.normal(size=[1, 4, 4, 2]).astype(np.float32))
  d = lambda x, y, training: {"logits": tf.reduce_sum(x * w, axis=[1, 2, 3]) + 3.0}
  reals = tf.constant(rng.normal(size=[8, 4, 4, 2]).astype(np.float32))
  norm2 = float(tf.reduce_sum(w ** 2))  # ‖∇_x <w, x>‖² for every x
  with tf.GradientTape() as tape:
    loss, m = R1Penalty(gamma=0.5).d_loss(_Ctx(reals=reals, D=d))
  np.testing.assert_allclose(m["r1_penalty"], norm2, rtol=1e-5)
  np.testing.assert_allclose(loss, 0.25 * norm2, rtol=1e-5)
  np.testing.assert_allclose(tape.gradient(loss, w), 0.5 * w.numpy(), rtol=1e-5)  # γ·w
  # through an augmentation x -> 2x: w.r.t. the reals the gradient is 2w, w.r.t. T(x) it is w
  double = lambda x: 2.0 * x
  np.testing.assert_allclose(R1Penalty(gamma=0.5).d_loss(
      _Ctx(reals=reals, D=d, augment=double))[1]["r1_penalty"], 4 * norm2, rtol=1e-5)
  np.testing.assert_allclose(R1Penalty(gamma=0.5, wrt="augmented").d_loss(
      _Ctx(reals=reals, D=d, augment=double))[1]["r1_penalty"], norm2, rtol=1e-5)


def test_lazy_r1_applies_every_interval_d_steps_scaled_by_the_interval():
  w = tf.ones([1, 4, 4, 1])
  d = lambda x, y, training: {"logits": tf.reduce_sum(x * w, axis=[1, 2, 3])}
  reals = tf.zeros([8, 4, 4, 1])
  lazy = R1Penalty(gamma=1.0, interval=16)
  losses = [float(lazy.d_loss(_Ctx(reals=reals, D=d, step=s))[0]) for s in (0, 1, 15, 16)]
  np.testing.assert_allclose(losses, [16 * 0.5 * 16, 0.0, 0.0, 16 * 0.5 * 16], rtol=1e-6)


# ------------------------------------------------------------------ EMA

def test_ema_by_half_life_and_ramp_up():
  kw = dict(resolution=16, fmap_base=64, fmap_max=4)
  gan = GAN(generator=functools.partial(StyleGAN2Generator, z_dim=4, w_dim=4,
                                        mapping_layers=1, **kw),
            discriminator=functools.partial(StyleGAN2Discriminator, **kw),
            ema_kimg=10.0, ema_rampup=0.05)
  gan.global_batch = 32
  # half-life 10k images: decay 0.5 ** (32 / 10,000) once 0.05 · seen > 10,000
  np.testing.assert_allclose(gan.ema_decay_at(10_000), 0.5 ** (32 / 10_000), rtol=1e-6)
  # ramp-up: after 10 steps (320 images) the half-life is 0.05 · 320 = 16 images
  np.testing.assert_allclose(gan.ema_decay_at(10), 0.5 ** (32 / 16), rtol=1e-6)
  np.testing.assert_allclose(gan.ema_decay_at(1), 0.5 ** (32 / 1.6), rtol=1e-5)
  gan.ema_rampup = None
  np.testing.assert_allclose(gan.ema_decay_at(1), 0.5 ** (32 / 10_000), rtol=1e-6)


# ------------------------------------------------------------------ separate lazy steps

def _two_phase_gan(terms, **gan_kwargs):
  """A tiny unconditional StyleGAN2 GAN, built, with Adam at beta_1 = 0 (as StyleGAN2)."""
  from tfgan_eff.objectives.adversarial import Adversarial
  from tfgan_eff.training.optimizers import adam
  gan = GAN(generator=functools.partial(StyleGAN2Generator, **TINY_G, channels=1,
                                        style_mixing_prob=0.0),
            discriminator=functools.partial(StyleGAN2Discriminator, resolution=16, channels=1,
                                            fmap_base=128, fmap_max=8),
            terms=[Adversarial(loss="non_saturating"), *terms],
            g_optimizer=adam(0.01, 0.0, 0.99), d_optimizer=adam(0.01, 0.0, 0.99), seed=3,
            **gan_kwargs)
  gan.build(8, (16, 16, 1))
  return gan


def test_separate_regularization_steps_are_the_reference_phases():
  """R1 and path length with `separate_step`: on a due step, the ordinary update and then an
  optimizer step on the penalty alone, at the updated weights, with the step's reals and
  latents; i.e. exactly two updates: the main loss without the penalty, then the penalty
  alone (here made by swapping the terms of an identical GAN between two calls)."""
  batch = {"images": tf.random.stateless_uniform([8, 16, 16, 1], [4, 5], -1.0, 1.0),
           "labels": tf.zeros([8], tf.int32), "true_labels": tf.zeros([8], tf.int32)}
  step, zero = tf.constant(0, tf.int64), tf.constant(0, tf.int64)
  r1 = dict(gamma=10.0, interval=4)
  pl = dict(weight=2.0, interval=4, batch_shrink=2)
  sep = _two_phase_gan([R1Penalty(**r1, separate_step=True),
                        PathLengthPenalty(**pl, separate_step=True)])
  m = sep.d_step(batch, step, zero)
  sep.g_step(batch, step)
  assert float(m["r1_penalty"]) > 0 and float(m["d_reg_loss"]) > 0
  assert int(sep.d_optimizer.iterations) == 2 and int(sep.g_optimizer.iterations) == 2

  ref = _two_phase_gan([])  # same seed: same initial weights
  for a, b in zip(_weights(ref.D) + _weights(ref.G), _weights(sep.D) + _weights(sep.G)):
    assert a.shape == b.shape
  adversarial = ref.terms[0]
  ref.d_step(batch, step, zero)                     # Dmain
  ref.terms = [R1Penalty(**r1)]                     # Dreg: the penalty alone, folded
  ref.terms[0].build(None)
  ref.d_step(batch, step, zero)
  ref.terms = [adversarial]
  ref.g_step(batch, step)                           # Gmain
  pen = PathLengthPenalty(**pl)
  pen.pl_mean = sep.terms[2].pl_mean.__class__(0.0, trainable=False)
  ref.terms = [pen]                                 # Greg
  ref.g_step(batch, step)
  for name, a, b in zip([w.path for w in sep.D.weights + sep.G.weights],
                        _weights(ref.D) + _weights(ref.G), _weights(sep.D) + _weights(sep.G)):
    if name.endswith("w_avg"):  # the simulated Greg call's own G pass moved it once more
      continue
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=name)
  np.testing.assert_allclose(float(pen.pl_mean), float(sep.terms[2].pl_mean), rtol=1e-6)

  # Not due (D step 1, G step 1): the ordinary step only, the penalties not computed.
  m = sep.d_step(batch, tf.constant(1, tf.int64), zero)
  sep.g_step(batch, tf.constant(1, tf.int64))
  assert float(m["r1_penalty"]) == 0.0
  assert int(sep.d_optimizer.iterations) == 3 and int(sep.g_optimizer.iterations) == 3


class _RecordingAugment(Augmenter):
  """DiffAugment translation that records the seed of every draw it is asked for."""

  def __init__(self):
    self.inner, self.seeds = DiffAugment(policy="translation"), []

  def __call__(self, images, rng):
    self.seeds.append(tuple(rng.seed.numpy().tolist()))
    return self.inner(images, rng)


@pytest.mark.parametrize("mode", ["same", "fresh"])
def test_separate_r1_step_augmentation_draw(mode):
  """`GAN.reg_step_augmentation`: the separate R1 step sees the ordinary step's augmented
  reals ('same') or a new draw ('fresh', as the reference's Dreg phase), and its penalty is
  R1 at that draw with D as the ordinary step left it."""
  batch = {"images": tf.random.stateless_uniform([8, 16, 16, 1], [4, 5], -1.0, 1.0),
           "labels": tf.zeros([8], tf.int32), "true_labels": tf.zeros([8], tf.int32)}
  step, zero = tf.constant(0, tf.int64), tf.constant(0, tf.int64)
  aug = _RecordingAugment()
  r1 = dict(gamma=10.0, interval=4)
  sep = _two_phase_gan([R1Penalty(**r1, separate_step=True)], augment=aug,
                       reg_step_augmentation=mode)
  m = sep.d_step(batch, step, zero)
  real, fake, reg = aug.seeds  # the main pass's reals and fakes, then R1's reals
  assert real != fake
  assert (reg == real) if mode == "same" else (reg not in (real, fake))

  ref = _two_phase_gan([], augment=_RecordingAugment())  # Dmain alone, same weights and draws
  ref.d_step(batch, step, zero)
  assert ref.augment.seeds == [real, fake]
  ctx = ref._context("d", step, zero, batch)
  ctx.real_aug_seed = tf.constant(reg, tf.int64)
  want = float(tf.reduce_mean(R1Penalty(**r1).penalty(ctx)))
  np.testing.assert_allclose(float(m["r1_penalty"]), want, rtol=1e-5)


def test_reg_step_augmentation_is_checked():
  with pytest.raises(ValueError, match="reg_step_augmentation must be 'same' or 'fresh'"):
    _two_phase_gan([], reg_step_augmentation="new")


# ------------------------------------------------------------------ Trainer, 2 replicas

# The StyleGAN2 quickstart shrunk by gin/base/tiny.gin to 16x16, R1 every step, plain Adam.
SG2_TINY = [
    "include 'gin/digits/stylegan2_digits32.gin'", *conftest.TINY_OVERLAY, "RESOLUTION = 16",
    "GAN.terms = [@Adversarial(), @R1Penalty()]", "D_REG_INTERVAL = 1", "R1Penalty.gamma = 1.0",
    "GAN.ema_kimg = 0.01", *LINEAR_ADAM,
]
WITH_PL = ["GAN.terms = [@Adversarial(), @R1Penalty(), @PathLengthPenalty()]",
           "PathLengthPenalty.interval = 1"]


SEPARATE = ["GAN.terms = [@Adversarial(), @R1Penalty(), @PathLengthPenalty()]",
            "R1Penalty.interval = 2", "R1Penalty.separate_step = True",
            "PathLengthPenalty.interval = 2", "PathLengthPenalty.separate_step = True"]


@pytest.mark.parametrize("extra", [
    [], pytest.param(WITH_PL, marks=pytest.mark.slow, id="path_length"),
    pytest.param(SEPARATE, marks=pytest.mark.slow, id="separate_reg_steps")])
def test_stylegan2_one_vs_two_replicas_give_the_same_weights(tiny_gin, tmp_path, extra):
  """Noise inputs, style mixing, minibatch std, w_avg, R1 (and pl_mean) do not depend on
  the replica count (~40 s; with path-length regularization ~55 s, marked slow; with the
  separate lazy-regularization steps, due at step 0, likewise)."""
  tiny_gin(*LINEAR_ADAM, *SG2_TINY, *extra)
  t1 = Trainer(model_dir=str(tmp_path / "one"), strategy=_one_device(), train_steps=1)
  before = _weights(t1.gan.G)
  t1.train()
  t2 = Trainer(model_dir=str(tmp_path / "two"), strategy=conftest.mirrored(), train_steps=1)
  t2.train()
  names = [w.path for w in t1.gan.G.weights + t1.gan.D.weights + t1.gan.G_ema.weights]
  for name, a, b in zip(names, _weights(t1.gan.G) + _weights(t1.gan.D) + _weights(t1.gan.G_ema),
                        _weights(t2.gan.G) + _weights(t2.gan.D) + _weights(t2.gan.G_ema)):
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=5e-5, err_msg=name)
  moved = [np.abs(a - b).max() for a, b in zip(before, _weights(t1.gan.G))]
  assert max(moved) > 1e-3  # the step did change G
  if extra:
    pl, pl2 = [[t for t in t.gan.terms if t.name == "path_length"][0] for t in (t1, t2)]
    assert float(pl.pl_mean.numpy()) > 0
    np.testing.assert_allclose(pl2.pl_mean.numpy(), pl.pl_mean.numpy(), rtol=1e-4)
    saved = tf.train.load_checkpoint(t1.manager.latest_checkpoint).get_variable_to_shape_map()
    assert any("pl_mean" in k for k in saved)  # checkpointed


def test_logs_show_lazy_penalties_between_the_steps_they_run(tiny_gin, tmp_path):
  """R1 and path length every 4 steps, as separate steps: their metrics are 0 on the steps
  they skip; the summaries (and console log) show the latest value they had, not that 0
  (with R1 every 16 D steps and a summary every 50 steps, a 0 was all a user saw)."""
  tiny_gin(*SG2_TINY, "GAN.terms = [@Adversarial(), @R1Penalty(), @PathLengthPenalty()]",
           "R1Penalty.interval = 4", "R1Penalty.separate_step = True",
           "PathLengthPenalty.interval = 4", "PathLengthPenalty.separate_step = True",
           "Trainer.summary_every = 1", "Trainer.log_every = 1")
  Trainer(model_dir=str(tmp_path / "run"), strategy=_one_device(), train_steps=6).train()
  scalars = {}
  for name in os.listdir(tmp_path / "run" / "train"):
    for e in tf.compat.v1.train.summary_iterator(str(tmp_path / "run" / "train" / name)):
      for v in e.summary.value:
        if v.HasField("tensor") and not v.tensor.string_val:
          scalars.setdefault(v.tag.split("/")[-1], {})[e.step] = float(tf.make_ndarray(v.tensor))
  assert not [k for k in scalars if k.endswith("_applied")]
  # Step index 0 and 4 run the penalties; they are summarised at steps 1 and 5.
  for k in ("r1_penalty", "d_reg_loss", "pl_penalty", "pl_length", "g_reg_loss"):
    got = [scalars[k][step] for step in range(1, 7)]
    assert got[0] > 0 and got[4] > 0 and got[4] != got[0], (k, got)
    assert got[1] == got[2] == got[3] == got[0] and got[5] == got[4], (k, got)
  assert scalars["pl_mean"][2] == scalars["pl_mean"][1] > 0


# ------------------------------------------------------------------ export

def test_export_truncation_psi_and_noise_mode_in_a_fresh_process(tmp_path):
  g = tiny_g(channels=3)
  set_noise_strength(g, 1.0)  # strengths start at 0, which would hide the noise
  export.export(g, str(tmp_path / "export"))
  code = (
      "import tensorflow as tf, numpy as np\n"
      f"m = tf.saved_model.load(r'{tmp_path / 'export'}')\n"
      "z = tf.random.normal([3, int(m.z_dim)], seed=1)\n"
      "a, b = m.generate(z), m.generate(z, noise_mode=tf.constant('const'))\n"
      "r1 = m.generate(z, truncation_psi=tf.constant(1.0), noise_mode=tf.constant('random'))\n"
      "r2 = m.generate(z, noise_mode=tf.constant('random'))\n"
      "t0 = m.signatures['serving_default'](z=z, truncation_psi=tf.constant(0.0), "
      "noise_mode=tf.constant('const'))['images'].numpy()\n"
      "print(a.dtype.name, tuple(a.shape), int(m.has_noise), bool((a.numpy() == b.numpy()).all()),"
      " bool((r1.numpy() != r2.numpy()).any()), bool((t0 == t0[:1]).all()),"
      " bool((t0 != a.numpy()).any()))\n")
  env = {**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "2"}
  out = subprocess.run([sys.executable, "-c", code], check=True, env=env,
                       capture_output=True, text=True).stdout.strip().splitlines()[-1]
  assert out == "uint8 (3, 16, 16, 3) 1 True True True True"
