"""Mixed precision (`GAN.mixed_precision`): which layers compute in which dtype, one bf16
step against float32, finite training, checkpoints across precisions, float16 loss scaling."""

import numpy as np
import pytest
import tensorflow as tf

from test_stylegan2_training import SG2_TINY
from test_training import LINEAR_ADAM, _one_device
from tfgan_eff import precision
from tfgan_eff.models import stylegan2
from tfgan_eff.training.trainer import Trainer


def _trainer(tmp_path, name, steps=1, **kw):
  return Trainer(model_dir=str(tmp_path / name), strategy=_one_device(), train_steps=steps,
                 **kw)


def _trainables(t):
  return [v.numpy() for v in t.gan.G.trainable_variables + t.gan.D.trainable_variables]


def test_unknown_policy_is_refused_before_any_work(tiny_gin, tmp_path):
  tiny_gin("GAN.mixed_precision = 'float16'")
  with pytest.raises(ValueError, match=r"GAN.mixed_precision = 'float16'.*'mixed_bfloat16'"):
    _trainer(tmp_path, "bad")
  assert not (tmp_path / "bad").exists()


def test_mixed_resolution_is_the_references_fp16_resolution():
  # stylegan2-ada-pytorch: max(2 ** (log2(res) + 1 - num_fp16_res), 8)
  assert stylegan2.mixed_resolution(256, 4) == 32
  assert stylegan2.mixed_resolution(32, 4) == 8
  assert stylegan2.mixed_resolution(64, 0) == 128  # none
  with pytest.raises(ValueError, match="num_fp16_res"):
    stylegan2.mixed_resolution(64, -1)


def test_biggan_dtypes_under_bfloat16(tiny_gin, tmp_path):
  tiny_gin("GAN.mixed_precision = 'mixed_bfloat16'")
  t = _trainer(tmp_path, "bf16")
  gan = t.gan
  assert all(v.dtype == tf.float32 for v in gan.G.weights + gan.D.weights + gan.G_ema.weights)
  assert gan.G.blocks[0].conv1.compute_dtype == "bfloat16"
  assert gan.D.blocks[0].conv1.compute_dtype == "bfloat16"
  assert gan.D.linear.compute_dtype == "float32"  # the epilogue
  z = tf.random.normal([4, gan.G.z_dim])
  y = tf.zeros([4], tf.int32) if gan.num_classes else None
  images = gan.G(z, y, training=False)
  out = gan.D(images, y, training=False)
  assert images.dtype == tf.float32 and out["logits"].dtype == tf.float32
  assert out["features"].dtype == tf.float32
  # The policy was only in force while the networks were built.
  import keras  # pylint: disable=import-outside-toplevel
  assert keras.mixed_precision.global_policy().name == "float32"
  # The export serves uint8 images of the bfloat16 generator.
  from tfgan_eff import export  # pylint: disable=import-outside-toplevel
  served = tf.saved_model.load(export.export(gan.G_ema, str(tmp_path / "export")))
  out = served.signatures["serving_default"](z=z, labels=tf.constant([0, 1, 2, 3]),
                                             truncation_psi=tf.constant(1.0))["images"]
  expected = export.to_uint8(gan.G_ema(z, tf.constant([0, 1, 2, 3]), training=False))
  assert out.dtype == tf.uint8
  assert np.abs(out.numpy().astype(int) - expected.numpy().astype(int)).max() <= 1


def test_stylegan2_keeps_mapping_low_blocks_and_epilogue_float32(tiny_gin, tmp_path):
  # 16 px, num_fp16_res = 2: blocks at 8 px and up compute in bfloat16 (the reference's
  # max(2 ** (4 + 1 - 2), 8) = 8), the 4 px block, the mapping and D's epilogue in float32.
  tiny_gin(*SG2_TINY, "GAN.mixed_precision = 'mixed_bfloat16'",
           "StyleGAN2Generator.num_fp16_res = 2", "StyleGAN2Discriminator.num_fp16_res = 2")
  gan = _trainer(tmp_path, "bf16").gan
  dtypes = {b.resolution: b.conv1.conv.compute_dtype for b in gan.G.blocks}
  assert dtypes == {4: "float32", 8: "bfloat16", 16: "bfloat16"}
  assert gan.G.mapping_network.fcs[0].compute_dtype == "float32"
  assert [b.conv1.compute_dtype for b in gan.D.blocks] == ["bfloat16", "bfloat16"]
  assert gan.D.conv.compute_dtype == gan.D.out.compute_dtype == "float32"


@pytest.mark.parametrize("extra", [
    pytest.param([], marks=pytest.mark.slow, id="biggan"),  # 100 s
    pytest.param(SG2_TINY, id="stylegan2")])
def test_one_bfloat16_step_is_close_to_float32(tiny_gin, tmp_path, extra):
  tiny_gin(*LINEAR_ADAM, *extra)
  import gin  # pylint: disable=import-outside-toplevel
  base = _trainer(tmp_path, "fp32")
  with gin.unlock_config():
    gin.bind_parameter("GAN.mixed_precision", "mixed_bfloat16")
  mixed = _trainer(tmp_path, "bf16")
  before = _trainables(base)
  for a, b in zip(before, _trainables(mixed)):
    np.testing.assert_array_equal(a, b)  # same initial weights in both precisions
  base.train()
  mixed.train()
  steps = [np.abs(a - b) for a, b in zip(_trainables(base), before)]
  diffs = [np.abs(a - b) for a, b in zip(_trainables(base), _trainables(mixed))]
  update = max(s.max() for s in steps)
  assert update > 0  # the step changed the networks
  # bfloat16 keeps 8 bits of mantissa: gradients differ by ~1%, so Adam's first steps
  # (about lr times the gradient's sign with this epsilon) differ by a small share of the
  # update; a wrong dtype path (a missed cast, float32 variables rounded) moves far more.
  mean_diff = np.mean(np.concatenate([d.ravel() for d in diffs]))
  mean_step = np.mean(np.concatenate([s.ravel() for s in steps]))
  assert mean_diff < 0.05 * mean_step, (mean_diff, mean_step)
  assert max(d.max() for d in diffs) < 0.5 * update


