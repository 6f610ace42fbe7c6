"""stylegan2-ada-pytorch networks -> ours (`StyleGAN2Generator`, `StyleGAN2Discriminator`).

The architecture comes from the networks' init kwargs (what a network pickle records) or,
for a bare state dict, from the tensors' names and shapes plus `hints` for what shapes do
not show (conv_clamp, mbstd group size, mapping lr multiplier, w_avg beta). Every reference
option our networks cannot reproduce is refused with its name.

Name mapping (reference -> ours; conv weights [O, I, k, k] -> [k, k, I, O], dense weights
[out, in] -> [in, out]; stored values are copied as they are, since both scale weights and
biases at run time the same way):

    mapping.embed / mapping.fc<i>           mapping/embed, mapping/fc<i>, mapping/w_avg
    synthesis.b4.const [C, 4, 4]            b4/const [4, 4, C]
    synthesis.b<r>.conv<j>.weight, .bias    b<r>/conv<j>/conv/kernel (conv0, the up-sampling
                                            layer: spatially flipped, see below), .../bias
      .affine, .noise_strength, .noise_const  .../affine, .../noise/strength, noise_const
    synthesis.b<r>.torgb.*                  b<r>/torgb/*
    D b<r>.fromrgb, .conv0, .conv1, .skip   b<r>/fromrgb, conv0, conv1, skip
    D b4.conv, b4.fc, b4.out                b4_conv, b4_fc (rows reordered: the reference
                                            flattens [C, 4, 4], we flatten [4, 4, C]), b4_out
    D mapping.* (conditional D)             mapping/* (conditioning = 'cmap')

The resample filters (buffers) are checked to be [1, 3, 3, 1] and not copied. The reference's
up-sampling convolution is a true convolution (`SynthesisLayer` passes flip_weight = (up ==
1), "slightly faster"), where ours correlates as every other layer does: its kernel is
flipped in both spatial axes on the way in, which leaves demodulation unchanged.
"""

import json

import numpy as np

from tfgan_eff.convert.common import ConversionError, Converted, Tensors, torch_conv, \
    torch_linear

HINTS = {  # what train.py of stylegan2-ada-pytorch sets, for state dicts without kwargs
    "conv_clamp": 256, "mbstd_group_size": 4, "mbstd_num_channels": 1,
    "mapping_lr_multiplier": 0.01, "w_avg_beta": 0.995, "d_mapping_layers": 8,
}
FILTER = np.outer([1, 3, 3, 1], [1, 3, 3, 1]) / 64.0


def _kwargs(k):
  if k is None:
    return None
  if isinstance(k, (str, bytes, np.ndarray)):
    k = json.loads(str(k if not isinstance(k, np.ndarray) else k.item()))
  return {key: (_kwargs(v) if isinstance(v, dict) else v) for key, v in dict(k).items()}


def _refuse(what, value, allowed):
  if value not in allowed:
    raise ConversionError(f"The reference network uses {what} = {value!r}, which our networks "
                          f"do not have (supported: {list(allowed)}).")


def _resolutions(sd, prefix):
  out = set()
  for k in sd:
    if k.startswith(prefix + "b"):
      head = k[len(prefix) + 1:].split(".", 1)[0]
      if head.isdigit():
        out.add(int(head))
  return sorted(out)


