"""XLA (`Trainer.jit_compile`): the compiled D and G steps give the weights of the
uncompiled ones, for each backbone and method family.

All slow: on this 2-core CPU XLA compiles a tiny BigGAN G step in minutes. XLA:CPU's
transcendental approximations (tanh, exp) and its reduction order make the weights differ
by about 1-3% of one step's update, so the check is relative to the largest change one step
makes to any weight of G, D or G_ema.
"""

import numpy as np
import pytest

from test_stylegan2_training import SEPARATE, SG2_TINY, WITH_PL
from test_training import LINEAR_ADAM, _one_device, _weights
from tfgan_eff.training.trainer import Trainer


def _state(t):
  return ([w.path for w in t.gan.G.weights + t.gan.D.weights + t.gan.G_ema.weights],
          _weights(t.gan.G) + _weights(t.gan.D) + _weights(t.gan.G_ema))


pytestmark = pytest.mark.slow


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


@pytest.mark.parametrize("extra", [
    [],
    ["GAN.augment = @DiffAugment()", "DiffAugment.policy = 'color,translation,cutout'"],
    ["GAN.terms = [@Adversarial(), @R1Penalty()]", "Adversarial.loss = 'non_saturating'"],
], ids=["biggan", "diffaugment", "r1"])
def test_xla_biggan(tiny_gin, tmp_path, extra):
  tiny_gin(*LINEAR_ADAM, *extra)
  _compare(tmp_path)


@pytest.mark.parametrize("extra", [WITH_PL, SEPARATE], ids=["folded", "separate_reg_steps"])
def test_xla_stylegan2_r1_path_length(tiny_gin, tmp_path, extra):
  tiny_gin(*LINEAR_ADAM, *SG2_TINY, *extra)
  _compare(tmp_path)
