"""BigGAN-PyTorch (ajbrock/BigGAN-PyTorch, `BigGAN.py`) state dicts -> our BigGAN.

    from tfgan_eff.convert import biggan, common
    g = common.read_state_dict("weights/G_ema.pth")       # or an .npz dump, without torch
    converted = biggan.convert(g, D_state=common.read_state_dict("weights/D.pth"))
    common.write_run(converted, "runs/biggan_converted")

`convert` reads the architecture off the tensor names and shapes (resolution, ch, z_dim,
classes, shared embedding or per-layer class embeddings, hierarchical z, attention, spectral
norm, `mybn`) and takes what shapes cannot show as keyword hints with the reference's
defaults. The converted networks in inference (`training=False`) compute what the reference
computes in eval mode (`G.eval()`, `--G_eval_mode`): tests/test_convert_biggan.py checks G's
images and D's logits against the reference's own outputs (tools/fixtures_biggan.py).

Layouts: convolutions [O, I, kh, kw] -> [kh, kw, I, O]; linear [out, in] -> [in, out].
Spectral norm: the reference keeps `u0` [1, out] and runs the same one-step power iteration
as our layers (without updating `u` in eval mode), so `u0` is our `sn_u` and σ is recomputed
from it alike; `sv0` (its log of the last σ) is not read by its forward pass and is ignored.
Two reorderings keep the functions equal: G's first linear layer's outputs (the reference
views them as [C, 4, 4], we as [4, 4, C]), and with hierarchical z the inputs of the
conditional BN's linear maps (the reference concatenates [class embedding, z chunk], we
[z chunk, class embedding]); σ does not change under either permutation.
"""

import numpy as np

from tfgan_eff.convert.common import ConversionError, Converted, Tensors, to_numpy, torch_conv
from tfgan_eff.models.biggan import D_ARCH, G_ARCH

# The reference's keyword arguments that the tensors do not show, with its defaults.
HINTS = {
    "BN_eps": 1e-5,        # batch-norm epsilon of G's conditional BN (the output BN: always 1e-5)
    "SN_eps": 1e-12,       # F.normalize epsilon of the power iteration (scripts: 1e-6 or 1e-8)
    "norm_style": "bn",    # G's conditional normalization: bn, in, gn, nonorm
    "num_G_SV_itrs": 1,    # power iterations per step (in eval mode any number gives one's σ)
    "num_D_SV_itrs": 1,
}
OUR_BN_EPS = 1e-5
OUR_SN_NORM_FLOOR = 1e-6  # our _normalize: v / max(|v|, 1e-6) (1e-12 on the squared norm)

G_RESOLUTION = {len(ins): r for r, (ins, _) in G_ARCH.items()}  # number of G blocks -> res
D_RESOLUTION = {len(outs): r for r, (outs, _) in D_ARCH.items()}
SV0 = "the reference's log of the last sigma; its forward pass never reads it"


def _blocks(sd):
  """{block index: sorted sub-module indices} of `blocks.<i>.<j>.…` names."""
  out = {}
  for name in sd:
    parts = name.split(".")
    if parts[0] == "blocks" and len(parts) > 3:
      out.setdefault(int(parts[1]), set()).add(int(parts[2]))
  if sorted(out) != list(range(len(out))):
    raise ConversionError(f"The source's blocks are not numbered 0..n-1: {sorted(out)}.")
  return {i: sorted(out[i]) for i in sorted(out)}


def _shape(sd, name, item):
  if name not in sd:
    raise ConversionError(f"The {item} source has no tensor '{name}': it was not made by "
                          f"BigGAN-PyTorch's BigGAN.py (or by another version of it).")
  return tuple(np.shape(sd[name]))


def _attention(blocks, kind):
  """The one block index followed by an attention layer, or None."""
  found = [i for i, subs in blocks.items() if len(subs) > 1]
  if len(found) > 1:
    raise ConversionError(f"The {kind} source has self-attention after blocks {found}; our "
                          f"BigGAN has one attention layer (set {kind}_attn to one resolution).")
  return found[0] if found else None


# ---------------------------------------------------------------------------------------------
# Layer kinds: each writes one reference module into our paths.


def _check_svs(t, src):
  if t.has(f"{src}.u1"):
    raise ConversionError(f"'{src}' keeps several singular vectors ({src}.u1, num_svs > 1); "
                          f"our spectral norm keeps one.")


