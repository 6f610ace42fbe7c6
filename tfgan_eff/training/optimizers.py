"""Optimizers, configurable in gin scopes: `GAN.g_optimizer = @g/adam()`."""

import gin
import keras


@gin.configurable
def adam(learning_rate=2e-4, beta_1=0.0, beta_2=0.999, epsilon=1e-8):
  """Adam with the GAN defaults (β1 = 0 as BigGAN and StyleGAN2)."""
  return keras.optimizers.Adam(learning_rate=learning_rate, beta_1=beta_1, beta_2=beta_2,
                               epsilon=epsilon)


@gin.configurable
def lazy_adam(learning_rate=0.0025, beta_1=0.0, beta_2=0.99, epsilon=1e-8, reg_interval=1):
  """Adam at stylegan2-ada-pytorch's lazy-regularization settings: with c = reg_interval /
  (reg_interval + 1), learning_rate · c and betas β ** c.

  There (and here with `R1Penalty.separate_step` / `PathLengthPenalty.separate_step`, as
  gin/base/stylegan2_training.gin sets) the regularizer takes an optimizer step of its own
  every reg_interval steps, which c compensates. `reg_interval = 1` is plain Adam.
  """
  if reg_interval < 1:
    raise ValueError(f"lazy_adam.reg_interval must be >= 1, got {reg_interval}.")
  c = reg_interval / (reg_interval + 1) if reg_interval > 1 else 1.0
  return adam(learning_rate=learning_rate * c, beta_1=beta_1 ** c, beta_2=beta_2 ** c,
              epsilon=epsilon)
