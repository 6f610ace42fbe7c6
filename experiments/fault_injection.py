#!/usr/bin/env python3
"""Fault injection: kill training at random moments and check that nothing is lost or
inconsistent.

One uninterrupted reference run of a tiny BigGAN on the built-in digits (with periodic
evaluation, so `eval.jsonl` and `best/` are exercised too), then `--trials` runs of the same
command, each killed once at a random moment of its life (start-up, tracing, steps,
checkpoint saves, evaluations) by SIGKILL or SIGTERM, then re-run to the end. After each
trial it checks:

  * the interrupted process ended as promised (SIGTERM: exit 143 and a checkpoint at the step
    it reached, or exit 143 before training began; SIGKILL: killed);
  * the re-run resumed (from the step the log names) and finished with exit 0;
  * every tensor of the final checkpoint equals the reference run's exactly;
  * `eval.jsonl` has one line per evaluated step and equals the reference's;
    `best/best.json` names the same step;
  * no `_temp` checkpoint folder and no `.tmp-` file is left; `config.gin` parses.

    python experiments/fault_injection.py --out=runs/fault_injection --trials=20

Writes `summary.json` and prints a table (one line per trial). Resumable: each finished trial
is kept in `trialNN.json`, and a re-run of the same command skips those.
"""

import argparse
import glob
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

STEPS = 24
TINY = ["--gin_file=gin/quickstart.gin", "--gin_param=Trainer.batch_size = 8",
        "--gin_param=BigGANGenerator.ch = 4", "--gin_param=BigGANDiscriminator.ch = 4",
        f"--gin_param=Trainer.train_steps = {STEPS}", "--gin_param=Trainer.checkpoint_every = 5",
        "--gin_param=Trainer.keep_checkpoints = 2", "--gin_param=Trainer.eval_every = 4",
        "--gin_param=Evaluator.num_samples = 64", "--gin_param=Trainer.image_every = 8",
        "--gin_param=Trainer.num_samples_grid = 4", "--gin_param=Trainer.log_every = 1"]


def _cmd(model_dir):
  return [sys.executable, os.path.join(ROOT, "bin", "train"), f"--model_dir={model_dir}", *TINY]


def _run(model_dir, log_path):
  with open(log_path, "a") as log:
    return subprocess.run(_cmd(model_dir), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                          timeout=900).returncode


def _final_tensors(model_dir):
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  path = os.path.join(model_dir, "checkpoints", f"ckpt-{STEPS}")
  reader = tf.train.load_checkpoint(path)
  return {k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map()
          if k != "_CHECKPOINTABLE_OBJECT_GRAPH" and "save_counter" not in k}


def _evals(model_dir):
  with open(os.path.join(model_dir, "eval.jsonl")) as f:
    return [json.loads(line) for line in f if line.strip()]


