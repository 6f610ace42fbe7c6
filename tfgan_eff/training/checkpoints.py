"""Restoring checkpoints strictly: all of the model or a clear error, never a partial restore
that trains on silently."""

import os

import tensorflow as tf


class CheckpointMismatchError(ValueError):
  """The checkpoint was written by another architecture or configuration."""


def restore(ckpt, path):
  """Restores `ckpt` from `path`, requiring every variable on both sides to match."""
  try:
    status = ckpt.restore(path)
    status.assert_consumed()
  except (ValueError, AssertionError, tf.errors.OpError) as e:
    detail = str(e).strip().splitlines()[0][:500]
    model_dir = os.path.dirname(os.path.dirname(path))
    raise CheckpointMismatchError(
        f"Checkpoint '{path}' does not match the configured model: {detail}\n"
        f"It was written by a different architecture or gin configuration. Train in a fresh "
        f"--model_dir, or run with the configuration saved next to it "
        f"({os.path.join(model_dir, 'operative_config.gin')}).") from None
  return status