def _state(t):
  return {f"{k}/{n}": v.numpy() for k, vs in t.ckpt_items.items() for n, v in vs.items()}


def test_checkpoints_load_across_precisions(tiny_gin, tmp_path):
  # Every variable (weights, BN statistics, SN vectors, optimizer slots) moved off its
  # initial value, saved from float32, restored in bfloat16, saved again, restored in float32.
  import gin  # pylint: disable=import-outside-toplevel
  tiny_gin(*SG2_TINY)
  t = _trainer(tmp_path, "run")
  rng = np.random.default_rng(0)
  for vs in t.ckpt_items.values():
    for v in vs.values():
      if tf.as_dtype(v.dtype).is_floating:
        v.assign(v + rng.normal(size=v.shape).astype(tf.as_dtype(v.dtype).as_numpy_dtype))
  t.step.assign(7)
  t._save(7)  # pylint: disable=protected-access
  saved = _state(t)
  with gin.unlock_config():
    gin.bind_parameter("GAN.mixed_precision", "mixed_bfloat16")
  mixed = _trainer(tmp_path, "run")
  assert mixed.gan.G.blocks[-1].conv1.conv.compute_dtype == "bfloat16"
  assert mixed.restore() is not None and int(mixed.step.numpy()) == 7
  got = _state(mixed)
  assert got.keys() == saved.keys()
  for k, v in saved.items():
    np.testing.assert_array_equal(got[k], v, err_msg=k)
  mixed.step.assign(8)
  mixed._save(8)  # pylint: disable=protected-access
  with gin.unlock_config():
    gin.bind_parameter("GAN.mixed_precision", None)
  back = _trainer(tmp_path, "run")
  assert back.restore() is not None and int(back.step.numpy()) == 8
  for k, v in _state(back).items():
    np.testing.assert_array_equal(v, saved[k], err_msg=k)


def test_loss_scale_schedule():
  s = precision.LossScale(initial=8.0, growth_steps=2)
  grads = s.unscale([tf.constant([8.0, 16.0]), None])
  np.testing.assert_array_equal(grads[0].numpy(), [1.0, 2.0])
  assert grads[1] is None
  assert bool(s.benign(tf.constant(False)))       # overflow while the scale is > 1
  s.update(tf.constant(False))
  assert float(s.scale.numpy()) == 4.0
  s.update(tf.constant(True))
  assert float(s.scale.numpy()) == 4.0 and int(s.good_steps.numpy()) == 1
  s.update(tf.constant(True))                      # 2 finite steps in a row: double
  assert float(s.scale.numpy()) == 8.0 and int(s.good_steps.numpy()) == 0
  for _ in range(5):
    s.update(tf.constant(False))
  assert float(s.scale.numpy()) == 1.0             # never below 1
  assert not bool(s.benign(tf.constant(False)))   # at 1 a non-finite gradient is real


def test_float16_overflow_skips_the_update_and_halves_the_scale(tiny_gin, tmp_path):
  # A scale of 2^60 makes every float16 gradient overflow: both updates are skipped (the
  # trainable weights do not move), counted as overflows, not as non-finite steps, and the
  # scales halve; the run goes on (on_nonfinite = 'stop' does not fire).
  tiny_gin(*SG2_TINY, "GAN.mixed_precision = 'mixed_float16'",
           "LossScale.initial = 1.152921504606847e18")
  t = _trainer(tmp_path, "fp16")
  before = _trainables(t)
  t.train()
  for a, b in zip(before, _trainables(t)):
    np.testing.assert_array_equal(a, b)
  # one halving per D step (disc_iters of them) and one for the G step
  assert float(t.gan.loss_scale["d"].scale.numpy()) == 2.0 ** (60 - t.gan.disc_iters)
  assert float(t.gan.loss_scale["g"].scale.numpy()) == 2.0 ** 59
  from conftest import scalars  # pylint: disable=import-outside-toplevel
  s = scalars(str(tmp_path / "fp16"))
  assert s["d_overflow"] == 1.0 and s["g_overflow"] == 1.0
  assert s["d_grad_norm"] == 0.0


@pytest.mark.slow  # 40 s; the overflow test above covers the float16 machinery
def test_float16_trains_with_finite_losses(tiny_gin, tmp_path):
  # From the default scale 2^15 the first steps may overflow (the scale then halves until
  # the gradients fit, as with Keras' LossScaleOptimizer); G and D both get updates.
  tiny_gin("GAN.mixed_precision = 'mixed_float16'")
  t = _trainer(tmp_path, "fp16", steps=16)
  g0, d0 = ([v.numpy() for v in net.trainable_variables] for net in (t.gan.G, t.gan.D))
  t.train()  # on_nonfinite = 'stop' raises on any non-finite loss or gradient
  for net, before in ((t.gan.G, g0), (t.gan.D, d0)):
    assert any(np.abs(a - b.numpy()).max() > 0
               for a, b in zip(before, net.trainable_variables)), (
                   net.name, [float(v.scale.numpy()) for v in t.gan.loss_scale.values()])
  for network in ("d", "g"):
    assert 1.0 <= float(t.gan.loss_scale[network].scale.numpy()) <= 2.0 ** 15
