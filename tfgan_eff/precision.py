"""Mixed precision: the networks compute in bfloat16 or float16, everything else in float32.

`GAN.mixed_precision` (gin) is None (float32), 'mixed_bfloat16' (TPUs, recent GPUs and
CPUs; no loss scaling needed) or 'mixed_float16' (NVIDIA GPUs; dynamic loss scaling).

What runs in which dtype:
* G and D are built under the Keras dtype policy, so their layers compute in the policy's
  compute dtype with float32 variables. Their outputs are float32: G's images, D's logits
  and features (D's last linear layer and class projection compute in float32, as
  stylegan2-ada's epilogue does). StyleGAN2 keeps its mapping network and its
  low-resolution blocks in float32 (`num_fp16_res`, as in the reference).
* Spectral-norm power iterations, batch-norm statistics and affines, and StyleGAN2's
  demodulation read float32 variables (never autocast) and cast the result.
* Augmentation (on float32 images, as stylegan2-ada's augment pipe), the loss terms and
  their heads, R1 and path-length penalties, the EMA generator update, the optimizers and
  their state stay float32. Checkpoints hold the same float32 variables whatever the
  policy, so they load across precisions.
"""

import contextlib

import keras
import tensorflow as tf

from tfgan_eff.config import configurable

POLICIES = (None, "float32", "mixed_bfloat16", "mixed_float16")


def check_policy(name, owner="GAN.mixed_precision"):
  """-> the policy name (None for float32); one clear error for anything else."""
  if name not in POLICIES:
    raise ValueError(f"{owner} = {name!r} is not a precision; use None (float32), "
                     f"'mixed_bfloat16' (TPU, recent GPUs and CPUs) or 'mixed_float16' "
                     f"(NVIDIA GPUs, with dynamic loss scaling).")
  return None if name in (None, "float32") else name


@contextlib.contextmanager
def policy_scope(name):
  """Layers created (and built) inside take the dtype policy `name` (None: unchanged)."""
  if name is None:
    yield
    return
  previous = keras.mixed_precision.global_policy()
  keras.mixed_precision.set_global_policy(name)
  try:
    yield
  finally:
    keras.mixed_precision.set_global_policy(previous)


@configurable
class LossScale(tf.Module):
  """Dynamic loss scaling for float16 (the schedule of Keras' LossScaleOptimizer); the GAN
  makes one for D and one for G under `mixed_float16` (gin: `LossScale.initial = ...`).

  The loss is multiplied by `scale` before differentiation and the gradients divided by it.
  A step whose gradients overflow is skipped and halves the scale (not below 1: at 1 an
  overflow is a true non-finite gradient, for the trainer's divergence guard); after
  `growth_steps` finite steps in a row it doubles. Not checkpointed (checkpoints stay the
  same across precisions): a resumed run starts again from `initial`, which costs a few
  skipped steps at most.
  """

  def __init__(self, initial=2.0 ** 15, growth_steps=2000, name="loss_scale"):
    super().__init__(name=name)
    kw = dict(trainable=False, aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
    self.scale = tf.Variable(float(initial), dtype=tf.float32, name="scale", **kw)
    self.good_steps = tf.Variable(0, dtype=tf.int64, name="good_steps", **kw)
    self.growth_steps = int(growth_steps)

  def scaled(self, loss):
    return loss * self.scale

  def unscale(self, grads):
    inv = 1.0 / self.scale
    return [None if g is None else g * tf.cast(inv, g.dtype) for g in grads]

  def benign(self, finite):
    """Whether non-finite gradients (`finite` False) are an overflow to skip and rescale,
    rather than a true non-finite gradient: the scale is still above 1."""
    return tf.logical_and(tf.logical_not(finite), self.scale > 1.0)

  def update(self, finite):
    """After a step (cross-replica context): `finite` whether its gradients were."""
    grow = tf.logical_and(finite, self.good_steps + 1 >= self.growth_steps)
    self.scale.assign(tf.where(grow, self.scale * 2.0,
                               tf.where(finite, self.scale,
                                        tf.maximum(self.scale * 0.5, 1.0))))
    self.good_steps.assign(tf.where(finite & ~grow, self.good_steps + 1,
                                    tf.constant(0, tf.int64)))
