"""The lazy regularizers against stylegan2-ada-pytorch: one Greg and one Dreg phase.

tests/fixtures/stylegan2_cifar32_regularizers.npz (made by tools/make_reference_fixtures.py
from the reference's StyleGAN2Loss lines, with the weights of stylegan2_cifar32.npz) holds the
path-length and R1 losses and the gradients they send into every parameter of G and D: the
double back-propagation through the networks that training takes. Ours, from the same
weights and inputs through `PathLengthPenalty` and `R1Penalty`, must give the same numbers.
The gradients are mapped to our variables with the converter's own layouts (permutations),
so a gradient landing on the wrong weight, or missing, fails here.
"""

import numpy as np
import pytest
import tensorflow as tf

from test_convert_stylegan2 import _convert, _fixture, _nets
from test_stylegan2_training import _Ctx
from tfgan_eff.convert import common, stylegan2
from tfgan_eff.objectives.adversarial import R1Penalty
from tfgan_eff.objectives.path_length import PathLengthPenalty, path_lengths
from tfgan_eff.training import checkpoints

pytestmark = pytest.mark.xdist_group("convert_stylegan2")

NAME = "stylegan2_cifar32"


@pytest.fixture(scope="module")
def setup():
  f, r = _fixture(NAME), _fixture(f"{NAME}_regularizers")
  gan, _, _ = common.build_gan(_convert(f).gin)
  common.load_into(gan, _convert(f))
  yield f, r, gan
  import gin  # pylint: disable=import-outside-toplevel
  gin.clear_config()


def _nhwc(x):
  return tf.constant(np.transpose(x, (0, 2, 3, 1)))


def _reference_grads(state_dict, r, prefix, to_ours):
  """The reference's gradients as {our variable path: array}, laid out by the converter."""
  grads = {k: v if k.endswith("resample_filter") else np.zeros_like(v)  # buffers: none
           for k, v in state_dict.items()}
  grads.update({k[len(prefix) + 6:]: v for k, v in r.items() if k.startswith(f"{prefix}.grad.")})
  return {path: a for path, (_, a) in to_ours(grads).items()}


def _compare(model, tape, loss, expected):
  variables = checkpoints.variables_by_path(model)
  trainable = {p: v for p, v in variables.items() if v.trainable}
  grads = tape.gradient(loss, list(trainable.values()))
  assert set(trainable) <= set(expected)
  checked = 0
  for (path, var), g in zip(trainable.items(), grads):
    ref = expected[path]
    ours = np.zeros(var.shape, np.float32) if g is None else g.numpy()
    scale = max(np.abs(ref).max(), 1e-3)
    err = np.abs(ours - ref).max()
    assert err <= 1e-4 * scale, f"{path}: max error {err:.3g} (reference max {scale:.3g})"
    checked += int(np.abs(ref).max() > 0)
  return checked


def test_path_length_gradients_match_the_reference_greg_phase(setup):
  f, r, gan = setup
  G = gan.G
  n = r["pl.z"].shape[0]
  term = PathLengthPenalty(weight=float(r["pl.weight"]), interval=int(r["pl.gain"]),
                           decay=float(r["pl.decay"]), batch_shrink=1, separate_step=True)
  ctx = _Ctx(G=G, step=0, batch=n)
  term.build(ctx)
  term.pl_mean.assign(float(r["pl.mean_before"]))
  c, cut = tf.constant(r["pl.c"]), int(r["pl.cutoff"])

  def lengths(ctx):
    del ctx
    ws = G.mapping(tf.constant(r["pl.z"]), c, training=False)
    ws2 = G.mapping(tf.constant(r["pl.z2"]), c, training=False)
    ws = tf.concat([ws[:, :cut], ws2[:, cut:]], axis=1)  # style mixing at the crossover
    return path_lengths(G, ws, None, y=_nhwc(r["pl.noise"]), noise_mode="const")

  term.lengths = lengths
  with tf.GradientTape() as tape:
    loss, metrics = term.g_reg_loss(ctx)
  np.testing.assert_allclose(lengths(None).numpy(), r["pl.lengths"], rtol=1e-4)
  np.testing.assert_allclose(float(metrics["pl_mean"]), r["pl.mean_after"], rtol=1e-5)
  np.testing.assert_allclose(float(loss), r["pl.loss"], rtol=1e-4)
  g_sd, _ = _nets(f)
  expected = _reference_grads(g_sd, r, "pl", stylegan2.generator_tensors)
  checked = _compare(G, tape, loss, expected)
  assert checked >= 40  # mapping, affine, conv, noise strength and bias gradients all seen


def test_r1_gradients_match_the_reference_dreg_phase(setup):
  f, r, gan = setup
  n = r["r1.x"].shape[0]
  term = R1Penalty(gamma=float(r["r1.gamma"]), interval=int(r["r1.gain"]), separate_step=True)
  ctx = _Ctx(D=gan.D, step=0, batch=n, reals=_nhwc(r["r1.x"]))
  ctx.real_labels_for_d = tf.constant(r["r1.c"])
  np.testing.assert_allclose(term.penalty(ctx).numpy(), r["r1.penalty"], rtol=1e-4)
  with tf.GradientTape() as tape:
    loss, _ = term.d_reg_loss(ctx)
  np.testing.assert_allclose(float(loss), r["r1.loss"], rtol=1e-4)
  _, d_sd = _nets(f)
  expected = _reference_grads(d_sd, r, "r1", stylegan2.discriminator_tensors)
  checked = _compare(gan.D, tape, loss, expected)
  assert checked >= 20
