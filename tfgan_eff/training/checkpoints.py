"""Restoring checkpoints strictly: all of the model or a clear error, never a partial restore
that trains on silently."""

import os

import tensorflow as tf


def variables_by_path(obj):
  """All variables of a Keras layer/model/optimizer or a tf.Module, keyed by path.

  Checkpoints are written from these flat dicts rather than from object attributes: Keras 3
  does not expose layers held in Python lists, nor optimizer slots, to tf.train.Checkpoint's
  object graph, which would silently leave them out.
  """
  found = []
  if hasattr(obj, "weights") and not isinstance(obj, tf.Module):  # Keras layer / model
    found = list(obj.weights)
  elif hasattr(obj, "variables") and not isinstance(obj, tf.Module):  # Keras optimizer
    found = list(obj.variables)
  elif isinstance(obj, tf.Module):
    found = list(obj.variables)
    for value in vars(obj).values():
      for item in (value if isinstance(value, (list, tuple)) else [value]):
        if hasattr(item, "weights") and not isinstance(item, tf.Module):
          found += list(item.weights)
  out, seen = {}, set()
  for i, v in enumerate(found):
    if id(v) in seen:
      continue
    seen.add(id(v))
    path = getattr(v, "path", None)
    # Drop the owner's own (possibly auto-numbered, e.g. "adam_3") name: the dict sits under
    # the owner's key already.
    key = path.split("/", 1)[-1] if path else f"{i:04d}-{v.name.split(':')[0]}"
    if key in out:
      raise ValueError(f"Two variables share the path '{key}'; give their layers distinct "
                       f"names.")
    out[key] = v
  return out


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
