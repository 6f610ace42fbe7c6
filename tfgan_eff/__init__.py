"""tfgan_eff: data-efficient GAN training in TensorFlow 2 / Keras 3."""

__version__ = "0.1.0"
