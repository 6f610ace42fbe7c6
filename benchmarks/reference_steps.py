"""Times our training step against the PyTorch reference's, side by side in one process.

  python benchmarks/reference_steps.py --model=biggan --reference=/path/to/data-efficient-gans
  python benchmarks/reference_steps.py --model=stylegan2 --reference=/path/to/stylegan2-ada-pytorch

Builds ours (tfgan_eff, TensorFlow) and the reference (PyTorch, imported from a checkout given
by --reference, never copied) at equal settings: widths, resolution, batch, D steps per G step,
regularizers and their intervals, optimizers, EMA, float32, and the same thread counts
(torch.set_num_threads(N) and TF's intra-op pool, N = --threads, default the usable cores;
torch.set_num_interop_threads and TF's inter-op pool both --inter_op_threads, default N).
Both get >= 3 untimed warm-up steps, then interleaved rounds (ours, reference; the order
rotated each round) of timed steps. Printed: the threads each library reports, parameter
counts of G and D of both sides, FLOPs per step, median / min / max seconds per step,
achieved GFLOP/s, a measured float32 2048^2 matmul peak of each library, the load average at
the start and the end, and the ratio ours / reference of the median step times.

FLOPs (multiply-add = 2): the reference's from torch.utils.flop_counter.FlopCounterMode over
real steps, which counts convolutions (and their gradients) and matrix products only; ours
from the traced step (tfgan_eff/perf.py, as bin/benchmark): the TF profiler's total (which
also counts elementwise ops, and ops TF prunes before running), and its comparable part, the
convolutions, their gradients and the matrix products among the ops that run (`live_ops`).

--model=biggan: the DiffAugment BigGAN-CIFAR code (mit-han-lab/data-efficient-gans, folder
DiffAugment-biggan-cifar: BigGAN.py, train_fns.GAN_training_function, the whole step with its
num_D_steps D steps, the G step and the EMA) configured as its scripts/DiffAugment-biggan-
cifar10.sh, against gin/biggan/biggan_cifar10.gin on the built-in digits (3 channels, 32 px).
ajbrock/BigGAN-PyTorch (its train_fns.GAN_training_function) works as well (--reference
pointing at that checkout); it has no DiffAugment.

--model=stylegan2: stylegan2-ada-pytorch (NVlabs; training/networks.py Generator and
Discriminator, training/loss.py StyleGAN2Loss) with the phases Gmain, Greg (path length,
every 4th step), Dmain, Dreg (R1, every 16th step) as training/training_loop.py runs them,
Adam with the lazy-regularization lr / beta scaling, the G EMA; its `cifar` spec (2 mapping
layers, mbstd group 32, 'orig' D, R1 gamma 0.01, lr 0.0025, no style mixing) with
num_fp16_res=0 and conv_clamp=None, against gin/stylegan2/stylegan2_cifar10.gin with separate
regularization steps (R1Penalty / PathLengthPenalty.separate_step, as the config's base
sets: the same Dreg / Greg phases). The cifar spec has no path length (pl_weight 0);
--pl_weight=2 (the default here, the other specs' value) adds it to both sides, --pl_weight=0
times the cifar spec itself. Each timed sample is a whole cycle of 16 steps (one R1 step,
four path-length steps on both sides), reported per step; FLOPs likewise per step over a
cycle.

Patches (none changes the timed math):
- torch: its CUDA wheels ship triton, whose library crashes the process when loaded after
  TensorFlow's; `sys.modules["triton"] = None` (torch then runs without it, as its CPU wheel).
  FlopCounterMode's module tracker (per-module attribution) is replaced by a no-op: its
  backward hooks make torch.autograd.grad(inputs=[leaf]) fail (R1, path length).
- BigGAN reference: its utils.py, datasets.py and train_fns.py import torchvision at module
  level (data loading, sample sheets); when torchvision is not installed a stub stands in.
  Its train.py wraps G_D in nn.DataParallel (--parallel), which on a CPU only calls the
  module: G_D is used directly. utils.prepare_z_y gets device='cpu'. For the FLOP count only
  (not the timing), utils.Distribution's .to() override is lifted, because
  FlopCounterMode's decompositions call it on G's activations and it fails there.
- StyleGAN2 reference: none of its modules is patched. Its custom CUDA ops (bias_act,
  upfirdn2d, conv2d_gradfix) fall back to their reference implementations on CPU tensors
  by themselves, and training_stats.report needs no initialisation in one process. Its
  training loop is one long function (data loading, snapshots, metrics around the phases),
  so its loop body is restated here (`StyleGAN2Reference.step`), statement for statement,
  without the CUDA timing events, the profiler labels and `pin_memory()`.
"""

import argparse
import contextlib
import copy
import gc
import io
import math
import os
import shutil
import sys
import tempfile
import time
import types

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
PROJECT = os.path.dirname(HERE)

# conv + matrix-product op types of a TF graph -> how their FLOPs are counted (see
# `tf_conv_matmul_flops`); the same set torch's FlopCounterMode counts.
_CONV_OPS = {"Conv2D", "Conv2DBackpropInput", "Conv2DBackpropFilter",
             "Conv2DBackpropInputV2", "Conv2DBackpropFilterV2"}
_DEPTHWISE_OPS = {"DepthwiseConv2dNative", "DepthwiseConv2dNativeBackpropInput",
                  "DepthwiseConv2dNativeBackpropFilter"}
_MATMUL_OPS = {"MatMul", "BatchMatMul", "BatchMatMulV2", "BatchMatMulV3"}


