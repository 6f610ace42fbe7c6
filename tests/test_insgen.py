"""InsGen: InfoNCE, key queues, the momentum D and heads, ablation switches, replicas, configs."""

import os

import conftest
import gin
import numpy as np
import pytest
import tensorflow as tf

from conftest import ROOT
from tfgan_eff import config
from tfgan_eff.augment import Identity
from tfgan_eff.heads.contrastive import InstanceHead, info_nce, replica_gather
from tfgan_eff.objectives import InstanceDiscrimination
from tfgan_eff.objectives.instance import default_queue_size
from tfgan_eff.training.gan import GAN
from tfgan_eff.training.runs import load_gan
from tfgan_eff.training.trainer import Trainer
from test_training import LINEAR_ADAM

# Module-scoped fixtures: keep this file in one worker process (pytest -n 2 --dist loadgroup).
pytestmark = pytest.mark.xdist_group("insgen")


INSGEN_TERMS = "GAN.terms = [@Adversarial(), @InstanceDiscrimination()]"
DIFFAUG = ["GAN.augment = @DiffAugment()", "DiffAugment.policy = 'color,translation,cutout'"]
D_METRICS = ("instance_real_loss", "instance_fake_loss", "instance_accuracy_real",
             "instance_accuracy_fake", "queue_fill_real", "queue_fill_fake")
G_METRICS = ("instance_diversity_loss", "instance_accuracy_diversity")


def _weights(variables):
  return [v.numpy().copy() for v in variables]


