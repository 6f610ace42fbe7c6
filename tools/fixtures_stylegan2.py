"""Reference-output fixtures of stylegan2-ada-pytorch's networks (run by
tools/make_reference_fixtures.py; needs torch and the reference repository, not run by CI;
tests/test_convert_stylegan2.py reads them).

For each configuration: a Generator and a Discriminator of the reference code with random
weights (every tensor randomised, including biases, noise strengths, w_avg, so that each
one matters), fixed inputs, and the reference's outputs in eval mode, fp32 (force_fp32):

    G.<name>, D.<name>       the state dicts (reference names and layouts)
    G_kwargs, D_kwargs       the init kwargs, JSON (as a network pickle records them)
    z, c, psi                latents, one-hot labels (c_dim > 0), truncation
    ws                       G.mapping(z, c, truncation_psi=psi)
    img                      G.synthesis(ws, noise_mode='const')            [N, C, H, W]
    ws_mixed, img_mixed      synthesis of different random ws per layer (2 samples; catches a
                             wrong style index, which equal ws per layer cannot)
    block.b<r>.x, .img       per-block synthesis outputs for ws_mixed, sample 0 (x below the
                             output resolution)
    logits                   D(img, c)                                           [N, 1]
    dblock.b<r>              per-block D outputs for img, sample 0

and, for the configurations marked `regularizers`, <name>_regularizers.npz (read by
tests/test_stylegan2_regularizers.py with the weights above): the lazy regularizers' losses
and parameter gradients of one Greg and one Dreg phase of the reference's StyleGAN2Loss
(training/loss.py), the double back-propagation that training takes through G and D:

    pl.z, pl.z2, pl.c, pl.cutoff   latents of the Greg batch and its style-mixing crossover
    pl.noise                       the projection pl_noise [N, C, H, W] (/ sqrt(H W) applied)
    pl.lengths, pl.mean_before, pl.mean_after, pl.loss, pl.weight, pl.decay, pl.gain
    pl.grad.<G parameter>          d loss / d parameter (zeros where the reference has none)
    r1.x, r1.c, r1.penalty, r1.loss, r1.gamma, r1.gain
    r1.grad.<D parameter>
"""

import copy
import json
import os
import sys

import numpy as np


CONFIGS = {
    # The `cifar` spec of train.py (map 2, mbstd 32, conditional) at 32 px, reduced width.
    "stylegan2_cifar32": dict(
        G=dict(z_dim=24, c_dim=10, w_dim=16, img_resolution=32, img_channels=3,
               mapping_kwargs=dict(num_layers=2),
               synthesis_kwargs=dict(channel_base=256, channel_max=16, num_fp16_res=0,
                                     conv_clamp=256)),
        D=dict(c_dim=10, img_resolution=32, img_channels=3, channel_base=256, channel_max=16,
               num_fp16_res=0, conv_clamp=256, epilogue_kwargs=dict(mbstd_group_size=32)),
        batch=4, regularizers=True),
    # The `paper256` spec (map 8, mbstd 4, fmaps 0.5) at 64 px, reduced width, unconditional.
    "stylegan2_paper64": dict(
        G=dict(z_dim=16, c_dim=0, w_dim=16, img_resolution=64, img_channels=3,
               mapping_kwargs=dict(num_layers=8),
               synthesis_kwargs=dict(channel_base=512, channel_max=16, num_fp16_res=0,
                                     conv_clamp=256)),
        D=dict(c_dim=0, img_resolution=64, img_channels=3, channel_base=512, channel_max=16,
               num_fp16_res=0, conv_clamp=256, epilogue_kwargs=dict(mbstd_group_size=4)),
        batch=4),
}


def _randomise(torch, module, gen):
  """Every float parameter and buffer of `module` -> random (resample filters kept)."""
  with torch.no_grad():
    for name, p in list(module.named_parameters()) + list(module.named_buffers()):
      if name.endswith("resample_filter") or not p.dtype.is_floating_point:
        continue
      if name.endswith("weight") or name.endswith("const") or name.endswith("noise_const"):
        continue  # already N(0, 1) (or N(0, 1/lr^2)) by construction
      p.copy_(torch.randn(p.shape, generator=gen) * 0.3 + (1.0 if "affine.bias" in name
                                                             else 0.0))


