"""Exports the EMA generator of a run as a SavedModel.

  bin/export --model_dir=runs/quickstart --export_dir=runs/quickstart/export
  bin/export --model_dir=runs/biggan --standing_stats=16
  saved_model_cli show --dir runs/quickstart/export --all

`--standing_stats=N` (N > 0) exports the EMA generator with its batch-norm statistics
replaced by their mean over N training-mode batches of 64 (BigGAN-PyTorch's standing
statistics), accumulated at truncation 1 (the export takes truncation_psi at serving time);
the run's checkpoints are not changed.
"""

import os

from absl import flags, logging

from tfgan_eff import cli
from tfgan_eff.cli import entry

flags.DEFINE_string("model_dir", None, "Run directory written by bin/train.", required=True)
flags.DEFINE_string("export_dir", None, "Where to write the SavedModel "
                    "(default: <model_dir>/export).")
flags.DEFINE_string("checkpoint", None, "A specific checkpoint (default: the latest).")
cli.define_standing_stats_flag(__name__)
FLAGS = flags.FLAGS


def main(argv):
  del argv
  from tfgan_eff import export  # pylint: disable=import-outside-toplevel
  from tfgan_eff.training.runs import load_gan  # pylint: disable=import-outside-toplevel
  logging.set_verbosity(logging.INFO)
  gan, step = load_gan(FLAGS.model_dir, FLAGS.checkpoint, standing_stats=FLAGS.standing_stats)
  out = export.export(gan.G_ema, FLAGS.export_dir or os.path.join(FLAGS.model_dir, "export"))
  logging.info("Exported the EMA generator of step %d to %s%s", step, out,
               f" (standing statistics over {FLAGS.standing_stats} batches)"
               if FLAGS.standing_stats else "")


def run():
  """`tfgan-export` and bin/export."""
  entry.run(main, __name__)


if __name__ == "__main__":
  run()
