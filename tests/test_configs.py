"""Every shipped gin config, gin/base included, parses, builds its GAN (networks, terms,
augmenter, transfer) and runs one D step and one G step at the sizes of gin/base/tiny.gin.
The fast suite steps one config per signature (what code it runs); `-m slow` steps the rest."""

import glob
import os

import conftest
import gin
import numpy as np
import pytest
import tensorflow as tf

from tfgan_eff import config
from tfgan_eff.training.gan import GAN

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(os.path.relpath(p, ROOT)
                 for p in glob.glob(os.path.join(ROOT, "gin", "**", "*.gin"), recursive=True))

# Macros a user must pass (data folders, source runs): any value parses.
USER_MACROS = ["DATA_DIR = '/data'", "SOURCE = '/source'", "MNIST_IMAGES = '/mnist.gz'",
               "NUM_IMAGES = 100", "PANDA_DIR = '/panda'"]
# gin/base files are parts: (files before it, bindings after it) make each a whole config.
BASE = {
    "ada.gin": (["gin/digits/stylegan2_digits32.gin"], []),
    "adafm_biggan128.gin": ([], ["NUM_CLASSES = 1"]),
    "biggan.gin": ([], ["CHANNELS = 1", "NUM_CLASSES = 10", "G_LR = 2e-4", "D_LR = 2e-4"]),
    "biggan_small.gin": ([], ["CHANNELS = 1", "NUM_CLASSES = 10"]),
    "diffaugment_stylegan2.gin": (["gin/digits/stylegan2_digits32.gin"], []),
    "mixed_float16.gin": (["gin/digits/stylegan2_digits32.gin"], []),
    "s3gan.gin": (["gin/quickstart.gin"],
                  ["GAN.terms = [@Adversarial(), @RotationTerm(), @ClassifierTerm()]"]),
    "stylegan2.gin": ([], ["CHANNELS = 1", "NUM_CLASSES = 0", "LR = 0.0025"]),
    "stylegan2_training.gin": (["gin/digits/stylegan2_digits32.gin"], []),
    "stylegan2_small.gin": ([], ["CHANNELS = 1", "NUM_CLASSES = 0"]),
    "tiny.gin": (["gin/quickstart.gin"], []),
}

# gin/transfer files follow the source run's config.gin (its networks): a StyleGAN2 one here.
TRANSFER_SOURCE = ["gin/digits/stylegan2_digits32.gin"]


def test_there_are_configs_and_every_base_part_is_known():
  assert len(CONFIGS) >= 30
  bases = {os.path.basename(p) for p in CONFIGS if p.startswith(os.path.join("gin", "base"))}
  assert bases == set(BASE)


def _parse(path, extra=()):
  """The config shrunk by gin/base/tiny.gin (its classes kept, at most 10)."""
  before, after = BASE.get(os.path.basename(path), ([], [])) if "/base/" in path else ([], [])
  if "/transfer/" in path:
    before = TRANSFER_SOURCE
  gin.clear_config()
  config.parse([os.path.join(ROOT, p) for p in before + [path]], USER_MACROS, finalize=False)
  gin.parse_config(conftest.TINY_OVERLAY + list(after) + list(extra))
  classes = gin.query_parameter("%NUM_CLASSES")
  if classes > 10:
    gin.parse_config(["NUM_CLASSES = 10"])


def _batch(gan, batch, resolution, channels):
  images = tf.random.stateless_uniform([batch, resolution, resolution, channels], [1, 2],
                                       -1.0, 1.0)
  labels = tf.range(batch, dtype=tf.int32) % max(gan.num_classes, 1)
  return {"images": images, "labels": labels, "true_labels": labels}


def _source_checkpoint(path, tmp_path):
  """A warm start's source: the same config without the transfer, built and saved."""
  _parse(path, ["GAN.warm_start = None"])
  gan = GAN()
  gan.build(8, (32, 32, gin.query_parameter("%CHANNELS")))
  return tf.train.Checkpoint(**gan.checkpoint_items()).save(str(tmp_path / "source" / "ckpt"))


def _code_paths(path):
  """What a config runs once shrunk (its signature): the configurables it binds, the
  references (networks, terms, augmenter, transfer, optimizers) its parameters name, and
  whether it is conditional, has unlabelled images or mixes precisions. Configs that differ
  only in numbers and strings (sizes, rates, paths, policies) run the same code at tiny size."""
  _parse(path)
  try:
    paths = {"conditional" if gin.query_parameter("%NUM_CLASSES") > 1 else "unconditional"}
    for (_, selector), params in gin.config._CONFIG.items():  # pylint: disable=protected-access
      if selector == "gin.macro":
        continue
      paths.add(selector)
      for name, value in params.items():
        refs = value if isinstance(value, (list, tuple)) else [value]
        named = [repr(r) for r in refs if isinstance(r, gin.config.ConfigurableReference)]
        if named and not any(r.startswith("%") for r in named):
          paths.add(f"{selector}.{name} = {named}")
    for binding in ("ImageData.label_fraction", "GAN.mixed_precision"):
      try:
        paths.add(f"{binding} = {gin.query_parameter(binding)!r}")
      except ValueError:
        pass
    return frozenset(paths)
  finally:
    gin.clear_config()


def _one_per_code_path(paths):
  """The first config of each signature runs in the fast suite, the others are marked
  slow (pytest -m slow runs them all)."""
  seen, params = set(), []
  for path in paths:
    signature = _code_paths(path)
    params.append(pytest.param(path, marks=[pytest.mark.slow] if signature in seen else []))
    seen.add(signature)
  return params


