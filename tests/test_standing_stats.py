"""Standing statistics (models/standing_stats.py) and --standing_stats of the tools."""

import importlib
import os
import random
import subprocess
import sys

import gin
import numpy as np
import pytest
import tensorflow as tf
from conftest import ROOT

from tfgan_eff.io import image_grid, to_uint8
from tfgan_eff.models import layers
from tfgan_eff.models.biggan import BigGANGenerator
from tfgan_eff.models.standing_stats import (accumulate_standing_stats, batch_norm_layers,
                                             standing_stats_inputs)
from tfgan_eff.models.stylegan2 import StyleGAN2Generator
from tfgan_eff.training import runs


def _biggan(num_classes=5):
  state = random.getstate()
  random.seed(0)  # Keras draws the seeds of unseeded initializers from Python's random
  try:
    g = BigGANGenerator(resolution=32, ch=4, z_dim=16, num_classes=num_classes,
                        shared_dim=8, attention_resolution=16, bn_momentum=0.5)
    z, y = standing_stats_inputs(g, 99, 8, seed=5)
    g(z, y)  # builds
  finally:
    random.setstate(state)
  for _ in range(3):  # moving statistics and SN vectors away from their initial values
    g(z, y, training=True)
  return g


def _values(model):
  return {v.path: v.numpy() for v in model.variables}


