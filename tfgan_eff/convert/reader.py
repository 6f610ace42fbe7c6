"""From a file or folder of the reference code to a `Converted`: what bin/convert runs.

Sources:
  * a stylegan2-ada-pytorch network pickle (`.pkl`: G, D, G_ema and their init kwargs);
  * a BigGAN-PyTorch weights folder (`G.pth`, `D.pth`, `G_ema.pth`; G or G_ema required);
  * one `.npz` / `.pt` / `.pth` whose names are prefixed "G.", "D.", "G_ema." (state dicts
    of several networks; `G_kwargs` / `D_kwargs` entries, JSON strings, give init kwargs);
  * one bare state dict of a generator (`.npz` / `.pt` / `.pth`).
The backbone is recognised from the tensor names (`format="auto"`).
"""

import ast
import json
import os

import numpy as np

from tfgan_eff.convert import stylegan2
from tfgan_eff.convert.common import ConversionError, read_state_dict

FORMATS = ("auto", "stylegan2-ada", "biggan-pytorch")
ITEMS = ("G", "D", "G_ema")


def _split(arrays, path):
  """{name: array} -> ({item: state dict}, {item: kwargs}); unprefixed: a lone G."""
  nets, kwargs, other = {}, {}, []
  for k, v in arrays.items():
    item, _, rest = k.partition(".")
    if k in ("G_kwargs", "D_kwargs", "G_ema_kwargs"):
      kwargs[k[:-len("_kwargs")]] = json.loads(str(np.asarray(v).item()))
    elif item in ITEMS and rest:
      nets.setdefault(item, {})[rest] = v
    else:
      other.append(k)
  if not nets:
    return {"G": arrays}, {}
  if other:
    from absl import logging  # pylint: disable=import-outside-toplevel
    logging.info("%s: %d entries without a G./D./G_ema. prefix are not converted (e.g. %s).",
                 path, len(other), other[:5])
  return nets, kwargs


def read(source):
  """-> ({item: numpy state dict}, {item: init kwargs}, description)."""
  p = os.path.expanduser(str(source))
  if not os.path.exists(p):
    raise ConversionError(f"--source '{p}' does not exist.")
  if os.path.isdir(p):
    nets = {item: read_state_dict(os.path.join(p, f"{item}.pth")) for item in ITEMS
            if os.path.exists(os.path.join(p, f"{item}.pth"))}
    if not nets:
      raise ConversionError(f"The folder '{p}' holds none of G.pth, D.pth, G_ema.pth "
                            f"(a BigGAN-PyTorch weights folder).")
    return nets, {}, f"the weights folder {p}"
  if p.endswith(".pkl"):
    from tfgan_eff.convert import pickles  # pylint: disable=import-outside-toplevel
    read_nets = pickles.read_network_pickle(p)
    return ({k: sd for k, (sd, _) in read_nets.items()},
            {k: kw for k, (_, kw) in read_nets.items()}, f"the network pickle {p}")
  nets, kwargs = _split(read_state_dict(p), p)
  return nets, kwargs, f"the state dicts in {p}"


def detect(nets):
  names = [k for sd in nets.values() for k in sd]
  if any(k.startswith("synthesis.") or k.startswith("mapping.fc") for k in names):
    return "stylegan2-ada"
  if any(k.startswith("blocks.") for k in names):
    return "biggan-pytorch"
  raise ConversionError(f"Cannot tell which reference code made these tensors (e.g. "
                        f"{sorted(names)[:5]}); pass --format.")


def parse_hints(items):
  """["name=value", ...] -> {name: Python literal (or the string)}."""
  out = {}
  for item in items:
    name, sep, value = item.partition("=")
    if not sep or not name:
      raise ValueError(f"--hint '{item}' is not name=value (e.g. --hint=conv_clamp=256).")
    try:
      out[name.strip()] = ast.literal_eval(value.strip())
    except (ValueError, SyntaxError):
      out[name.strip()] = value.strip()
  return out


def convert(source, fmt="auto", hints=None):
  """`source` (see the module docstring) -> `Converted`."""
  if fmt not in FORMATS:
    raise ConversionError(f"--format must be one of {list(FORMATS)}, got '{fmt}'.")
  nets, kwargs, description = read(source)
  fmt = detect(nets) if fmt == "auto" else fmt
  if fmt == "stylegan2-ada":
    return stylegan2.convert(G=nets.get("G"), D=nets.get("D"), G_ema=nets.get("G_ema"),
                             G_kwargs=kwargs.get("G_ema") or kwargs.get("G"),
                             D_kwargs=kwargs.get("D"), hints=hints,
                             description=f"{description} (stylegan2-ada-pytorch)")
  from tfgan_eff.convert import biggan  # pylint: disable=import-outside-toplevel
  if "G" not in nets and "G_ema" not in nets:
    raise ConversionError(f"{description} has no generator (G or G_ema).")
  converted = biggan.convert(nets.get("G"), nets.get("D"), nets.get("G_ema"), **(hints or {}))
  converted.description = f"{description} (BigGAN-PyTorch)"
  return converted
