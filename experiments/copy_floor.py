#!/usr/bin/env python3
"""What a generator that copies its k training images exactly would score in a study.

For each data size of a study (one trained cell of it names the training subset; every
seed and method of a data size trains on the same images), the k training images are
drawn with replacement up to the study's sample count and scored like a cell's samples:
FID/KID against the study's reference set, in the study's features. In a few-shot study
a cell whose best FID is near this floor, with a high memorisation rate, is copying; only
a cell below it generalises beyond its training images in this metric.

    python experiments/copy_floor.py --spec=studies/adafm_mnist.gin \\
        --out=docs/studies/adafm_mnist

Writes <out>/copy_floor.json and prints a table.
"""

import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

flags.DEFINE_string("spec", None, "The study spec.")
flags.DEFINE_string("out", None, "The study folder (its cells name the training subsets).")
flags.mark_flags_as_required(["spec", "out"])
FLAGS = flags.FLAGS


def main(argv):
  del argv
  import numpy as np  # pylint: disable=import-outside-toplevel
  from tfgan_eff import study  # pylint: disable=import-outside-toplevel
  from tfgan_eff.data import ImageData  # pylint: disable=import-outside-toplevel
  from tfgan_eff.io import atomic_write  # pylint: disable=import-outside-toplevel
  from tfgan_eff.training import runs  # pylint: disable=import-outside-toplevel
  spec = study.load_spec(FLAGS.spec)
  ev = spec.evaluation
  if ev is None or ev.reference is None:
    sys.exit("copy_floor: the study has no reference set (StudyEval.reference).")
  ev.keep_extractor_weights_in(os.path.join(FLAGS.out, "extractor"))
  tag = ev.extractor_tag()
  result = {"spec": FLAGS.spec, "extractor": tag, "num_samples": ev.num_samples,
            "seed": ev.seed, "floors": {}}
  for cell in spec.cells:
    key = f"{cell.grid}-{cell.data}"
    model_dir = study.cell_dir(FLAGS.out, cell)
    if (key in result["floors"] or not spec.grid(cell).scored or
        not os.path.exists(os.path.join(model_dir, "config.gin"))):
      continue
    runs.parse_run_config(model_dir)
    images = ImageData().images
    pick = np.random.default_rng(ev.seed).integers(0, len(images), ev.num_samples)
    metrics = ev.score_images(images[pick])
    result["floors"][key] = {"cell": cell.name, "k": len(images), **metrics}
    print(f"{key}: k = {len(images)}, FID {metrics['fid']:.2f}, KID {metrics['kid']:.4g} "
          f"(as in study.csv; from {cell.name})", flush=True)
  path = os.path.join(FLAGS.out, "copy_floor.json")
  atomic_write(path, json.dumps(result, indent=1))
  print(f"Wrote {path}")


if __name__ == "__main__":
  app.run(main)
