"""One worker of the two-process MultiWorkerMirroredStrategy test (run by test_multiworker).

    TF_CONFIG=... python tests/multiworker_worker.py MODEL_DIR OUT_NPZ [gin bindings...]
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import tfgan_eff.configurables  # noqa: E402,F401
from tfgan_eff import config  # noqa: E402
from tfgan_eff.training.trainer import Trainer, make_strategy  # noqa: E402


def main():
  model_dir, out = sys.argv[1], sys.argv[2]
  # First, before any TF op (as bin/train does): TF_CONFIG names a 2-worker cluster.
  strategy = make_strategy("auto")
  assert strategy.num_replicas_in_sync == 2, strategy.num_replicas_in_sync
  config.parse([], sys.argv[3:], finalize=False)
  trainer = Trainer(model_dir=model_dir, strategy=strategy, train_steps=1)
  trainer.train()
  if trainer.is_chief:
    np.savez(out, *[w.numpy() for w in trainer.gan.G.weights + trainer.gan.D.weights])


if __name__ == "__main__":
  main()