def parse_args(argv=None):
  cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--model", required=True, choices=["biggan", "stylegan2"])
  p.add_argument("--reference", required=True,
                 help="biggan: a checkout of mit-han-lab/data-efficient-gans (its "
                      "DiffAugment-biggan-cifar folder is used), that folder itself, or a "
                      "checkout of ajbrock/BigGAN-PyTorch; stylegan2: a checkout of "
                      "NVlabs/stylegan2-ada-pytorch")
  p.add_argument("--threads", type=int, default=cores,
                 help="intra-op threads of both libraries (default: the usable cores, %(default)s)")
  p.add_argument("--inter_op_threads", type=int, default=None,
                 help="inter-op threads of both libraries (default: --threads; TF runs that "
                      "many independent ops at once, torch's eager ops run one at a time)")
  p.add_argument("--width", type=int, default=None,
                 help="biggan: G_ch = D_ch = our CH (default 16; the configs' 64 takes minutes "
                      "per step on 2 cores); stylegan2: channel_max = our fmap_max (default 128; "
                      "the config's 512), channel_base = fmap_base = 32768 as the config")
  p.add_argument("--batch", type=int, default=None,
                 help="batch size (default: biggan 50 as the config, stylegan2 8)")
  p.add_argument("--d_steps", type=int, default=4,
                 help="biggan: D steps per G step (default 4, as the config and the scripts)")
  p.add_argument("--diffaugment", default="",
                 help="biggan: DiffAugment policy on both sides, e.g. 'translation,cutout' (the "
                      "DiffAugment scripts); default none, as gin/biggan/biggan_cifar10.gin")
  p.add_argument("--pl_weight", type=float, default=2.0,
                 help="stylegan2: path-length weight on both sides (0: none, the cifar spec)")
  p.add_argument("--steps", type=int, default=None,
                 help="timed steps per side per round (default: biggan 5, stylegan2 16); "
                      "stylegan2 times whole 16-step cycles, so a multiple of 16")
  p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
  p.add_argument("--warmup", type=int, default=3, help="untimed steps per side first (>= 3)")
  p.add_argument("--jit_compile", default="auto", choices=["auto", "True", "False"],
                 help="our Trainer.jit_compile (default 'auto', as bin/train: XLA on for "
                      "BigGAN on one CPU, off for StyleGAN2)")
  p.add_argument("--no_peak", action="store_true", help="skip the matmul peak measurements")
  p.add_argument("--flops_only", action="store_true",
                 help="print the settings, parameter counts and FLOPs per step, and exit (no "
                      "timing; the reference still runs the steps it counts)")
  p.add_argument("--params_only", action="store_true",
                 help="build both sides, print their settings and parameter counts, and exit "
                      "(no FLOPs, no timing)")
  args = p.parse_args(argv)
  if args.width is None:
    args.width = 16 if args.model == "biggan" else 128
  if args.batch is None:
    args.batch = 50 if args.model == "biggan" else 8
  # StyleGAN2: time whole cycles of 16 steps (one R1 step, four path-length steps).
  args.cycle = D_REG_INTERVAL if args.model == "stylegan2" else 1
  if args.steps is None:
    args.steps = 5 if args.model == "biggan" else args.cycle
  if args.inter_op_threads is None:
    args.inter_op_threads = args.threads
  if args.warmup < 3:
    p.error(f"--warmup must be >= 3 (got {args.warmup}).")
  if args.steps < 1 or args.steps % args.cycle:
    p.error(f"--steps must be a positive multiple of {args.cycle} for --model={args.model} "
            f"(whole regularization cycles), got {args.steps}.")
  if args.model == "stylegan2" and args.batch % 2:
    p.error("--batch must be even for stylegan2 (path length runs on batch / 2).")
  if args.model != "biggan" and args.diffaugment:
    p.error("--diffaugment applies to --model=biggan only.")
  return args


# ------------------------------------------------------------------------------------------
# Threads (before either library starts its pools)
# ------------------------------------------------------------------------------------------

def set_threads(args):
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  # torch's CUDA wheels ship triton (a GPU kernel compiler, never used on a CPU); loading its
  # library after TensorFlow's crashes the process (two LLVMs: a segmentation fault when
  # torch.optim first imports torch._dynamo). Marked absent, torch does without it, as with
  # its CPU wheel, which has no triton.
  sys.modules.setdefault("triton", None)
  import torch  # pylint: disable=import-outside-toplevel
  tf.config.threading.set_intra_op_parallelism_threads(args.threads)
  torch.set_num_threads(args.threads)
  tf.config.threading.set_inter_op_parallelism_threads(args.inter_op_threads)
  torch.set_num_interop_threads(args.inter_op_threads)
  return tf, torch


def thread_report(tf, torch, args):
  tf_intra = tf.config.threading.get_intra_op_parallelism_threads()
  tf_inter = tf.config.threading.get_inter_op_parallelism_threads()
  t_intra, t_inter = torch.get_num_threads(), torch.get_num_interop_threads()
  ok = (tf_intra == t_intra == args.threads and tf_inter == t_inter == args.inter_op_threads)
  line = (f"threads: torch.get_num_threads() {t_intra}, get_num_interop_threads() {t_inter}; "
          f"TF intra-op {tf_intra}, inter-op {tf_inter}; asked {args.threads} intra-op, "
          f"{args.inter_op_threads} inter-op" + ("" if ok else "  ** NOT AS ASKED **"))
  return line, ok


# ------------------------------------------------------------------------------------------
# Ours
# ------------------------------------------------------------------------------------------

