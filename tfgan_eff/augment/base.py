"""The augmenter contract: what the GAN calls on `GAN.augment`."""


class Augmenter:
  """A differentiable augmentation of reals and fakes: `augment(images, rng) -> images`.

  `__call__` takes float NHWC images in [-1, 1] and a `tfgan_eff.rng.SampleRNG`, and returns
  images of the same shape and dtype, differentiable with respect to `images`, with every
  random parameter drawn from `rng` (per sample, so replicas do not matter).

  The GAN calls, in this order:
    build(image_shape)                         once, in `GAN.build` (inside strategy.scope())
    __call__(images, rng)                      on reals and fakes, in every D and G step
    update(real_logits, step, global_batch)    after each D step's update (replica context)
    metrics()                                  after each D step: {name: scalar}, logged
  The defaults do nothing and report nothing. An augmenter with state (ADA's p) is also a
  `tf.Module`; the GAN then checkpoints its variables.

  Example:

    class Flip(Augmenter):
      def __call__(self, images, rng):
        flip = rng.uniform([tf.shape(images)[0]]) < 0.5
        return tf.where(flip[:, None, None, None], tf.reverse(images, [2]), images)
  """

  def __call__(self, images, rng):
    raise NotImplementedError(f"{type(self).__name__} must implement __call__(images, rng).")

  def build(self, image_shape):
    """Creates state for images of `image_shape` [H, W, C] (once, before the first step)."""
    del image_shape

  def update(self, real_logits, step, global_batch):
    """Adapts to D's logits on this D step's augmented reals (replica context).

    Args:
      real_logits: this replica's D logits on the augmented reals, [b].
      step: completed G steps (int64 scalar).
      global_batch: batch size over all replicas.
    """
    del real_logits, step, global_batch

  def metrics(self):
    """{name: float32 scalar, the same on every replica}: logged after each D step."""
    return {}


class Identity(Augmenter):
  """No augmentation: what `GAN.augment = None` means."""

  def __call__(self, images, rng):
    del rng
    return images

  def __repr__(self):
    return "Identity()"
