#!/usr/bin/env python3
"""What the class prior alone costs a class-conditional cell's FID in a study.

A conditional cell is sampled with uniform labels (`runs.generate_uint8`), one class in ten
each on MNIST, while the reference set has its own class frequencies (the 10,000 MNIST test
digits: 892 fives to 1,135 ones). An unconditional cell learns the data's frequencies. So
even a perfect conditional generator scores above a perfect unconditional one. This script
measures that floor with real images in place of samples: the study's sample count of
reference images, drawn with replacement (a) with the reference's own class frequencies and
(b) with uniform classes, scored like a cell's samples (FID/KID against the whole reference
set, in the study's features), over several draws. It also prints the population value (the
Fréchet distance between the class-reweighted and the plain statistics of all reference
features, no sampling noise).

    python experiments/class_prior_floor.py --spec=studies/s3gan_mnist.gin \\
        --out=docs/studies/s3gan_mnist

Writes <out>/class_prior_floor.json and prints the floors.
"""

import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

flags.DEFINE_string("spec", None, "The study spec (its StudyEval has a labelled reference).")
flags.DEFINE_string("out", None, "The study folder (the extractor's weights are kept there).")
flags.DEFINE_integer("draws", 10, "Draws of each prior.")
flags.mark_flags_as_required(["spec", "out"])
FLAGS = flags.FLAGS


def main(argv):
  del argv
  import numpy as np  # pylint: disable=import-outside-toplevel
  from tfgan_eff import study  # pylint: disable=import-outside-toplevel
  from tfgan_eff.eval.metrics import frechet_distance  # pylint: disable=import-outside-toplevel
  from tfgan_eff.io import atomic_write  # pylint: disable=import-outside-toplevel
  spec = study.load_spec(FLAGS.spec)
  ev = spec.evaluation
  if ev is None or ev.reference is None:
    sys.exit("class_prior_floor: the study has no reference set (StudyEval.reference).")
  ev.keep_extractor_weights_in(os.path.join(FLAGS.out, "extractor"))
  ref = ev.reference
  images, labels = ref.images, ref.true_labels
  if labels is None or labels.min() < 0:
    sys.exit("class_prior_floor: the reference set has no labels.")
  counts = np.bincount(labels)
  by_class = [np.flatnonzero(labels == c) for c in range(len(counts))]
  rng = np.random.default_rng(ev.seed)
  result = {"spec": FLAGS.spec, "extractor": ev.extractor_tag(), "num_samples": ev.num_samples,
            "seed": ev.seed, "class_counts": counts.tolist(), "draws": {}}

  for prior in ("data", "uniform"):
    rows = []
    for _ in range(FLAGS.draws):
      if prior == "data":
        pick = rng.integers(0, len(images), ev.num_samples)
      else:
        classes = rng.integers(0, len(counts), ev.num_samples)
        pick = np.array([by_class[c][rng.integers(len(by_class[c]))] for c in classes])
      m = ev.score_images(images[pick])
      rows.append((m["fid"], m["kid"]))
    fid, kid = np.array([r[0] for r in rows]), np.array([r[1] for r in rows])
    result["draws"][prior] = {"fid": fid.tolist(), "kid": kid.tolist()}
    print(f"{prior} prior: FID {fid.mean():.3f} ± {fid.std(ddof=1):.3f} "
          f"({fid.min():.3f}–{fid.max():.3f}), KID {kid.mean():.3f} ± {kid.std(ddof=1):.3f} "
          f"(as in study.csv) over {len(fid)} draws of {ev.num_samples}", flush=True)
  # Population: all reference features, plain against reweighted to uniform classes.
  feats = np.concatenate([ev.evaluator.extractor(images[i:i + 500])["pool"]
                          for i in range(0, len(images), 500)]).astype(np.float64)
  w = 1.0 / counts[labels]
  w /= w.sum()
  mu_w = w @ feats
  centred = feats - mu_w
  sigma_w = (w[:, None] * centred).T @ centred / (1.0 - (w ** 2).sum())
  population = frechet_distance(mu_w, sigma_w, feats.mean(0), np.cov(feats, rowvar=False))
  result["population_fid"] = population
  print(f"population: uniform-class against the reference's own prior, FID {population:.3f}")
  path = os.path.join(FLAGS.out, "class_prior_floor.json")
  atomic_write(path, json.dumps(result, indent=1))
  print(f"Wrote {path}")


if __name__ == "__main__":
  app.run(main)
