#!/usr/bin/env python3
"""Floors of a study's FID: what real images, in place of a cell's samples, score.

Each floor draws the study's sample count of real images with replacement and scores them
exactly as a cell's samples (FID/KID against the study's reference set, in its features;
`StudyEval.score_images`).

--floor=copy: a generator that copies its k training images exactly. For each data size of
  the study (one trained cell of it names the training subset; every seed and method of a
  data size trains on the same images). In a few-shot study a cell whose best FID is near
  this floor, with a high memorisation rate, is copying; only a cell below it generalises
  beyond its training images in this metric. Writes <out>/copy_floor.json.

--floor=class_prior: what the class prior alone costs a class-conditional cell. A
  conditional cell is sampled with uniform labels (`runs.generate_uint8`), one class in ten
  on MNIST, while the reference set has its own class frequencies (the 10,000 MNIST test
  digits: 892 fives to 1,135 ones), which an unconditional cell learns. So even a perfect
  conditional generator scores above a perfect unconditional one. Reference images drawn
  (a) with the reference's own class frequencies and (b) with uniform classes, `--draws`
  times each; also the population value (the Fréchet distance between the class-reweighted
  and the plain statistics of all reference features, no sampling noise). Writes
  <out>/class_prior_floor.json.

    python experiments/study_floors.py --floor=copy --spec=studies/adafm_mnist.gin \\
        --out=docs/studies/adafm_mnist
    python experiments/study_floors.py --floor=class_prior --spec=studies/s3gan_mnist.gin \\
        --out=docs/studies/s3gan_mnist
"""

import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

flags.DEFINE_enum("floor", None, ["copy", "class_prior"], "Which floor (see the docstring).")
flags.DEFINE_string("spec", None, "The study spec.")
flags.DEFINE_string("out", None, "The study folder (its cells name the training subsets; the "
                    "extractor's weights are kept there).")
flags.DEFINE_integer("draws", 10, "--floor=class_prior: draws of each prior.")
flags.mark_flags_as_required(["floor", "spec", "out"])
FLAGS = flags.FLAGS


def copy_floor(spec, ev, result):
  import numpy as np  # pylint: disable=import-outside-toplevel
  from tfgan_eff import study  # pylint: disable=import-outside-toplevel
  from tfgan_eff.data import ImageData  # pylint: disable=import-outside-toplevel
  from tfgan_eff.training import runs  # pylint: disable=import-outside-toplevel
  result["floors"] = {}
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


def class_prior_floor(ev, result):
  import numpy as np  # pylint: disable=import-outside-toplevel
  from tfgan_eff.eval.metrics import frechet_distance  # pylint: disable=import-outside-toplevel
  images, labels = ev.reference.images, ev.reference.true_labels
  if labels is None or labels.min() < 0:
    sys.exit("study_floors: the reference set has no labels (--floor=class_prior needs them).")
  counts = np.bincount(labels)
  by_class = [np.flatnonzero(labels == c) for c in range(len(counts))]
  rng = np.random.default_rng(ev.seed)
  result.update(class_counts=counts.tolist(), draws={})
  for prior in ("data", "uniform"):
    fid, kid = [], []
    for _ in range(FLAGS.draws):
      if prior == "data":
        pick = rng.integers(0, len(images), ev.num_samples)
      else:
        classes = rng.integers(0, len(counts), ev.num_samples)
        pick = np.array([by_class[c][rng.integers(len(by_class[c]))] for c in classes])
      m = ev.score_images(images[pick])
      fid.append(m["fid"])
      kid.append(m["kid"])
    result["draws"][prior] = {"fid": fid, "kid": kid}
    fid, kid = np.array(fid), np.array(kid)
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
  result["population_fid"] = frechet_distance(mu_w, sigma_w, feats.mean(0),
                                              np.cov(feats, rowvar=False))
  print(f"population: uniform-class against the reference's own prior, "
        f"FID {result['population_fid']:.3f}")


def main(argv):
  del argv
  from tfgan_eff import study  # pylint: disable=import-outside-toplevel
  from tfgan_eff.io import atomic_write  # pylint: disable=import-outside-toplevel
  spec = study.load_spec(FLAGS.spec)
  ev = spec.evaluation
  if ev is None or ev.reference is None:
    sys.exit("study_floors: the study has no reference set (StudyEval.reference).")
  ev.keep_extractor_weights_in(os.path.join(FLAGS.out, "extractor"))
  result = {"spec": FLAGS.spec, "extractor": ev.extractor_tag(),
            "num_samples": ev.num_samples, "seed": ev.seed}
  if FLAGS.floor == "copy":
    copy_floor(spec, ev, result)
  else:
    class_prior_floor(ev, result)
  path = os.path.join(FLAGS.out, f"{FLAGS.floor}_floor.json")
  atomic_write(path, json.dumps(result, indent=1))
  print(f"Wrote {path}")


if __name__ == "__main__":
  app.run(main)
