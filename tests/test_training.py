"""The training loop: replica equivalence, resume, checkpoints, errors, export."""

import conftest
import json
import os
import subprocess
import sys

import gin
import numpy as np
import pytest
import tensorflow as tf

from conftest import ROOT
from tfgan_eff import config
from tfgan_eff import export as export_lib
from tfgan_eff.training.runs import generate_uint8, load_gan
from tfgan_eff.training.trainer import Trainer

# Module-scoped fixtures: keep this file in one worker process (pytest -n 2 --dist loadgroup).
pytestmark = pytest.mark.xdist_group("training")


def _one_device():
  return tf.distribute.OneDeviceStrategy("/cpu:0")


def _two_replicas():
  return conftest.mirrored()


def _weights(model):
  return [w.numpy() for w in model.weights]


def _train(tmp, strategy, steps=1):
  trainer = Trainer(model_dir=str(tmp), strategy=strategy, train_steps=steps)
  trainer.train()
  return trainer


# Adam's first step with beta_1=0 is lr·g/(|g| + eps), i.e. ±lr for any gradient well above
# eps, so float noise in a near-zero gradient would flip a whole ±lr update. A large eps makes
# the step linear in g, and the test then compares the gradients themselves.
LINEAR_ADAM = ["g/adam.epsilon = 1.0", "d/adam.epsilon = 1.0", "g/adam.learning_rate = 0.01",
               "d/adam.learning_rate = 0.01", "GAN.g_optimizer = @g/adam()",
               "GAN.d_optimizer = @d/adam()"]


# Slow (~1.5 min): in the fast suite, the StyleGAN2 trainer's 1-vs-2-replica test
# (test_stylegan2_training.py), BigGAN's cross-replica batch norm (test_biggan.py) and the
# 2-replica skip step (test_reliability.py) cover the replica paths.
@pytest.mark.slow
@pytest.mark.parametrize("extra", [[], pytest.param(
    ["GAN.terms = [@Adversarial(), @R1Penalty()]", "Adversarial.loss = 'non_saturating'"],
    id="r1")])  # R1 on 2 replicas: also the StyleGAN2 test's
def test_one_vs_two_replicas_give_the_same_weights(tiny_gin, tmp_path, extra):
  tiny_gin(*LINEAR_ADAM, *extra)
  t1 = Trainer(model_dir=str(tmp_path / "one"), strategy=_one_device(), train_steps=1)
  before = _weights(t1.gan.D)
  t1.train()
  t2 = _train(tmp_path / "two", _two_replicas())
  for a, b in zip(_weights(t1.gan.G) + _weights(t1.gan.D) + _weights(t1.gan.G_ema),
                  _weights(t2.gan.G) + _weights(t2.gan.D) + _weights(t2.gan.G_ema)):
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=5e-5)
  moved = [np.abs(a - b).max() for a, b in zip(before, _weights(t1.gan.D))]
  assert max(moved) > 1e-3  # the step did change D


def test_resume_continues_step_count_loss_curve_and_evaluation(tiny_gin, tmp_path):
  """A run stopped after step 2 and resumed ends where an uninterrupted run does: same step,
  weights, evaluation rows and best checkpoint; an eval.jsonl line past the last checkpoint
  (killed after evaluating step 3, before saving it) is replaced, not kept twice."""
  from tfgan_eff.eval.evaluator import Evaluator  # pylint: disable=import-outside-toplevel
  from tfgan_eff.eval.features import DigitsClassifierExtractor  # pylint: disable=import-outside-toplevel
  tiny_gin(*LINEAR_ADAM, "Trainer.checkpoint_every = 2")
  cache = str(tmp_path / "cache")
  ev = Evaluator(metrics=("fid",), num_samples=32, cache_dir=cache, batch_size=16,
                 feature_extractor=DigitsClassifierExtractor(cache_dir=cache, epochs=1))

  def trainer(run, steps):
    return Trainer(model_dir=str(tmp_path / run), strategy=_one_device(), train_steps=steps,
                   eval_every=1, evaluator=ev)

  straight = trainer("a", 4)
  straight.train()
  trainer("b", 2).train()
  with open(tmp_path / "b" / "eval.jsonl", "a") as f:
    f.write(json.dumps({"step": 3, "fid": 999.0}) + "\n")
  resumed = trainer("b", 4)
  assert resumed.restore() is not None and int(resumed.step.numpy()) == 2
  resumed.train()
  assert int(resumed.step.numpy()) == 4
  for a, b in zip(_weights(straight.gan.G) + _weights(straight.gan.D),
                  _weights(resumed.gan.G) + _weights(resumed.gan.D)):
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=5e-5)
  rows = {}
  for run in ("a", "b"):
    with open(tmp_path / run / "eval.jsonl") as f:
      rows[run] = [json.loads(line) for line in f]
  assert [r["step"] for r in rows["b"]] == [1, 2, 3, 4]
  for a, b in zip(rows["a"], rows["b"]):
    assert a["step"] == b["step"] and a["fid"] == pytest.approx(b["fid"], rel=1e-4)
  best = [json.load(open(tmp_path / run / "best" / "best.json"))["step"] for run in "ab"]
  assert best[0] == best[1]
  files = os.listdir(tmp_path / "b")
  for f in ("config.gin", "operative_config.gin", "samples.png", "train", "checkpoints"):
    assert f in files


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
  """Two steps of the tiny config on one device (shared by the tests below: one build)."""
  path = tmp_path_factory.mktemp("tiny_run")
  try:
    gin.clear_config()
    config.parse([], conftest.TINY, finalize=False)
    return _train(path, _one_device(), steps=2), path
  finally:
    gin.clear_config()


