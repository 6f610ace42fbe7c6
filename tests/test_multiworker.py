"""MultiWorkerMirroredStrategy across two local processes (loopback only) equals one device."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import conftest
from conftest import ROOT, TINY
from test_training import LINEAR_ADAM, _weights
from tfgan_eff.training.trainer import Trainer


def _free_ports(n):
  socks = [socket.socket() for _ in range(n)]
  for s in socks:
    s.bind(("127.0.0.1", 0))
  ports = [s.getsockname()[1] for s in socks]
  for s in socks:
    s.close()
  return ports


@pytest.mark.slow
def test_two_workers_equal_one_device(tiny_gin, tmp_path):
  bindings = TINY + LINEAR_ADAM
  workers = [f"127.0.0.1:{p}" for p in _free_ports(2)]
  env = {**os.environ, "PYTHONPATH": ROOT, "CUDA_VISIBLE_DEVICES": ""}
  procs = []
  for i in range(2):
    tf_config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": i}}
    procs.append(subprocess.Popen(
        [sys.executable, os.path.join(ROOT, "tests", "multiworker_worker.py"),
         str(tmp_path / "mw"), str(tmp_path / "mw.npz"), *bindings],
        env={**env, "TF_CONFIG": json.dumps(tf_config)}, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True))
  logs = [p.communicate(timeout=900)[0] for p in procs]
  assert all(p.returncode == 0 for p in procs), "\n\n".join(l[-3000:] for l in logs)

  tiny_gin(*LINEAR_ADAM)
  one = Trainer(model_dir=str(tmp_path / "one"), train_steps=1,
                strategy=tf.distribute.OneDeviceStrategy("/cpu:0"))
  one.train()
  mw = np.load(tmp_path / "mw.npz")
  ours = _weights(one.gan.G) + _weights(one.gan.D)
  assert len(mw.files) == len(ours)
  for i, a in enumerate(ours):
    np.testing.assert_allclose(mw[f"arr_{i}"], a, rtol=1e-3, atol=5e-5)
  assert conftest  # the 2-logical-device set-up is not used here


def test_importing_the_library_starts_no_tf_runtime():
  """MultiWorkerMirroredStrategy must be created before any TF op runs; importing every
  configurable must therefore run none (no module-level tensors)."""
  code = ("import tfgan_eff.configurables; from tensorflow.python.eager import context; "
          "print(context.context()._context_handle is None)")
  out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                       text=True, env={**os.environ, "PYTHONPATH": ROOT}).stdout
  assert out.strip().splitlines()[-1] == "True"


@pytest.mark.slow
def test_sigterm_to_one_worker_stops_both_at_the_same_step_and_they_resume(tmp_path):
  """A signal to one worker (a preempted VM) stops every worker after the same step: the stop
  flag is all-reduced inside the step, so the checkpoint save, a collective, cannot
  deadlock. Both exit 143; the chief's checkpoint is at that step and a re-run resumes."""
  from test_reliability import TINY_CLI  # pylint: disable=import-outside-toplevel
  import signal  # pylint: disable=import-outside-toplevel
  import time  # pylint: disable=import-outside-toplevel
  run = tmp_path / "run"

  def start(tag, *extra):
    workers = [f"127.0.0.1:{p}" for p in _free_ports(2)]
    procs, logs = [], []
    for i in range(2):
      tf_config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": i}}
      logs.append(tmp_path / f"{tag}-worker{i}.log")
      procs.append(subprocess.Popen(
          [sys.executable, os.path.join(ROOT, "bin", "train"), f"--model_dir={run}", *TINY_CLI,
           *extra], cwd=ROOT, stdout=open(logs[-1], "w"), stderr=subprocess.STDOUT,
          env={**os.environ, "CUDA_VISIBLE_DEVICES": "", "TF_CONFIG": json.dumps(tf_config)}))
    return procs, logs

  procs, logs = start("first", "--gin_param=Trainer.train_steps = 100000",
                      "--gin_param=Trainer.checkpoint_every = 100000")
  deadline = time.time() + 600
  while "step 3/" not in logs[0].read_text():
    assert all(p.poll() is None for p in procs), logs[0].read_text()[-3000:]
    assert time.time() < deadline
    time.sleep(0.2)
  procs[1].send_signal(signal.SIGTERM)  # the non-chief worker only
  codes = [p.wait(timeout=300) for p in procs]
  texts = [l.read_text() for l in logs]
  assert codes == [128 + signal.SIGTERM] * 2, "\n\n".join(t[-3000:] for t in texts)
  steps = [int(t.split("Stopped at step ")[1].split(" ")[0]) for t in texts]
  assert steps[0] == steps[1] >= 3
  step = steps[0]
  assert os.path.exists(run / "checkpoints" / f"ckpt-{step}.index")
  procs, logs = start("resume", f"--gin_param=Trainer.train_steps = {step + 1}")
  codes = [p.wait(timeout=600) for p in procs]
  texts = [l.read_text() for l in logs]
  assert codes == [0, 0], "\n\n".join(t[-3000:] for t in texts)
  for text in texts:  # the non-chief worker resumes from the chief's checkpoint too
    assert f"ckpt-{step} at step {step}." in text and f"Done: step {step + 1}" in text
