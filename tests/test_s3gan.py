"""S3GAN: rotation self-supervision, the classifier head and its predicted labels, variants.

The seeded, class-balanced label subset (`label_fraction=0.1` on 1,000 images of 10
balanced classes labels exactly 100, 10 per class) is tested in
tests/test_data.py::test_label_fraction_is_class_balanced_and_deterministic.
"""

import os
import types

import conftest
import gin
import numpy as np
import pytest
import tensorflow as tf

from conftest import ROOT
from tfgan_eff import config
from tfgan_eff.augment import Identity
from tfgan_eff.heads import LinearHead
from tfgan_eff.models.biggan import BigGANDiscriminator
from tfgan_eff.objectives import Adversarial, ClassifierTerm, RotationTerm, semi_supervised
from tfgan_eff.objectives.self_supervised import rotated_copies, rotation_rows
from tfgan_eff.rng import SampleRNG
from tfgan_eff.training.context import StepContext
from tfgan_eff.training.gan import GAN
from tfgan_eff.training.trainer import Trainer
from test_training import LINEAR_ADAM

# Module-scoped fixtures: keep this file in one worker process (pytest -n 2 --dist loadgroup).
pytestmark = pytest.mark.xdist_group("s3gan")


S3GAN_TERMS = "GAN.terms = [@Adversarial(), @RotationTerm(), @ClassifierTerm()]"


def _weights(variables):
  return [v.numpy().copy() for v in variables]


# -- rotations ---------------------------------------------------------------------------
def test_rotated_copies_hold_exactly_the_rotations_their_labels_say():
  x = np.random.RandomState(0).rand(3, 6, 6, 2).astype(np.float32)
  rotated, labels = rotated_copies(tf.constant(x))
  rotated, labels = rotated.numpy(), labels.numpy()
  np.testing.assert_array_equal(labels, [1, 1, 1, 2, 2, 2, 3, 3, 3])
  for i, k in enumerate(labels):
    src = x[i % 3]
    np.testing.assert_array_equal(rotated[i], np.rot90(src, k, axes=(0, 1)))
    for other in {1, 2, 3} - {k}:  # and no other rotation
      assert not np.allclose(rotated[i], np.rot90(src, other, axes=(0, 1)))
  # 90° counter-clockwise: the top-right pixel moves to the top-left.
  np.testing.assert_array_equal(rotated[0, 0, 0], x[0, 0, -1])


def test_rotation_rows_are_evenly_spaced_and_replica_independent():
  assert rotation_rows(8, 0.5) == [7]
  assert rotation_rows(32, 0.5) == [7, 15, 23, 31]
  assert rotation_rows(32, 0.25) == [15, 31]
  # The same global rows for one replica of 16 or two of 8 when 4/fraction divides 8.
  one = rotation_rows(16, 0.5)
  two = rotation_rows(8, 0.5) + [8 + r for r in rotation_rows(8, 0.5)]
  assert one == two == [7, 15]
  with pytest.raises(ValueError, match="rotates no image"):
    rotation_rows(4, 0.5)
  with pytest.raises(ValueError, match=r"in \(0, 1\]"):
    rotation_rows(8, 1.5)


# -- the class loss ----------------------------------------------------------------------
def _ctx(features, labels, true_labels):
  b = len(labels)
  return StepContext(
      gan=None, phase="d", step=tf.constant(0, tf.int64), d_step=tf.constant(0, tf.int64),
      rng=None, global_batch=b, local_batch=b, num_replicas=1, reals=None,
      labels=tf.constant(labels, tf.int32), true_labels=tf.constant(true_labels, tf.int32),
      z=None, fake_labels=None, fakes=None, real_aug_seed=None, fake_aug_seed=None,
      d_real={"features": tf.constant(features)})


def _classifier(num_classes=5, dim=6):
  term = semi_supervised.ClassifierTerm(use_sn=False)
  term.num_classes = num_classes
  term.head = LinearHead(num_classes, use_sn=False, name="classifier_head")
  term.head.build((None, dim))
  return term


