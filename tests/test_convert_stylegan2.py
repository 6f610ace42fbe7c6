"""stylegan2-ada-pytorch -> ours: same weights and inputs give the reference's outputs.

The fixtures (tests/fixtures/stylegan2_*.npz, made by tools/make_reference_fixtures.py with
the reference code and torch) hold random-weight reference networks, inputs and outputs;
these tests need neither torch nor the reference code.
"""

import os

import gin
import numpy as np
import pytest
import tensorflow as tf

from tfgan_eff.convert import common, reader, stylegan2
from tfgan_eff.models import stylegan2_layers as L
from tfgan_eff.training import runs

# Module-scoped fixtures: keep this file in one worker process (pytest -n 2 --dist loadgroup).
pytestmark = pytest.mark.xdist_group("convert_stylegan2")


FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
CONFIGS = ("stylegan2_cifar32", "stylegan2_paper64")  # conditional (cmap D) / unconditional
TOL = 1e-4


def _fixture(name):
  with np.load(os.path.join(FIXTURES, f"{name}.npz")) as f:
    return {k: f[k] for k in f.files}


def _nets(f):
  return ({k[2:]: v for k, v in f.items() if k.startswith("G.")},
          {k[2:]: v for k, v in f.items() if k.startswith("D.")})


def _convert(f):
  g, d = _nets(f)
  return stylegan2.convert(G=g, D=d, G_ema=g, G_kwargs=str(f["G_kwargs"]),
                           D_kwargs=str(f["D_kwargs"]))


def _labels(f):
  return tf.constant(f["c"]) if f["c"].shape[1] else None


def _nchw(x):
  return np.transpose(np.asarray(x), (0, 3, 1, 2))


def _block_report(g, f):
  """Max error after each synthesis block (for ws_mixed), to name the first that differs."""
  ws, x, img, i, out = tf.constant(f["ws_mixed"]), None, None, 0, []
  for block in g.blocks:
    x, rgb = block(x, ws[:, i:i + block.num_conv + 1], noise_mode="const")
    i += block.num_conv
    img = rgb if img is None else L.upsample2d(img, g._f) + rgb
    err = np.abs(np.transpose(img.numpy()[0], (2, 0, 1)) - f[f"block.b{block.resolution}.img"])
    out.append(f"b{block.resolution}: {err.max():.2e}")
  return ", ".join(out)


@pytest.fixture(scope="module", params=CONFIGS)
def converted(request):
  f = _fixture(request.param)
  gan, _, _ = common.build_gan(_convert(f).gin)
  common.load_into(gan, _convert(f))
  yield f, gan
  gin.clear_config()


def test_generator_matches_reference(converted):
  f, gan = converted
  g = gan.G_ema
  ws = g.mapping(tf.constant(f["z"]), _labels(f), truncation=float(f["psi"]))
  np.testing.assert_allclose(ws.numpy(), f["ws"], atol=1e-5)  # mapping, truncation, w_avg
  img = _nchw(g.synthesis(ws, noise_mode="const"))
  assert np.abs(img - f["img"]).max() < TOL, _block_report(g, f)
  # A different w per layer: a style fed to the wrong layer shows here.
  mixed = _nchw(g.synthesis(tf.constant(f["ws_mixed"]), noise_mode="const"))
  assert np.abs(mixed - f["img_mixed"]).max() < TOL, _block_report(g, f)
  assert np.abs(f["img"]).max() > 1.0  # outputs are not trivially small


def test_discriminator_matches_reference(converted):
  f, gan = converted
  out = gan.D(tf.constant(np.transpose(f["img"], (0, 2, 3, 1))), _labels(f))
  np.testing.assert_allclose(out["logits"].numpy(), f["logits"][:, 0], atol=TOL)
  assert np.ptp(f["logits"]) > 0.1  # the logits differ per sample


