"""Every shipped gin config parses and builds its GAN (networks, terms, augmenter)."""

import glob
import os

import gin
import pytest

from tfgan_eff import config
from tfgan_eff.training.gan import GAN

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "gin", "*.gin")))


def test_there_are_configs():
  assert len(CONFIGS) >= 10


@pytest.mark.parametrize("path", CONFIGS)
def test_config_parses_and_constructs_its_gan(path):
  try:
    # Macros a user must pass (data folders, source runs): any value parses.
    config.parse([os.path.join(ROOT, path)], ["DATA_DIR = '/data'", "SOURCE = '/source'",
                                             "MNIST_IMAGES = '/mnist.gz'", "NUM_IMAGES = 100",
                                             "PANDA_DIR = '/panda'"])
    gan = GAN()
    assert gan.terms, path
    assert gan.terms[0].name == "adversarial"
    resolution = gin.query_parameter("%RESOLUTION")
    assert resolution in (16, 32, 64, 128, 256, 512, 1024)
  finally:
    gin.clear_config()


def test_a_missing_required_macro_names_itself_and_the_fix():
  try:
    with pytest.raises(ValueError, match=r"needs a value for DATA_DIR.*--gin_param=\"DATA_DIR="):
      config.parse([os.path.join(ROOT, "gin", "stylegan2_ffhq256_2k.gin")])
  finally:
    gin.clear_config()
