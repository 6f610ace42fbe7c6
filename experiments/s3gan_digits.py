#!/usr/bin/env python3
"""S3GAN's classifier head vs. a pixel baseline on the built-in digits with 10% of the labels.

Trains `gin/digits/biggan_digits32_10pct_s3gan.gin` (1,797 digits at 32x32, labels kept on a seeded,
class-balanced 10%: 179 images), then, with the final discriminator (the EMA only concerns
G) and no augmentation, measures on the whole data set:

  * head accuracy on the unlabelled 90%: argmax of the classifier head on D's pooled
    features vs. the hidden true labels (the labels the GAN projected those reals on);
  * head accuracy on the labelled 10% (fit of the training labels);
  * the last TensorBoard value of metrics/label_accuracy_unlabelled (one batch);
  * the baseline: a logistic regression (scikit-learn, L2, C=1) on the raw pixels (same
    32x32 resolution, scaled to [0, 1]) of the same labelled 10%, predicting the same 90%.

Prints a table and writes `summary.json` to --out.

    nice -n 5 python experiments/s3gan_digits.py --out=runs/s3gan_digits
    python experiments/s3gan_digits.py --out=runs/s3gan_digits --gin_param="Trainer.train_steps=200"
"""

import json
import os
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from absl import app, flags, logging  # noqa: E402

flags.DEFINE_string("out", "runs/s3gan_digits", "Output folder (the run and summary.json).")
flags.DEFINE_string("gin_file", "gin/digits/biggan_digits32_10pct_s3gan.gin",
                    "The config to train.")
flags.DEFINE_multi_string("gin_param", [], "Extra gin bindings for the run.")
flags.DEFINE_bool("retrain", False, "Train again even if the run is already complete.")
flags.DEFINE_bool("train", True, "Train (or resume) before measuring; False only measures.")
FLAGS = flags.FLAGS


def train(model_dir):
  if FLAGS.retrain and os.path.exists(model_dir):
    shutil.rmtree(model_dir)
  cmd = [sys.executable, os.path.join(ROOT, "bin", "train"),
         "--gin_file=" + os.path.join(ROOT, FLAGS.gin_file) if not os.path.exists(
             FLAGS.gin_file) else "--gin_file=" + FLAGS.gin_file,
         f"--model_dir={model_dir}"]
  cmd += [f"--gin_param={b}" for b in FLAGS.gin_param]
  logging.info("Running: %s", " ".join(cmd))
  subprocess.run(cmd, check=True)


def last_scalar(model_dir, tag):
  """(step, value) of the last logged value of a TensorBoard scalar (None if absent)."""
  from tfgan_eff.io import read_scalars  # pylint: disable=import-outside-toplevel
  values = read_scalars(model_dir).get(tag)
  return (max(values), values[max(values)]) if values else None


def head_predictions(gan, images, batch=256):
  """argmax of the classifier head on D's features of uint8 images."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  from tfgan_eff.objectives.semi_supervised import ClassifierTerm  # pylint: disable=import-outside-toplevel
  heads = [t.head for t in gan.terms if isinstance(t, ClassifierTerm)]
  if not heads:
    raise ValueError("This run has no ClassifierTerm in GAN.terms, so no classifier head.")
  out = []
  for i in range(0, len(images), batch):
    x = tf.cast(images[i:i + batch], tf.float32) / 127.5 - 1.0
    features = gan.D(x, None, training=False)["features"]
    out.append(np.argmax(heads[0](features, training=False).numpy(), axis=-1))
  return np.concatenate(out)


def pixel_baseline(images, labels, true_labels):
  """Logistic regression on raw pixels of the labelled rows; accuracy on the others."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  from sklearn.linear_model import LogisticRegression  # pylint: disable=import-outside-toplevel
  x = images.reshape(len(images), -1).astype(np.float32) / 255.0
  known = labels >= 0
  clf = LogisticRegression(max_iter=5000).fit(x[known], labels[known])
  return float(np.mean(clf.predict(x[~known]) == true_labels[~known]))


def main(argv):
  del argv
  import numpy as np  # pylint: disable=import-outside-toplevel
  logging.set_verbosity(logging.INFO)
  model_dir = os.path.join(FLAGS.out, "run")
  os.makedirs(FLAGS.out, exist_ok=True)
  if FLAGS.train:
    train(model_dir)
  from tfgan_eff.data import ImageData  # pylint: disable=import-outside-toplevel
  from tfgan_eff.training import runs  # pylint: disable=import-outside-toplevel
  gan, step = runs.load_gan(model_dir)
  data = ImageData()  # the run's data and label mask, from its parsed config.gin
  known = data.labels >= 0
  pred = head_predictions(gan, data.images)
  tb = last_scalar(model_dir, "metrics/label_accuracy_unlabelled")
  r = {
      "steps": step,
      "images": int(data.num_examples), "labelled": int(known.sum()),
      "head_accuracy_unlabelled": float(np.mean(pred[~known] == data.true_labels[~known])),
      "head_accuracy_labelled": float(np.mean(pred[known] == data.true_labels[known])),
      "tensorboard_label_accuracy_unlabelled_last_batch": tb[1] if tb else None,
      "logistic_regression_pixels_unlabelled": pixel_baseline(
          data.images, data.labels, data.true_labels),
  }
  with open(os.path.join(FLAGS.out, "summary.json"), "w") as f:
    json.dump(r, f, indent=2)
  print("| quantity | value |\n|---|---|")
  for k, v in r.items():
    print(f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |")


if __name__ == "__main__":
  app.run(main)
