"""Evaluates the EMA generator of a run: FID, IS, KID, precision/recall.

  bin/eval --model_dir=runs/quickstart --metrics=fid,kid --num_samples=10000 \
      --inception_path=/path/to/inception-2015-12-05.tgz
  bin/eval --model_dir=runs/quickstart --feature_extractor=digits   # toy runs, offline
  bin/eval --model_dir=runs/quickstart --saved_model=runs/quickstart/export  # an export
  bin/eval --model_dir=runs/biggan --standing_stats=16   # BigGAN: standing BN statistics

The real statistics come from the run's own data configuration and are cached on disk.
With --num_runs > 1 the metrics are repeated with fresh samples and reported as mean ± std.
`--feature_extractor=digits` uses a small digits classifier: its numbers are NOT comparable
with published FIDs. `--standing_stats=N` (N > 0) first replaces the EMA generator's
batch-norm moving statistics by their mean over N training-mode batches of 64 at the
sampling truncation (BigGAN-PyTorch's standing statistics; not written back to the run);
the result JSON records N.
"""

import json
import os

from absl import flags, logging

from tfgan_eff import cli
from tfgan_eff.cli import entry

flags.DEFINE_string("model_dir", None, "Run directory written by bin/train.", required=True)
flags.DEFINE_string("saved_model", None, "Evaluate this SavedModel (written by bin/export) "
                    "instead of the run's latest checkpoint; --model_dir still gives the data.")
flags.DEFINE_list("metrics", ["fid"], "Any of fid, is, kid, pr.")
flags.DEFINE_integer("num_samples", 10000, "Generated samples per run.")
flags.DEFINE_integer("num_runs", 1, "Repetitions with fresh samples (mean ± std).")
flags.DEFINE_enum("feature_extractor", "inception", ["inception", "digits"],
                  "inception: the standard 2015 FID network; digits: toy domain classifier.")
flags.DEFINE_string("inception_path", None, "classify_image_graph_def.pb or "
                    "inception-2015-12-05.tgz (or a folder holding it).")
flags.DEFINE_enum("resize", "legacy_tf", ["legacy_tf", "clean"], "Resize to 299 as TTUR "
                  "(legacy TF1 bilinear) or as clean-fid (PIL bicubic).")
flags.DEFINE_float("truncation_psi", 1.0, "Sampling truncation: 1.0 none, 0.0 the mean image.",
                   short_name="truncation")
flags.DEFINE_string("output", None, "Write the results as JSON here "
                    "(default: <model_dir>/eval-<step>.json).")
cli.define_standing_stats_flag(__name__)
FLAGS = flags.FLAGS


def main(argv):
  del argv
  from tfgan_eff.data import ImageData  # pylint: disable=import-outside-toplevel
  from tfgan_eff.eval.evaluator import Evaluator  # pylint: disable=import-outside-toplevel
  from tfgan_eff.io import atomic_write  # pylint: disable=import-outside-toplevel
  from tfgan_eff.training import runs  # pylint: disable=import-outside-toplevel
  logging.set_verbosity(logging.INFO)
  standing_stats = runs.check_standing_stats(FLAGS.standing_stats)
  if FLAGS.saved_model and standing_stats:
    raise ValueError("--standing_stats applies to a run's checkpoint; a SavedModel keeps the "
                     "statistics it was exported with (bin/export --standing_stats=N).")
  if FLAGS.saved_model:
    runs.parse_run_config(FLAGS.model_dir)
    from tfgan_eff.export import sampler  # pylint: disable=import-outside-toplevel
    generate, step = sampler(FLAGS.saved_model, FLAGS.truncation_psi), None
  else:
    gan, step = runs.load_gan(FLAGS.model_dir, standing_stats=standing_stats,
                              truncation=FLAGS.truncation_psi)
    generate = lambda n, seed: runs.generate_uint8(  # noqa: E731
        gan, n, 100, seed, FLAGS.truncation_psi)
  data = ImageData()  # the run's own data configuration (parsed from its config.gin)
  evaluator = Evaluator(metrics=tuple(FLAGS.metrics), num_samples=FLAGS.num_samples,
                        feature_extractor=FLAGS.feature_extractor,
                        inception_path=FLAGS.inception_path, resize=FLAGS.resize,
                        num_runs=FLAGS.num_runs)
  seeds = iter(range(10_000, 10_000_000, 2))
  results = evaluator.evaluate(
      lambda n: generate(n, next(seeds)), data.eval_batches, data.name)
  results = {k: (float(v) if hasattr(v, "__float__") and not isinstance(v, (str, bool))
                 else v) for k, v in results.items()}
  results["step"] = step
  results["standing_stats"] = standing_stats
  if FLAGS.saved_model:
    results["saved_model"] = os.path.abspath(FLAGS.saved_model)
  out = FLAGS.output or os.path.join(
      FLAGS.model_dir, f"eval-{'saved_model' if step is None else step}.json")
  atomic_write(out, json.dumps(results, indent=2, sort_keys=True))
  print(json.dumps(results, indent=2, sort_keys=True))


def run():
  """`tfgan-eval` and bin/eval."""
  entry.run(main, __name__)


if __name__ == "__main__":
  run()