def test_configs_that_share_a_signature_differ_only_in_values():
  """The signature tells apart what differs in code: BigGAN from StyleGAN2, with and without
  a method, conditional or not."""
  sigs = {p: _code_paths(p) for p in ("gin/quickstart.gin", "gin/mnist_stylegan2.gin",
                                      "gin/digits/biggan_digits32_10pct_diffaug.gin",
                                      "gin/digits/biggan_digits32_10pct_diffaug_insgen.gin",
                                      "gin/digits/biggan_digits32_unsupervised.gin",
                                      "gin/stylegan2/stylegan2_ffhq256_2k_ada.gin",
                                      "gin/stylegan2/stylegan2_ffhq256_10k_ada.gin")}
  assert len(set(sigs.values())) == 6
  assert sigs["gin/stylegan2/stylegan2_ffhq256_2k_ada.gin"] == \
      sigs["gin/stylegan2/stylegan2_ffhq256_10k_ada.gin"]
  fast = [p for p in _one_per_code_path(CONFIGS) if not p.marks]
  assert 25 <= len(fast) < len(CONFIGS)


@pytest.mark.parametrize("path", _one_per_code_path(CONFIGS))
def test_config_builds_and_trains_one_tiny_step(path, tmp_path):
  try:
    extra = []
    _parse(path)
    try:
      warm = gin.query_parameter("GAN.warm_start")
    except ValueError:
      warm = None
    if warm is not None:
      extra = [f"SOURCE = '{_source_checkpoint(path, tmp_path)}'"]
      _parse(path, extra)
    resolution, channels = gin.query_parameter("%RESOLUTION"), gin.query_parameter("%CHANNELS")
    assert resolution == 32
    gan = GAN()
    assert gan.terms and gan.terms[0].name == "adversarial", path
    gan.build(8, (resolution, resolution, channels))
    data = _batch(gan, 8, resolution, channels)
    step = tf.constant(0, tf.int64)
    d = gan.d_step(data, step, tf.constant(0, tf.int64))
    g = gan.g_step(data, step)
    gan.update_ema(1)
    for k in ("d_loss", "d_grad_norm"):
      assert np.isfinite(float(d[k])), (path, k, d[k])
    for k in ("g_loss", "g_grad_norm"):
      assert np.isfinite(float(g[k])), (path, k, g[k])
    assert float(d["d_grad_norm"]) > 0 and float(g["g_grad_norm"]) > 0
  finally:
    gin.clear_config()


def test_isinstance_works_with_the_names_of_configurable_classes():
  # gin wraps each registered class in a subclass that makes instances of the original;
  # config.configurable teaches the wrapper isinstance/issubclass.
  from tfgan_eff.models.biggan import BigGANGenerator  # pylint: disable=import-outside-toplevel
  from tfgan_eff.objectives import Term  # pylint: disable=import-outside-toplevel
  from tfgan_eff.objectives.self_supervised import RotationTerm  # pylint: disable=import-outside-toplevel
  from tfgan_eff.objectives.semi_supervised import ClassifierTerm  # pylint: disable=import-outside-toplevel
  try:
    config.parse([], ["RotationTerm.weight_d = 0.5"])
    term = RotationTerm()
    assert term.weight_d == 0.5  # built through gin's wrapper, bindings injected
    assert isinstance(term, RotationTerm) and isinstance(term, Term)
    assert issubclass(type(term), RotationTerm)
    assert not isinstance(term, ClassifierTerm) and not isinstance(object(), RotationTerm)
    assert not issubclass(ClassifierTerm, RotationTerm)
    g = BigGANGenerator(resolution=32, channels=1, ch=4, z_dim=8)
    assert isinstance(g, BigGANGenerator) and not isinstance(term, BigGANGenerator)
  finally:
    gin.clear_config()


def test_a_missing_required_macro_names_itself_and_the_fix():
  try:
    with pytest.raises(ValueError, match=r"needs a value for DATA_DIR.*--gin_param=\"DATA_DIR="):
      config.parse([os.path.join(ROOT, "gin", "stylegan2", "stylegan2_ffhq256_2k_ada.gin")])
  finally:
    gin.clear_config()


def test_lazy_adam_computes_the_official_factors():
  from tfgan_eff.training.optimizers import lazy_adam  # pylint: disable=import-outside-toplevel
  g, d = lazy_adam(0.0025, 0.0, 0.99, reg_interval=4), lazy_adam(0.0025, 0.0, 0.99,
                                                                 reg_interval=16)
  # The numbers the configs used to spell out: 0.0025 * 4/5, 0.99 ** (4/5), ... 16/17.
  assert float(g.learning_rate) == pytest.approx(0.002, rel=1e-6)
  assert float(d.learning_rate) == pytest.approx(0.00235294, rel=1e-6)
  assert g.beta_2 == pytest.approx(0.991992, abs=1e-6)
  assert d.beta_2 == pytest.approx(0.990585, abs=1e-6)
  assert g.beta_1 == 0.0
  plain = lazy_adam(0.0025, 0.0, 0.99, reg_interval=1)
  assert float(plain.learning_rate) == pytest.approx(0.0025) and plain.beta_2 == 0.99
  with pytest.raises(ValueError, match="reg_interval must be >= 1"):
    lazy_adam(reg_interval=0)
