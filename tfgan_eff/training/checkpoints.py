"""Restoring checkpoints strictly: all of the model or a clear error, never a partial restore
that trains on silently."""

import glob
import os
import re

import tensorflow as tf
from absl import logging


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


class CheckpointCorruptError(ValueError):
  """A checkpoint's files cannot be read back (truncated, overwritten, half-copied)."""


def damage(path):
  """None when every tensor of checkpoint `path` reads back; else what failed (a string)."""
  try:
    reader = tf.train.load_checkpoint(path)
    for name in reader.get_variable_to_shape_map():
      reader.get_tensor(name)
  except Exception as e:  # pylint: disable=broad-except  (any read failure is damage)
    return f"{type(e).__name__}: {str(e).strip().splitlines()[0][:300]}"
  return None


def restore(ckpt, path):
  """Restores `ckpt` from `path`, requiring every variable on both sides to match.

  Raises CheckpointCorruptError when the files are damaged, CheckpointMismatchError when
  they are intact but hold another model.
  """
  try:
    status = ckpt.restore(path)
    status.assert_consumed()
  except Exception as e:  # pylint: disable=broad-except
    broken = damage(path)
    if broken:
      raise CheckpointCorruptError(
          f"Checkpoint '{path}' is damaged ({broken}).") from None
    if not isinstance(e, (ValueError, AssertionError, tf.errors.OpError)):
      raise
    detail = str(e).strip().splitlines()[0][:500]
    model_dir = os.path.dirname(os.path.dirname(path))
    raise CheckpointMismatchError(
        f"Checkpoint '{path}' does not match the configured model: {detail}\n"
        f"It was written by a different architecture or gin configuration. Train in a fresh "
        f"--model_dir, or run with the configuration saved next to it "
        f"({os.path.join(model_dir, 'operative_config.gin')}).") from None
  return status


def checkpoint_paths(directory):
  """The checkpoints (`ckpt-N` prefixes) in `directory`, newest first."""
  found = []
  for index in glob.glob(os.path.join(directory, "ckpt-*.index")):
    m = re.search(r"ckpt-(\d+)\.index$", index)
    if m:
      found.append((int(m.group(1)), index[:-len(".index")]))
  return [p for _, p in sorted(found, reverse=True)]


def restore_latest(ckpt, directory):
  """Restores the newest intact checkpoint in `directory`; -> its path, or None if there is
  none. A damaged newer one is skipped with a warning naming it; a mismatched one raises."""
  paths = checkpoint_paths(directory)
  damaged = []
  for path in paths:
    try:
      restore(ckpt, path)
    except CheckpointCorruptError as e:
      logging.warning("%s Falling back to the checkpoint before it.", e)
      damaged.append(str(e))
      continue
    if damaged:
      logging.warning("Restored %s instead of the damaged newer checkpoint(s).", path)
    return path
  if damaged:
    raise CheckpointCorruptError(
        f"No intact checkpoint in '{directory}': " + " ".join(damaged) + " Move the "
        "damaged files away to start this run afresh, or restore them from a copy.")
  return None