def _fmaps(widths, what):
  """(fmap_base, fmap_max) reproducing {resolution: width} with min(base // r, max)."""
  fmap_max = max(widths.values())
  uncapped = [r * c for r, c in widths.items() if c < fmap_max]
  fmap_base = min(uncapped) if uncapped else fmap_max * min(widths)
  if any(min(fmap_base // r, fmap_max) != c for r, c in widths.items()):
    raise ConversionError(f"The {what} widths {widths} do not follow min(channel_base // r, "
                          f"channel_max); pass the network's init kwargs.")
  return fmap_base, fmap_max


def _check_filters(sd, item):
  for k, v in sd.items():
    if k.endswith("resample_filter") and not np.allclose(v, FILTER, atol=1e-7):
      raise ConversionError(f"{item} tensor '{k}' is not the [1, 3, 3, 1] filter our "
                            f"networks use.")


# -- generator ---------------------------------------------------------------------------

def generator_config(sd, kwargs=None, hints=None):
  """Our StyleGAN2Generator arguments for a reference G state dict (and its init kwargs)."""
  h = {**HINTS, **(hints or {})}
  res = _resolutions(sd, "synthesis.")
  if not res:
    raise ConversionError("Not a stylegan2-ada-pytorch generator: no 'synthesis.b<r>.*' "
                          "tensors.")
  resolution = res[-1]
  widths = {r: int(sd[f"synthesis.b{r}.conv1.weight"].shape[0]) for r in res}
  num_layers = len([k for k in sd if k.startswith("mapping.fc") and k.endswith(".weight")])
  w_dim = int(sd["mapping.fc0.weight"].shape[0])
  c_dim = int(sd["mapping.embed.weight"].shape[1]) if "mapping.embed.weight" in sd else 0
  z_dim = int(sd["mapping.fc0.weight"].shape[1]) - (w_dim if c_dim else 0)
  skip = all(f"synthesis.b{r}.torgb.weight" in sd for r in res)
  if any(k.startswith("synthesis.") and ".skip." in k for k in sd):
    raise ConversionError("The reference generator uses architecture = 'resnet', which ours "
                          "does not have (supported: ['skip', 'orig']).")
  fmap_base, fmap_max = _fmaps(widths, "generator")
  cfg = dict(resolution=resolution, channels=int(sd[f"synthesis.b{resolution}.torgb.weight"]
                                                 .shape[0]),
             z_dim=z_dim, w_dim=w_dim, num_classes=c_dim, mapping_layers=num_layers,
             mapping_lr_multiplier=h["mapping_lr_multiplier"], fmap_base=fmap_base,
             fmap_max=fmap_max, architecture="skip" if skip else "orig",
             w_avg_beta=h["w_avg_beta"], conv_clamp=h["conv_clamp"])
  k = _kwargs(kwargs)
  if k:
    m, s = k.get("mapping_kwargs", {}), k.get("synthesis_kwargs", {})
    for name, ours in (("z_dim", z_dim), ("w_dim", w_dim), ("c_dim", c_dim),
                       ("img_resolution", resolution)):
      if name in k and int(k[name]) != ours:
        raise ConversionError(f"The generator's init kwargs say {name} = {k[name]} but its "
                              f"tensors say {ours}.")
    _refuse("mapping activation", m.get("activation", "lrelu"), ["lrelu"])
    _refuse("embed_features", m.get("embed_features") or w_dim, [w_dim])
    _refuse("layer_features", m.get("layer_features") or w_dim, [w_dim])
    _refuse("synthesis architecture", s.get("architecture", "skip"), ["skip", "orig"])
    _refuse("resample_filter", list(s.get("resample_filter", [1, 3, 3, 1])), [[1, 3, 3, 1]])
    _refuse("synthesis activation", s.get("activation", "lrelu"), ["lrelu"])
    cfg.update(mapping_lr_multiplier=float(m.get("lr_multiplier", 0.01)),
               w_avg_beta=m.get("w_avg_beta", 0.995), conv_clamp=s.get("conv_clamp"))
    if "channel_base" in s:
      cfg.update(fmap_base=int(s["channel_base"]), fmap_max=int(s.get("channel_max", 512)))
  return cfg


def _mapping(t):
  """A MappingNetwork (G's, or a conditional D's label mapping): embed, fc<i>."""
  if t.has("mapping.embed.weight"):
    t.put("mapping/embed/kernel", "mapping.embed.weight", torch_linear)
    t.put("mapping/embed/bias", "mapping.embed.bias")
  i = 0
  while t.has(f"mapping.fc{i}.weight"):
    t.put(f"mapping/fc{i}/kernel", f"mapping.fc{i}.weight", torch_linear)
    t.put(f"mapping/fc{i}/bias", f"mapping.fc{i}.bias")
    i += 1


def generator_tensors(sd, item="G"):
  """{our path: (reference name, array)} for a reference G state dict."""
  _check_filters(sd, item)
  t = Tensors(sd, item)
  _mapping(t)
  t.put("mapping/w_avg", "mapping.w_avg")
  for r in _resolutions(sd, "synthesis."):
    b = f"synthesis.b{r}"
    if t.has(f"{b}.const"):
      t.put(f"b{r}/const", f"{b}.const", lambda a: np.transpose(a, (1, 2, 0)))
    for j in (0, 1):
      ref = f"{b}.conv{j}"
      if not t.has(f"{ref}.weight"):
        continue
      ours = f"b{r}/conv{j}"
      # The reference's up-sampling layer (conv0) convolves (conv2d_resample with
      # flip_weight=False: a transposed convolution of the unflipped kernel); every other
      # layer, and ours, correlates. Flipping its kernel gives the same function.
      t.put(f"{ours}/conv/kernel", f"{ref}.weight",
            (lambda a: torch_conv(a)[::-1, ::-1]) if j == 0 else torch_conv)
      t.put(f"{ours}/bias", f"{ref}.bias")
      t.put(f"{ours}/affine/kernel", f"{ref}.affine.weight", torch_linear)
      t.put(f"{ours}/affine/bias", f"{ref}.affine.bias")
      t.put(f"{ours}/noise/strength", f"{ref}.noise_strength")
      t.put(f"{ours}/noise/noise_const", f"{ref}.noise_const")
    if t.has(f"{b}.torgb.weight"):
      t.put(f"b{r}/torgb/conv/kernel", f"{b}.torgb.weight", torch_conv)
      t.put(f"b{r}/torgb/bias", f"{b}.torgb.bias")
      t.put(f"b{r}/torgb/affine/kernel", f"{b}.torgb.affine.weight", torch_linear)
      t.put(f"b{r}/torgb/affine/bias", f"{b}.torgb.affine.bias")
  return t.done(ignore=lambda k: k.endswith("resample_filter"))


# -- discriminator -------------------------------------------------------------------------

def discriminator_config(sd, kwargs=None, hints=None):
  """Our StyleGAN2Discriminator arguments for a reference D state dict (and init kwargs)."""
  h = {**HINTS, **(hints or {})}
  res = [r for r in _resolutions(sd, "") if r > 4]
  if not res or "b4.out.weight" not in sd:
    raise ConversionError("Not a stylegan2-ada-pytorch discriminator: no 'b<r>.*' blocks "
                          "and 'b4.out'.")
  resolution = res[-1]
  if "b4.fromrgb.weight" in sd or any(f"b{r}.fromrgb.weight" in sd for r in res[:-1]):
    raise ConversionError("The reference discriminator uses architecture = 'skip', which "
                          "ours does not have (supported: ['resnet', 'orig']).")
  widths = {r: int(sd[f"b{r}.conv0.weight"].shape[0]) for r in res}
  widths[4] = int(sd["b4.conv.weight"].shape[0])
  fmap_base, fmap_max = _fmaps(widths, "discriminator")
  c_dim = int(sd["mapping.embed.weight"].shape[1]) if "mapping.embed.weight" in sd else 0
  cfg = dict(resolution=resolution, channels=int(sd[f"b{resolution}.fromrgb.weight"].shape[1]),
             num_classes=c_dim, fmap_base=fmap_base, fmap_max=fmap_max,
             mbstd_group_size=h["mbstd_group_size"],
             mbstd_num_features=int(sd["b4.conv.weight"].shape[1]) - widths[4],
             architecture="resnet" if f"b{resolution}.skip.weight" in sd else "orig",
             conv_clamp=h["conv_clamp"])
  if c_dim:
    cfg.update(conditioning="cmap", cmap_dim=int(sd["b4.out.weight"].shape[0]),
               mapping_layers=len([k for k in sd if k.startswith("mapping.fc")
                                   and k.endswith(".weight")]),
               mapping_lr_multiplier=h["mapping_lr_multiplier"])
  k = _kwargs(kwargs)
  if k:
    e, m, b = (k.get("epilogue_kwargs", {}), k.get("mapping_kwargs", {}),
               k.get("block_kwargs", {}))
    if "c_dim" in k and int(k["c_dim"]) != c_dim:
      raise ConversionError(f"The discriminator's init kwargs say c_dim = {k['c_dim']} but its "
                            f"tensors say {c_dim}.")
    _refuse("discriminator architecture", k.get("architecture", "resnet"), ["resnet", "orig"])
    _refuse("resample_filter", list(b.get("resample_filter", [1, 3, 3, 1])), [[1, 3, 3, 1]])
    for what, d in (("block", b), ("epilogue", e), ("mapping", m)):
      _refuse(f"{what} activation", d.get("activation", "lrelu"), ["lrelu"])
    cfg.update(mbstd_group_size=e.get("mbstd_group_size", 4), conv_clamp=k.get("conv_clamp"))
    if "channel_base" in k:
      cfg.update(fmap_base=int(k["channel_base"]), fmap_max=int(k.get("channel_max", 512)))
    if c_dim:
      cfg.update(mapping_lr_multiplier=float(m.get("lr_multiplier", 0.01)))
  if cfg["mbstd_group_size"] is None:
    raise ConversionError("The reference discriminator has mbstd_group_size = None (the "
                          "whole batch); ours needs a number: pass the batch size it trained "
                          "with as a hint.")
  return cfg


def discriminator_tensors(sd, item="D"):
  """{our path: (reference name, array)} for a reference D state dict."""
  _check_filters(sd, item)
  t = Tensors(sd, item)
  for r in [r for r in _resolutions(sd, "") if r > 4]:
    for layer in ("fromrgb", "conv0", "conv1", "skip"):
      if t.has(f"b{r}.{layer}.weight"):
        t.put(f"b{r}/{layer}/kernel", f"b{r}.{layer}.weight", torch_conv)
        if layer != "skip":
          t.put(f"b{r}/{layer}/bias", f"b{r}.{layer}.bias")
  t.put("b4_conv/kernel", "b4.conv.weight", torch_conv)
  t.put("b4_conv/bias", "b4.conv.bias")
  fc = t.get("b4.fc.weight")  # [out, C * 4 * 4], inputs flattened as [C, 4, 4]
  c = fc.shape[1] // 16
  t.put_value("b4_fc/kernel", "b4.fc.weight",
              fc.reshape(fc.shape[0], c, 4, 4).transpose(2, 3, 1, 0).reshape(16 * c, -1))
  t.put("b4_fc/bias", "b4.fc.bias")
  t.put("b4_out/kernel", "b4.out.weight", torch_linear)
  t.put("b4_out/bias", "b4.out.bias")
  if t.has("mapping.embed.weight"):  # conditional: the label mapping (cmap)
    _mapping(t)
  return t.done(ignore=lambda k: k.endswith("resample_filter"))


# -- both ----------------------------------------------------------------------------------

def _gin(name, cfg):
  return [f"{name}.{k} = {v!r}" for k, v in cfg.items()]


def convert(G=None, D=None, G_ema=None, G_kwargs=None, D_kwargs=None, hints=None,
            description="stylegan2-ada-pytorch"):
  """Reference state dicts (numpy, reference names) -> `Converted`.

  G and G_ema share one architecture (G_ema's is used when both are given). Without a D,
  the run gets a fresh D of the matching architecture (as wide as G, `hints`), and without
  a G, G starts as a copy of G_ema.
  """
  unknown = sorted(set(hints or {}) - set(HINTS))
  if unknown:
    raise ConversionError(f"Unknown hints {unknown}; the stylegan2-ada converter takes "
                          f"{sorted(HINTS)}.")
  gen = G_ema if G_ema is not None else G
  if gen is None:
    raise ConversionError("Nothing to convert: the source has no G or G_ema.")
  g_cfg = generator_config(gen, G_kwargs, hints)
  tensors = {}
  if G is not None:
    tensors["G"] = generator_tensors(G, "G")
  if G_ema is not None:
    tensors["G_ema"] = generator_tensors(G_ema, "G_ema")
    tensors.setdefault("G", tensors["G_ema"])
  if D is not None:
    d_cfg = discriminator_config(D, D_kwargs, hints)
    tensors["D"] = discriminator_tensors(D)
  else:
    h = {**HINTS, **(hints or {})}
    d_cfg = dict(resolution=g_cfg["resolution"], channels=g_cfg["channels"],
                 num_classes=g_cfg["num_classes"], fmap_base=g_cfg["fmap_base"],
                 fmap_max=g_cfg["fmap_max"], mbstd_group_size=h["mbstd_group_size"],
                 conv_clamp=g_cfg["conv_clamp"],
                 conditioning="cmap" if g_cfg["num_classes"] else "projection")
  if g_cfg["num_classes"] != d_cfg["num_classes"]:
    raise ConversionError(f"G has {g_cfg['num_classes']} classes but D has "
                          f"{d_cfg['num_classes']}.")
  lines = ["GAN.generator = @StyleGAN2Generator", "GAN.discriminator = @StyleGAN2Discriminator",
           *_gin("StyleGAN2Generator", g_cfg), *_gin("StyleGAN2Discriminator", d_cfg)]
  return Converted(gin="\n".join(lines) + "\n", tensors=tensors, description=description)
