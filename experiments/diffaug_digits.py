#!/usr/bin/env python3
"""DiffAugment vs. no augmentation on 10% of the built-in digits (the overfitting signal).

Trains `gin/digits/biggan_digits32_10pct_diffaug.gin` (180 digits, DiffAugment
"color,translation,cutout") and the same config with `GAN.augment = None` for the same
number of steps, then measures, with the final D and without any augmentation:

  * D's mean logit on the 180 training reals, on the 1,617 held-out digits, and on fakes;
  * the real/fake logit gap (train reals − fakes) and the generalization gap
    (train reals − held-out reals): a D that memorized its training set scores its own
    images far above unseen real ones;
  * FID and KID of 1,000 EMA samples against all 1,797 digits, in the feature space of the
    digits classifier (`feature_extractor="digits"`; not comparable with Inception FIDs).

Writes to --out: `curves.csv` (the TensorBoard scalars of both runs, step by step),
`samples_<run>.png`, `summary.json`, and prints a table.

    python experiments/diffaug_digits.py --out=runs/diffaug_digits --steps=600
"""

import csv
import json
import os
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from absl import app, flags, logging  # noqa: E402

flags.DEFINE_string("out", "runs/diffaug_digits", "Output folder (runs and results).")
flags.DEFINE_integer("steps", 600, "G steps per run.")
flags.DEFINE_integer("num_samples", 1000, "Samples for FID/KID.")
flags.DEFINE_bool("retrain", False, "Train again even if a run is already complete.")
FLAGS = flags.FLAGS

RUNS = {"diffaugment": [], "no_augment": ["GAN.augment = None"]}
CURVES = ("d_logits_real", "d_logits_fake", "d_loss", "g_loss", "d_accuracy_real")


def train(name, extra):
  model_dir = os.path.join(FLAGS.out, name)
  if FLAGS.retrain and os.path.exists(model_dir):
    shutil.rmtree(model_dir)
  cmd = [sys.executable, os.path.join(ROOT, "bin", "train"),
         "--gin_file=" + os.path.join(ROOT, "gin", "digits", "biggan_digits32_10pct_diffaug.gin"),
         f"--model_dir={model_dir}", f"--gin_param=Trainer.train_steps = {FLAGS.steps}",
         "--gin_param=Trainer.checkpoint_every = 100000"]
  cmd += [f"--gin_param={b}" for b in extra]
  logging.info("Running: %s", " ".join(cmd))
  subprocess.run(cmd, check=True)
  return model_dir


def read_curves(model_dir):
  """{tag: {step: value}} of the CURVES scalars of a run."""
  from tfgan_eff.io import read_scalars  # pylint: disable=import-outside-toplevel
  return {tag.split("/")[-1]: values for tag, values in read_scalars(model_dir).items()
          if tag.split("/")[-1] in CURVES}


def d_logits(gan, images, batch=256):
  import numpy as np  # pylint: disable=import-outside-toplevel
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  out = []
  for i in range(0, len(images), batch):
    x = tf.cast(images[i:i + batch], tf.float32) / 127.5 - 1.0
    out.append(gan.D(x, None, training=False)["logits"].numpy())
  return np.concatenate(out)


def analyse(model_dir, all_digits, train_mask):
  """D logits on train/held-out reals and fakes; FID/KID vs all digits."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  from tfgan_eff.eval.evaluator import Evaluator  # pylint: disable=import-outside-toplevel
  from tfgan_eff.training import runs  # pylint: disable=import-outside-toplevel
  gan, step = runs.load_gan(model_dir)
  images = all_digits.images
  # Unconditional D scores (no projection) so that reals and fakes are scored alike.
  real_train = d_logits(gan, images[train_mask])
  real_held = d_logits(gan, images[~train_mask])
  z = tf.random.stateless_normal([512, gan.G.z_dim], seed=[7, 7])
  y = tf.range(512) % gan.num_classes if gan.num_classes else None
  fakes = gan.G(z, y, training=False)
  fake = gan.D(fakes, None, training=False)["logits"].numpy()
  evaluator = Evaluator(metrics=("fid", "kid"), num_samples=FLAGS.num_samples,
                        feature_extractor="digits")
  seeds = iter(range(10_000, 10_000_000, 2))
  metrics = evaluator.evaluate(
      lambda n: runs.generate_uint8(gan, n, 100, next(seeds)), all_digits.eval_batches,
      all_digits.name)
  r = {
      "step": step,
      "d_real_train": float(np.mean(real_train)), "d_real_heldout": float(np.mean(real_held)),
      "d_fake": float(np.mean(fake)),
      "real_fake_gap": float(np.mean(real_train) - np.mean(fake)),
      "train_heldout_gap": float(np.mean(real_train) - np.mean(real_held)),
      "fid_digits": float(metrics["fid"]), "kid_digits": float(metrics["kid_mean"]),
  }
  return r


def main(argv):
  del argv
  import numpy as np  # pylint: disable=import-outside-toplevel
  import gin  # pylint: disable=import-outside-toplevel
  import tfgan_eff.configurables  # noqa: F401  pylint: disable=import-outside-toplevel
  from tfgan_eff.data import Digits, ImageData  # pylint: disable=import-outside-toplevel
  from tfgan_eff.data.pipeline import subset_indices  # pylint: disable=import-outside-toplevel
  logging.set_verbosity(logging.INFO)
  os.makedirs(FLAGS.out, exist_ok=True)
  dirs = {name: train(name, extra) for name, extra in RUNS.items()}

  gin.clear_config()
  all_digits = ImageData(source=Digits(), resolution=32, channels=1)
  train_mask = np.zeros(all_digits.num_examples, bool)
  # The quickstart's subset: data_fraction 0.1 with ImageData's default seed 0.
  train_mask[subset_indices(all_digits.num_examples, 0.1, None, 0)] = True
  results, curves = {}, {}
  for name, model_dir in dirs.items():
    results[name] = analyse(model_dir, all_digits, train_mask)
    curves[name] = read_curves(model_dir)
    shutil.copy(os.path.join(model_dir, "samples.png"),
                os.path.join(FLAGS.out, f"samples_{name}.png"))

  with open(os.path.join(FLAGS.out, "curves.csv"), "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["run", "step", *CURVES])
    for name, c in curves.items():
      for step in sorted(c.get("d_loss", {})):
        w.writerow([name, step, *(c.get(t, {}).get(step, "") for t in CURVES)])
  with open(os.path.join(FLAGS.out, "summary.json"), "w") as f:
    json.dump({"steps": FLAGS.steps, "train_images": int(train_mask.sum()),
               "heldout_images": int((~train_mask).sum()), "runs": results}, f, indent=2)

  keys = list(next(iter(results.values())))
  print("| run | " + " | ".join(keys) + " |")
  print("|---" * (len(keys) + 1) + "|")
  for name, r in results.items():
    print(f"| {name} | " + " | ".join(f"{r[k]:.3f}" if isinstance(r[k], float) else str(r[k])
                                     for k in keys) + " |")


if __name__ == "__main__":
  app.run(main)