@pytest.mark.parametrize("num_classes", [5, 0])
def test_statistics_are_the_mean_of_the_batch_statistics(monkeypatch, num_classes):
  g = _biggan(num_classes)
  bns = batch_norm_layers(g)
  assert len(bns) == 7  # 3 blocks x 2 (conditional or not) + the output BN
  g.linear.sn_u.assign(tf.random.stateless_normal(g.linear.sn_u.shape, seed=[1, 2]))
  before = _values(g)  # (an SN vector far from converged: each power iteration moves it)
  seen, call = [], layers.CrossReplicaBatchNorm.call

  def spy(self, x, training=False):  # the input of every BN call, and G's SN vector then
    seen.append((self.path, np.asarray(x, np.float64), g.linear.sn_u.numpy(), training))
    return call(self, x, training=training)

  monkeypatch.setattr(layers.CrossReplicaBatchNorm, "call", spy)
  assert accumulate_standing_stats(g, num_batches=3, batch_size=8, seed=1) == 7
  monkeypatch.undo()
  assert len(seen) == 3 * 7 and all(training for *_, training in seen)
  for _, _, u, _ in seen:  # every batch started from the SN vectors inference uses
    np.testing.assert_array_equal(u, seen[0][2])
  assert np.abs(seen[0][2] - before[g.linear.sn_u.path]).max() > 1e-3
  for bn in bns:
    xs = [x for path, x, _, _ in seen if path == bn.path]
    assert len(xs) == 3
    axes = tuple(range(xs[0].ndim - 1))
    mean = np.mean([x.mean(axes) for x in xs], axis=0)
    var = np.mean([x.var(axes) for x in xs], axis=0)  # biased, per batch, then averaged
    np.testing.assert_allclose(bn.moving_mean.numpy(), mean, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(bn.moving_variance.numpy(), var, rtol=1e-5, atol=1e-5)
    assert np.abs(bn.moving_mean.numpy() - before[bn.moving_mean.path]).max() > 1e-3
  stats = {v.path for bn in bns for v in (bn.moving_mean, bn.moving_variance)}
  after = _values(g)
  assert set(after) == set(before) and len(after) > len(stats)
  for path, value in after.items():
    if path not in stats:
      np.testing.assert_array_equal(value, before[path], err_msg=path)


def test_one_batch_in_inference_mode_is_that_batch_in_training_mode():
  g = _biggan()
  z, y = standing_stats_inputs(g, 0, 8, seed=3)
  before = _values(g)
  trained = g(z, y, training=True).numpy()
  for v in g.variables:
    v.assign(before[v.path])
  accumulate_standing_stats(g, num_batches=1, batch_size=8, seed=3)
  np.testing.assert_allclose(g(z, y, training=False), trained, atol=2e-5)


def test_samples_differ_from_the_moving_statistics_and_repeat_for_a_seed():
  g = _biggan()
  z, y = standing_stats_inputs(g, 0, 4, seed=123)
  plain = g(z, y).numpy()
  start = _values(g)

  def standing(seed):
    for v in g.variables:
      v.assign(start[v.path])
    accumulate_standing_stats(g, num_batches=2, batch_size=8, seed=seed)
    return g(z, y).numpy()

  first = standing(0)
  assert np.abs(first - plain).mean() > 1e-2
  np.testing.assert_array_equal(standing(0), first)
  assert np.abs(standing(1) - first).mean() > 1e-2  # other batches (2 of 8: noisy)


def test_generator_without_batch_norm_is_left_alone(caplog):
  g = StyleGAN2Generator(resolution=16, z_dim=8, w_dim=8, mapping_layers=2, channels=3,
                         fmap_base=256, fmap_max=16)
  z = tf.random.stateless_normal([2, 8], seed=[0, 0])
  out = g(z, noise_mode="const").numpy()
  before = _values(g)
  with caplog.at_level("INFO", logger="absl"):
    assert accumulate_standing_stats(g, num_batches=4, batch_size=4) == 0
  assert "no batch-norm layers" in caplog.text
  after = _values(g)
  assert after.keys() == before.keys()
  for path, value in after.items():
    np.testing.assert_array_equal(value, before[path], err_msg=path)
  np.testing.assert_array_equal(g(z, noise_mode="const").numpy(), out)


@pytest.mark.parametrize("bad", [-1, 1.5])
def test_bad_numbers_of_batches_fail_first(bad):
  with pytest.raises(ValueError, match="number of batches >= 0"):
    accumulate_standing_stats(StyleGAN2Generator(resolution=16, z_dim=8, w_dim=8), bad)
  with pytest.raises(ValueError, match="--standing_stats must be a number of batches >= 0"):
    runs.load_gan("/nonexistent/run", standing_stats=bad)  # before the run is looked at


@pytest.fixture
def tiny_run(tiny_gin, tmp_path):
  """A run directory of the tiny (conditional BigGAN) config, untrained: config.gin and
  one checkpoint of freshly initialized networks whose EMA G has seen a batch; -> (the
  directory, the GAN saved in it)."""
  tiny_gin()
  gan, ckpt, _ = runs.build_run()
  z, y = standing_stats_inputs(gan.G_ema, 50, 8)
  gan.G_ema(z, y, training=True)
  with open(tmp_path / "config.gin", "w") as f:
    f.write(gin.config_str())
  ckpt.save(str(tmp_path / "checkpoints" / "ckpt"))  # ckpt-1
  gin.clear_config()
  return tmp_path, gan


@pytest.fixture
def sample_tool():
  """bin/sample's module, imported for one test: its flags are removed afterwards (another
  tool module defines some of the same names)."""
  import logging  # pylint: disable=import-outside-toplevel
  from absl import flags  # pylint: disable=import-outside-toplevel
  parsed = flags.FLAGS.is_parsed()
  absl_level = logging.getLogger("absl").level  # parsing --verbosity resets it
  module = importlib.import_module("tfgan_eff.cli.sample")
  yield module
  for flag in flags.FLAGS.get_flags_for_module(module.__name__):
    for name in (flag.name, flag.short_name):
      if name and name in flags.FLAGS:
        delattr(flags.FLAGS, name)
  sys.modules.pop(module.__name__)
  if not parsed:
    flags.FLAGS.unparse_flags()
  logging.getLogger("absl").setLevel(absl_level)


def test_tools_standing_stats_reach_the_generator(tiny_run, sample_tool):
  """--standing_stats: bin/sample's grid is that of the run's EMA G after
  accumulate_standing_stats, not the plain one; a negative value stops bin/export before it
  loads anything."""
  tiny_run, gan = tiny_run
  sample_tool.FLAGS(["sample", f"--model_dir={tiny_run}", "--num=4", "--truncation_psi=0.5",
                     "--standing_stats=2", f"--output={tiny_run / 'grid.png'}"])
  sample_tool.main([])
  grid = tf.io.decode_png(tf.io.read_file(str(tiny_run / "grid.png"))).numpy()
  z = tf.random.stateless_normal([4, gan.G.z_dim], seed=[0, 0])  # bin/sample --seed=0
  y = tf.range(4) % gan.num_classes
  plain = image_grid(to_uint8(gan.G_ema(z, y, truncation=0.5)).numpy())
  accumulate_standing_stats(gan.G_ema, 2, runs.STANDING_STATS_BATCH, truncation=0.5)
  np.testing.assert_array_equal(grid, image_grid(to_uint8(gan.G_ema(z, y, truncation=0.5))))
  assert np.abs(grid.astype(int) - plain).mean() > 1
  env = {**os.environ, "PYTHONPATH": ROOT}
  bad = subprocess.run([sys.executable, os.path.join(ROOT, "bin", "export"),
                        f"--model_dir={tiny_run}", "--standing_stats=-1"], env=env,
                       capture_output=True, text=True)
  assert bad.returncode == 1 and "--standing_stats=-1" in bad.stderr
  assert not os.path.exists(tiny_run / "export")
