"""Test set-up: two logical CPU devices (for 2-replica MirroredStrategy tests), quiet TF,
and a tiny gin configuration shared by the training tests."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import gin  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

_cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(_cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import tfgan_eff.configurables  # noqa: E402,F401  registers every configurable

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATA = os.path.join(ROOT, "..", "shared", "data")

TINY = [
    "RESOLUTION = 32", "CHANNELS = 1", "NUM_CLASSES = 10",
    "Trainer.data = @ImageData()", "ImageData.source = @Digits()",
    "ImageData.resolution = %RESOLUTION", "ImageData.channels = %CHANNELS",
    "ImageData.num_images = 64",
    "Trainer.batch_size = 8", "Trainer.log_every = 1000", "Trainer.image_every = 1000",
    "Trainer.summary_every = 1", "Trainer.checkpoint_every = 1000",
    "Trainer.num_samples_grid = 4",
    "GAN.generator = @BigGANGenerator", "GAN.discriminator = @BigGANDiscriminator",
    "GAN.disc_iters = 2", "GAN.ema_decay = 0.9",
    "BigGANGenerator.resolution = %RESOLUTION", "BigGANGenerator.channels = %CHANNELS",
    "BigGANGenerator.num_classes = %NUM_CLASSES", "BigGANGenerator.ch = 4",
    "BigGANGenerator.z_dim = 16", "BigGANGenerator.shared_dim = 8",
    "BigGANGenerator.attention_resolution = 16",
    "BigGANDiscriminator.resolution = %RESOLUTION", "BigGANDiscriminator.channels = %CHANNELS",
    "BigGANDiscriminator.num_classes = %NUM_CLASSES", "BigGANDiscriminator.ch = 4",
    "BigGANDiscriminator.attention_resolution = 16",
]


@pytest.fixture
def tiny_gin():
  """Parses the tiny config plus extra bindings; clears gin afterwards."""
  def parse(*extra):
    gin.clear_config()
    gin.parse_config(TINY + list(extra))
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


def scalars(model_dir):
  """{last tag component: last value} of a run's numeric scalar summaries."""
  from tfgan_eff.io import read_scalars  # pylint: disable=import-outside-toplevel
  return {tag.split("/")[-1]: values[max(values)]
          for tag, values in read_scalars(model_dir).items()}
