"""Reference-output fixtures for the BigGAN converter (`tfgan_eff/convert/biggan.py`).

Runs ajbrock/BigGAN-PyTorch's own `Generator` and `Discriminator` (imported from a checkout,
not copied) at reduced width with random weights, in eval mode, and writes
`tests/fixtures/biggan_32.npz` and `tests/fixtures/biggan_128.npz`, which
`tests/test_convert_biggan.py` reads without torch. Needs PyTorch (never in the core or CI):

  python tools/fixtures_biggan.py --reference=/path/to/BigGAN-PyTorch --out=tests/fixtures

The two settings between them cover every layer kind the converter maps:
- 32 px: the DiffAugment CIFAR scripts' G (G_shared=False: per-layer class embeddings in
  every conditional BN, no hierarchical z), no attention, the reference's default batch norm
  (`stored_mean`/`stored_var` set by training-mode passes).
- 128 px: the ImageNet setting (shared embedding, hierarchical z, attention in G and D) with
  `mybn` and standing statistics (sums and `accumulation_counter`), as
  `scripts/sample_BigGAN_bs256x8.sh --mybn --accumulate_stats` uses them.

Every tensor matters: weights are N(0, 1) (not orthogonal, so σ ≠ 1), biases, embeddings,
attention gains and BN affines are random, and each spectral-norm `u0` is perturbed after the
training-mode passes (`sv0` is random too: it is a log the reference never reads).

Each file holds `G.<name>` / `D.<name>` (the state dicts, as `G.state_dict()` names them), the
inputs `z` [B, dim_z] and `y` [B], the outputs `G_images` [B, 3, H, W] (NCHW) and `D_logits`
[B] (D on `G_images`, labels `y`), per-block outputs of batch element 0 (`G_inter.<stage>`,
`D_inter.<stage>`, NCHW without the batch axis, cropped to the top-left 8x8) and `meta`, the
reference's keyword arguments as JSON.
"""

import argparse
import json
import os
import sys

import numpy as np

DEFAULT_REFERENCE = "/root/refs/ajbrock+BigGAN-PyTorch"
CROP = 8  # intermediates: top-left CROP x CROP of batch element 0, all channels

SETTINGS = {
    32: dict(
        G=dict(G_ch=2, dim_z=16, resolution=32, G_attn="0", n_classes=10, G_shared=False,
               hier=False, mybn=False),
        D=dict(D_ch=2, resolution=32, D_attn="0", n_classes=10),
        batch=3, seed=32),
    128: dict(
        G=dict(G_ch=2, dim_z=24, resolution=128, G_attn="32", n_classes=5, G_shared=True,
               shared_dim=8, hier=True, mybn=True),
        D=dict(D_ch=1, resolution=128, D_attn="8", n_classes=5),
        batch=2, seed=128),
}


def _randomise(torch, net, gen):
  """Random values for every parameter and SN buffer (BN statistics come from passes)."""
  with torch.no_grad():
    for name, p in net.named_parameters():
      leaf = name.rsplit(".", 1)[-1]
      if name.endswith("gamma"):  # attention gate
        p.copy_(0.5 + 0.2 * torch.randn(p.shape, generator=gen))
      elif p.dim() >= 2 and ".bn" not in name and not name.startswith("shared"):
        p.copy_(torch.randn(p.shape, generator=gen))  # conv / linear / D embedding
      elif name.startswith("shared"):
        p.copy_(torch.randn(p.shape, generator=gen))
      elif ".gain.weight" in name or ".bias.weight" in name:  # ccbn linear or embedding
        p.copy_(0.3 * torch.randn(p.shape, generator=gen))
      elif leaf == "gain":  # output bn
        p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=gen))
      else:  # biases
        p.copy_(0.2 * torch.randn(p.shape, generator=gen))
    _perturb_sn(torch, net, gen)


def _perturb_sn(torch, net, gen):
  for name, b in net.named_buffers():
    if name.endswith(".u0") or name.endswith(".sv0"):
      b.copy_(torch.randn(b.shape, generator=gen))