def _dense(t, ours, src, use_sn, bias=True, in_perm=None, out_perm=None):
  """nn.Linear / SNLinear [out, in] -> SNDense: kernel [in, out] (rows in `in_perm`, columns
  in `out_perm` order), bias, sn_u (in `out_perm` order)."""
  w = t.get(f"{src}.weight").T
  w = w[in_perm] if in_perm is not None else w
  w = w[:, out_perm] if out_perm is not None else w
  t.put_value(f"{ours}/kernel", f"{src}.weight", w)
  if bias:
    b = t.get(f"{src}.bias")
    t.put_value(f"{ours}/bias", f"{src}.bias", b[out_perm] if out_perm is not None else b)
  if use_sn:
    _check_svs(t, src)
    u = t.get(f"{src}.u0")[0]
    t.put_value(f"{ours}/sn_u", f"{src}.u0", u[out_perm] if out_perm is not None else u)


def _conv(t, ours, src, use_sn, bias=True):
  """Conv2d / SNConv2d [O, I, kh, kw] -> SNConv2D: kernel [kh, kw, I, O], bias, sn_u."""
  t.put(f"{ours}/kernel", f"{src}.weight", torch_conv)
  if bias:
    t.put(f"{ours}/bias", f"{src}.bias")
  if use_sn:
    _check_svs(t, src)
    t.put(f"{ours}/sn_u", f"{src}.u0", lambda u: u[0])


def _embedding(t, ours, src, use_sn):
  """nn.Embedding / SNEmbedding [classes, dim] -> SNEmbedding (with SN: `transpose_sn`,
  the reference's u0 [1, classes])."""
  t.put(f"{ours}/kernel", f"{src}.weight")
  if use_sn:
    _check_svs(t, src)
    t.put(f"{ours}/sn_u", f"{src}.u0", lambda u: u[0])


def _statistics(t, ours, src):
  """Batch-norm statistics -> our moving_mean / moving_variance. The reference keeps
  `stored_mean`/`stored_var` in the (c)bn module, or with `mybn` in its `.bn` child, where
  standing statistics are sums over `accumulation_counter` passes (its eval divides them)."""
  if t.has(f"{src}.bn.running_mean"):
    raise ConversionError(
        f"'{src}' is a cross-replica batch norm ({src}.bn.running_mean, cross_replica=True), "
        f"whose eval adds the class gain instead of multiplying by it; not representable.")
  if t.has(f"{src}.bn.stored_mean"):  # mybn
    mean, var = t.get(f"{src}.bn.stored_mean"), t.get(f"{src}.bn.stored_var")
    count = float(np.asarray(t.get(f"{src}.bn.accumulation_counter")).reshape(-1)[0])
    if count > 0:
      mean, var = mean / count, var / count
    t.put_value(f"{ours}/moving_mean", f"{src}.bn.stored_mean", mean)
    t.put_value(f"{ours}/moving_variance", f"{src}.bn.stored_var", var)
  else:
    t.put(f"{ours}/moving_mean", f"{src}.stored_mean")
    t.put(f"{ours}/moving_variance", f"{src}.stored_var")


def _ccbn(t, ours, src, arch):
  """ccbn -> ConditionalBatchNorm: gain/bias linear maps (SNLinear without bias on
  [class embedding, z chunk], or per-layer nn.Embedding tables [classes, C]) -> gain/offset."""
  _statistics(t, f"{ours}/bn", src)
  for theirs, our in (("gain", "gain"), ("bias", "offset")):
    if arch["shared"]:
      _dense(t, f"{ours}/{our}", f"{src}.{theirs}", arch["use_sn"], bias=False,
             in_perm=arch["cond_perm"])
    else:
      t.put(f"{ours}/{our}/kernel", f"{src}.{theirs}.weight")


def _bn(t, ours, src):
  """bn (G's output BN: gain, bias, statistics) -> CrossReplicaBatchNorm."""
  t.put(f"{ours}/gamma", f"{src}.gain")
  t.put(f"{ours}/beta", f"{src}.bias")
  _statistics(t, ours, src)


