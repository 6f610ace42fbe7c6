"""Test set-up: two logical CPU devices (for 2-replica MirroredStrategy tests), quiet TF,
and a tiny gin configuration shared by the training tests."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# One kernel choice for the test process and every tool it starts: the tools turn oneDNN on
# (cli/entry.py) unless it is set, and a test that imports a tool module would otherwise
# leave subprocesses started later on other kernels than this process (other rounding).
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

import gin  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

_cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(_cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import tfgan_eff.configurables  # noqa: E402,F401  registers every configurable
from tfgan_eff import config  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATA = os.path.join(ROOT, "..", "shared", "data")

# What shrinks any shipped config for a test: gin/base/tiny.gin, on 64 of the built-in digits.
TINY_OVERLAY = [
    "include 'gin/base/tiny.gin'", "ImageData.source = @Digits()", "CHANNELS = 1",
    "ImageData.num_images = 64", "ImageData.data_fraction = 1.0", "ImageData.random_flip = False",
    "Trainer.log_every = 1000", "Trainer.train_steps = 1",
    # XLA compiles a tiny BigGAN step for minutes here; test_xla.py checks XLA, and
    # what jit_compile='auto' chooses.
    "Trainer.jit_compile = False",
]
# The tiny config of the training tests: the quickstart so shrunk, EMA 0.9 from the start.
TINY = ["include 'gin/quickstart.gin'", *TINY_OVERLAY, "GAN.ema_decay = 0.9",
        "GAN.ema_start_step = 0", "Trainer.evaluator = None"]


@pytest.fixture(autouse=True)
def _seeded():
  """Every test starts from the same global seeds (Python, NumPy, TF), so an unseeded random
  net or batch is the same on every run: a test passes or fails for its code, not its draw."""
  import keras
  keras.utils.set_random_seed(0)


@pytest.fixture
def tiny_gin():
  """Parses the tiny config plus extra bindings; clears gin afterwards."""
  def parse(*extra):
    gin.clear_config()
    config.parse([], TINY + list(extra), finalize=False)
  yield parse
  gin.clear_config()


_MIRRORED = []


def mirrored():
  """The one 2-replica MirroredStrategy of the test session.

  Separate MirroredStrategy objects in one process reuse collective instance keys; a second
  one then aborts with 'Shape mismatch in the collective instance'. All tests share this one.
  """
  if not _MIRRORED:
    _MIRRORED.append(tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))
  return _MIRRORED[0]


def one_and_two_replicas(tmp_path, train_steps=1):
  """The current gin config trained `train_steps` steps on one device and on 2 replicas
  (in tmp_path/one and tmp_path/two) -> the two trainers."""
  from tfgan_eff.training.trainer import Trainer  # pylint: disable=import-outside-toplevel
  runs = []
  for name, strategy in (("one", tf.distribute.OneDeviceStrategy("/cpu:0")),
                         ("two", mirrored())):
    t = Trainer(model_dir=str(tmp_path / name), strategy=strategy, train_steps=train_steps)
    t.train()
    runs.append(t)
  return runs


def scalars(model_dir):
  """{last tag component: last value} of a run's numeric scalar summaries."""
  from tfgan_eff.io import read_scalars  # pylint: disable=import-outside-toplevel
  return {tag.split("/")[-1]: values[max(values)]
          for tag, values in read_scalars(model_dir).items()}