def test_class_loss_ignores_unlabelled_examples():
  rs = np.random.RandomState(1)
  term = _classifier()
  labels = np.array([2, -1, 0, -1, -1, 4, 1, -1])
  true = np.array([2, 3, 0, 1, 4, 4, 1, 0])
  f1 = rs.randn(8, 6).astype(np.float32)
  f2 = f1.copy()
  f2[labels < 0] = 10.0 * rs.randn(4, 6)  # other unlabelled images
  loss1, m1 = term.d_loss(_ctx(f1, labels, true))
  loss2, m2 = term.d_loss(_ctx(f2, labels, true))
  assert float(loss1) == pytest.approx(float(loss2), rel=1e-6)
  assert float(m1["classifier_accuracy_labelled"]) == float(m2["classifier_accuracy_labelled"])
  # ... and it is the mean cross-entropy over the labelled rows only.
  logits = term.head(tf.constant(f1)).numpy()
  logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  known = labels >= 0
  expected = -np.mean(logp[known, labels[known]])
  assert float(loss1) == pytest.approx(expected, rel=1e-5)
  assert float(m1["label_fraction"]) == pytest.approx(0.5)
  pred = logits.argmax(-1)
  assert float(m1["label_accuracy_unlabelled"]) == pytest.approx(
      np.mean(pred[~known] == true[~known]))
  # A labelled example does count.
  f3 = f1.copy()
  f3[0] += 3.0
  assert abs(float(term.d_loss(_ctx(f3, labels, true))[0]) - float(loss1)) > 1e-4
  # No labelled example: zero loss, no NaN.
  loss0, _ = term.d_loss(_ctx(f1, np.full(8, -1), true))
  assert float(loss0) == 0.0


def test_classifier_term_needs_a_conditional_gan():
  ctx = types.SimpleNamespace(gan=types.SimpleNamespace(num_classes=0), D=None,
                              d_real={"features": tf.zeros([2, 6])})
  with pytest.raises(ValueError, match="unconditional"):
    semi_supervised.ClassifierTerm().build(ctx)


# -- configs -----------------------------------------------------------------------------
EXPECTED = {  # terms, label_fraction, conditional
    "digits/biggan_digits32_10pct_s3gan": (["adversarial", "rotation", "classifier"], 0.1, True),
    "digits/biggan_digits32_10pct_s2gan_co": (["adversarial", "classifier"], 0.1, True),
    "digits/biggan_digits32_ssgan": (["adversarial", "rotation"], 1.0, False),
    "digits/biggan_digits32": (["adversarial"], 1.0, True),
    "digits/biggan_digits32_unsupervised": (["adversarial"], 1.0, False),
    "s3gan_10pct": (["adversarial", "rotation", "classifier"], 0.1, True),
    "s3gan/biggan_imagenet128_5pct_s3gan": (["adversarial", "rotation", "classifier"], 0.05, True),
    "s3gan/biggan_imagenet128_20pct_s3gan": (["adversarial", "rotation", "classifier"], 0.2, True),
    "s3gan/biggan_cifar10_10pct_s3gan": (["adversarial", "rotation", "classifier"], 0.1, True),
    "s3gan/biggan_imagenet128_10pct_s2gan_co": (["adversarial", "classifier"], 0.1, True),
    "s3gan/biggan_imagenet128_ssgan": (["adversarial", "rotation"], 1.0, False),
    "biggan/biggan_imagenet128_unsupervised": (["adversarial"], 1.0, False),
}


def _parse_tiny(name):
  """The real gin file plus the tiny overrides (NUM_CLASSES = 10 unless it is 0)."""
  gin.clear_config()
  config.parse([os.path.join(ROOT, "gin", f"{name}.gin")], finalize=False)
  extra = ["NUM_CLASSES = 10"] if gin.query_parameter("%NUM_CLASSES") else []
  try:
    fraction = gin.query_parameter("ImageData.label_fraction")
  except ValueError:  # not bound: ImageData's default
    fraction = 1.0
  gin.parse_config(conftest.TINY_OVERLAY + extra)
  return fraction