def _check(model_dir, reference, ref_evals, ref_best):
  import gin  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  problems = []
  ours = _final_tensors(model_dir)
  if set(ours) != set(reference):
    problems.append("checkpoint keys differ")
  differ = [k for k in reference if k in ours and not np.array_equal(ours[k], reference[k])]
  if differ:
    problems.append(f"{len(differ)} of {len(reference)} tensors differ (e.g. {differ[0]})")
  evals = _evals(model_dir)
  steps = [e["step"] for e in evals]
  if steps != sorted(set(steps)):
    problems.append(f"eval.jsonl steps {steps}")
  if [(e["step"], e["fid"]) for e in evals] != [(e["step"], e["fid"]) for e in ref_evals]:
    problems.append("eval.jsonl differs from the reference")
  with open(os.path.join(model_dir, "best", "best.json")) as f:
    if json.load(f)["step"] != ref_best:
      problems.append("best/ names another step")
  left = (glob.glob(os.path.join(model_dir, "**", "*_temp*"), recursive=True) +
          glob.glob(os.path.join(model_dir, "**", ".tmp-*"), recursive=True))
  if left:
    problems.append(f"left behind: {left}")
  try:
    import tfgan_eff.configurables  # noqa: F401  pylint: disable=import-outside-toplevel
    gin.clear_config()
    gin.parse_config_file(os.path.join(model_dir, "config.gin"))
  except Exception as e:  # pylint: disable=broad-except
    problems.append(f"config.gin does not parse: {e}")
  return len(ours), problems


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", default="runs/fault_injection")
  parser.add_argument("--trials", type=int, default=20)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args()
  sys.path.insert(0, ROOT)
  rng = random.Random(args.seed)
  os.makedirs(args.out, exist_ok=True)
  ref_dir = os.path.join(args.out, "reference")
  t0 = time.time()
  if not os.path.exists(os.path.join(ref_dir, "checkpoints", f"ckpt-{STEPS}.index")):
    shutil.rmtree(ref_dir, ignore_errors=True)
    assert _run(ref_dir, os.path.join(args.out, "reference.log")) == 0, "reference run failed"
  # The kill moments are drawn over the reference run's wall time, kept for re-runs.
  lifetime_path = os.path.join(args.out, "reference_seconds.json")
  if os.path.exists(lifetime_path):
    with open(lifetime_path) as f:
      lifetime = json.load(f)
  else:
    lifetime = time.time() - t0 if time.time() - t0 > 5 else 60.0
    with open(lifetime_path, "w") as f:
      json.dump(lifetime, f)
  reference, ref_evals = _final_tensors(ref_dir), _evals(ref_dir)
  with open(os.path.join(ref_dir, "best", "best.json")) as f:
    ref_best = json.load(f)["step"]
  results = []
  for trial in range(args.trials):
    model_dir = os.path.join(args.out, f"trial{trial:02d}")
    sig = signal.SIGKILL if trial % 2 == 0 else signal.SIGTERM
    delay = rng.uniform(0.2, 1.0) * lifetime
    done_path = model_dir + ".json"
    if os.path.exists(done_path):  # a re-run of the script skips the trials it finished
      with open(done_path) as f:
        results.append(json.load(f))
      continue
    shutil.rmtree(model_dir, ignore_errors=True)
    log_path = model_dir + ".log"
    if os.path.exists(log_path):
      os.remove(log_path)
    with open(log_path, "a") as log:
      proc = subprocess.Popen(_cmd(model_dir), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
      time.sleep(delay)
      finished_first = proc.poll() is not None
      if not finished_first:
        proc.send_signal(sig)
      rc = proc.wait(timeout=300)
    text = open(log_path).read()
    stopped_at = None
    if "Stopped at step " in text:
      stopped_at = int(text.split("Stopped at step ")[1].split(" ")[0])
    ok_first = (finished_first and rc == 0) or (
        sig == signal.SIGKILL and rc == -signal.SIGKILL) or (
            sig == signal.SIGTERM and rc == 143) or (
                # a signal after "Done" (the process already exiting) changes nothing
                sig == signal.SIGTERM and rc == 0 and "Done: step" in text)
    rc2 = _run(model_dir, log_path)
    text2 = open(log_path).read()[len(text):]
    resumed_at = (int(text2.split(" at step ")[1].split(".")[0])
                  if "Resumed from" in text2 else 0)
    n, problems = _check(model_dir, reference, ref_evals, ref_best)
    if not ok_first:
      problems.append(f"first run exit code {rc} after {sig.name}")
    if rc2 != 0:
      problems.append(f"re-run exit code {rc2}")
    if stopped_at is not None and resumed_at != stopped_at:
      problems.append(f"stopped at {stopped_at} but resumed at {resumed_at}")
    results.append({"trial": trial, "signal": sig.name, "after_s": round(delay, 1),
                    "first_exit": rc, "stopped_at": stopped_at, "resumed_at": resumed_at,
                    "tensors": n, "problems": problems})
    with open(done_path + ".tmp", "w") as f:
      json.dump(results[-1], f)
    os.replace(done_path + ".tmp", done_path)
    print(f"trial {trial:2d} {sig.name:8s} after {delay:5.1f}s: exit {rc:4d}, "
          f"stopped at {stopped_at}, resumed at {resumed_at}, {n} tensors, "
          f"{'OK' if not problems else '; '.join(problems)}", flush=True)
  summary = {"trials": len(results), "failed": sum(bool(r["problems"]) for r in results),
             "steps": STEPS, "reference_seconds": round(lifetime, 1), "results": results}
  with open(os.path.join(args.out, "summary.json"), "w") as f:
    json.dump(summary, f, indent=2)
  print(f"{summary['trials'] - summary['failed']}/{summary['trials']} trials consistent.")
  return 1 if summary["failed"] else 0


if __name__ == "__main__":
  sys.exit(main())
