#!/usr/bin/env python3
"""Class by class: how well does each class-conditional cell of a study draw each class?

For every cell of --out matching --cells that still has its checkpoints, restores the
checkpoint of its best FID in study_eval.jsonl (or its last, --at=final), draws
--per_class samples G(z, y) of every class y (EMA generator, fixed latents), and measures
against the real images of class y in the study's reference set, in the study's features:
  - the class's FID, and their mean, the intra-FID (`eval.metrics.intra_fid`);
  - the class's consistency: the share of G(z, y) the study's classifier reads as y.
Also the floor of each class's FID: --per_class real images of the class, drawn with
replacement, in place of the samples (scored the same way).

One FID over all classes cannot see a class drawn badly if the other classes make up for it;
this can (the S3GAN study's question whether the rotation loss costs the 6s and 9s, whose
180° rotations are each other).

    python experiments/classwise_fid.py --spec=studies/s3gan_mnist.gin \\
        --out=docs/studies/s3gan_mnist --cells='s3gan_5pct|s2gan_co'

Writes <cell>/classwise-<step>.json and <out>/classwise_floor.json.
"""

import json
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

flags.DEFINE_string("spec", None, "The study spec.")
flags.DEFINE_string("out", None, "The study folder.")
flags.DEFINE_string("cells", ".", "Regex on cell names.")
flags.DEFINE_enum("at", "best", ["best", "final"], "Which checkpoint of each cell.")
flags.DEFINE_integer("per_class", 1000, "Samples of each class.")
flags.DEFINE_integer("seed", 2026, "Latents (class c, row i: seed [seed, c * per_class + i]) "
                     "and the floor's draws.")
flags.mark_flags_as_required(["spec", "out"])
FLAGS = flags.FLAGS


def _checkpoint(model_dir, at):
  """(step, checkpoint path) of the cell's best-FID row (or last checkpoint), or None."""
  steps = {}
  ckpt_dir = os.path.join(model_dir, "checkpoints")
  for name in os.listdir(ckpt_dir) if os.path.isdir(ckpt_dir) else ():
    m = re.fullmatch(r"ckpt-(\d+)\.index", name)
    if m:
      steps[int(m.group(1))] = os.path.join(ckpt_dir, name[:-len(".index")])
  if not steps:
    return None
  if at == "final":
    step = max(steps)
  else:
    path = os.path.join(model_dir, "study_eval.jsonl")
    rows = [json.loads(line) for line in open(path) if line.strip()] if os.path.exists(
        path) else []
    rows = [r for r in rows if r.get("fid") is not None]
    if not rows:
      return None
    protocol = rows[-1].get("protocol")
    step = min((r for r in rows if r.get("protocol") == protocol), key=lambda r: r["fid"])[
        "step"]
  return (step, steps[step]) if step in steps else None


def main(argv):
  del argv
  import numpy as np  # pylint: disable=import-outside-toplevel
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  from tfgan_eff import study  # pylint: disable=import-outside-toplevel
  from tfgan_eff.eval.metrics import intra_fid  # pylint: disable=import-outside-toplevel
  from tfgan_eff.io import atomic_write, to_uint8  # pylint: disable=import-outside-toplevel
  from tfgan_eff.training import runs  # pylint: disable=import-outside-toplevel
  spec = study.load_spec(FLAGS.spec)
  ev = spec.evaluation
  if ev is None or ev.reference is None or ev.reference.true_labels is None:
    sys.exit("classwise_fid: the study has no labelled reference set (StudyEval.reference).")
  ev.keep_extractor_weights_in(os.path.join(FLAGS.out, "extractor"))
  tag = ev.extractor_tag()
  ex = ev.evaluator.extractor
  if not getattr(ex, "num_classes", 0):
    sys.exit(f"classwise_fid: the study's extractor ({tag}) is not a classifier.")
  real, real_y = ev.reference.images, ev.reference.true_labels

  def embed(images):
    outs = [ex(images[i:i + 500]) for i in range(0, len(images), 500)]
    return (np.concatenate([o["pool"] for o in outs]),
            np.concatenate([o["logits"] for o in outs]).argmax(1))
  real_f, _ = embed(real)
  classes = np.unique(real_y)
  n = FLAGS.per_class

  # The floor: real images of each class in place of its samples.
  rng = np.random.default_rng(FLAGS.seed)
  pick = np.concatenate([rng.choice(np.flatnonzero(real_y == c), n) for c in classes])
  floor = intra_fid(real_f[pick], real_y[pick], real_f, real_y)
  floor_path = os.path.join(FLAGS.out, "classwise_floor.json")
  atomic_write(floor_path, json.dumps({"extractor": tag, "per_class": n, "seed": FLAGS.seed,
                                       **floor}, indent=1))
  table = {"floor": floor["per_class"]}
  summary = {"floor": (floor["intra_fid"], None)}

  for cell in spec.cells:
    model_dir = study.cell_dir(FLAGS.out, cell)
    if not re.search(FLAGS.cells, cell.name) or not os.path.isdir(model_dir):
      continue
    found = _checkpoint(model_dir, FLAGS.at)
    if found is None:
      print(f"{cell.name}: no scored checkpoint at hand, skipped", flush=True)
      continue
    step, path = found
    gan, step = runs.load_gan(model_dir, path)
    if not gan.num_classes or gan.num_classes != len(classes):
      print(f"{cell.name}: G has {gan.num_classes} classes, the reference {len(classes)}: "
            "skipped", flush=True)
      continue
    samples, labels = [], []
    for c in classes:
      for i in range(0, n, ev.batch_size):
        b = min(ev.batch_size, n - i)
        z = tf.random.stateless_normal([b, gan.G.z_dim], seed=[FLAGS.seed, int(c) * n + i])
        samples.append(np.asarray(to_uint8(gan.generate(z, tf.fill([b], int(c))))))
        labels.append(np.full([b], c))
    fake_f, predicted = embed(np.concatenate(samples))
    labels = np.concatenate(labels)
    out = intra_fid(fake_f, labels, real_f, real_y)
    consistency = {int(c): float((predicted[labels == c] == c).mean()) for c in classes}
    result = {"cell": cell.name, "step": step, "extractor": tag, "per_class": n,
              "seed": FLAGS.seed, **out, "class_consistency": consistency}
    atomic_write(os.path.join(model_dir, f"classwise-{step}.json"),
                 json.dumps(result, indent=1))
    table[cell.name] = out["per_class"]
    summary[cell.name] = (out["intra_fid"], float(np.mean(list(consistency.values()))))
    print(f"{cell.name} step {step}: intra-FID {out['intra_fid']:.2f}, class consistency "
          f"{100 * summary[cell.name][1]:.1f}%", flush=True)

  names = list(table)
  print("\nFID of each class against the real images of that class "
        f"({tag}, {n} samples a class; floor: real images in place of samples)")
  print("class " + " ".join(f"{k[:22]:>22}" for k in names))
  for c in classes:
    print(f"{c:5d} " + " ".join(f"{table[k][int(c)]:22.2f}" for k in names))
  print("intra " + " ".join(f"{summary[k][0]:22.2f}" for k in names))
  print(f"Wrote {floor_path} and each cell's classwise-<step>.json")


if __name__ == "__main__":
  app.run(main)