def test_checkpoint_holds_every_variable_including_optimizer_slots(tiny_run):
  t = tiny_run[0]
  saved = tf.train.load_checkpoint(t.manager.latest_checkpoint).get_variable_to_shape_map()
  # + step, best_fid, save_counter
  expected = sum(len(v) for v in t.gan.checkpoint_items().values()) + 3
  assert len([k for k in saved if k != "_CHECKPOINTABLE_OBJECT_GRAPH"]) == expected
  slots = [v for v in t.gan.d_optimizer.variables if "velocity" in v.path]
  assert len(slots) == len(t.gan.d_variables())
  assert any("block2" in k and "velocity" in k and k.startswith("d_optimizer") for k in saved)


def test_periodic_eval_writes_fid_and_keeps_the_best_checkpoint(tiny_gin, tmp_path):
  from tfgan_eff.eval.evaluator import Evaluator  # pylint: disable=import-outside-toplevel
  from tfgan_eff.eval.features import DigitsClassifierExtractor  # pylint: disable=import-outside-toplevel
  tiny_gin()
  cache = str(tmp_path / "cache")
  evaluator = Evaluator(metrics=("fid", "kid"), num_samples=32, cache_dir=cache,
                        feature_extractor=DigitsClassifierExtractor(cache_dir=cache, epochs=1),
                        kid_subset_size=16, batch_size=16)
  t = Trainer(model_dir=str(tmp_path / "run"), strategy=_one_device(), train_steps=3,
              eval_every=1, evaluator=evaluator)
  t.train()
  with open(tmp_path / "run" / "eval.jsonl") as f:
    evals = [json.loads(line) for line in f]
  assert [e["step"] for e in evals] == [1, 2, 3]
  fids = [e["fid"] for e in evals]
  assert all(np.isfinite(fids)) and all(np.isfinite([e["kid_mean"] for e in evals]))
  tags = {}
  for name in os.listdir(tmp_path / "run" / "train"):
    for e in tf.compat.v1.train.summary_iterator(str(tmp_path / "run" / "train" / name)):
      for v in e.summary.value:
        tags.setdefault(v.tag, []).append(e.step)
  assert tags["eval/fid"] == [1, 2, 3] and tags["eval/kid_mean"] == [1, 2, 3]
  assert tags["model/parameters"] == [0]  # the parameter-count table, once at the start
  counts = t.parameter_counts()
  assert counts["G trainable"] == sum(int(np.prod(v.shape)) for v in t.gan.G.trainable_variables)
  assert counts["heads (trained with D)"] == 0 and counts["D trainable"] > 0
  with open(tmp_path / "run" / "best" / "best.json") as f:
    best = json.load(f)
  assert best["fid"] == pytest.approx(min(fids)) and best["step"] == 1 + int(np.argmin(fids))
  assert best["checkpoint"].endswith(f"ckpt-{best['step']}")
  saved = tf.train.load_checkpoint(best["checkpoint"])
  assert saved.get_tensor("step/.ATTRIBUTES/VARIABLE_VALUE") == best["step"]
  assert saved.get_tensor("best_fid/.ATTRIBUTES/VARIABLE_VALUE") == pytest.approx(min(fids))