def _one_step(name, model_dir):
  """Trains the tiny version of gin/<name>.gin for one step; -> (trainer, scalars)."""
  try:
    terms, fraction, conditional = EXPECTED[name]
    assert _parse_tiny(name) == pytest.approx(fraction)
    t = Trainer(model_dir=model_dir, strategy=tf.distribute.OneDeviceStrategy("/cpu:0"))
    assert [x.name for x in t.gan.terms] == terms and bool(t.gan.num_classes) == conditional
    t.train()
  finally:
    gin.clear_config()
  s = conftest.scalars(model_dir)
  assert all(np.isfinite(v) for v in s.values())
  if "rotation" in terms:
    for k in ("d_rotation_loss", "g_rotation_loss", "rotation_accuracy_real",
              "rotation_accuracy_fake"):
      assert k in s
    assert 0.0 < s["d_rotation_loss"] < 20.0
  if "classifier" in terms:
    for k in ("class_loss", "classifier_accuracy_labelled", "label_accuracy_unlabelled"):
      assert k in s
    assert 0.0 <= s["label_fraction"] <= 1.0
    assert 0.0 <= s["label_accuracy_unlabelled"] <= 1.0
  return t, s


@pytest.fixture(scope="module")
def s3gan_run(tmp_path_factory):
  """One step of the tiny S3GAN quickstart, shared by the tests below (one build)."""
  return _one_step("digits/biggan_digits32_10pct_s3gan", str(tmp_path_factory.mktemp("s3gan")))


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_config_parses_into_its_variant(name):
  try:
    terms, fraction, conditional = EXPECTED[name]
    assert _parse_tiny(name) == pytest.approx(fraction)
    gan = GAN()
    assert [t.name for t in gan.terms] == terms
    assert bool(gan.num_classes) == conditional
  finally:
    gin.clear_config()


def test_quickstart_s3gan_runs_a_step(s3gan_run):
  _, s = s3gan_run
  # 10% of 64 images are labelled, so a batch of 8 may hold none: then the loss is 0.
  if s["label_fraction"] > 0:
    assert 0.0 < s["class_loss"] < 20.0
  else:
    assert s["class_loss"] == 0.0 and s["classifier_accuracy_labelled"] == 0.0


def test_heads_are_trained_by_d_optimizer_and_checkpointed(s3gan_run):
  gan = s3gan_run[0].gan
  heads = gan.terms[1].d_variables() + gan.terms[2].d_variables()
  assert len(heads) == 4  # kernel + bias of each (u is not trainable)
  ids = {id(v) for v in gan.d_variables()}
  assert all(id(v) in ids for v in heads)
  items = gan.checkpoint_items()
  assert set(items["term1_rotation"]) == {"linear/kernel", "linear/bias", "linear/sn_u"}
  assert items["term2_classifier"]["linear/kernel"].shape == (gan.D.feature_dim, 10)
  slots = [v for v in gan.d_optimizer.variables if "velocity" in v.path]
  assert len(slots) == len(gan.d_variables())
  saved = tf.train.load_checkpoint(s3gan_run[0].manager.latest_checkpoint)
  names = saved.get_variable_to_shape_map()
  # tf.train.Checkpoint escapes "/" in a dict key as ".S".
  assert any(k.startswith("term2_classifier/linear.Skernel") for k in names)
  assert any(k.startswith("term1_rotation/linear.Skernel") for k in names)


# -- terms on a tiny discriminator -------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_d():
  """A 32 px BigGAN D (ch=4, no SN, so repeated calls give identical outputs)."""
  d = BigGANDiscriminator(resolution=32, channels=1, ch=4, num_classes=10,
                          attention_resolution=0, use_sn=False)
  d(tf.zeros([2, 32, 32, 1]), tf.zeros([2], tf.int32))
  return d