class Ours:
  """A Trainer of tfgan_eff built from a gin file + bindings, and its compiled train step."""

  def __init__(self, gin_file, bindings):
    import gin  # pylint: disable=import-outside-toplevel
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    from tfgan_eff import config  # pylint: disable=import-outside-toplevel
    from tfgan_eff.training.trainer import Trainer  # pylint: disable=import-outside-toplevel
    self.tf = tf
    self.gin_file, self.bindings = gin_file, list(bindings)
    gin.clear_config()
    config.parse([gin_file], self.bindings, finalize=False)
    self.model_dir = tempfile.mkdtemp(prefix="tfgan_eff-refbench-")
    self.trainer = Trainer(model_dir=self.model_dir)
    self.gan = self.trainer.gan
    self.it = iter(self.trainer.strategy.distribute_datasets_from_function(
        self.trainer.data.dataset_fn(self.trainer.batch_size)))
    self.fn = None

  def params(self):
    from tfgan_eff.params import count_params  # pylint: disable=import-outside-toplevel
    return (count_params(self.gan.G.trainable_variables),
            count_params(self.gan.D.trainable_variables))

  def flops(self):
    """-> (profiler total, conv + matmul part, has conditionals, {op type: conv/mm FLOPs})
    of one training step, traced (not run) as bin/benchmark counts it."""
    from tfgan_eff import perf  # pylint: disable=import-outside-toplevel
    # perf.step_cost traces the same graph; its graph is needed here for the conv/matmul
    # part as well, so the two helpers it is made of are called directly.
    graph = perf._step_graph(self.trainer, self.it)  # pylint: disable=protected-access
    by_type = tf_conv_matmul_flops(graph)
    return (perf.graph_flops(graph), sum(by_type.values()),
            perf._has_conditionals(graph), by_type)  # pylint: disable=protected-access

  def step(self):
    if self.fn is None:
      self.fn = self.trainer._make_train_step(self.it)  # pylint: disable=protected-access
    out = self.fn(self.it, self.tf.constant(False))  # False: no stop signal
    self.tf.nest.map_structure(lambda t: t.numpy(), out)  # wait for the step to finish


def _dims(shape):
  return [int(d) for d in shape]


def live_ops(graph):
  """The ops of `graph` that run: those the outputs or a stateful op (variable updates)
  depend on. The rest (e.g. the filter gradients of D's convolutions that the G step's
  gradient function makes and nothing reads) is pruned by TF before a function runs; the
  profiler's count includes it."""
  todo = [t.op for t in graph.outputs] + [op for op in graph.get_operations()
                                          if op.op_def is not None and op.op_def.is_stateful]
  seen = set()
  while todo:
    op = todo.pop()
    if op.name in seen:
      continue
    seen.add(op.name)
    todo.extend(t.op for t in op.inputs)
    todo.extend(op.control_inputs)
  return [op for op in graph.get_operations() if op.name in seen]


def tf_conv_matmul_flops(graph):
  """FLOPs (multiply-add = 2) of the convolutions, their gradients and the matrix products
  that run at the top level of `graph` (`live_ops`), by op type: what torch's
  FlopCounterMode counts."""
  out = {}
  for op in live_ops(graph):
    t = op.type
    if t not in _CONV_OPS | _DEPTHWISE_OPS | _MATMUL_OPS:
      continue
    if t in ("Conv2D", "DepthwiseConv2dNative"):
      y, w = op.outputs[0].shape, op.inputs[1].shape
    elif t in ("Conv2DBackpropInput", "Conv2DBackpropInputV2",
               "DepthwiseConv2dNativeBackpropInput"):
      y, w = op.inputs[2].shape, op.inputs[1].shape
    elif t in _MATMUL_OPS:
      y, a = op.outputs[0].shape, op.inputs[0].shape
      if not (y.is_fully_defined() and a.is_fully_defined()):
        raise ValueError(f"{op.name} ({t}): shapes not static, cannot count its FLOPs")
      if t == "MatMul":
        k = a[0] if op.get_attr("transpose_a") else a[1]
      else:
        k = a[-2] if op.get_attr("adj_x") else a[-1]
      out[t] = out.get(t, 0) + 2 * math.prod(_dims(y)) * int(k)
      continue
    else:  # filter gradients: the filter's shape is the output's
      y, w = op.inputs[2].shape, op.outputs[0].shape
    if not (y.is_fully_defined() and w.is_fully_defined()):
      raise ValueError(f"{op.name} ({t}): shapes not static, cannot count its FLOPs")
    w = _dims(w)  # [kh, kw, in (per group), out or multiplier]
    per_output = w[0] * w[1] * (1 if t in _DEPTHWISE_OPS else w[2])
    out[t] = out.get(t, 0) + 2 * math.prod(_dims(y)) * per_output
  return out


# ------------------------------------------------------------------------------------------
# BigGAN: DiffAugment-biggan-cifar (or BigGAN-PyTorch)
# ------------------------------------------------------------------------------------------

def _stub_torchvision():
  """Stand-ins for torchvision's modules (imported at module level by the reference's data
  and sampling code, never called by the training step); only when it is not installed."""
  try:
    import torchvision  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
    return False
  except ImportError:
    pass

  class _Any:  # any attribute: a class (datasets subclass dset.CIFAR10) or a callable
    def __init__(self, *a, **k):
      raise RuntimeError("torchvision is stubbed by benchmarks/reference_steps.py")

  def getattr_(name):
    if name.startswith("__"):
      raise AttributeError(name)
    return _Any

  for name in ("torchvision", "torchvision.transforms", "torchvision.datasets",
               "torchvision.datasets.utils", "torchvision.utils"):
    mod = types.ModuleType(name)
    mod.__getattr__ = getattr_
    mod.__path__ = []
    sys.modules[name] = mod
  for name in ("transforms", "datasets", "utils"):
    setattr(sys.modules["torchvision"], name, sys.modules[f"torchvision.{name}"])
  sys.modules["torchvision.datasets"].utils = sys.modules["torchvision.datasets.utils"]
  return True