def _attention_layer(t, ours, src, use_sn):
  """Attention (theta, phi, g, o: 1x1 convs without bias; gamma) -> SelfAttention."""
  for conv in ("theta", "phi", "g", "o"):
    _conv(t, f"{ours}/{conv}", f"{src}.{conv}", use_sn, bias=False)
  t.put(f"{ours}/gate", f"{src}.gamma", lambda a: np.reshape(a, ()))


# ---------------------------------------------------------------------------------------------
# Architectures read off the tensors.


def _generator_arch(sd, item):
  blocks = _blocks(sd)
  n = len(blocks)
  if n not in G_RESOLUTION:
    raise ConversionError(f"The {item} source has {n} blocks; our BigGAN G has "
                          f"{sorted(G_RESOLUTION)} (resolutions {sorted(G_ARCH)}; "
                          f"BigGAN-PyTorch's 512 px is not supported).")
  res = G_RESOLUTION[n]
  ins, _ = G_ARCH[res]
  in0 = _shape(sd, "blocks.0.0.conv1.weight", item)[1]
  lin_out, lin_in = _shape(sd, "linear.weight", item)
  if lin_out != 16 * in0:
    raise ConversionError(f"{item} 'linear.weight' {(lin_out, lin_in)} makes a "
                          f"{lin_out // in0}-pixel bottom layer of {in0} channels: "
                          f"bottom_width must be 4 for our BigGAN.")
  if in0 % ins[0]:
    raise ConversionError(f"{item} 'blocks.0.0.conv1.weight' has {in0} input channels, not a "
                          f"multiple of {ins[0]} (BigGAN-PyTorch's {res} px G_ch multiplier).")
  use_sn = "linear.u0" in sd
  shared = "shared.weight" in sd
  cond_in = None
  if shared:
    classes, shared_dim = _shape(sd, "shared.weight", item)
    cond_in = _shape(sd, "blocks.0.0.bn1.gain.weight", item)[1]
    chunk = cond_in - shared_dim
    if chunk < 0 or (chunk and chunk != lin_in):
      raise ConversionError(f"{item}: the conditional BN's input ({cond_in}, "
                            f"blocks.0.0.bn1.gain.weight) is neither the shared embedding "
                            f"({shared_dim}, shared.weight) nor it plus a z chunk of "
                            f"{lin_in} (linear.weight).")
    hier = chunk > 0
    # ours: [z chunk, embedding] -> theirs: [embedding, z chunk]
    perm = (np.concatenate([np.arange(shared_dim, cond_in), np.arange(shared_dim)])
            if hier else None)
  else:
    classes = _shape(sd, "blocks.0.0.bn1.gain.weight", item)[0]
    shared_dim, hier, chunk, perm = 0, False, 0, None
  att = _attention(blocks, "G")
  return dict(
      resolution=res, channels=_shape(sd, "output_layer.2.weight", item)[0], ch=in0 // ins[0],
      z_dim=lin_in * (n + 1) if hier else lin_in, num_classes=classes, shared_dim=shared_dim,
      hierarchical_z=hier, attention_resolution=0 if att is None else 8 * 2 ** att,
      use_sn=use_sn, shared=shared, cond_perm=perm, blocks=blocks, bottom=in0)


