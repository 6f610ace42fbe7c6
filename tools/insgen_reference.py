"""The reference InsGen (genforce/insgen) trained on the study's 100 digits, on CPU, at our
network size, and scored with the study's own evaluation.

Why: in studies/augment_mnist.gin, ADA (linear p) + InsGen collapses at k = 100 (FID 131.6 ±
4.7 against 32.4 ± 2.4 for ADA linear alone). Our InsGen matches the reference op by op on
fixed inputs; whether the collapse is a property of the method at this scale or a fault of
ours only shows when the reference itself is trained on the same data. This tool does that.

Needs PyTorch (`pip install -e .[reference]`; never in the core or CI) and a snapshot of
https://github.com/genforce/insgen, which is run, not copied into the project:

  python tools/insgen_reference.py prepare --repo=/path/to/insgen --to=/tmp/insgen_cpu
  python tools/insgen_reference.py export \
      --cell=docs/studies/augment_mnist/cells/stylegan2-ada_linear_insgen-k100-s0 --to=/tmp/k100
  python tools/insgen_reference.py train --code=/tmp/insgen_cpu --data=/tmp/k100 \
      --run=/tmp/ref-s0 --seed=0 [--stop_step=12000] [--no_cl_on_g | --no_insgen]
  python tools/insgen_reference.py score --code=/tmp/insgen_cpu --run=/tmp/ref-s0 \
      --cell=docs/studies/augment_mnist/cells/stylegan2-ada_linear_insgen-k100-s0 \
      --spec=studies/augment_mnist.gin --study=docs/studies/augment_mnist

prepare  extracts the snapshot (a directory or a bare git repository) and makes it run on CPU:
         the few CUDA-only lines are replaced (`PATCHES`, each must match exactly as often as
         listed, so a changed reference fails loudly), and a killed run can resume.
export   writes the cell's training images (the study's seeded, class-balanced subset, as
         ImageData builds it) as PNGs, the reference's ImageFolderDataset format.
train    runs the reference's own `training_loop` with `train.py --ada_linear=1` settings at
         our quickstart size (`reference_args`). Snapshots every 1,000 steps (32 kimg). A
         re-run resumes from the newest snapshot (weights, heads and queues; the Adam moments
         restart: the reference keeps none in its snapshots). --no_insgen: the control, the
         same loop with ADA linear and without InsGen.
score    scores every snapshot's G_ema as the study scores a cell: FID/KID against all
         10,000 digits in the study's MNIST features, 5,000 samples, memorisation against
         the 100 training digits. Rows go to <run>/study_eval.jsonl (scored steps skipped).
"""

import argparse
import glob
import json
import os
import pickle
import re
import shutil
import subprocess
import sys

# (file, old, new, times): the CPU port (and one line for today's PyTorch). Everything else
# runs as published.
PATCHES = [
    ("training/training_loop.py", "device = torch.device('cuda', rank)",
     "device = torch.device('cpu')", 1),
    ("training/training_loop.py", "phase.start_event = torch.cuda.Event(enable_timing=True)",
     "phase.start_event = None", 1),
    ("training/training_loop.py", "phase.end_event = torch.cuda.Event(enable_timing=True)",
     "phase.end_event = None", 1),
    ("training/training_loop.py", ".pin_memory()", "", 1),
    ("training/training_loop.py", "torch.cuda.max_memory_allocated(device)", "0", 1),
    ("training/training_loop.py", "torch.cuda.reset_peak_memory_stats()", "pass", 1),
    # Resume: the loop always starts at 0 images; a resumed run continues its count (ADA's
    # linear p, the EMA ramp-up and the snapshot names depend on it).
    ("training/training_loop.py", "    cur_nimg = 0\n",
     "    cur_nimg = int(os.environ.get('INSGEN_RESUME_NIMG', '0'))\n", 1),
    ("training/training_loop.py", "    cur_tick = 0\n",
     "    cur_tick = cur_nimg // int(kimg_per_tick * 1000)\n", 1),
    ("training/training_loop.py", "open(os.path.join(run_dir, 'stats.jsonl'), 'wt')",
     "open(os.path.join(run_dir, 'stats.jsonl'), 'at')", 1),
    ("training/contrastive_head.py", ".cuda(device)", ".to(device)", 2),
    # The snapshot unwraps the heads from DistributedDataParallel, which wraps them only on
    # several devices.
    ("training/training_loop.py", "module = module.module",
     "module = getattr(module, 'module', module)", 1),
    # PyTorch >= 2.2: Sampler.__init__ takes no data source.
    ("torch_utils/misc.py", "        super().__init__(dataset)\n",
     "        super().__init__()\n", 1),
]

