"""Reading stylegan2-ada-pytorch network pickles without the reference code.

A network pickle (`network-snapshot-*.pkl`, NVIDIA's published `ffhq.pkl`, `afhqcat.pkl`,
...) is a dict of "persistent" objects: each network is stored as its class's source code,
its init kwargs and its `__dict__` (parameters, buffers, submodules), and unpickling it
normally imports and runs that source (which needs the reference repository and executes
code from the file). This reader instead stops at the stored state: it rebuilds the
networks' state dicts and init kwargs and never runs the pickled source. torch is still
needed, to read the tensors.

    nets = read_network_pickle("ffhq.pkl")   # {"G": (state_dict, init_kwargs), "D": ..., ...}
"""

import collections
import pickle

from tfgan_eff.convert.common import ConversionError, require_torch, to_numpy


SAFE_BUILTINS = ("set", "frozenset", "slice", "range", "complex", "bytearray")


class _Stored:
  """A persistent object of the pickle: its class name and stored state, not rebuilt."""

  def __init__(self, meta):
    meta = dict(meta)
    self.class_name = meta.get("class_name")
    self.state = dict(meta.get("state") or {})


def _reconstruct(meta):
  return _Stored(meta)


class _EasyDict(dict):
  """dnnlib.EasyDict, as a plain dict (attribute access is not needed here)."""


def _unpickler(torch):
  base = torch.serialization.pickle.Unpickler if hasattr(torch.serialization, "pickle") \
      else pickle.Unpickler

  class Unpickler(base):
    def find_class(self, module, name):
      if module == "torch_utils.persistence" and name == "_reconstruct_persistent_obj":
        return _reconstruct
      if module == "dnnlib.util" and name == "EasyDict":
        return _EasyDict
      if (module.split(".")[0] in ("torch", "collections", "numpy", "_codecs")
          or (module == "builtins" and name in SAFE_BUILTINS)):
        return super().find_class(module, name)
      if module.startswith("dnnlib.tflib"):
        raise ConversionError(
            "This is a TensorFlow StyleGAN2 pickle (dnnlib.tflib). Convert it to a PyTorch "
            "one first with stylegan2-ada-pytorch's legacy.py, then convert that.")
      raise ConversionError(
          f"The pickle needs '{module}.{name}', which is not part of a stylegan2-ada-pytorch "
          f"network pickle (persistent networks, torch tensors). Export the networks' state "
          f"dicts instead.")
  return Unpickler


def _state_dict(obj, prefix=""):
  """The state dict of a stored nn.Module (parameters, persistent buffers, submodules)."""
  if isinstance(obj, _Stored):
    state = obj.state
  elif hasattr(obj, "state_dict"):  # a plain torch module inside a persistent one
    return {prefix + k: v for k, v in obj.state_dict().items()}
  else:
    raise ConversionError(f"Unexpected object {type(obj).__name__} in the network pickle.")
  out = collections.OrderedDict()
  skip = set(state.get("_non_persistent_buffers_set") or ())
  for k, v in (state.get("_parameters") or {}).items():
    if v is not None:
      out[prefix + k] = v
  for k, v in (state.get("_buffers") or {}).items():
    if v is not None and k not in skip:
      out[prefix + k] = v
  for k, m in (state.get("_modules") or {}).items():
    if m is not None:
      out.update(_state_dict(m, f"{prefix}{k}."))
  return out


def _plain(x):
  """EasyDicts and tuples of init kwargs -> plain dicts and lists (JSON-able)."""
  if isinstance(x, dict):
    return {k: _plain(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_plain(v) for v in x]
  return x


def read_network_pickle(path):
  """{"G" | "D" | "G_ema": (numpy state dict, init kwargs)} of a stylegan2-ada-pytorch
  network pickle (the networks it holds; the augmentation pipe and data kwargs are
  ignored)."""
  torch = require_torch()
  try:
    with open(path, "rb") as f:
      data = _unpickler(torch)(f).load()
  except ConversionError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    raise ConversionError(f"'{path}' is not a readable network pickle "
                          f"({type(e).__name__}: {e}).") from None
  if not isinstance(data, dict) or not any(k in data for k in ("G", "G_ema", "D")):
    raise ConversionError(f"'{path}' holds no networks G, G_ema or D (keys: "
                          f"{sorted(data) if isinstance(data, dict) else type(data).__name__}).")
  out = {}
  for key in ("G", "D", "G_ema"):
    obj = data.get(key)
    if obj is None:
      continue
    if not isinstance(obj, _Stored):
      raise ConversionError(f"'{path}': {key} is a {type(obj).__name__}, not a persistent "
                            f"stylegan2-ada-pytorch network.")
    kwargs = _plain(obj.state.get("_init_kwargs") or {})
    out[key] = (to_numpy(_state_dict(obj)), kwargs)
  return out