def _discriminator_arch(sd, item):
  blocks = _blocks(sd)
  n = len(blocks)
  if n not in D_RESOLUTION:
    raise ConversionError(f"The {item} source has {n} blocks; our BigGAN D has "
                          f"{sorted(D_RESOLUTION)} (resolutions {sorted(D_ARCH)}).")
  res = D_RESOLUTION[n]
  outs, downs = D_ARCH[res]
  hidden, channels = _shape(sd, "blocks.0.0.conv1.weight", item)[:2]
  if hidden % outs[0]:
    raise ConversionError(f"{item} 'blocks.0.0.conv1.weight' has {hidden} output channels, "
                          f"not a multiple of {outs[0]} (BigGAN-PyTorch's {res} px D_ch "
                          f"multiplier).")
  ch = hidden // outs[0]
  for i in blocks:
    h, o = (_shape(sd, f"blocks.{i}.0.conv{k}.weight", item)[0] for k in (1, 2))
    if h != o:
      raise ConversionError(f"{item} block {i}: conv1 has {h} output channels, conv2 {o}: a "
                            f"skinny D (D_wide=False); our BigGAN D is wide.")
  out_dim = _shape(sd, "linear.weight", item)[0]
  if out_dim != 1:
    raise ConversionError(f"{item} 'linear.weight' has {out_dim} outputs (output_dim); our "
                          f"BigGAN D has one logit.")
  att = _attention(blocks, "D")
  att_res = 0
  if att is not None:  # ours: after the first block whose output resolution is att_res
    att_res = res // 2 ** sum(downs[:att + 1])
    first = next(i for i in range(n) if res // 2 ** sum(downs[:i + 1]) == att_res)
    if first != att:
      raise ConversionError(f"{item} has self-attention after block {att} ({att_res} px); ours "
                            f"sits after block {first}, the first block at {att_res} px.")
  return dict(resolution=res, channels=channels, ch=ch,
              num_classes=_shape(sd, "embed.weight", item)[0] if "embed.weight" in sd else 0,
              attention_resolution=att_res, use_sn="linear.u0" in sd, blocks=blocks)


# ---------------------------------------------------------------------------------------------
# Networks.


def _generator(sd, item, arch):
  t = Tensors(sd, item)
  use_sn = arch["use_sn"]
  c = arch["bottom"]  # theirs [C, 4, 4] -> ours [4, 4, C]
  _dense(t, "linear", "linear", use_sn,
         out_perm=np.arange(16 * c).reshape(c, 4, 4).transpose(1, 2, 0).reshape(-1))
  if arch["shared"]:
    t.put("shared/kernel", "shared.weight")
  for i, subs in arch["blocks"].items():
    src = f"blocks.{i}.0"
    for conv in ("conv1", "conv2", "conv_sc"):
      _conv(t, f"block{i}/{conv}", f"{src}.{conv}", use_sn)
    for bn in ("bn1", "bn2"):
      _ccbn(t, f"block{i}/{bn}", f"{src}.{bn}", arch)
    if len(subs) > 1:
      _attention_layer(t, f"attention{i}", f"blocks.{i}.1", use_sn)
  _bn(t, "bn_out", "output_layer.0")
  _conv(t, "conv_out", "output_layer.2", use_sn)
  return t.done(ignore=lambda k: k.endswith(".sv0"))


def _discriminator(sd, item, arch):
  t = Tensors(sd, item)
  use_sn = arch["use_sn"]
  for i, subs in arch["blocks"].items():
    src = f"blocks.{i}.0"
    for conv in ("conv1", "conv2", "conv_sc"):
      if conv != "conv_sc" or t.has(f"{src}.conv_sc.weight"):
        _conv(t, f"block{i}/{conv}", f"{src}.{conv}", use_sn)
    if len(subs) > 1:
      _attention_layer(t, f"attention{i}", f"blocks.{i}.1", use_sn)
  _dense(t, "linear", "linear", use_sn)
  if arch["num_classes"]:
    _embedding(t, "projection", "embed", use_sn)
  return t.done(ignore=lambda k: k.endswith(".sv0"))


G_KEYS = ("resolution", "channels", "ch", "z_dim", "num_classes", "shared_dim",
          "hierarchical_z", "attention_resolution", "use_sn")
D_KEYS = ("resolution", "channels", "ch", "num_classes", "attention_resolution", "use_sn")


def _bindings(name, arch, keys):
  return [f"{name}.{k} = {arch[k]!r}" for k in keys]


def _check_hints(hints):
  unknown = sorted(set(hints) - set(HINTS))
  if unknown:
    raise ConversionError(f"Unknown hints {unknown}; the BigGAN converter takes "
                          f"{sorted(HINTS)} (BigGAN-PyTorch's argument names).")
  h = {**HINTS, **hints}
  if not np.isclose(h["BN_eps"], OUR_BN_EPS, rtol=1e-6, atol=0):
    raise ConversionError(f"BN_eps={h['BN_eps']}: our BigGAN's batch norms use "
                          f"epsilon {OUR_BN_EPS} (BigGAN-PyTorch's default and its scripts').")
  if h["norm_style"] != "bn":
    raise ConversionError(f"norm_style='{h['norm_style']}': our BigGAN G normalizes with batch "
                          f"statistics ('bn') only.")
  for key in ("num_G_SV_itrs", "num_D_SV_itrs"):
    if int(h[key]) < 1:
      raise ConversionError(f"{key}={h[key]} must be >= 1.")
  return h


def convert(G_state, D_state=None, G_ema_state=None, **hints):
  """BigGAN-PyTorch state dicts (name -> array, as `G.state_dict()` names them) -> `Converted`.

  Args:
    G_state: the generator's state dict (`G.pth`); None: G takes `G_ema_state`'s weights.
    D_state: the discriminator's (`D.pth`), optional; without it D keeps its initial weights
      and is bound to G's resolution, width and classes.
    G_ema_state: the EMA generator's (`G_ema.pth`), optional; it must have G's architecture.
      Without it our G_ema copies G.
    **hints: what the tensors do not show, BigGAN-PyTorch's names and defaults (`HINTS`):
      BN_eps=1e-5 (only 1e-5 converts), SN_eps, norm_style='bn', num_G_SV_itrs,
      num_D_SV_itrs.

  Raises ConversionError naming the tensor or feature that our BigGAN cannot represent.
  """
  h = _check_hints(hints)
  if G_state is None and G_ema_state is None:
    raise ConversionError("Give G_state or G_ema_state (BigGAN-PyTorch's G.pth / G_ema.pth).")
  gens = {k: to_numpy(v) for k, v in (("G", G_state), ("G_ema", G_ema_state)) if v is not None}
  D_state = to_numpy(D_state) if D_state is not None else None
  archs = {k: _generator_arch(sd, k) for k, sd in gens.items()}
  g_lines = {k: _bindings("BigGANGenerator", a, G_KEYS) for k, a in archs.items()}
  if len(g_lines) == 2 and g_lines["G"] != g_lines["G_ema"]:
    diff = sorted(set(g_lines["G"]) ^ set(g_lines["G_ema"]))
    raise ConversionError(f"G and G_ema have different architectures: {diff}.")
  g_item = "G" if "G" in archs else "G_ema"
  g = archs[g_item]
  sources = ", ".join(sorted(gens) + (["D"] if D_state is not None else []))
  lines = [f"# BigGAN-PyTorch {sources} converted by tfgan_eff.convert.biggan",
           "GAN.generator = @BigGANGenerator", *g_lines[g_item]]
  tensors = {k: _generator(gens[k], k, archs[k]) for k in gens}
  ignored = {k: [f"{n}: {SV0}" for n in sorted(gens[k]) if n.endswith(".sv0")] for k in gens}
  if "G" not in tensors:  # G_ema only (e.g. a released G_ema.pth): G starts from it too
    tensors["G"], ignored["G"] = tensors["G_ema"], ignored["G_ema"]
  if D_state is not None:
    d = _discriminator_arch(D_state, "D")
    for key in ("resolution", "channels", "num_classes"):
      if d[key] != g[key]:
        raise ConversionError(f"D has {key} {d[key]} but {g_item} has {g[key]}.")
    tensors["D"] = _discriminator(D_state, "D", d)
    ignored["D"] = [f"{n}: {SV0}" for n in sorted(D_state) if n.endswith(".sv0")]
    lines += ["GAN.discriminator = @BigGANDiscriminator", *_bindings("BigGANDiscriminator", d,
                                                                      D_KEYS)]
    if d["num_classes"] and d["use_sn"]:
      lines.append("BigGANDiscriminator.projection_transpose_sn = True")
  else:
    lines += ["# D not converted: initial weights, G's resolution, width and classes",
              "GAN.discriminator = @BigGANDiscriminator",
              *_bindings("BigGANDiscriminator", g, D_KEYS)]
  if not np.isclose(h["SN_eps"], OUR_SN_NORM_FLOOR, rtol=1e-6, atol=0):
    lines.append(f"# SN_eps={h['SN_eps']}: our power iteration floors |v| at "
                 f"{OUR_SN_NORM_FLOOR}; equal unless a vector is that small")
  for key, net in (("num_G_SV_itrs", "G"), ("num_D_SV_itrs", "D")):
    if int(h[key]) > 1:
      lines.append(f"# {key}={h[key]}: inference is equal; our training runs one power "
                   f"iteration per step in {net}")
  return Converted(gin="\n".join(lines) + "\n", tensors=tensors, ignored=ignored,
                   description=f"BigGAN-PyTorch {g['resolution']} px state dicts ({sources})")
