"""Runs a study: a grid of training runs (methods x data sizes x seeds), evaluates, tabulates.

  bin/study --spec=studies/augment_mnist.gin --out=runs/augment_mnist            # train + eval
  bin/study --spec=studies/augment_mnist.gin --out=runs/augment_mnist --jobs=2   # 2 cells at once
  bin/study --spec=studies/augment_mnist.gin --out=runs/augment_mnist --notrain  # report so far
  bin/study --spec=studies/augment_mnist.gin --out=runs/augment_mnist --status   # cell by cell
  bin/study ... --out=docs/studies/augment_mnist --weights_dir=/scratch/augment_mnist
      # results in --out (fit for git), the cells' weights on a scratch disk

Re-running the same command skips finished cells and resumes the others from their last
checkpoint; evaluations already made are reused. --notrain also scores the checkpoints that
unfinished cells have made so far (kept for their report once they finish): a cell moved to
another machine then needs only its newest checkpoint to go on. Outputs in --out: study.csv,
study.md, fid_curves.png, grids.png, and one folder per cell under cells/ (see tfgan_eff/study.py).
"""

import os
import signal
import sys

from absl import app, flags, logging

from tfgan_eff.cli import adopt_help

flags.DEFINE_string("spec", None, "The study spec (a gin file, e.g. studies/smoke.gin).")
flags.DEFINE_string("out", None, "The study folder (cells, results).")
flags.DEFINE_integer("jobs", 1, "Cells trained at a time.")
flags.DEFINE_integer("threads", None, "TF intra-op threads per cell (default: cores / jobs "
                     "when jobs > 1, else TensorFlow's default).")
flags.DEFINE_multi_string("gin_param", [], "Extra bindings of the spec, e.g. "
                          "\"stylegan2/Grid.seeds = [0]\".")
flags.DEFINE_string("only", None, "Only the cells whose name matches this regular expression.")
flags.DEFINE_bool("train", True, "Train unfinished cells (--notrain: evaluate and report the "
                  "finished ones; score the unfinished ones' checkpoints so far).")
flags.DEFINE_string("weights_dir", None, "Keep the cells' checkpoints, best/ and TensorBoard "
                    "logs in <weights_dir>/<cell>/ (linked from the cell folders), e.g. on a "
                    "scratch disk, so that --out holds only results (default: in the cells).")
flags.DEFINE_bool("evaluate", True, "Evaluate and report (--noevaluate: train only).")
flags.DEFINE_bool("status", False, "Only print where each cell stands (done / partial at "
                  "step N / new, its recent speed and time left, its evaluations so far); "
                  "trains and scores nothing.")
flags.mark_flags_as_required(["spec", "out"])
FLAGS = flags.FLAGS


def main(argv):
  del argv
  logging.set_verbosity(logging.INFO)
  from tfgan_eff import study  # pylint: disable=import-outside-toplevel
  if FLAGS.jobs < 1:
    raise app.UsageError(f"--jobs must be >= 1, got {FLAGS.jobs}.")
  if not os.path.exists(FLAGS.spec):
    raise app.UsageError(f"--spec '{FLAGS.spec}' does not exist; the shipped specs are in "
                         f"studies/.")

  def on_term(signum, frame):  # SIGTERM as Ctrl-C: stop the cells (they resume on re-run)
    del frame
    raise KeyboardInterrupt(f"signal {signum}")

  if FLAGS.status:
    try:
      print(study.format_status(study.status(FLAGS.spec, FLAGS.out, FLAGS.gin_param,
                                             FLAGS.only)))
    except ValueError as e:
      sys.exit(f"bin/study: {e}")
    return
  signal.signal(signal.SIGTERM, on_term)
  try:
    study.run(FLAGS.spec, FLAGS.out, jobs=FLAGS.jobs, params=FLAGS.gin_param,
              threads=FLAGS.threads, train=FLAGS.train, evaluate=FLAGS.evaluate,
              only=FLAGS.only, weights_dir=FLAGS.weights_dir)
  except KeyboardInterrupt:
    logging.warning("Study interrupted; re-run the same command to resume.")
    sys.exit(130)
  except (ValueError, RuntimeError) as e:
    sys.exit(f"bin/study: {e}")


def run():
  """`tfgan-study` and bin/study."""
  adopt_help(__name__)
  app.run(main)


if __name__ == "__main__":
  run()