def make_one(torch, networks, cfg, seed):
  torch.manual_seed(seed)
  gen = torch.Generator().manual_seed(seed)
  G = networks.Generator(**cfg["G"]).eval()
  D = networks.Discriminator(**cfg["D"]).eval()
  _randomise(torch, G, gen)
  _randomise(torch, D, gen)
  n, c_dim = cfg["batch"], cfg["G"]["c_dim"]
  z = torch.randn([n, cfg["G"]["z_dim"]], generator=gen)
  c = (torch.nn.functional.one_hot(torch.arange(n) % c_dim, c_dim).float() if c_dim
       else torch.zeros([n, 0]))
  psi = 0.7
  out = {}
  with torch.no_grad():
    ws = G.mapping(z, c, truncation_psi=psi)
    img = G.synthesis(ws, noise_mode="const", force_fp32=True)
    ws_mixed = torch.randn([2, *ws.shape[1:]], generator=gen)
    img_mixed = G.synthesis(ws_mixed, noise_mode="const", force_fp32=True)
    # Per-block outputs (the synthesis loop, as SynthesisNetwork.forward runs it).
    x = im = None
    w_idx = 0
    for res in G.synthesis.block_resolutions:
      block = getattr(G.synthesis, f"b{res}")
      cur = ws_mixed.narrow(1, w_idx, block.num_conv + block.num_torgb)
      w_idx += block.num_conv
      x, im = block(x, im, cur, noise_mode="const", force_fp32=True)
      if res < G.img_resolution:  # the last one's x only feeds toRGB (size budget)
        out[f"block.b{res}.x"] = x[0].numpy()
      out[f"block.b{res}.img"] = im[0].numpy()
    assert np.allclose(im.numpy(), img_mixed.numpy(), atol=1e-6)
    logits = D(img, c)
    h, im = None, img
    for res in D.block_resolutions:
      h, im = getattr(D, f"b{res}")(h, im)
      out[f"dblock.b{res}"] = h[0].numpy()
  out.update(z=z.numpy(), c=c.numpy(), psi=np.float32(psi), ws=ws.numpy(), img=img.numpy(),
             ws_mixed=ws_mixed.numpy(), img_mixed=img_mixed.numpy(), logits=logits.numpy())
  for prefix, net in (("G", G), ("D", D)):
    for k, v in net.state_dict().items():
      out[f"{prefix}.{k}"] = v.numpy()
  out["G_kwargs"] = np.array(json.dumps(cfg["G"]))
  out["D_kwargs"] = np.array(json.dumps(cfg["D"]))
  out = {k: np.array(v) for k, v in out.items()}  # copies: the state dict views stay put
  reg = regularizers(torch, copy.deepcopy(G), copy.deepcopy(D), cfg, c, gen) \
      if cfg.get("regularizers") else None
  return out, reg


def _grads(net, prefix):
  return {f"{prefix}.grad.{k}": (p.grad.numpy().copy() if p.grad is not None
                                 else np.zeros(tuple(p.shape), np.float32))
          for k, p in net.named_parameters()}