def test_bin_convert_round_trip_and_fine_tune_start(tmp_path):
  """reference state dicts -> run directory -> load_gan: the run samples the reference's
  images and its D gives the reference's logits; RunWarmStart then starts G, G_ema and D
  of a new run from it."""
  f = _fixture("stylegan2_cifar32")
  model_dir = str(tmp_path / "converted")
  converted = reader.convert(os.path.join(FIXTURES, "stylegan2_cifar32.npz"))
  assert sorted(converted.tensors) == ["D", "G"]  # the fixture has no G_ema: G's copy
  g_ema = dict(converted.tensors["G"])  # a G_ema that differs from G, to see which is loaded
  g_ema["mapping/w_avg"] = (g_ema["mapping/w_avg"][0], g_ema["mapping/w_avg"][1] + 0.5)
  converted.tensors["G_ema"] = g_ema
  common.write_run(converted, model_dir)
  assert sorted(os.listdir(tmp_path)) == ["converted"]  # no temporary folder left
  gan, step = runs.load_gan(model_dir)
  assert step == 0
  for g in (gan.G, gan.G_ema):  # psi = 1: w_avg does not enter
    img = _nchw(g(tf.constant(f["z"]), _labels(f), noise_mode="const"))
    ref = _nchw(gan.G.synthesis(g.mapping(tf.constant(f["z"]), _labels(f)), noise_mode="const"))
    assert np.abs(img - ref).max() < TOL
  ws = gan.G.mapping(tf.constant(f["z"]), _labels(f), truncation=float(f["psi"]))
  assert np.abs(_nchw(gan.G.synthesis(ws, noise_mode="const")) - f["img"]).max() < TOL
  out = gan.D(tf.constant(np.transpose(f["img"], (0, 2, 3, 1))), _labels(f))
  np.testing.assert_allclose(out["logits"].numpy(), f["logits"][:, 0], atol=TOL)
  # A second conversion into the same directory is refused, the run left as it was.
  with pytest.raises(common.ConversionError, match="exists and is not empty"):
    common.write_run(converted, model_dir)
  assert os.listdir(model_dir) == ["config.gin", "checkpoints"] or \
      sorted(os.listdir(model_dir)) == ["checkpoints", "config.gin"]
  # Fine-tuning starts from all three networks of the run.
  gin.clear_config()
  gan2, _, _ = common.build_gan(converted.gin + f"GAN.warm_start = @RunWarmStart()\n"
                                                f"RunWarmStart.model_dir = '{model_dir}'\n")
  assert gan2.warm_start.loads_g_ema
  np.testing.assert_array_equal(gan2.G.w_avg.numpy(), f["G.mapping.w_avg"])
  np.testing.assert_array_equal(gan2.G_ema.w_avg.numpy(), f["G.mapping.w_avg"] + 0.5)
  np.testing.assert_array_equal(gan2.D.out.kernel.numpy(), f["D.b4.out.weight"].T)
  gin.clear_config()


def test_shape_mismatch_names_both_tensors():
  f = _fixture("stylegan2_paper64")
  conv = _convert(f)
  name, value = conv.tensors["G"]["b8/conv1/conv/kernel"]
  conv.tensors["G"]["b8/conv1/conv/kernel"] = (name, value[:, :, :-1])
  gan, _, _ = common.build_gan(conv.gin)
  with pytest.raises(common.ConversionError,
                     match=r"'synthesis\.b8\.conv1\.weight'.*'G/b8/conv1/conv/kernel'"):
    common.load_into(gan, conv)
  gin.clear_config()


def test_unmapped_or_unsupported_source_is_refused():
  f = _fixture("stylegan2_paper64")
  g, d = _nets(f)
  with pytest.raises(common.ConversionError, match="have no place.*synthesis.b8.conv1.extra"):
    stylegan2.generator_tensors({**g, "synthesis.b8.conv1.extra": np.zeros(3)})
  with pytest.raises(common.ConversionError, match="architecture = 'resnet'"):
    stylegan2.generator_config({**g, "synthesis.b8.skip.weight": np.zeros([16, 16, 1, 1])})
  with pytest.raises(common.ConversionError, match="resample_filter"):
    stylegan2.generator_tensors({**g, "synthesis.b8.resample_filter": np.ones([4, 4]) / 16})
  with pytest.raises(common.ConversionError, match="no tensor 'b4.fc.weight'"):
    stylegan2.discriminator_tensors({k: v for k, v in d.items() if k != "b4.fc.weight"})


def test_conv_clamp_and_cmap_projection():
  x = tf.constant([[-300.0, -10.0, 10.0, 300.0]])
  r2 = np.sqrt(2.0)  # lrelu(0.2) * sqrt 2, then clipped to +-256
  np.testing.assert_allclose(L.bias_act(x, None, "lrelu", clamp=256.0).numpy(),
                             [[-60 * r2, -2 * r2, 10 * r2, 256.0]], rtol=1e-6)
  from tfgan_eff.models.stylegan2 import StyleGAN2Discriminator
  d = StyleGAN2Discriminator(resolution=16, num_classes=3, fmap_base=64, fmap_max=8,
                             conditioning="cmap", mapping_layers=2)
  out = d(tf.zeros([2, 16, 16, 3]), tf.constant([0, 2]))
  assert out["logits"].shape == (2,) and d.out.units == 8
  with pytest.raises(ValueError, match="projection conditioning"):
    d.project(out["features"], tf.constant([0, 1]))
  with pytest.raises(ValueError, match="needs labels"):
    d(tf.zeros([2, 16, 16, 3]))