def biggan_reference_dir(path):
  for d in (os.path.join(path, "DiffAugment-biggan-cifar"), path):
    if os.path.isfile(os.path.join(d, "BigGAN.py")) and os.path.isfile(
        os.path.join(d, "train_fns.py")):
      return d
  raise SystemExit(f"--reference={path}: no BigGAN.py + train_fns.py there nor in its "
                   f"DiffAugment-biggan-cifar folder (a checkout of "
                   f"mit-han-lab/data-efficient-gans or ajbrock/BigGAN-PyTorch).")


class BigGANReference:
  """The reference's own step: train_fns.GAN_training_function(G, D, GD, z_, y_, ema, ...)."""

  def __init__(self, torch, path, args):
    self.torch = torch
    self.dir = biggan_reference_dir(path)
    self.diffaugment_code = os.path.isfile(os.path.join(self.dir, "DiffAugment_pytorch.py"))
    if args.diffaugment and not self.diffaugment_code:
      raise SystemExit(f"--diffaugment: {self.dir} is BigGAN-PyTorch, which has no DiffAugment; "
                       f"use mit-han-lab/data-efficient-gans.")
    self.stubbed = _stub_torchvision()
    sys.path.insert(0, self.dir)
    import BigGAN  # pylint: disable=import-outside-toplevel,import-error
    import train_fns  # pylint: disable=import-outside-toplevel,import-error
    import utils  # pylint: disable=import-outside-toplevel,import-error
    # The flags of scripts/DiffAugment-biggan-cifar10.sh that shape the step, at --width,
    # --batch and --d_steps; the rest are the parser's defaults (as train.py uses them).
    argv = ["--dataset", "C10", "--batch_size", str(args.batch),
            "--num_D_steps", str(args.d_steps), "--num_G_accumulations", "1",
            "--num_D_accumulations", "1", "--G_lr", "2e-4", "--D_lr", "2e-4", "--G_ortho", "0.0",
            "--G_attn", "0", "--D_attn", "0", "--G_init", "N02", "--D_init", "N02",
            "--ema", "--use_ema", "--ema_start", "1000", "--seed", "0",
            "--G_ch", str(args.width), "--D_ch", str(args.width)]
    if args.diffaugment:
      argv += ["--DiffAugment", args.diffaugment]
    config = vars(utils.prepare_parser().parse_args(argv))
    # As train.py's run(config):
    config["resolution"] = utils.imsize_dict[config["dataset"]]
    config["n_classes"] = utils.nclass_dict[config["dataset"]]
    config["G_activation"] = utils.activation_dict[config["G_nl"]]
    config["D_activation"] = utils.activation_dict[config["D_nl"]]
    self.config = config
    utils.seed_rng(config["seed"])
    with contextlib.redirect_stdout(io.StringIO()):  # its "Param count ..." prints
      self.G = BigGAN.Generator(**config)
      self.D = BigGAN.Discriminator(**config)
      self.G_ema = BigGAN.Generator(**{**config, "skip_init": True, "no_optim": True})
      self.ema = utils.ema(self.G, self.G_ema, config["ema_decay"], config["ema_start"])
    self.GD = BigGAN.G_D(self.G, self.D)  # (train.py: nn.DataParallel(GD); see the docstring)
    self.state_dict = {"itr": 0, "epoch": 0, "save_num": 0, "save_best_num": 0,
                       "best_IS": 0, "best_FID": 999999, "config": config}
    G_batch_size = max(config["G_batch_size"], config["batch_size"])
    self.z_, self.y_ = utils.prepare_z_y(G_batch_size, self.G.dim_z, config["n_classes"],
                                         device="cpu", fp16=False)
    self.train = train_fns.GAN_training_function(self.G, self.D, self.GD, self.z_, self.y_,
                                                 self.ema, self.state_dict, config)
    # Reals as its loader delivers them: batch x num_D_steps images in [-1, 1] and labels.
    gen = torch.Generator().manual_seed(1)
    n = config["batch_size"] * config["num_D_steps"] * config["num_D_accumulations"]
    self.reals = [(torch.rand([n, 3, 32, 32], generator=gen) * 2 - 1,
                   torch.randint(0, config["n_classes"], [n], generator=gen)) for _ in range(2)]
    self.name = ("mit-han-lab/data-efficient-gans DiffAugment-biggan-cifar"
                 if self.diffaugment_code else "ajbrock/BigGAN-PyTorch")

  def describe(self):
    c = self.config
    return (f"{self.name} ({self.dir}): BigGAN.Generator/Discriminator G_ch={c['G_ch']} "
            f"D_ch={c['D_ch']} dim_z={c['dim_z']} G_shared={c['G_shared']} hier={c['hier']} "
            f"attn G '{c['G_attn']}' D '{c['D_attn']}', {c['resolution']} px, {c['n_classes']} "
            f"classes; train_fns.GAN_training_function: batch {c['batch_size']}, num_D_steps "
            f"{c['num_D_steps']}, hinge, Adam(G {c['G_lr']}, D {c['D_lr']}, betas "
            f"{c['G_B1']}/{c['G_B2']}), EMA {c['ema_decay']} from itr {c['ema_start']}"
            + (f", DiffAugment {c['DiffAugment'] or 'none'}" if self.diffaugment_code else "")
            + ("; torchvision stubbed (not installed)" if self.stubbed else ""))

  def params(self):
    return (sum(p.numel() for p in self.G.parameters()),
            sum(p.numel() for p in self.D.parameters()))

  def step(self):
    # As train.py's loop around train(x, y).
    self.state_dict["itr"] += 1
    self.G.train()
    self.D.train()
    self.G_ema.train()
    x, y = self.reals[self.state_dict["itr"] % len(self.reals)]
    self.train(x, y)

  def count_flops(self):
    """-> (FLOPs of one step, {op: FLOPs}) under FlopCounterMode."""
    # Its z_ / y_ are utils.Distribution, a Tensor subclass that every op on them (all of G)
    # returns, and whose .to() override ("silly hack") fails inside FlopCounterMode's
    # decompositions (e.g. of upsample_nearest2d): for the count only, Tensor.to stands in.
    dist = sys.modules["utils"].Distribution
    to = dist.__dict__["to"]
    delattr(dist, "to")
    try:
      with flop_counter() as fc:
        self.step()
    finally:
      dist.to = to
    return fc.get_total_flops(), _by_op(fc)