def _hook_outputs(G, D):
  """Forward hooks recording each stage's output (batch element 0, cropped)."""
  store = {}

  def record(key):
    def hook(module, inputs, output):
      out = output.detach()[0]
      if out.dim() == 3:
        out = out[:, :CROP, :CROP]
      store[key] = out.cpu().numpy().astype(np.float32)
    return hook

  G.linear.register_forward_hook(record("G_inter.linear"))
  for i, blocklist in enumerate(G.blocks):
    blocklist[0].register_forward_hook(record(f"G_inter.block{i}"))
    if len(blocklist) > 1:
      blocklist[1].register_forward_hook(record(f"G_inter.attention{i}"))
  G.output_layer[0].register_forward_hook(record("G_inter.bn_out"))
  for i, blocklist in enumerate(D.blocks):
    blocklist[0].register_forward_hook(record(f"D_inter.block{i}"))
    if len(blocklist) > 1:
      blocklist[1].register_forward_hook(record(f"D_inter.attention{i}"))
  D.linear.register_forward_hook(record("D_inter.linear"))
  return store


def make_one(resolution, reference):
  """The fixture arrays of one setting: {name: numpy array}."""
  if reference not in sys.path:
    sys.path.insert(0, reference)
  import torch  # pylint: disable=import-outside-toplevel

  import BigGAN  # pylint: disable=import-outside-toplevel
  s = SETTINGS[resolution]
  torch.manual_seed(s["seed"])
  gen = torch.Generator().manual_seed(s["seed"])
  G = BigGAN.Generator(**s["G"], skip_init=True, no_optim=True)
  D = BigGAN.Discriminator(**s["D"], skip_init=True)
  _randomise(torch, G, gen)
  _randomise(torch, D, gen)
  n_classes, b = s["G"]["n_classes"], s["batch"]

  # Batch-norm statistics from training-mode passes: running averages (momentum 0.1), or with
  # mybn the reference's standing statistics (sums over the passes and their count).
  z_ = torch.randn(16, G.dim_z, generator=gen)
  y_ = torch.randint(0, n_classes, (16,), generator=gen)
  with torch.no_grad():
    if s["G"].get("mybn"):  # utils.initiate_standing_stats (utils.py needs torchvision)
      for m in G.modules():
        if hasattr(m, "accumulate_standing"):
          m.reset_stats()
          m.accumulate_standing = True
    G.train()
    for i in range(3):
      G(z_ * (1.0 + 0.3 * i), G.shared(y_))
    _perturb_sn(torch, G, gen)  # the passes ran one power iteration
  G.eval()
  D.eval()

  store = _hook_outputs(G, D)
  z = torch.randn(b, G.dim_z, generator=gen)
  y = torch.randint(0, n_classes, (b,), generator=gen)
  with torch.no_grad():
    images = G(z, G.shared(y))
    logits = D(images, y)
  out = {"G." + k: v.detach().cpu().numpy() for k, v in G.state_dict().items()}
  out.update({"D." + k: v.detach().cpu().numpy() for k, v in D.state_dict().items()})
  out = {k: (v.astype(np.float32) if v.dtype == np.float64 else v) for k, v in out.items()}
  out.update(store)
  out["z"] = z.numpy().astype(np.float32)
  out["y"] = y.numpy().astype(np.int64)
  out["G_images"] = images.numpy().astype(np.float32)
  out["D_logits"] = logits.numpy()[:, 0].astype(np.float32)
  out["meta"] = np.array(json.dumps({"G": s["G"], "D": s["D"], "batch": b}))
  return out


def make(out_dir, reference=DEFAULT_REFERENCE):
  """Writes biggan_32.npz and biggan_128.npz into `out_dir`; returns their paths."""
  os.makedirs(out_dir, exist_ok=True)
  paths = []
  for resolution in SETTINGS:
    arrays = make_one(resolution, reference)
    path = os.path.join(out_dir, f"biggan_{resolution}.npz")
    np.savez_compressed(path, **arrays)
    images = arrays["G_images"]
    print(f"{path}: {os.path.getsize(path) / 1024:.0f} KiB, {len(arrays)} arrays; "
          f"G images mean |x| {np.abs(images).mean():.3f}, saturated (|x|>0.99) "
          f"{(np.abs(images) > 0.99).mean():.1%}; D logits {arrays['D_logits']}")
    paths.append(path)
  return paths


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--reference", default=DEFAULT_REFERENCE,
                      help="a checkout of https://github.com/ajbrock/BigGAN-PyTorch")
  parser.add_argument("--out", default=os.path.join(
      os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "fixtures"))
  args = parser.parse_args()
  make(args.out, args.reference)


if __name__ == "__main__":
  main()
