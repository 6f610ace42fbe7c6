"""The one parameter counter: how many scalars a list of variables holds.

Callers choose the variables, and that choice is what they report:

- `Trainer.parameter_counts()` (the training log and TensorBoard's `model/parameters`):
  trainable and non-trainable variables of G and D, and the terms' heads;
- `bin/benchmark --describe`: the trainable variables of G and D (for BigGAN at ImageNet-128
  these equal compare_gan's counts, tested);
- AdaFM (`transfer/adafm.py`): trainable, frozen (non-trainable without buffers such as
  spectral-norm `u`, batch-norm moving statistics and `w_avg`) and the AdaFM γ/β.
"""

import math


def count_params(variables):
  """The number of scalars in `variables` (e.g. `model.trainable_variables`)."""
  return int(sum(math.prod(v.shape) for v in variables))