BATCH = 32
SNAPSHOT_RE = re.compile(r"network-snapshot-(\d+)\.pkl$")


def prepare(repo, to):
  """Extracts the reference into `to` and applies PATCHES."""
  if os.path.exists(to):
    raise SystemExit(f"{to} exists; remove it or pick another --to.")
  tmp = to + ".partial"
  shutil.rmtree(tmp, ignore_errors=True)
  if os.path.isdir(os.path.join(repo, "training")):
    shutil.copytree(repo, tmp)
  else:  # a bare repository (e.g. a fetched mirror)
    os.makedirs(tmp)
    archive = subprocess.run(["git", f"--git-dir={repo}", "archive", "HEAD"], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
  try:
    for path, old, new, times in PATCHES:
      full = os.path.join(tmp, path)
      with open(full) as f:
        text = f.read()
      found = text.count(old)
      if found != times:
        raise SystemExit(f"{path}: expected {times} x {old!r}, found {found}; the reference "
                         f"changed, update PATCHES.")
      with open(full, "w") as f:
        f.write(text.replace(old, new))
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  os.rename(tmp, to)
  print(f"Reference ready for CPU in {to} ({len(PATCHES)} patches).")


def _cell_data(cell):
  """The cell's training images (uint8 NHWC), from its recorded config."""
  from tfgan_eff.data import ImageData
  from tfgan_eff.training import runs
  runs.parse_run_config(cell)
  return ImageData().images


def export(cell, to):
  import PIL.Image
  images = _cell_data(cell)
  if os.path.exists(to):
    raise SystemExit(f"{to} exists; remove it or pick another --to.")
  tmp = to + ".partial"
  shutil.rmtree(tmp, ignore_errors=True)
  os.makedirs(tmp)
  try:
    for i, img in enumerate(images):
      mode = "L" if img.shape[-1] == 1 else "RGB"
      PIL.Image.fromarray(img[..., 0] if mode == "L" else img, mode).save(
          os.path.join(tmp, f"{i:05d}.png"))
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  os.rename(tmp, to)
  print(f"Wrote {len(images)} images {images.shape[1:]} to {to}.")


def reference_args(data, run, seed, total_kimg, no_cl_on_g, queue_size, num_images,
                   insgen=True):
  """genforce/insgen train.py with --ada_linear=1 (aug 'ada', target 0.6, pipe 'bgc'), at
  studies/augment_mnist.gin's size and settings (gin/mnist_stylegan2.gin): 32 px, 1 channel,
  channel_base 512 (train.py: fmaps * 32768) and channel_max 32, z/w 64, 2 mapping layers,
  batch 32, lr 0.0025, R1 gamma 0.1, EMA 10 kimg with ramp-up 0.05, fp32 (no fp16 layers, no
  clamp: a CPU run). InsGen as train.py sets it: temperature 0.2, momentum 0.999, queues of
  5% of the images, loss weights 1 / 1 / 0.1; the heads' input width is D's 4x4 feature width
  (train.py hard-codes 512 = its channel_max; ours is 32). `insgen=False`: the control, the
  same loop with ADA linear and no InsGen (train.py's --no_insgen would also drop
  --ada_linear, which it reads only with InsGen on; the loop takes it either way)."""
  from dnnlib import EasyDict
  net = dict(channel_base=512, channel_max=32, num_fp16_res=0, conv_clamp=None)
  head = EasyDict(class_name="training.contrastive_head.CLHead", inplanes=32, temperature=0.2,
                  momentum=0.999, queue_size=queue_size or int(0.05 * num_images))
  opt = EasyDict(class_name="torch.optim.Adam", lr=0.0025, betas=[0, 0.99], eps=1e-8)
  return EasyDict(
      run_dir=run,
      training_set_kwargs=EasyDict(class_name="training.dataset.ImageFolderDataset", path=data,
                                   use_labels=False, max_size=num_images, xflip=False,
                                   resolution=32),
      # The reference uses 3 workers and pinned memory (a GPU feed); in memory here.
      data_loader_kwargs=EasyDict(pin_memory=False, num_workers=0),
      G_kwargs=EasyDict(class_name="training.networks.Generator", z_dim=64, w_dim=64,
                        mapping_kwargs=EasyDict(num_layers=2),
                        synthesis_kwargs=EasyDict(**net)),
      D_kwargs=EasyDict(class_name="training.networks.Discriminator",
                        block_kwargs=EasyDict(), mapping_kwargs=EasyDict(num_layers=0),
                        epilogue_kwargs=EasyDict(mbstd_group_size=4), **net),
      G_opt_kwargs=opt, D_opt_kwargs=EasyDict(opt),
      loss_kwargs=EasyDict(class_name=("training.contrastive_loss.StyleGAN2LossCL" if insgen
                                       else "training.loss.StyleGAN2Loss"), r1_gamma=0.1),
      DHead_kwargs=head if insgen else None, GHead_kwargs=EasyDict(head) if insgen else None,
      no_cl_on_g=no_cl_on_g,
      cl_loss_weight=(EasyDict(lw_real_cl=1.0, lw_fake_cl=1.0, lw_fake_cl_on_g=0.1) if insgen
                      else EasyDict()),
      augment_kwargs=EasyDict(class_name="training.augment.AugmentPipe", xflip=1, rotate90=1,
                              xint=1, scale=1, rotate=1, aniso=1, xfrac=1, brightness=1,
                              contrast=1, lumaflip=1, hue=1, saturation=1),
      ada_target=0.6, ada_linear=True, metrics=[], random_seed=seed, num_gpus=1, rank=0,
      total_kimg=total_kimg, batch_size=BATCH, batch_gpu=BATCH, ema_kimg=10, ema_rampup=0.05,
      kimg_per_tick=4, image_snapshot_ticks=8, network_snapshot_ticks=8,
      cudnn_benchmark=False)


def snapshots(run):
  """{kimg: path} of the run's network snapshots."""
  out = {}
  for p in glob.glob(os.path.join(run, "network-snapshot-*.pkl")):
    out[int(SNAPSHOT_RE.search(p).group(1))] = p
  return dict(sorted(out.items()))


def train(code, data, run, seed, steps, no_cl_on_g, queue_size, threads, stop_step=None,
          insgen=True):
  import torch
  sys.path.insert(0, code)
  import dnnlib
  from torch_utils import training_stats
  from training import training_loop
  torch.set_num_threads(threads)
  num_images = len(glob.glob(os.path.join(data, "*.png")))
  total_kimg = steps * BATCH / 1000
  args = reference_args(data, run, seed, total_kimg, no_cl_on_g, queue_size, num_images,
                        insgen)
  os.makedirs(run, exist_ok=True)
  settings = dict(seed=seed, steps=steps, no_cl_on_g=no_cl_on_g, queue_size=queue_size,
                  data=os.path.abspath(data), code=os.path.abspath(code))
  if not insgen:  # (absent in runs made before the switch existed)
    settings["insgen"] = False
  path = os.path.join(run, "tool_settings.json")
  if os.path.exists(path):
    with open(path) as f:
      old = json.load(f)
    if old != settings:
      raise SystemExit(f"{run} was started with other settings ({old}); use another --run.")
  else:
    with open(path, "w") as f:
      json.dump(settings, f, indent=1)
  snaps = snapshots(run)
  done_kimg = max(snaps) if snaps else 0
  if done_kimg >= min(total_kimg, (stop_step or steps) * BATCH / 1000):
    print(f"{run}: done ({done_kimg} kimg).")
    return
  if done_kimg:
    args.resume_pkl = snaps[done_kimg]
    args.random_seed = seed + 1000 * done_kimg  # a fresh data order and latents after resume
    os.environ["INSGEN_RESUME_NIMG"] = str(done_kimg * 1000)
    print(f"Resuming {run} at {done_kimg} kimg (step {done_kimg * 1000 // BATCH}).")
  dnnlib.util.Logger(file_name=os.path.join(run, "log.txt"), file_mode="a", should_flush=True)
  # The heads gather their keys with torch.distributed even on one device (the reference
  # ran on several GPUs); a one-process group makes that gather the identity.
  import tempfile
  init = os.path.join(tempfile.mkdtemp(), "dist_init")
  torch.distributed.init_process_group("gloo", init_method=f"file://{init}", rank=0,
                                       world_size=1)
  training_stats.init_multiprocessing(rank=0, sync_device=None)
  if stop_step and stop_step < steps:
    # Stop early but keep the horizon's schedule (ADA's linear p): the loop asks abort_fn at
    # each tick (4 kimg) and reports the kimg reached after it.
    stop_kimg, reached = stop_step * BATCH / 1000, [done_kimg]
    args.progress_fn = lambda kimg, _total: reached.__setitem__(0, kimg)
    args.abort_fn = lambda: reached[0] + args.kimg_per_tick >= stop_kimg
  training_loop.training_loop(**args)


def score(code, run, cell, spec, study, threads):
  import torch
  sys.path.insert(0, code)
  torch.set_num_threads(threads)
  from tfgan_eff import study as study_lib
  from tfgan_eff.eval.memorisation import augmentation_leak, memorisation_rate
  from tfgan_eff.io import image_grid, write_png
  st = study_lib.load_spec(spec)
  ev = st.evaluation
  ev.keep_extractor_weights_in(os.path.join(study, "extractor"))
  ev.extractor_tag()
  train_images = _cell_data(cell)
  out_path = os.path.join(run, "study_eval.jsonl")
  done = set()
  if os.path.exists(out_path):
    with open(out_path) as f:
      done = {json.loads(line)["kimg"] for line in f if line.strip()}
  ref = ev.reference
  for kimg, path in snapshots(run).items():
    if kimg in done or kimg == 0:
      continue
    with open(path, "rb") as f:
      g = pickle.load(f)["G_ema"].eval()
    gen = torch.Generator().manual_seed(ev.seed)
    z = torch.randn([ev.num_samples, g.z_dim], generator=gen)
    c = torch.zeros([ev.num_samples, g.c_dim])
    torch.manual_seed(ev.seed)  # the noise inputs (noise_mode='random', as the reference's FID)
    with torch.no_grad():
      imgs = torch.cat([g(z=zb, c=cb) for zb, cb in zip(z.split(250), c.split(250))])
    samples = (imgs * 127.5 + 128).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    served = [0]

    def generate_fn(n, samples=samples, served=served):
      out = samples[served[0]:served[0] + n]
      served[0] += len(out)
      return out

    metrics = ev.evaluator.evaluate(generate_fn, ref.eval_batches, ref.name)
    row = {"kimg": kimg, "step": kimg * 1000 // BATCH, "fid": metrics["fid"],
           "kid": metrics.get("kid_mean")}
    row.update(memorisation_rate(samples[:ev.memorisation_samples], train_images))
    row.update(augmentation_leak(samples))
    with open(out_path, "a") as f:
      f.write(json.dumps(row) + "\n")
    print(json.dumps({k: row[k] for k in ("step", "fid", "kid", "memorisation_rate")}))
    write_png(os.path.join(run, "study_grid.png"), image_grid(samples[:36]))


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  sub = p.add_subparsers(dest="cmd", required=True)
  a = sub.add_parser("prepare")
  a.add_argument("--repo", required=True)
  a.add_argument("--to", required=True)
  a = sub.add_parser("export")
  a.add_argument("--cell", required=True)
  a.add_argument("--to", required=True)
  a = sub.add_parser("train")
  a.add_argument("--code", required=True)
  a.add_argument("--data", required=True)
  a.add_argument("--run", required=True)
  a.add_argument("--seed", type=int, default=0)
  a.add_argument("--steps", type=int, default=20000,
                 help="the horizon (ADA's linear p reaches 0.6 there), as the study's cells")
  a.add_argument("--stop_step", type=int, default=None,
                 help="stop (with a snapshot) at this step, before the horizon")
  a.add_argument("--no_cl_on_g", action="store_true",
                 help="the ablation without G's diversity loss (train.py --no_cl_on_g=1)")
  a.add_argument("--no_insgen", action="store_true",
                 help="the control: the same loop with ADA linear and without InsGen")
  a.add_argument("--queue_size", type=int, default=None,
                 help="real and fake queue size (default: train.py's 5%% of the images)")
  a.add_argument("--threads", type=int, default=1)
  a = sub.add_parser("score")
  a.add_argument("--code", required=True)
  a.add_argument("--run", required=True)
  a.add_argument("--cell", required=True)
  a.add_argument("--spec", required=True)
  a.add_argument("--study", required=True)
  a.add_argument("--threads", type=int, default=1)
  f = p.parse_args()
  if f.cmd == "prepare":
    prepare(f.repo, f.to)
  elif f.cmd == "export":
    export(f.cell, f.to)
  elif f.cmd == "train":
    train(f.code, f.data, f.run, f.seed, f.steps, f.no_cl_on_g, f.queue_size, f.threads,
          f.stop_step, not f.no_insgen)
  else:
    score(f.code, f.run, f.cell, f.spec, f.study, f.threads)


if __name__ == "__main__":
  main()