class _NoModuleTracker:
  """Stands in for FlopCounterMode's ModuleTracker (per-module attribution, not used here),
  whose backward hooks torch.autograd.grad(inputs=[a leaf]) rejects ("A leaf node was passed
  to _will_engine_execute_node ..."): the reference's R1 and path-length gradients."""
  parents = ("Global",)

  def __enter__(self):
    return self

  def __exit__(self, *args):
    return False


def flop_counter():
  """torch.utils.flop_counter.FlopCounterMode (whole-process counts, "Global" only)."""
  from torch.utils.flop_counter import FlopCounterMode  # pylint: disable=import-outside-toplevel
  fc = FlopCounterMode(display=False)
  fc.mod_tracker = _NoModuleTracker()
  return fc


def _by_op(fc):
  return {str(k).replace("aten.", ""): int(v)
          for k, v in fc.get_flop_counts().get("Global", {}).items()}


def biggan_ours_bindings(args):
  b = ["ImageData.source = @Digits()", "ImageData.channels = 3", "Trainer.eval_every = 0",
       f"CH = {args.width}", f"Trainer.batch_size = {args.batch}",
       f"GAN.disc_iters = {args.d_steps}"]
  if args.diffaugment:
    b += ["GAN.augment = @DiffAugment()", f"DiffAugment.policy = '{args.diffaugment}'"]
  return b


# ------------------------------------------------------------------------------------------
# StyleGAN2: stylegan2-ada-pytorch
# ------------------------------------------------------------------------------------------

G_REG_INTERVAL, D_REG_INTERVAL = 4, 16  # train.py / training_loop defaults