def test_batch_not_divisible_by_replicas(tiny_gin, tmp_path):
  tiny_gin("Trainer.batch_size = 7")
  with pytest.raises(ValueError, match="not divisible by the 2 replicas.*multiple of 2"):
    Trainer(model_dir=str(tmp_path), strategy=_two_replicas())


def test_unknown_gin_key_fails_clearly():
  gin.clear_config()
  with pytest.raises(ValueError, match="Bad gin configuration.*'GAN'.*'dsic_iters'"):
    config.parse([], ["GAN.dsic_iters = 3"])
  with pytest.raises(ValueError, match="Bad gin configuration"):
    config.parse([], ["NoSuchThing.x = 3"])
  with pytest.raises(FileNotFoundError, match="gin file 'missing.gin' does not exist"):
    config.parse(["missing.gin"], [])
  gin.clear_config()


def test_mismatched_data_and_model_fail_clearly(tiny_gin, tmp_path):
  tiny_gin("BigGANGenerator.resolution = 64")
  with pytest.raises(ValueError, match="generator makes 64px"):
    Trainer(model_dir=str(tmp_path), strategy=_one_device())


def test_export_loads_in_a_fresh_process(tiny_run, tmp_path):
  run = tiny_run[1]
  env = {**os.environ, "PYTHONPATH": ROOT}
  subprocess.run([sys.executable, os.path.join(ROOT, "bin", "export"),
                  f"--model_dir={run}", f"--export_dir={tmp_path / 'export'}"],
                 check=True, env=env, capture_output=True)
  code = (f"import tensorflow as tf; m = tf.saved_model.load(r'{tmp_path / 'export'}');"
          "x = m.generate(tf.random.normal([3, int(m.z_dim)]), tf.constant([1, 2, 3]));"
          "y = m.signatures['serving_default'](z=tf.random.normal([2, int(m.z_dim)]), "
          "labels=tf.constant([0, 1]), truncation_psi=tf.constant(0.5))['images'];"
          "print(x.dtype.name, tuple(x.shape), y.dtype.name, tuple(y.shape))")
  out = subprocess.run([sys.executable, "-c", code], check=True, env=env,
                       capture_output=True, text=True).stdout.strip().splitlines()[-1]
  assert out == "uint8 (3, 32, 32, 1) uint8 (2, 32, 32, 1)"
  # The export samples what the checkpoint samples (bin/eval --saved_model relies on it).
  gan, _ = load_gan(str(run))
  gin.clear_config()
  ours = generate_uint8(gan, 10, batch_size=4, seed=7, truncation=0.5)
  exported = export_lib.sampler(str(tmp_path / "export"), truncation_psi=0.5, batch_size=4)
  diff = np.abs(ours.astype(int) - exported(10, 7).astype(int))
  assert diff.max() <= 1 and diff.mean() < 0.01  # equal up to float rounding at .5


def test_load_gan_restores_the_ema_generator(tiny_run):
  t, run = tiny_run
  gan, step = load_gan(str(run))
  assert step == 2
  for a, b in zip(_weights(t.gan.G_ema), _weights(gan.G_ema)):
    np.testing.assert_array_equal(a, b)
  gin.clear_config()


def test_class_count_mismatch_fails_and_one_class_uses_every_image_as_class_0(tiny_gin,
                                                                               tmp_path):
  tiny_gin("NUM_CLASSES = 3")  # the digits have 10
  with pytest.raises(ValueError, match="conditional on 3 classes but the data has 10"):
    Trainer(model_dir=str(tmp_path / "three"), strategy=_one_device())
  tiny_gin("NUM_CLASSES = 1")  # one class: an unconditional model, the labels unused
  t = Trainer(model_dir=str(tmp_path / "one"), strategy=_one_device())
  batch = {"images": tf.zeros([2, 32, 32, 1]), "labels": tf.constant([7, -1]),
           "true_labels": tf.constant([7, 4])}
  ctx = t.gan._context("d", tf.constant(0, tf.int64), 0, batch)  # pylint: disable=protected-access
  assert ctx.real_labels_for_d.numpy().tolist() == [0, 0]
  assert ctx.fake_labels.numpy().tolist() == [0, 0]
