#!/usr/bin/env python3
"""How well does an S3GAN cell's rotation head tell the rotation of each class of real image?

Restores a run's checkpoint (its latest, or --checkpoint), rotates up to --per_class of its
training images of each class by 0°, 90°, 180° and 270°, and prints the share of each that
D's rotation head (`RotationTerm`, inference mode) assigns to the right rotation, and which
rotations it reads the upright images as. On digits
a 180° rotation is ambiguous for some classes (an upright 6 is a rotated 9); a head that
cannot tell them apart there gives G's rotation loss (weight_g) a reason to push G's
samples of those classes away from their natural shapes.

    python experiments/rotation_probe.py --model_dir=<cell dir with checkpoints/>

Writes <model_dir>/rotation_probe-<step>.json.
"""

import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

flags.DEFINE_string("model_dir", None, "The run (a study cell's folder).")
flags.DEFINE_string("checkpoint", None, "A checkpoint path (default: the latest).")
flags.DEFINE_integer("per_class", 300, "Images of each class.")
flags.mark_flags_as_required(["model_dir"])
FLAGS = flags.FLAGS


def main(argv):
  del argv
  import numpy as np  # pylint: disable=import-outside-toplevel
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  from tfgan_eff.data import ImageData  # pylint: disable=import-outside-toplevel
  from tfgan_eff.io import atomic_write  # pylint: disable=import-outside-toplevel
  from tfgan_eff.objectives.self_supervised import RotationTerm, rotate  # pylint: disable=import-outside-toplevel
  from tfgan_eff.training import runs  # pylint: disable=import-outside-toplevel
  gan, step = runs.load_gan(FLAGS.model_dir, FLAGS.checkpoint)
  heads = [t for t in gan.terms if isinstance(t, RotationTerm)]
  if not heads:
    sys.exit(f"rotation_probe: the run in {FLAGS.model_dir} has no RotationTerm.")
  head = heads[0].head
  data = ImageData()
  images, labels = data.images, data.true_labels
  result = {"model_dir": FLAGS.model_dir, "step": step, "per_class": FLAGS.per_class,
            "accuracy": {}}
  print(f"step {step}: share of real images whose rotation the head gets right")
  print("class    0°    90°   180°   270°   upright read as (0/90/180/270°)")
  for c in np.unique(labels):
    x = images[np.flatnonzero(labels == c)[:FLAGS.per_class]]
    x = tf.cast(x, tf.float32) / 127.5 - 1.0
    acc, upright = [], None
    for k in range(4):
      features = gan.D(rotate(x, k), None, training=False)["features"]
      predicted = head(features, training=False).numpy().argmax(1)
      acc.append(float((predicted == k).mean()))
      if k == 0:
        upright = (np.bincount(predicted, minlength=4) / len(predicted)).tolist()
    result["accuracy"][int(c)] = acc
    result.setdefault("upright_read_as", {})[int(c)] = upright
    print(f"{c:5d} " + " ".join(f"{a:6.2f}" for a in acc) + "   " +
          "/".join(f"{u:.2f}" for u in upright))
  path = os.path.join(FLAGS.model_dir, f"rotation_probe-{step}.json")
  atomic_write(path, json.dumps(result, indent=1))
  print(f"Wrote {path}")


if __name__ == "__main__":
  app.run(main)