class StyleGAN2Reference:
  """stylegan2-ada-pytorch's networks and StyleGAN2Loss, run by the phase loop of
  training/training_loop.py (restated in `step`), `cifar` spec at --width / --batch."""

  def __init__(self, torch, path, args):
    self.torch = torch
    self.dir = os.path.abspath(path)
    if not os.path.isfile(os.path.join(self.dir, "training", "networks.py")):
      raise SystemExit(f"--reference={path}: no training/networks.py (a checkout of "
                       f"NVlabs/stylegan2-ada-pytorch).")
    sys.path.insert(0, self.dir)
    # pylint: disable=import-outside-toplevel,import-error
    from torch_utils import misc
    from torch_utils.ops import conv2d_gradfix
    from training import loss as loss_module
    from training import networks
    # pylint: enable=import-outside-toplevel,import-error
    self.misc = misc
    conv2d_gradfix.enabled = True  # as training_loop (no effect on CPU tensors)
    torch.manual_seed(0)
    np.random.seed(0)
    self.batch = args.batch
    res, channel_base = 32, 32768
    # train.py's `cifar` spec: map 2, mbstd 32, fmaps 1 (channel_base 32768), lr 0.0025,
    # gamma 0.01, ema 500 kimg with ramp-up 0.05, pl_weight 0, no style mixing, 'orig' D.
    self.G_kwargs = dict(z_dim=512, w_dim=512, c_dim=0, img_resolution=res, img_channels=3,
                         mapping_kwargs=dict(num_layers=2),
                         synthesis_kwargs=dict(channel_base=channel_base,
                                               channel_max=args.width, num_fp16_res=0,
                                               conv_clamp=None))
    self.D_kwargs = dict(c_dim=0, img_resolution=res, img_channels=3, architecture="orig",
                         channel_base=channel_base, channel_max=args.width, num_fp16_res=0,
                         conv_clamp=None, block_kwargs={}, mapping_kwargs={},
                         epilogue_kwargs=dict(mbstd_group_size=32))
    self.G = networks.Generator(**self.G_kwargs).train().requires_grad_(False)
    self.D = networks.Discriminator(**self.D_kwargs).train().requires_grad_(False)
    self.G_ema = copy.deepcopy(self.G).eval()
    self.loss = loss_module.StyleGAN2Loss(
        device=torch.device("cpu"), G_mapping=self.G.mapping, G_synthesis=self.G.synthesis,
        D=self.D, augment_pipe=None, style_mixing_prob=0, r1_gamma=0.01,
        pl_weight=args.pl_weight)
    self.ema_kimg, self.ema_rampup = 500, 0.05
    # training_loop's phases with lazy regularization: one Adam per network at lr * c and
    # betas ** c, c = interval / (interval + 1); 'main' every step, 'reg' every interval.
    self.phases = []
    for name, module, interval in (("G", self.G, G_REG_INTERVAL), ("D", self.D, D_REG_INTERVAL)):
      c = interval / (interval + 1)
      opt = torch.optim.Adam(module.parameters(), lr=0.0025 * c,
                             betas=[beta ** c for beta in (0, 0.99)], eps=1e-8)
      self.phases += [types.SimpleNamespace(name=name + "main", module=module, opt=opt,
                                            interval=1),
                      types.SimpleNamespace(name=name + "reg", module=module, opt=opt,
                                            interval=interval)]
    gen = torch.Generator().manual_seed(1)
    self.reals = [torch.randint(0, 256, [self.batch, 3, res, res], dtype=torch.uint8,
                                generator=gen) for _ in range(2)]
    self.batch_idx, self.cur_nimg = 0, 0
    self.pl_weight = args.pl_weight

  def describe(self):
    s, d = self.G_kwargs["synthesis_kwargs"], self.D_kwargs
    return (f"NVlabs/stylegan2-ada-pytorch ({self.dir}): training.networks Generator "
            f"(z/w {self.G_kwargs['z_dim']}/{self.G_kwargs['w_dim']}, mapping "
            f"{self.G_kwargs['mapping_kwargs']['num_layers']}, channel_base "
            f"{s['channel_base']}, channel_max {s['channel_max']}, num_fp16_res 0, conv_clamp "
            f"None, 'skip') and Discriminator ('{d['architecture']}', mbstd group "
            f"{d['epilogue_kwargs']['mbstd_group_size']}); training.loss.StyleGAN2Loss "
            f"(r1_gamma {self.loss.r1_gamma}, pl_weight {self.loss.pl_weight}, pl_batch_shrink "
            f"{self.loss.pl_batch_shrink}, style_mixing_prob 0); phases Gmain, Greg every "
            f"{G_REG_INTERVAL}, Dmain, Dreg every {D_REG_INTERVAL}; batch {self.batch}; EMA "
            f"{self.ema_kimg} kimg, ramp-up {self.ema_rampup}")

  def params(self):
    return (sum(p.numel() for p in self.G.parameters()),
            sum(p.numel() for p in self.D.parameters()))

  def step(self, batch_idx=None):
    """One iteration of training_loop's `while True` body (data fetch, the due phases, the
    G_ema update): batch_gpu = batch (one process, one accumulation round)."""
    torch = self.torch
    batch_idx = self.batch_idx if batch_idx is None else batch_idx
    # Fetch training data.
    real_img = self.reals[batch_idx % len(self.reals)]
    phase_real_img = (real_img.to(torch.float32) / 127.5 - 1).split(self.batch)
    phase_real_c = torch.zeros([self.batch, 0]).split(self.batch)
    all_gen_z = torch.randn([len(self.phases) * self.batch, self.G.z_dim])
    all_gen_z = [z.split(self.batch) for z in all_gen_z.split(self.batch)]
    all_gen_c = torch.zeros([len(self.phases) * self.batch, 0])  # get_label: [0] unconditional
    all_gen_c = [c.split(self.batch) for c in all_gen_c.split(self.batch)]
    # Execute training phases.
    for phase, phase_gen_z, phase_gen_c in zip(self.phases, all_gen_z, all_gen_c):
      if batch_idx % phase.interval != 0:
        continue
      phase.opt.zero_grad(set_to_none=True)
      phase.module.requires_grad_(True)
      for real_img, real_c, gen_z, gen_c in zip(phase_real_img, phase_real_c, phase_gen_z,
                                                phase_gen_c):
        self.loss.accumulate_gradients(phase=phase.name, real_img=real_img, real_c=real_c,
                                       gen_z=gen_z, gen_c=gen_c, sync=True, gain=phase.interval)
      phase.module.requires_grad_(False)
      for param in phase.module.parameters():
        if param.grad is not None:
          self.misc.nan_to_num(param.grad, nan=0, posinf=1e5, neginf=-1e5, out=param.grad)
      phase.opt.step()
    # Update G_ema (no parameter requires grad here).
    ema_nimg = self.ema_kimg * 1000
    if self.ema_rampup is not None:
      ema_nimg = min(ema_nimg, self.cur_nimg * self.ema_rampup)
    ema_beta = 0.5 ** (self.batch / max(ema_nimg, 1e-8))
    for p_ema, p in zip(self.G_ema.parameters(), self.G.parameters()):
      p_ema.copy_(p.lerp(p_ema, ema_beta))
    for b_ema, b in zip(self.G_ema.buffers(), self.G.buffers()):
      b_ema.copy_(b)
    self.cur_nimg += self.batch
    self.batch_idx += 1

  def count_flops(self):
    """-> (FLOPs per step averaged over a 16-step cycle, {op: FLOPs per step}, {kind: FLOPs})
    from FlopCounterMode over three real steps: batch_idx 0 (all four phases), 4 (Gmain,
    Greg, Dmain), 1 (Gmain, Dmain); a cycle is 1 + 3 + 12 of them."""
    counts, ops = {}, {}
    weights = {0: 1, G_REG_INTERVAL: D_REG_INTERVAL // G_REG_INTERVAL - 1,
               1: D_REG_INTERVAL - D_REG_INTERVAL // G_REG_INTERVAL}
    for idx, w in weights.items():
      with flop_counter() as fc:
        self.step(batch_idx=idx)
      counts[idx] = fc.get_total_flops()
      for k, v in _by_op(fc).items():
        ops[k] = ops.get(k, 0) + w * v / D_REG_INTERVAL
    per_step = sum(w * counts[i] for i, w in weights.items()) / D_REG_INTERVAL
    kinds = {"plain step": counts[1], "+ Greg (path length)": counts[G_REG_INTERVAL] - counts[1],
             "+ Dreg (R1)": counts[0] - counts[G_REG_INTERVAL]}
    return per_step, ops, kinds


def stylegan2_ours_bindings(args):
  terms = "@Adversarial(), @R1Penalty()" + (", @PathLengthPenalty()" if args.pl_weight else "")
  return ["ImageData.source = @Digits()", "ImageData.channels = 3", "Trainer.eval_every = 0",
          f"Trainer.batch_size = {args.batch}",
          f"StyleGAN2Generator.fmap_max = {args.width}",
          f"StyleGAN2Discriminator.fmap_max = {args.width}",
          "StyleGAN2Generator.num_fp16_res = 0", "StyleGAN2Discriminator.num_fp16_res = 0",
          f"GAN.terms = [{terms}]"] + (
              [f"PathLengthPenalty.weight = {args.pl_weight}"] if args.pl_weight else [])


def stylegan2_ours_flops(args, ours):
  """Ours' FLOPs per step averaged over a 16-step cycle. The profiler does not enter the
  conditionals that hold the lazy R1 and path-length passes, so they are counted as the
  difference of two more traced (never run) steps in which they run every step (interval 1,
  folded into the ordinary loss: the same passes) -> (total, conv+matmul, {op}, {kind})."""
  total, mm, _, ops = ours.flops()
  kinds = {"plain step": mm}
  totals = {"plain step": total}
  variants = [("+ Dreg (R1)", "R1Penalty.interval = 1", D_REG_INTERVAL)]
  if args.pl_weight:
    variants.insert(0, ("+ Greg (path length)", "PathLengthPenalty.interval = 1",
                        G_REG_INTERVAL))
  per_step_total, per_step_mm, per_step_ops = float(total), float(mm), dict(ops)
  for kind, binding, interval in variants:
    cwd = os.getcwd()
    os.chdir(PROJECT)
    try:
      v = Ours(ours.gin_file, ours.bindings + [binding])
    finally:
      os.chdir(cwd)
    v_total, v_mm, _, v_ops = v.flops()
    shutil.rmtree(v.model_dir, ignore_errors=True)
    del v
    gc.collect()
    kinds[kind], totals[kind] = v_mm - mm, v_total - total
    per_step_total += (v_total - total) / interval
    per_step_mm += (v_mm - mm) / interval
    for k in set(v_ops) | set(ops):
      per_step_ops[k] = per_step_ops.get(k, 0) + (v_ops.get(k, 0) - ops.get(k, 0)) / interval
  return per_step_total, per_step_mm, per_step_ops, kinds, totals


# ------------------------------------------------------------------------------------------
# Peaks, timing, report
# ------------------------------------------------------------------------------------------

def torch_matmul_peak(torch, n=2048, repeats=7):
  a, b = torch.randn(n, n), torch.randn(n, n)
  for _ in range(2):
    a @ b
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    a @ b
    times.append(time.perf_counter() - t0)
  return 2 * n ** 3 / float(np.median(times)) / 1e9


def _fmt_ops(ops, scale=1e9):
  return ", ".join(f"{k} {v / scale:.4g}" for k, v in sorted(ops.items(), key=lambda kv: -kv[1])
                   if v)


def build(args, torch):
  """-> (Ours, reference) at the settings of `args`."""
  if args.model == "biggan":
    gin_file, bindings = "gin/biggan/biggan_cifar10.gin", biggan_ours_bindings(args)
  else:
    gin_file, bindings = "gin/stylegan2/stylegan2_cifar10.gin", stylegan2_ours_bindings(args)
  jit = "'auto'" if args.jit_compile == "auto" else args.jit_compile
  bindings.append(f"Trainer.jit_compile = {jit}")
  cwd = os.getcwd()
  os.chdir(PROJECT)  # gin files and their includes are named relative to the project
  try:
    ours = Ours(gin_file, bindings)
  finally:
    os.chdir(cwd)
  ref = (BigGANReference if args.model == "biggan" else StyleGAN2Reference)(
      torch, args.reference, args)
  return ours, ref


def main(argv=None):
  args = parse_args(argv)
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  # Our side as bin/train runs it (tfgan_eff/cli/entry.py sets both for every tool): TF's BFC
  # CPU allocator (without it TF's default allocator faults its buffers in again every step)
  # and TF's oneDNN kernels (TF 2.21 turns them on by itself only on AVX-512 CPUs; torch uses
  # oneDNN on any x86 CPU). The user's settings win; the output names both.
  os.environ.setdefault("TF_CPU_ALLOCATOR_USE_BFC", "1")
  os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
  tf, torch = set_threads(args)
  import tfgan_eff.configurables  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
  load_start = os.getloadavg()
  wall0 = time.perf_counter()

  ours, ref = build(args, torch)
  threads_line, threads_ok = thread_report(tf, torch, args)
  (og, od), (rg, rd) = ours.params(), ref.params()
  same = "equal" if (og, od) == (rg, rd) else "DIFFERENT"
  params_line = f"parameters: ours G {og:,} D {od:,}; reference G {rg:,} D {rd:,}: {same}"
  if args.params_only:
    print(f"ours: {ours.gin_file} + {'; '.join(ours.bindings)}")
    print(f"reference: {ref.describe()}")
    print(threads_line)
    print(params_line)
    shutil.rmtree(ours.model_dir, ignore_errors=True)
    return

  if args.model == "biggan":
    ours_total, ours_mm, lower_bound, ours_ops = ours.flops()
    ours_kinds = ours_totals = None
    ref_flops, ref_ops = ref.count_flops()
    ref_kinds = None
  else:
    ours_total, ours_mm, ours_ops, ours_kinds, ours_totals = stylegan2_ours_flops(args, ours)
    lower_bound = False  # the conditional passes are counted by the variants
    ref_flops, ref_ops, ref_kinds = ref.count_flops()

  if args.flops_only:
    args.rounds = args.steps = args.warmup = 0
  sides = [("ours", ours), ("reference", ref)]
  times = {name: [] for name, _ in sides}
  for _, side in sides:
    for _ in range(args.warmup):
      side.step()
  for k in range(args.rounds):
    for name, side in sides[k % 2:] + sides[:k % 2]:  # rotated: no fixed first place
      for _ in range(args.steps // args.cycle):
        t0 = time.perf_counter()
        for _ in range(args.cycle):
          side.step()
        times[name].append((time.perf_counter() - t0) / args.cycle)
  load_end = os.getloadavg()
  threads_line_end, threads_ok_end = thread_report(tf, torch, args)
  peaks = None
  if not (args.no_peak or args.flops_only):
    from tfgan_eff import perf  # pylint: disable=import-outside-toplevel
    peaks = (perf.measure_peak()["matmul"], torch_matmul_peak(torch))

  # -- report ---------------------------------------------------------------------------
  print(f"model: {args.model}; float32; {args.rounds} rounds x {args.steps} timed steps per "
        f"side" + (f" (as {args.steps // args.cycle} whole {args.cycle}-step cycles each)"
                   if args.cycle > 1 else "")
        + f", {args.warmup} untimed warm-up steps per side; total {time.perf_counter() - wall0:.0f}"
        f" s")
  print(f"ours: {ours.gin_file} + {'; '.join(ours.bindings)} (XLA "
        f"{'on' if ours.trainer.xla else 'off'})")
  print(f"reference: {ref.describe()}")
  print(f"machine: {os.cpu_count()} CPU cores; TF {tf.__version__}, torch {torch.__version__}; "
        f"load average (1/5/15 min) {'/'.join(f'{x:.2f}' for x in load_start)} at the start, "
        f"{'/'.join(f'{x:.2f}' for x in load_end)} at the end")
  print(f"TF_CPU_ALLOCATOR_USE_BFC={os.environ.get('TF_CPU_ALLOCATOR_USE_BFC')}, "
        f"TF_ENABLE_ONEDNN_OPTS={os.environ.get('TF_ENABLE_ONEDNN_OPTS', '(unset: TF default)')}; "
        f"torch mkldnn {torch.backends.mkldnn.is_available()}")
  print(threads_line + (" (start)" if threads_line_end == threads_line else ""))
  if threads_line_end != threads_line or not (threads_ok and threads_ok_end):
    print(threads_line_end + " (end)")
  if load_start[0] >= 0.5:
    print(f"** the machine was not quiet (1-min load {load_start[0]:.2f} at the start): torch's "
          f"OpenMP threads wait at the end of every parallel region for a preempted thread, "
          f"TF's thread pool does not, so other jobs slow the reference down far more than "
          f"ours (seen: 4-7 s instead of 0.2-0.3 s per reference step at load 2.6 on 2 cores). "
          f"Time on a quiet machine. **")
  print(params_line)
  per_cycle = " (per step, averaged over a 16-step cycle)" if args.cycle > 1 else ""
  print(f"FLOPs per step{per_cycle}, conv + matmul (what FlopCounterMode counts): ours "
        f"{ours_mm / 1e9:.4g} GFLOP, reference {ref_flops / 1e9:.4g} GFLOP "
        f"({ours_mm / ref_flops:.4f}x); ours' profiler total (elementwise ops too) "
        f"{'>=' if lower_bound else ''}{ours_total / 1e9:.4g} GFLOP")
  print(f"  ours by op (GFLOP/step): {_fmt_ops(ours_ops)}")
  print(f"  reference by op (GFLOP/step): {_fmt_ops(ref_ops)}")
  if ours_kinds:
    print("  per pass, conv + matmul GFLOP (ours / reference): "
          + "; ".join(f"{k} {ours_kinds[k] / 1e9:.4g} / {ref_kinds.get(k, 0) / 1e9:.4g}"
                      for k in ours_kinds)
          + "; ours' profiler totals: "
          + "; ".join(f"{k} {v / 1e9:.4g}" for k, v in ours_totals.items()))
  if peaks:
    print(f"float32 matmul 2048^2 peak measured after the timing: TF {peaks[0]:.1f} GFLOP/s, "
          f"torch {peaks[1]:.1f} GFLOP/s")
  if args.flops_only:
    shutil.rmtree(ours.model_dir, ignore_errors=True)
    return
  images = (args.d_steps + 1 if args.model == "biggan" else 2) * args.batch
  print(f"{'side':<11}{'s/step median':>14}{'min':>9}{'max':>9}{'img/s':>8}"
        f"{'GFLOP/s (conv+mm)':>19}{'of peak':>9}{'GFLOP/s (TF total)':>20}")
  meds = {}
  for name, _ in sides:
    t = times[name]
    med = meds[name] = float(np.median(t))
    mm = ours_mm if name == "ours" else ref_flops
    rate = mm / med / 1e9
    peak = (peaks[0] if name == "ours" else peaks[1]) if peaks else None
    share = f"{100 * rate / peak:.0f}%" if peak else "-"
    total = (('>=' if lower_bound else '') + f"{ours_total / med / 1e9:.1f}"
             if name == "ours" else "-")
    print(f"{name:<11}{med:>14.4f}{min(t):>9.4f}{max(t):>9.4f}{images / med:>8.1f}"
          f"{rate:>19.1f}{share:>9}{total:>20}")
  print(f"ratio ours / reference (median s/step): {meds['ours'] / meds['reference']:.3f}")
  print("per-sample s/step, ours: " + " ".join(f"{x:.3f}" for x in times["ours"]))
  print("per-sample s/step, reference: " + " ".join(f"{x:.3f}" for x in times["reference"]))
  shutil.rmtree(ours.model_dir, ignore_errors=True)


if __name__ == "__main__":
  main()
