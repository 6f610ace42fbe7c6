"""Optimizers, configurable in gin scopes: `GAN.g_optimizer = @g/adam()`."""

import gin
import keras


@gin.configurable
def adam(learning_rate=2e-4, beta_1=0.0, beta_2=0.999, epsilon=1e-8):
  """Adam with the GAN defaults (β1 = 0 as BigGAN and StyleGAN2)."""
  return keras.optimizers.Adam(learning_rate=learning_rate, beta_1=beta_1, beta_2=beta_2,
                               epsilon=epsilon)
