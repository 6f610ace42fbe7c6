#!/usr/bin/env python3
"""FID/KID of quickstart AdaFM runs against ALL real images of the target digit.

`bin/eval` compares with a run's own training set, which for
gin/digits/biggan_digits32_adafm.gin is only 25 images (a very noisy FID reference). This
script compares each run's EMA generator with every real digit of the target class (180
nines) in the digits classifier's feature space (`feature_extractor="digits"`; not
comparable with Inception FIDs).

    python experiments/adafm_digits_eval.py --target_class=9 runs/adafm runs/scratch ...
"""

import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

flags.DEFINE_integer("target_class", 9, "The held-out digit the runs were transferred to.")
flags.DEFINE_integer("num_samples", 1000, "Generated samples per evaluation run.")
flags.DEFINE_integer("num_runs", 3, "Evaluation repeats with fresh samples (mean ± std).")
FLAGS = flags.FLAGS


def main(argv):
  from tfgan_eff.data import Digits, ImageData  # pylint: disable=import-outside-toplevel
  from tfgan_eff.eval.evaluator import Evaluator  # pylint: disable=import-outside-toplevel
  from tfgan_eff.training import runs  # pylint: disable=import-outside-toplevel
  real = ImageData(Digits(), resolution=32, channels=1, classes=[FLAGS.target_class])
  evaluator = Evaluator(metrics=("fid", "kid"), num_samples=FLAGS.num_samples,
                        feature_extractor="digits", num_runs=FLAGS.num_runs)
  out = {}
  for model_dir in argv[1:]:
    gan, step = runs.load_gan(model_dir)
    seeds = iter(range(10_000, 10_000_000, 2))
    res = evaluator.evaluate(lambda n: runs.generate_uint8(gan, n, 100, next(seeds)),
                             real.eval_batches, real.name)
    out[model_dir] = {"step": step, **{k: float(v) for k, v in res.items()
                                       if k.split("_")[0] in ("fid", "kid", "num")}}
    print(model_dir, json.dumps(out[model_dir]), flush=True)
  print(json.dumps(out, indent=2))


if __name__ == "__main__":
  app.run(main)
