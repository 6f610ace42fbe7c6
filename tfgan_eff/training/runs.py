"""A trained run, loaded back: its gin config, its GAN, its checkpoint, samples from it.

    gan, step = load_gan("runs/quickstart")              # the latest intact checkpoint
    images = generate_uint8(gan, 64, seed=0)             # uint8 numpy [64, H, W, C]
    gan, step = load_gan("runs/biggan", standing_stats=16)   # BN statistics re-estimated

What bin/eval, bin/export, bin/sample, studies and experiments use; none of it needs the
training loop (`trainer.py`), its data or its strategy.
"""

import os

import gin
import numpy as np
import tensorflow as tf

import tfgan_eff.configurables  # noqa: F401  a run's config.gin may name any configurable
from tfgan_eff import config
from tfgan_eff.io import to_uint8
from tfgan_eff.models.standing_stats import accumulate_standing_stats
from tfgan_eff.rng import sample_in_batches
from tfgan_eff.training import checkpoints
from tfgan_eff.training.gan import GAN


def parse_run_config(model_dir):
  """Makes a run's saved gin config (its `config.gin`) the current one; -> model_dir."""
  model_dir = os.path.expanduser(model_dir)
  cfg = os.path.join(model_dir, "config.gin")
  if not os.path.exists(cfg):
    raise FileNotFoundError(f"'{model_dir}' is not a tfgan_eff run directory (no config.gin). "
                            f"Pass the --model_dir that bin/train wrote.")
  gin.clear_config()
  config.parse([cfg], [])
  return model_dir


def build_run():
  """The GAN of the current gin config (`parse_run_config` first) and the checkpoint
  object to restore any of its run's checkpoints into: (gan, ckpt, step variable)."""
  gan = GAN()
  g = gan.G
  gan.build(1, (g.resolution, g.resolution, g.channels))
  step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
  best_fid = tf.Variable(np.inf, dtype=tf.float32, trainable=False, name="best_fid")
  ckpt = tf.train.Checkpoint(step=step, best_fid=best_fid, **gan.checkpoint_items())
  return gan, ckpt, step


# The batch size of the tools' standing statistics (`load_gan(standing_stats=N)`).
STANDING_STATS_BATCH = 64


def check_standing_stats(num_batches):
  """Raises a ValueError naming the fix unless `num_batches` (a --standing_stats value) is
  a whole number >= 0."""
  if isinstance(num_batches, bool) or int(num_batches) != num_batches or num_batches < 0:
    raise ValueError(f"--standing_stats must be a number of batches >= 0 (0: off, the "
                     f"default; e.g. 16), got {num_batches}.")
  return int(num_batches)


def load_gan(model_dir, checkpoint_path=None, standing_stats=0, truncation=1.0):
  """Rebuilds the GAN of a run from its saved gin config and restores its checkpoint.

  Returns (gan, step). Uses the default strategy; data is not loaded. With
  `standing_stats` = N > 0, the batch-norm statistics of the EMA generator are then
  re-estimated over N batches of `STANDING_STATS_BATCH` (z, labels) at `truncation`
  (`models.standing_stats`; nothing for generators without batch norm); the run's
  checkpoints are not changed. What --standing_stats of bin/eval, bin/sample, bin/export
  does.
  """
  standing_stats = check_standing_stats(standing_stats)
  model_dir = parse_run_config(model_dir)
  gan, ckpt, step = build_run()
  if checkpoint_path:
    checkpoints.restore(ckpt, checkpoint_path)
  elif not checkpoints.restore_latest(ckpt, os.path.join(model_dir, "checkpoints")):
    raise FileNotFoundError(f"No checkpoint in '{model_dir}/checkpoints'. Train first.")
  if standing_stats:
    accumulate_standing_stats(gan.G_ema, standing_stats, STANDING_STATS_BATCH, seed=0,
                              num_classes=gan.num_classes, truncation=truncation)
  return gan, int(step.numpy())


def generate_uint8(gan, n, batch_size=64, seed=0, truncation=1.0, return_labels=False):
  """n samples of the EMA generator as uint8 numpy [n, H, W, C]; labels uniform (with
  `return_labels`: (samples, labels), labels None when unconditional).

  The latents and labels are those `export.sampler` feeds an export for the same seed
  (`rng.sample_in_batches`), so a run and its SavedModel evaluate alike.
  """
  return sample_in_batches(lambda z, y: to_uint8(gan.generate(z, y, truncation)), n,
                           gan.G.z_dim, gan.num_classes, batch_size, seed,
                           return_labels=return_labels)