def _unit(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


# -- InfoNCE -------------------------------------------------------------------------------
def test_info_nce_equals_a_hand_computation():
  q = np.array([[1.0, 0.0], [0.6, 0.8]], np.float32)
  k = np.array([[0.8, 0.6], [0.0, 1.0]], np.float32)
  queue = np.array([[0.0, 1.0], [-1.0, 0.0], [0.6, -0.8]], np.float32)
  loss, correct = info_nce(tf.constant(q), tf.constant(k), tf.constant(queue), 0.2)
  # Row 0: l_pos = 0.8, l_neg = (0, -1, 0.6); row 1: l_pos = 0.8, l_neg = (0.8, -0.6, -0.28).
  logits0 = np.array([0.8, 0.0, -1.0, 0.6]) / 0.2
  logits1 = np.array([0.8, 0.8, -0.6, -0.28]) / 0.2
  expected = [np.log(np.exp(l).sum()) - l[0] for l in (logits0, logits1)]
  np.testing.assert_allclose(loss.numpy(), expected, rtol=1e-6)
  assert expected[0] == pytest.approx(
      -np.log(np.exp(4) / (np.exp(4) + np.exp(0) + np.exp(-5) + np.exp(3))))
  assert bool(correct.numpy()[0])  # 0.8 beats 0, -1 and 0.6


def test_info_nce_top1_counts_a_beaten_positive_as_wrong():
  q = np.array([[1.0, 0.0]], np.float32)
  k = np.array([[0.0, 1.0]], np.float32)           # l_pos = 0
  queue = np.array([[1.0, 0.0], [0.0, -1.0]], np.float32)  # l_neg = 1, 0
  loss, correct = info_nce(q, k, queue, 0.5)
  assert not bool(correct.numpy()[0])
  assert float(loss[0]) == pytest.approx(np.log(1 + np.exp(2) + 1))


def test_keys_and_queue_carry_no_gradient():
  rs = np.random.RandomState(0)
  q, k, queue = (tf.Variable(_unit(rs.randn(*s)).astype(np.float32))
                 for s in ((3, 4), (3, 4), (5, 4)))
  with tf.GradientTape() as tape:
    loss, _ = info_nce(q, k, queue, 0.2)
    total = tf.reduce_sum(loss)
  gq, gk, gqueue = tape.gradient(total, [q, k, queue])
  assert gk is None and gqueue is None
  assert float(tf.reduce_max(tf.abs(gq))) > 0.0


# -- queues --------------------------------------------------------------------------------
def _queue(size, dim=2):
  head = InstanceHead(size, dim=dim, hidden=3, name="real")
  head.build((None, 4, 4, 6))
  return head


def test_queue_enqueues_in_fifo_order_and_wraps():
  head = _queue(5)
  initial = head.queue.numpy().copy()
  np.testing.assert_allclose(np.linalg.norm(initial, axis=-1), 1.0, rtol=1e-5)
  assert float(head.fill()) == 0.0
  a = np.arange(6, dtype=np.float32).reshape(3, 2) + 1
  head.enqueue(tf.constant(a))
  np.testing.assert_array_equal(head.queue.numpy()[:3], a)
  np.testing.assert_array_equal(head.queue.numpy()[3:], initial[3:])
  assert int(head.queue_ptr.numpy()) == 3 and float(head.fill()) == pytest.approx(0.6)
  b = -np.arange(6, dtype=np.float32).reshape(3, 2) - 1
  head.enqueue(tf.constant(b))  # rows 3, 4, then wraps to row 0
  np.testing.assert_array_equal(head.queue.numpy(), [b[2], a[1], a[2], b[0], b[1]])
  assert int(head.queue_ptr.numpy()) == 1 and float(head.fill()) == 1.0
  c = 100 + np.arange(14, dtype=np.float32).reshape(7, 2)  # more keys than rows: first 5
  head.enqueue(tf.constant(c))
  np.testing.assert_array_equal(head.queue.numpy(), [c[4], c[0], c[1], c[2], c[3]])
  assert int(head.queue_ptr.numpy()) == 1


def test_with_two_replicas_the_queue_receives_the_keys_of_both_in_replica_order():
  strategy = conftest.mirrored()
  with strategy.scope():
    head = _queue(6)
  keys = np.arange(16, dtype=np.float32).reshape(8, 2)  # global batch 8 -> 4 per replica

  @tf.function
  def run(dist_keys):
    def fn(k):
      head.enqueue(k)
      return replica_gather(k)
    return strategy.run(fn, args=(dist_keys,))

  dist = strategy.experimental_distribute_values_from_function(
      lambda c: tf.constant(keys[4 * c.replica_id_in_sync_group:][:4]))
  gathered = run(dist)
  for g in strategy.experimental_local_results(gathered):
    np.testing.assert_array_equal(g.numpy(), keys)
  for v in strategy.experimental_local_results(head.queue):
    np.testing.assert_array_equal(v.numpy(), keys[:6])  # both replicas' keys, in order
  assert int(head.queue_ptr.numpy()) == 0 and float(head.fill()) == 1.0


def test_default_queue_size_is_five_percent_with_flips_and_a_floor():
  assert default_queue_size(2000, x_flip=True) == 200       # FFHQ-2K, as the reference
  assert default_queue_size(5153, x_flip=True) == 514       # AFHQ Cat
  assert default_queue_size(100, x_flip=True) == 64         # 100-shot: the floor, not 10
  assert default_queue_size(None) == 256
  t = InstanceDiscrimination(num_images=2000, x_flip=True, fake_queue_size=1000)
  assert (t.real_queue_size, t.fake_queue_size) == (200, 1000)
  assert InstanceDiscrimination(queue_size=32).fake_queue_size == 32


# -- the term in a GAN (tiny BigGAN, one device) ---------------------------------------------
def _tiny(tiny_gin, *extra):
  tiny_gin(*LINEAR_ADAM, *DIFFAUG, INSGEN_TERMS, "Trainer.train_steps = 1", *extra)


@pytest.fixture(scope="module")
def insgen_run(tmp_path_factory):
  """One step of the tiny InsGen quickstart (shared by the tests below: one build)."""
  model_dir = str(tmp_path_factory.mktemp("insgen"))
  try:
    gin.clear_config()
    config.parse([os.path.join(ROOT, "gin", "digits", "biggan_digits32_10pct_diffaug_insgen.gin")],
                 conftest.TINY_OVERLAY + ["NUM_CLASSES = 10"], finalize=False)
    t = Trainer(model_dir=model_dir, strategy=tf.distribute.OneDeviceStrategy("/cpu:0"))
    assert [x.name for x in t.gan.terms] == ["adversarial", "instance"]
    t.train()
  finally:
    gin.clear_config()
  return t, conftest.scalars(model_dir)


def test_quickstart_insgen_runs_a_step(insgen_run):
  t, s = insgen_run
  term = t.gan.terms[1]
  assert (term.real_queue_size, term.fake_queue_size) == (64, 256)
  for k in D_METRICS + G_METRICS:
    assert k in s and np.isfinite(s[k]), k
  # Random keys at the start: the loss is about log(K + 1).
  assert 0.5 * np.log(65) < s["instance_real_loss"] < 2 * np.log(65)
  # 2 D steps of 8 keys each went into each queue.
  assert s["queue_fill_real"] == pytest.approx(8 / 64)  # read in the 2nd D step
  assert float(term.real_head.fill()) == pytest.approx(16 / 64)
  assert int(term.fake_head.queue_ptr.numpy()) == 16
  # Heads are D variables and trained; momentum D and key heads are not trainable.
  ids = {id(v) for v in t.gan.d_variables()}
  assert all(id(v) in ids for v in term.real_head.query.trainable_variables)
  assert all(id(v) not in ids for v in term.d_ema.weights + term.real_head.key.weights)
  items = t.gan.checkpoint_items()["term1_instance"]
  for k in ("real/queue", "fake/queue_ptr", "real/key/fc1/kernel", "fake/query/fc2/kernel",
            "block0/conv1/sn_u", "linear/kernel"):
    assert k in items, k
  assert items["real/queue"].shape == (64, 128)
  assert items["real/query/fc1/kernel"].shape == (t.gan.D.feature_dim,) * 2


def test_insgen_state_round_trips_through_a_checkpoint(insgen_run):
  t = insgen_run[0]
  path = t.manager.latest_checkpoint
  saved = tf.train.load_checkpoint(path)
  try:
    gan, step = load_gan(os.path.dirname(os.path.dirname(path)))  # strict restore
  finally:
    gin.clear_config()
  assert step == 1
  term = gan.terms[1]
  assert int(term.fake_head.queue_ptr.numpy()) == 16
  # tf.train.Checkpoint escapes "/" in a dict key as ".S".
  for key, v in (("real.Squeue", term.real_head.queue), ("fake.Squeue", term.fake_head.queue),
                 ("block0.Sconv1.Ssn_u", term.d_ema.blocks[0].conv1.sn_u)):
    name = next(k for k in saved.get_variable_to_shape_map()
                if k.startswith(f"term1_instance/{key}/"))
    np.testing.assert_array_equal(v.numpy(), saved.get_tensor(name))


def _batch(b=8, seed=3):
  x = tf.random.stateless_uniform([b, 32, 32, 1], seed=[seed, 4], minval=-1.0, maxval=1.0)
  return {"images": x, "labels": tf.range(b) % 10, "true_labels": tf.range(b) % 10}


def test_momentum_copies_move_by_one_minus_m_of_the_gap_per_step(insgen_run):
  t = insgen_run[0]
  gan, term = t.gan, t.gan.terms[1]
  pairs = term.momentum_pairs()
  n_d = len(gan.D.weights)
  assert len(pairs) == n_d + 8  # all of D's weights (kernels, biases, SN u) + 2 x 4 heads
  assert any("sn_u" in e.path for e, _ in pairs)
  before = _weights([e for e, _ in pairs])
  t.strategy.run(gan.d_step, args=(_batch(), tf.constant(1, tf.int64),
                                   tf.constant(0, tf.int64)))
  m = np.float32(term.momentum)
  moved = 0
  for (e, w), e0 in zip(pairs, before):
    w1 = w.numpy()
    expected = m * e0 + (np.float32(1) - m) * w1
    np.testing.assert_allclose(e.numpy(), expected, rtol=1e-6, atol=1e-7, err_msg=e.path)
    moved += int(np.abs(e0 - w1).max() > 1e-4)
  assert moved > n_d // 2  # the gaps were not trivially zero


def _d_loss(gan, term, step=5):
  """The term's D loss and metrics on a fixed batch, with the GAN's own main D pass."""
  ctx = gan._context("d", tf.constant(step, tf.int64), 0, _batch())  # pylint: disable=protected-access
  rng = ctx.rng  # the draws of gan.d_step, in its order
  ctx.fakes = tf.stop_gradient(gan.G(ctx.z, ctx.fake_labels, training=True, rng=rng.child()))
  ctx.real_aug_seed, ctx.fake_aug_seed = rng.next_seed(), rng.next_seed()
  x = tf.concat([ctx.augment_reals(ctx.reals), ctx.augment_fakes(ctx.fakes)], 0)
  y = tf.concat([ctx.real_labels_for_d, ctx.fake_labels], 0)
  out = gan.D(x, y, training=False)
  ctx.d_real = {k: v[:8] for k, v in out.items()}
  ctx.d_fake = {k: v[8:] for k, v in out.items()}
  return term.d_loss(ctx)


def _g_loss(gan, term, step=5):
  ctx = gan._context("g", tf.constant(step, tf.int64), gan.disc_iters, _batch())  # pylint: disable=protected-access
  ctx.real_aug_seed, ctx.fake_aug_seed = ctx.rng.next_seed(), ctx.rng.next_seed()
  ctx.fakes = gan.G(ctx.z, ctx.fake_labels, training=False)
  ctx.d_fake = gan.D(ctx.augment_fakes(ctx.fakes), ctx.fake_labels, training=False)
  return term.g_loss(ctx)


def test_d_loss_trains_the_query_side_only(insgen_run):
  gan, term = insgen_run[0].gan, insgen_run[0].gan.terms[1]
  # The underlying tf.Variables, watched explicitly (key heads are not trainable).
  keys = [v.value for v in term.d_ema.weights + term.real_head.key.weights +
          term.fake_head.key.weights]
  queries = term.real_head.query.weights + term.fake_head.query.weights
  with tf.GradientTape(persistent=True) as tape:
    tape.watch(keys)
    loss, _ = _d_loss(gan, term)
    leak = tf.reduce_sum(term.real_head.key(term.d_ema(_batch()["images"])["feature_map"]))
  assert all(g is None for g in tape.gradient(loss, keys))
  # (the watch works: without the stop-gradients, the keys would train both)
  assert sum(g is not None for g in tape.gradient(leak, keys)) > len(keys) // 2
  assert all(float(tf.reduce_max(tf.abs(g))) > 0 for g in tape.gradient(loss, queries))
  g_d = tape.gradient(loss, gan.D.trainable_variables)
  assert max(float(tf.reduce_max(tf.abs(g))) for g in g_d if g is not None) > 0


def test_each_ablation_switch_removes_exactly_its_term(insgen_run):
  gan, full = insgen_run[0].gan, insgen_run[0].gan.terms[1]

  def variant(**kwargs):
    t = InstanceDiscrimination(**{"num_images": 180, "fake_queue_size": 256, **kwargs})
    t.heads, t.d_ema, t._pairs = full.heads, full.d_ema, full._pairs  # pylint: disable=protected-access
    return t

  loss, m = _d_loss(gan, full)
  assert set(m) == set(D_METRICS)
  assert float(loss) == pytest.approx(float(m["instance_real_loss"] +
                                            m["instance_fake_loss"]), rel=1e-6)
  no_real, m_nr = _d_loss(gan, variant(real=False))
  assert set(m_nr) == {"instance_fake_loss", "instance_accuracy_fake", "queue_fill_fake"}
  assert float(no_real) == pytest.approx(float(m["instance_fake_loss"]), rel=1e-5)
  no_fake, m_nf = _d_loss(gan, variant(fake=False))
  assert set(m_nf) == {"instance_real_loss", "instance_accuracy_real", "queue_fill_real"}
  assert float(no_fake) == pytest.approx(float(m["instance_real_loss"]), rel=1e-5)
  weighted, _ = _d_loss(gan, variant(real_weight=2.0, fake_weight=0.0))
  assert float(weighted) == pytest.approx(2 * float(m["instance_real_loss"]), rel=1e-5)
  none, m0 = _d_loss(gan, variant(real=False, fake=False))
  assert float(none) == 0.0 and not m0
  # Without the latent perturbation the fake positive differs (the noise term is its own).
  _, m_s0 = _d_loss(gan, variant(sigma=0.0))
  assert float(m_s0["instance_real_loss"]) == pytest.approx(
      float(m["instance_real_loss"]), rel=1e-5)
  assert abs(float(m_s0["instance_fake_loss"]) - float(m["instance_fake_loss"])) > 1e-4
  # G step: the diversity loss, weight 0.1, off with its switch; D-step switches leave it.
  g, gm = _g_loss(gan, full)
  assert set(gm) == set(G_METRICS)
  assert float(g) == pytest.approx(0.1 * float(gm["instance_diversity_loss"]), rel=1e-6)
  g_nr, _ = _g_loss(gan, variant(real=False, fake=False))
  assert float(g_nr) == pytest.approx(float(g), rel=1e-5)
  g0, gm0 = _g_loss(gan, variant(diversity=False))
  assert float(g0) == 0.0 and not gm0
  # Switched-off heads are not D variables (no None gradients for the optimizer).
  assert len(variant(real=False).d_variables()) == 4 and len(full.d_variables()) == 8


def test_diversity_loss_trains_g_and_not_through_the_key(insgen_run):
  gan, term = insgen_run[0].gan, insgen_run[0].gan.terms[1]
  with tf.GradientTape() as tape:
    loss, _ = _g_loss(gan, term)
  grads = tape.gradient(loss, gan.G.trainable_variables + term.d_ema.trainable_variables)
  n_g = len(gan.G.trainable_variables)
  assert max(float(tf.reduce_max(tf.abs(g))) for g in grads[:n_g] if g is not None) > 0
  assert all(g is None for g in grads[n_g:])


# -- configs -------------------------------------------------------------------------------
CONFIGS = {  # name -> (terms, real queue, fake queue, momentum)
    "digits/biggan_digits32_10pct_diffaug_insgen": (["adversarial", "instance"], 64, 256, 0.99),
    "biggan/biggan_cifar10_10pct_diffaug_insgen": (["adversarial", "instance"], 500, 500, 0.999),
    "stylegan2/stylegan2_ffhq256_2k_ada_insgen": (
        ["adversarial", "r1", "path_length", "instance"], 200, 200, 0.999),
    "stylegan2/stylegan2_afhqcat512_ada_insgen": (
        ["adversarial", "r1", "path_length", "instance"], 514, 514, 0.999),
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_every_insgen_config_parses_into_its_gan(name):
  terms, real_q, fake_q, momentum = CONFIGS[name]
  try:
    config.parse([os.path.join(ROOT, "gin", f"{name}.gin")], ["DATA_DIR = '/data'"])
    gan = GAN()
    assert [t.name for t in gan.terms] == terms
    term = gan.terms[-1]
    assert (term.real_queue_size, term.fake_queue_size) == (real_q, fake_q)
    assert (term.temperature, term.momentum, term.sigma) == (0.2, momentum, 0.15)
    assert (term.real_weight, term.fake_weight, term.diversity_weight) == (1.0, 1.0, 0.1)
    assert not isinstance(gan.augment, Identity)
  finally:
    gin.clear_config()


# -- replicas ------------------------------------------------------------------------------
@pytest.mark.slow
def test_insgen_one_vs_two_replicas_give_the_same_weights(tiny_gin, tmp_path):
  _tiny(tiny_gin)
  t1, t2 = conftest.one_and_two_replicas(tmp_path)
  term1, term2 = t1.gan.terms[1], t2.gan.terms[1]

  def state(t, term):
    return (_weights(t.gan.G.weights) + _weights(t.gan.d_variables()) +
            _weights([e for e, _ in term.momentum_pairs()]))

  for a, b in zip(state(t1, term1), state(t2, term2)):
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=5e-5)
  for h1, h2 in ((term1.real_head, term2.real_head), (term1.fake_head, term2.fake_head)):
    np.testing.assert_allclose(h1.queue.numpy(), h2.queue.numpy(), rtol=1e-3, atol=5e-5)
    assert int(h1.queue_ptr.numpy()) == int(h2.queue_ptr.numpy()) == 16
  s1, s2 = conftest.scalars(str(tmp_path / "one")), conftest.scalars(str(tmp_path / "two"))
  for k in D_METRICS + G_METRICS:
    assert s1[k] == pytest.approx(s2[k], rel=1e-3, abs=1e-5), k


def _load_reference_tool():
  import importlib.util
  path = os.path.join(ROOT, "tools", "insgen_reference.py")
  spec = importlib.util.spec_from_file_location("insgen_reference", path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


def _fake_reference(root, tool, drop=None):
  """A tree holding each patched line as often as the tool expects (one fewer for `drop`)."""
  texts = {}
  for path, old, _new, times in tool.PATCHES:
    texts.setdefault(path, "")
    texts[path] += old * (times - (old == drop)) + "\nkeep = 1\n"
  for path, text in texts.items():
    os.makedirs(os.path.dirname(os.path.join(root, path)), exist_ok=True)
    with open(os.path.join(root, path), "w") as f:
      f.write(text)


def test_reference_tool_patches_exactly_and_refuses_a_changed_reference(tmp_path):
  tool = _load_reference_tool()
  _fake_reference(str(tmp_path / "ok"), tool)
  tool.prepare(str(tmp_path / "ok"), str(tmp_path / "ok_cpu"))
  loop = (tmp_path / "ok_cpu" / "training" / "training_loop.py").read_text()
  assert "torch.device('cpu')" in loop and "torch.device('cuda', rank)" not in loop
  assert "torch.cuda" not in loop and "keep = 1" in loop
  head = (tmp_path / "ok_cpu" / "training" / "contrastive_head.py").read_text()
  assert head.count(".to(device)") == 2 and ".cuda(" not in head
  # A reference whose line changed: one clear error, nothing left on disk.
  _fake_reference(str(tmp_path / "old"), tool, drop="torch.cuda.reset_peak_memory_stats()")
  with pytest.raises(SystemExit, match="reset_peak_memory_stats.*update PATCHES"):
    tool.prepare(str(tmp_path / "old"), str(tmp_path / "old_cpu"))
  assert not (tmp_path / "old_cpu").exists() and not (tmp_path / "old_cpu.partial").exists()