def _step_ctx(d, terms, labels, phase="d"):
  b = len(labels)
  x = tf.random.stateless_uniform([b, 32, 32, 1], seed=[3, 4], minval=-1.0, maxval=1.0)
  fakes = tf.random.stateless_uniform([b, 32, 32, 1], seed=[5, 6], minval=-1.0, maxval=1.0)
  gan = types.SimpleNamespace(num_classes=10, D=d, terms=terms, augment=Identity())
  labels = tf.constant(labels, tf.int32)
  ctx = StepContext(
      gan=gan, phase=phase, step=tf.constant(0, tf.int64), d_step=tf.constant(0, tf.int64),
      rng=SampleRNG([0, 0]), global_batch=b, local_batch=b, num_replicas=1, reals=x,
      labels=labels, true_labels=tf.range(b) % 10, z=None, fake_labels=tf.range(b) % 10,
      fakes=fakes, real_aug_seed=tf.constant([1, 2], tf.int64),
      fake_aug_seed=tf.constant([3, 4], tf.int64), real_labels_for_d=labels)
  ctx.d_real = dict(d(x, labels, training=True))
  ctx.d_fake = dict(d(fakes, ctx.fake_labels, training=True))
  return ctx


def test_rotation_term_feeds_each_orientation_with_its_label(tiny_d):
  term = RotationTerm(fraction=0.5, weight_d=1.0, weight_g=0.2)
  ctx = _step_ctx(tiny_d, [term], [0] * 8)
  term.build(ctx)
  assert not term.head.use_sn  # follows D
  assert BigGANDiscriminator(resolution=32, ch=4).use_sn  # the default D: SN heads
  loss, m = term.d_loss(ctx)
  # By hand: row 7 (the only one with fraction 0.5 of 8) in its four orientations.
  x7 = ctx.reals.numpy()[7]
  group = np.stack([np.rot90(x7, k, axes=(0, 1)) for k in range(4)])
  logits = term.head(tiny_d(tf.constant(group))["features"]).numpy()
  p = np.exp(logits - logits.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  expected = -np.mean(np.log(p[np.arange(4), np.arange(4)] + 1e-10))  # compare_gan's form
  assert float(loss) == pytest.approx(expected, rel=1e-4)
  assert float(m["rotation_accuracy_real"]) == pytest.approx(
      np.mean(logits.argmax(-1) == np.arange(4)))
  g_loss, gm = term.g_loss(ctx)  # the same on the fakes, weighted 0.2
  assert "rotation_accuracy_fake" in gm
  assert float(g_loss) == pytest.approx(0.2 * float(gm["g_rotation_loss"]), rel=1e-6)


def _head_grads(d, labels, soft=False):
  """Gradients of the D loss (adversarial + class) on the classifier head, GAN-labelled."""
  term = ClassifierTerm(soft=soft)
  ctx = _step_ctx(d, [term], labels)
  term.build(ctx)
  with tf.GradientTape(persistent=True) as tape:
    ctx.d_real = dict(d(ctx.reals, ctx.labels, training=True))
    before = ctx.d_real["logits"]
    GAN._label_unlabelled_reals(ctx.gan, ctx)  # pylint: disable=protected-access
    adv, _ = Adversarial().d_loss(ctx)
    cls, _ = term.d_loss(ctx)
    total = adv + cls
    leak = tf.reduce_sum(d.project(ctx.d_real["features"], tf.nn.softmax(term.logits(ctx))))
  projected = not np.allclose(before.numpy(), ctx.d_real["logits"].numpy())
  heads = term.d_variables()

  def size(grads):
    return max(0.0 if g is None else float(tf.reduce_max(tf.abs(g))) for g in grads)

  return (projected, size(tape.gradient(adv, heads)), size(tape.gradient(total, heads)),
          size(tape.gradient(leak, heads)))


@pytest.mark.parametrize("soft", [False, True])
def test_no_gradient_from_the_projection_into_the_classifier_head(tiny_d, soft):
  projected, adv, total, leak = _head_grads(tiny_d, [-1] * 8, soft=soft)
  assert projected  # the unlabelled reals were projected on predicted labels ...
  assert adv == 0.0 and total == 0.0  # ... which do not train the head
  assert leak > 0.0  # (without the GAN's stop-gradient they would)
  _, adv, total, _ = _head_grads(tiny_d, [3, -1, -1, 5, -1, -1, -1, -1], soft=soft)
  assert adv == 0.0 and total > 0.0  # only the labelled reals' class loss does


def test_heads_are_d_variables(tiny_d):
  rot, cls = RotationTerm(), ClassifierTerm()
  ctx = _step_ctx(tiny_d, [rot, cls], [0] * 8)
  rot.build(ctx)
  cls.build(ctx)
  gan = types.SimpleNamespace(D=tiny_d, terms=[Adversarial(), rot, cls])
  d_vars = GAN.d_variables(gan)
  assert len(d_vars) == len(tiny_d.trainable_variables) + 4
  assert cls.head.dense.kernel.shape == (tiny_d.feature_dim, 10)
  assert rot.head.dense.kernel.shape == (tiny_d.feature_dim, 4)


def _unlabelled_batch(b=8):
  x = tf.random.stateless_uniform([b, 32, 32, 1], seed=[3, 4], minval=-1.0, maxval=1.0)
  return {"images": x, "labels": tf.fill([b], -1), "true_labels": tf.range(b) % 10}


def test_d_step_on_unlabelled_reals_leaves_the_classifier_head(s3gan_run):
  trainer = s3gan_run[0]
  gan = trainer.gan
  head_vars = gan.terms[2].d_variables()
  before_head, before_d = _weights(head_vars), _weights(gan.D.trainable_variables)
  trainer.strategy.run(gan.d_step, args=(_unlabelled_batch(), tf.constant(0, tf.int64),
                                         tf.constant(0, tf.int64)))
  for a, v in zip(before_head, head_vars):
    np.testing.assert_array_equal(a, v.numpy())
  assert max(np.abs(a - v.numpy()).max()
             for a, v in zip(before_d, gan.D.trainable_variables)) > 1e-5


# -- replicas ----------------------------------------------------------------------------
@pytest.mark.slow
def test_s3gan_one_vs_two_replicas_give_the_same_weights(tiny_gin, tmp_path):
  # fraction 1.0: per-replica batches of 4 rotate row 3, one replica of 8 rows 3 and 7.
  tiny_gin(*LINEAR_ADAM, S3GAN_TERMS, "RotationTerm.fraction = 1.0",
           "ImageData.label_fraction = 0.5")
  runs = []
  for name, strategy in (("one", tf.distribute.OneDeviceStrategy("/cpu:0")),
                         ("two", conftest.mirrored())):
    t = Trainer(model_dir=str(tmp_path / name), strategy=strategy, train_steps=1)
    before = _weights(t.gan.d_variables())
    t.train()
    runs.append((t, before))
  (t1, before), (t2, _) = runs
  w1 = _weights(t1.gan.G.weights) + _weights(t1.gan.d_variables())
  w2 = _weights(t2.gan.G.weights) + _weights(t2.gan.d_variables())
  for a, b in zip(w1, w2):
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=5e-5)
  heads = t1.gan.terms[1].d_variables() + t1.gan.terms[2].d_variables()
  n_d = len(t1.gan.D.trainable_variables)
  moved = [np.abs(a - v.numpy()).max() for a, v in zip(before[n_d:], heads)]
  assert min(moved) > 1e-4  # both heads were trained
  s1, s2 = conftest.scalars(str(tmp_path / "one")), conftest.scalars(str(tmp_path / "two"))
  for k in ("class_loss", "d_rotation_loss", "label_fraction", "label_accuracy_unlabelled",
            "rotation_accuracy_real", "g_rotation_loss"):
    assert s1[k] == pytest.approx(s2[k], rel=1e-3, abs=1e-5), k