def regularizers(torch, G, D, cfg, c, gen, pl_mean=0.37, pl_weight=2.0, pl_decay=0.01,
                 pl_gain=4, r1_gamma=1.0, r1_gain=16):
  """One Greg and one Dreg phase, the lines of StyleGAN2Loss.accumulate_gradients (training/
  loss.py) with the random draws made fixed inputs: noise inputs 'const', style mixing at a
  drawn crossover (per batch, as run_G), pl_noise and the reals drawn here; G in training
  mode (unfused modulated convolutions, as in training), w_avg not updated."""
  import torch.autograd  # pylint: disable=import-outside-toplevel
  n, z_dim = cfg["batch"], cfg["G"]["z_dim"]
  res, ch = cfg["G"]["img_resolution"], cfg["G"]["img_channels"]
  out = {}
  # Greg: the path-length penalty.
  G.train().requires_grad_(True)
  z = torch.randn([n, z_dim], generator=gen)
  z2 = torch.randn([n, z_dim], generator=gen)
  cutoff = int(torch.randint(1, G.num_ws, [], generator=gen))
  noise = torch.randn([n, ch, res, res], generator=gen) / np.sqrt(res * res)
  ws = G.mapping(z, c, skip_w_avg_update=True)
  ws2 = G.mapping(z2, c, skip_w_avg_update=True)
  ws = torch.cat([ws[:, :cutoff], ws2[:, cutoff:]], dim=1)
  gen_img = G.synthesis(ws, noise_mode="const", force_fp32=True)
  pl_grads = torch.autograd.grad(outputs=[(gen_img * noise).sum()], inputs=[ws],
                                 create_graph=True, only_inputs=True)[0]
  pl_lengths = pl_grads.square().sum(2).mean(1).sqrt()
  mean = torch.tensor(pl_mean).lerp(pl_lengths.mean(), pl_decay)
  loss_gpl = (pl_lengths - mean).square() * pl_weight
  loss = (gen_img[:, 0, 0, 0] * 0 + loss_gpl).mean().mul(pl_gain)
  loss.backward()
  out.update({"pl.z": z.numpy(), "pl.z2": z2.numpy(), "pl.c": c.numpy(),
              "pl.cutoff": np.int64(cutoff), "pl.noise": noise.numpy(),
              "pl.lengths": pl_lengths.detach().numpy(), "pl.mean_before": np.float32(pl_mean),
              "pl.mean_after": np.float32(mean.detach()), "pl.loss": np.float32(loss.detach()),
              "pl.weight": np.float32(pl_weight), "pl.decay": np.float32(pl_decay),
              "pl.gain": np.int64(pl_gain)})
  out.update(_grads(G, "pl"))
  # Dreg: R1 on reals.
  D.requires_grad_(True)
  x = torch.rand([n, ch, res, res], generator=gen) * 2 - 1
  real_img_tmp = x.detach().requires_grad_(True)
  real_logits = D(real_img_tmp, c)
  r1_grads = torch.autograd.grad(outputs=[real_logits.sum()], inputs=[real_img_tmp],
                                 create_graph=True, only_inputs=True)[0]
  r1_penalty = r1_grads.square().sum([1, 2, 3])
  loss_dr1 = r1_penalty * (r1_gamma / 2)
  loss = (real_logits * 0 + loss_dr1).mean().mul(r1_gain)
  loss.backward()
  out.update({"r1.x": x.numpy(), "r1.c": c.numpy(), "r1.penalty": r1_penalty.detach().numpy(),
              "r1.loss": np.float32(loss.detach()), "r1.gamma": np.float32(r1_gamma),
              "r1.gain": np.int64(r1_gain)})
  out.update(_grads(D, "r1"))
  return out


def make(out_dir, reference):
  """Writes tests/fixtures/stylegan2_*.npz; `reference`: a stylegan2-ada-pytorch checkout."""
  sys.path.insert(0, os.path.abspath(reference))
  import torch  # pylint: disable=import-outside-toplevel
  from training import networks  # pylint: disable=import-outside-toplevel
  written = []
  for i, (name, cfg) in enumerate(CONFIGS.items()):
    arrays, reg = make_one(torch, networks, cfg, seed=100 + i)
    for path, a in ((os.path.join(out_dir, f"{name}.npz"), arrays),
                    (os.path.join(out_dir, f"{name}_regularizers.npz"), reg)):
      if a is not None:
        np.savez_compressed(path, **a)
        written.append((path, os.path.getsize(path)))
  return written


if __name__ == "__main__":
  here = os.path.dirname(os.path.abspath(__file__))
  ref = sys.argv[1] if len(sys.argv) > 1 else "/root/refs/NVlabs+stylegan2-ada-pytorch"
  for p, size in make(os.path.join(here, "..", "tests", "fixtures"), ref):
    print(f"{p}: {size / 1024:.0f} KiB")
