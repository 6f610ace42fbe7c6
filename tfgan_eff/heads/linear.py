"""Linear heads on D's pooled features (S3GAN's rotation and classifier heads).

A head is a small Keras layer `features [B, C] -> logits [B, units]`, spectrally normalized
when the discriminator is, i.e. with `D.use_sn` (compare_gan puts SN on every head of an SN
discriminator). Heads
know nothing of losses; the loss terms in `tfgan_eff/objectives/` own them, create them in
`Term.build(ctx)` from `ctx.d_real["features"]`, and list them in `d_variables()`, so the GAN
trains them with D's optimizer and checkpoints them with the term.

Example:

    head = LinearHead(4, use_sn=D.use_sn, name="rotation_head")
    logits = head(D(x)["features"], training=True)      # [B, 4]
"""

import keras
import tensorflow as tf

from tfgan_eff.models import layers


class LinearHead(keras.layers.Layer):
  """An affine map (with bias) from pooled D features to `units` float32 logits.

  Args:
    units: number of outputs (4 rotations, or the number of classes).
    use_sn: divide the kernel by its largest singular value (one power iteration per
      training call), as the discriminator's own layers.

  >>> LinearHead(4)(tf.zeros([2, 16])).shape
  TensorShape([2, 4])
  """

  def __init__(self, units, use_sn=True, **kwargs):
    super().__init__(**kwargs)
    if units < 1:
      raise ValueError(f"A head needs at least one output, got units={units}.")
    self.units, self.use_sn = units, use_sn
    self.dense = layers.SNDense(units, use_sn=use_sn, name="linear")

  def build(self, input_shape):
    self.dense.build(input_shape)

  def call(self, features, training=False):
    return tf.cast(self.dense(features, training=training), tf.float32)

  def get_config(self):
    return {**super().get_config(), "units": self.units, "use_sn": self.use_sn}
