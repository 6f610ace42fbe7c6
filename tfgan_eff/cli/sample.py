"""Writes a PNG grid of samples from a SavedModel or from a run's latest checkpoint.

  bin/sample --saved_model=runs/quickstart/export --output=grid.png --num=64
  bin/sample --model_dir=runs/quickstart --truncation_psi=0.5 --labels=3
  bin/sample --saved_model=runs/quickstart_stylegan2/export --noise_mode=random
  bin/sample --model_dir=runs/biggan --standing_stats=16

`--standing_stats=N` (N > 0, with --model_dir) first replaces the EMA generator's batch-norm
moving statistics by their mean over N training-mode batches of 64 at the sampling
truncation (BigGAN-PyTorch's standing statistics; not written back to the run).
"""

from absl import app, flags, logging

from tfgan_eff import cli
from tfgan_eff.cli import entry

flags.DEFINE_string("saved_model", None, "A SavedModel written by bin/export.")
flags.DEFINE_string("model_dir", None, "Or: a run directory (uses its latest checkpoint).")
flags.DEFINE_string("output", "samples.png", "The PNG to write.")
flags.DEFINE_integer("num", 64, "Number of samples.")
flags.DEFINE_float("truncation_psi", 1.0, "Truncation psi: 1.0 none, 0.0 the mean image; "
                   "smaller trades variety for fidelity.", short_name="truncation")
flags.DEFINE_enum("noise_mode", "const", ["const", "random", "none"],
                  "Noise inputs of generators that have them (StyleGAN2): the fixed "
                  "buffers, fresh noise, or none. Ignored by BigGAN.")
flags.DEFINE_integer("labels", None, "A class for every sample (default: cycle over "
                     "classes).")
flags.DEFINE_integer("seed", 0, "Noise seed.")
cli.define_standing_stats_flag(__name__)
FLAGS = flags.FLAGS


def main(argv):
  del argv
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  from tfgan_eff.io import image_grid, to_uint8, write_png  # pylint: disable=import-outside-toplevel
  from tfgan_eff.training import runs  # pylint: disable=import-outside-toplevel
  if bool(FLAGS.saved_model) == bool(FLAGS.model_dir):
    raise app.UsageError("Pass exactly one of --saved_model or --model_dir.")
  standing_stats = runs.check_standing_stats(FLAGS.standing_stats)
  if FLAGS.saved_model and standing_stats:
    raise app.UsageError("--standing_stats needs --model_dir (a run's checkpoint); a "
                         "SavedModel keeps the statistics it was exported with "
                         "(bin/export --standing_stats=N).")
  if FLAGS.saved_model:
    m = tf.saved_model.load(FLAGS.saved_model)
    z_dim, k = int(m.z_dim), int(m.num_classes)
    noise = {"noise_mode": tf.constant(FLAGS.noise_mode)} if int(getattr(
        m, "has_noise", 0)) else {}
    gen = lambda z, y, t: m.generate(z, y, t, **noise)
  else:
    from tfgan_eff.export import has_noise  # pylint: disable=import-outside-toplevel
    gan, _ = runs.load_gan(FLAGS.model_dir, standing_stats=standing_stats,
                           truncation=FLAGS.truncation_psi)
    z_dim, k = gan.G.z_dim, gan.num_classes
    g = gan.G_ema
    noise = {"noise_mode": FLAGS.noise_mode} if has_noise(g) else {}
    gen = lambda z, y, t: to_uint8(g(z, y, training=False, truncation=t, **noise))
  z = tf.random.stateless_normal([FLAGS.num, z_dim], seed=[FLAGS.seed, 0])
  y = None
  if k:
    y = (tf.fill([FLAGS.num], FLAGS.labels) if FLAGS.labels is not None
         else tf.range(FLAGS.num) % k)
    y = tf.cast(y, tf.int32)
  images = gen(z, y, tf.constant(FLAGS.truncation_psi, tf.float32))
  write_png(FLAGS.output, image_grid(images.numpy()))
  logging.info("Wrote %d samples to %s", FLAGS.num, FLAGS.output)


def run():
  """`tfgan-sample` and bin/sample."""
  entry.run(main, __name__)


if __name__ == "__main__":
  run()
