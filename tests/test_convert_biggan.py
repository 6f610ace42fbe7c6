"""BigGAN-PyTorch weights in our BigGAN: converted networks reproduce the reference's outputs.

The fixtures (tools/fixtures_biggan.py, made with the reference code and torch) hold random
BigGAN-PyTorch G and D state dicts at 32 px (per-layer class embeddings, plain BN) and 128 px
(shared embedding, hierarchical z, attention in G and D, `mybn` standing statistics), inputs,
outputs and per-stage outputs of sample 0 (NCHW, top-left 8x8). No torch here.
"""

import os

import numpy as np
import pytest
import tensorflow as tf

from tfgan_eff.convert import biggan, common

# Module-scoped fixtures: keep this file in one worker process (pytest -n 2 --dist loadgroup).
pytestmark = pytest.mark.xdist_group("convert_biggan")


FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")
TOL = 1e-4
CROP = 8


def _fixture(resolution):
  with np.load(os.path.join(FIXTURES, f"biggan_{resolution}.npz")) as f:
    arrays = {k: f[k] for k in f.files}
  state = {p: {k[len(p) + 1:]: v for k, v in arrays.items() if k.startswith(p + ".")}
           for p in ("G", "D")}
  return arrays, state


@pytest.fixture(scope="module", params=[32, 128])
def converted(request):
  """(fixture arrays, source state dicts, Converted, our GAN with the weights loaded)."""
  arrays, state = _fixture(request.param)
  conv = biggan.convert(state["G"], D_state=state["D"], G_ema_state=state["G"])
  gan, _, _ = common.build_gan(conv.gin)
  common.load_into(gan, conv)
  yield arrays, state, conv, gan
  import gin  # pylint: disable=import-outside-toplevel
  gin.clear_config()


def _nchw(x):
  return np.transpose(np.asarray(x), (0, 3, 1, 2))


def _crop(x):  # our [H, W, C] of sample 0 -> the fixture's [C, CROP, CROP]
  return np.transpose(np.asarray(x)[:CROP, :CROP], (2, 0, 1))


def _generator_stages(g, z, y):
  """Our G's stage outputs for sample 0 as the fixture stores them (mirrors G.call)."""
  zs = tf.split(z, len(g.blocks) + 1, axis=-1) if g.hierarchical_z else [z]
  emb = (g.embed(y) if g.embed is not None else tf.one_hot(y, g.num_classes))
  lin = g.linear(zs[0])
  out = {"linear": np.transpose(np.reshape(lin[0], [4, 4, -1]), (2, 0, 1)).reshape(-1)}
  h = tf.reshape(lin, [-1, 4, 4, g.bottom_channels])
  for i, block in enumerate(g.blocks):
    cond = tf.concat(([zs[i + 1]] if g.hierarchical_z else []) + [emb], -1)
    h = block(h, cond)
    out[f"block{i}"] = _crop(h[0])
    if i in g.attention:
      h = g.attention[i](h)
      out[f"attention{i}"] = _crop(h[0])
  out["bn_out"] = _crop(g.bn_out(h)[0])
  return out


def _discriminator_stages(d, x):
  out, h = {}, x
  for i, block in enumerate(d.blocks):
    h = block(h)
    out[f"block{i}"] = _crop(h[0])
    if i in d.attention:
      h = d.attention[i](h)
      out[f"attention{i}"] = _crop(h[0])
  out["linear"] = np.asarray(d.linear(tf.reduce_sum(tf.nn.relu(h), [1, 2])))[0]
  return out


def _compare_stages(ours, arrays, prefix):
  """Max abs error per stage, in network order; the first stage over TOL names the layer."""
  errors = {}
  for name, value in ours.items():
    ref = arrays[f"{prefix}.{name}"]
    assert ref.shape == value.shape, (name, ref.shape, value.shape)
    errors[name] = float(np.max(np.abs(ref - value)))
  bad = [k for k, e in errors.items() if e > TOL]
  assert not bad, f"{prefix}: first stage off is {bad[0]}; max abs errors {errors}"
  return errors


def test_generator_matches_reference(converted):
  arrays, _, conv, gan = converted
  z, y = tf.constant(arrays["z"]), tf.constant(arrays["y"].astype(np.int32))
  assert gan.G.z_dim == z.shape[1]
  for g in (gan.G, gan.G_ema):
    images = _nchw(g(z, y, training=False))
    err = np.max(np.abs(images - arrays["G_images"]))
    assert err < TOL, (g.name, err, conv.gin)


def test_discriminator_matches_reference(converted):
  arrays, _, _, gan = converted
  x = tf.constant(np.transpose(arrays["G_images"], (0, 2, 3, 1)))
  y = tf.constant(arrays["y"].astype(np.int32))
  logits = gan.D(x, y, training=False)["logits"].numpy()
  np.testing.assert_allclose(logits, arrays["D_logits"], rtol=0, atol=TOL)


