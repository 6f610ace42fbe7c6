"""XLA (`Trainer.jit_compile`): what 'auto' chooses, and (slow) that the compiled D and G
steps give the weights of the uncompiled ones, for each backbone and method family.

The comparisons are slow: on this 2-core CPU XLA compiles a tiny BigGAN G step in minutes.
XLA:CPU's transcendental approximations (tanh, exp) and its reduction order make the weights
differ by about 1-3% of one step's update, so the check is relative to the largest change
one step makes to any weight of G, D or G_ema.
"""

import numpy as np
import pytest
import tensorflow as tf

from conftest import mirrored
from test_adafm import UNCOND, _source
from test_insgen import DIFFAUG, INSGEN_TERMS
from test_s3gan import S3GAN_TERMS
from test_stylegan2_training import SEPARATE, SG2_TINY, WITH_PL
from test_training import LINEAR_ADAM, _one_device, _weights
from tfgan_eff.training.trainer import Trainer


def _auto(tmp_path, strategy=None):
  """A trainer with jit_compile='auto', its input iterator, and its resolved step."""
  t = Trainer(model_dir=str(tmp_path), strategy=strategy or _one_device(), jit_compile="auto")
  it = iter(t.strategy.distribute_datasets_from_function(t.data.dataset_fn(t.batch_size)))
  return t, it, t._make_train_step(it)  # pylint: disable=protected-access


def _first_batch(t):
  it = iter(t.strategy.distribute_datasets_from_function(t.data.dataset_fn(t.batch_size)))
  return next(it)


def test_auto_compiles_biggan_on_one_cpu_without_consuming_a_batch(tiny_gin, tmp_path):
  tiny_gin()
  t, it, step = _auto(tmp_path)
  assert t.xla is True
  assert step.experimental_get_tracing_count() == 0  # the compiled step is traced on use
  # Deciding traced the plain step on the iterator's spec: the data order is unchanged.
  for a, b in zip(tf.nest.flatten(next(it)), tf.nest.flatten(_first_batch(t))):
    np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_auto_keeps_stylegan2_uncompiled_and_traced_once(tiny_gin, tmp_path):
  tiny_gin(*SG2_TINY)
  t, it, step = _auto(tmp_path)
  assert t.xla is False
  _, why = t._xla_pays_off(step, it)  # pylint: disable=protected-access
  assert "DepthwiseConv2dNative" in why
  out = step(it, tf.constant(False))  # the plain step, traced while deciding, is reused
  assert np.isfinite(float(out["d_loss"])) and step.experimental_get_tracing_count() == 1


@pytest.mark.parametrize("case", ["two_cpu_replicas", "mixed_bfloat16"])
def test_auto_keeps_unmeasured_settings_uncompiled(tiny_gin, tmp_path, case):
  tiny_gin(*(["GAN.mixed_precision = 'mixed_bfloat16'"] if case == "mixed_bfloat16" else []))
  t = Trainer(model_dir=str(tmp_path), jit_compile="auto",
              strategy=mirrored() if case == "two_cpu_replicas" else _one_device())
  xla, why = t._xla_pays_off(None, None)  # pylint: disable=protected-access
  assert xla is False and ("2 replicas" if case == "two_cpu_replicas" else "mixed_bfloat16") in why


def test_jit_compile_takes_only_true_false_or_auto(tiny_gin, tmp_path):
  tiny_gin()
  with pytest.raises(ValueError, match=r"Trainer.jit_compile must be True, False or 'auto', "
                                       r"got 'yes'"):
    Trainer(model_dir=str(tmp_path), strategy=_one_device(), jit_compile="yes")
  assert not list(tmp_path.iterdir())  # refused before anything is written


def _state(t):
  return ([w.path for w in t.gan.G.weights + t.gan.D.weights + t.gan.G_ema.weights],
          _weights(t.gan.G) + _weights(t.gan.D) + _weights(t.gan.G_ema))


def _compare(tmp_path, strategy=None, steps=1):
  t0 = Trainer(model_dir=str(tmp_path / "plain"), strategy=strategy or _one_device(),
               train_steps=steps)
  before = _state(t0)[1]
  t0.train()
  t1 = Trainer(model_dir=str(tmp_path / "xla"), strategy=strategy or _one_device(),
               train_steps=steps, jit_compile=True)
  t1.train()
  update = max(np.abs(a - b).max() for a, b in zip(before, _state(t0)[1]))
  assert update > 1e-3  # the step did change the networks
  for name, a, b in zip(*_state(t0), _state(t1)[1]):
    np.testing.assert_allclose(a, b, rtol=0, atol=0.05 * update, err_msg=name)


@pytest.mark.slow
@pytest.mark.parametrize("extra", [
    [],
    ["GAN.augment = @DiffAugment()", "DiffAugment.policy = 'color,translation,cutout'"],
    ["GAN.terms = [@Adversarial(), @R1Penalty()]", "Adversarial.loss = 'non_saturating'"],
    ["include 'gin/base/ada.gin'", "AdaptiveAugment.initial_p = 0.5",
     "AdaptiveAugment.interval = 1"],
    [*DIFFAUG, INSGEN_TERMS],
    [S3GAN_TERMS, "ImageData.label_fraction = 0.5"],
], ids=["biggan", "diffaugment", "r1", "ada", "insgen", "s3gan"])
def test_xla_biggan(tiny_gin, tmp_path, extra):
  tiny_gin(*LINEAR_ADAM, *extra)
  _compare(tmp_path)


@pytest.mark.slow
def test_xla_biggan_adafm(tiny_gin, tmp_path):
  tiny_gin(*UNCOND)
  _, prefix = _source(tmp_path)
  tiny_gin(*LINEAR_ADAM, *UNCOND, "GAN.warm_start = @AdaFMTransfer()",
           f"AdaFMTransfer.source = '{prefix}'")
  _compare(tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("extra", [WITH_PL, SEPARATE], ids=["folded", "separate_reg_steps"])
def test_xla_stylegan2_r1_path_length(tiny_gin, tmp_path, extra):
  tiny_gin(*LINEAR_ADAM, *SG2_TINY, *extra)
  _compare(tmp_path)