def test_stages_match_reference(converted):
  """Every block, attention layer and output layer of G and D (localises a mismatch)."""
  arrays, _, _, gan = converted
  z, y = tf.constant(arrays["z"]), tf.constant(arrays["y"].astype(np.int32))
  g = _compare_stages(_generator_stages(gan.G, z, y), arrays, "G_inter")
  x = tf.constant(np.transpose(arrays["G_images"], (0, 2, 3, 1)))
  d = _compare_stages(_discriminator_stages(gan.D, x), arrays, "D_inter")
  assert len(g) >= 5 and len(d) >= 5


def test_gin_reads_architecture(converted):
  arrays, _, conv, gan = converted
  res = gan.G.resolution
  assert arrays["G_images"].shape[-1] == res
  if res == 32:  # DiffAugment-CIFAR style
    assert gan.G.per_layer_embedding and not gan.G.hierarchical_z and not gan.G.attention
  else:
    assert gan.G.hierarchical_z and gan.G.embed is not None
    assert list(gan.G.attention) == [2] and list(gan.D.attention) == [3]
  assert "BigGANDiscriminator.projection_transpose_sn = True" in conv.gin
  assert all(name.endswith(".sv0") for names in conv.ignored.values()
             for name in (n.split(":")[0] for n in names))


def test_shape_mismatch_names_both_tensors(converted):
  _, state, _, gan = converted
  g = dict(state["G"])
  w = g["blocks.1.0.conv2.weight"]
  g["blocks.1.0.conv2.weight"] = w[:, :, :1, :1]
  bad = biggan.convert(g)
  with pytest.raises(common.ConversionError, match=r"blocks\.1\.0\.conv2\.weight.*"
                                                   r"G/block1/conv2/kernel"):
    common.load_into(gan, bad)


def test_unknown_source_tensor_raises():
  _, state = _fixture(32)
  g = dict(state["G"], **{"blocks.0.0.extra.weight": np.zeros([2, 2], np.float32)})
  with pytest.raises(common.ConversionError, match=r"blocks\.0\.0\.extra\.weight"):
    biggan.convert(g)
  d = dict(state["D"], **{"embed.u1": np.zeros([1, 10], np.float32)})
  with pytest.raises(common.ConversionError, match=r"embed\.u1"):
    biggan.convert(state["G"], D_state=d)


def test_unrepresentable_features_raise():
  _, state = _fixture(128)
  g = state["G"]
  with pytest.raises(common.ConversionError, match="BN_eps"):
    biggan.convert(g, BN_eps=1e-4)
  with pytest.raises(common.ConversionError, match="norm_style"):
    biggan.convert(g, norm_style="in")
  with pytest.raises(common.ConversionError, match="Unknown hints"):
    biggan.convert(g, bn_eps=1e-5)
  cross = {k.replace("bn.stored_mean", "bn.running_mean"): v for k, v in g.items()}
  with pytest.raises(common.ConversionError, match="cross_replica"):
    biggan.convert(cross)
  two_attn = dict(g, **{k.replace("blocks.2.1.", "blocks.0.1."): v for k, v in g.items()
                        if k.startswith("blocks.2.1.")})
  with pytest.raises(common.ConversionError, match="attention after blocks"):
    biggan.convert(two_attn)


def test_g_ema_only_initialises_g_too():
  _, state = _fixture(32)
  conv = biggan.convert(None, G_ema_state=state["G"])
  assert set(conv.tensors) == {"G", "G_ema"} and conv.tensors["G"] is conv.tensors["G_ema"]
  assert "# D not converted" in conv.gin and "projection_transpose_sn" not in conv.gin


def test_bin_convert_round_trip(tmp_path):
  """State dicts (G. / D. prefixed .npz: no torch) -> what bin/convert runs (reader.convert,
  write_run) -> a run that load_gan restores: its G_ema draws the reference's images, its D
  the logits."""
  from tfgan_eff.convert import reader  # pylint: disable=import-outside-toplevel
  from tfgan_eff.training import runs  # pylint: disable=import-outside-toplevel
  arrays, _ = _fixture(32)
  model_dir = str(tmp_path / "run")
  hints = reader.parse_hints(["SN_eps=1e-12"])
  assert hints == {"SN_eps": 1e-12}
  converted = reader.convert(os.path.join(FIXTURES, "biggan_32.npz"), "auto", hints)
  common.write_run(converted, model_dir)
  gan, step = runs.load_gan(model_dir)
  z, y = tf.constant(arrays["z"]), tf.constant(arrays["y"].astype(np.int32))
  assert step == 0 and np.abs(_nchw(gan.G_ema(z, y)) - arrays["G_images"]).max() < TOL
  logits = gan.D(tf.constant(np.transpose(arrays["G_images"], (0, 2, 3, 1))), y)["logits"]
  np.testing.assert_allclose(logits.numpy(), arrays["D_logits"], rtol=0, atol=TOL)
  with pytest.raises(ValueError, match="not name=value"):
    reader.parse_hints(["SN_eps"])
  import gin  # pylint: disable=import-outside-toplevel
  gin.clear_config()
