"""The training loop: tf.distribute, checkpoints, TensorBoard, progress. Knows no methods.

It asks the GAN for `d_step` / `g_step` inside `strategy.run`, sums the metrics over
replicas, and writes them. Swapping BigGAN for StyleGAN2 or adding InsGen never touches
this file. Loading a trained run back (tools, studies): `training/runs.py`.
"""

import atexit
import functools
import glob
import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time

import gin
import numpy as np
import tensorflow as tf
from absl import logging

from tfgan_eff.config import configurable
from tfgan_eff.io import atomic_write, image_grid, to_uint8, write_png
from tfgan_eff.params import count_params
from tfgan_eff.rng import sample_in_batches
from tfgan_eff.training import checkpoints
from tfgan_eff.training.errors import DivergenceError, Terminated, TrainingInterrupted
from tfgan_eff.training.gan import GAN


# Op types XLA:CPU runs far slower than TF's kernels: the depthwise convolutions of
# StyleGAN2's FIR resampling filters made its steps ~13x slower (docs/performance.md).
XLA_CPU_SLOW_OPS = frozenset({"DepthwiseConv2dNative", "DepthwiseConv2dNativeBackpropInput",
                              "DepthwiseConv2dNativeBackpropFilter"})


@gin.configurable
def make_strategy(kind="auto", tpu_address=None):
  """Builds the tf.distribute strategy.

  kind: "auto" (MultiWorkerMirrored when TF_CONFIG names a cluster, Mirrored over several
  GPUs, else one device), "one_device", "mirrored" (all GPUs; without GPUs all logical CPU
  devices), "multi_worker", or "tpu" (with `tpu_address`).
  """
  if kind == "auto":
    tf_config = json.loads(os.environ.get("TF_CONFIG", "{}") or "{}")
    cluster = tf_config.get("cluster", {})
    if len(cluster.get("worker", [])) + len(cluster.get("chief", [])) > 1:
      kind = "multi_worker"
  if kind == "multi_worker":  # before anything that starts the TF runtime
    return tf.distribute.MultiWorkerMirroredStrategy()
  gpus = tf.config.list_logical_devices("GPU")
  if kind == "auto":
    if len(gpus) > 1:
      kind = "mirrored"
    else:
      kind = "one_device"
  if kind == "one_device":
    return tf.distribute.OneDeviceStrategy(gpus[0].name if gpus else "/cpu:0")
  if kind == "mirrored":
    devices = [d.name for d in (gpus or tf.config.list_logical_devices("CPU"))]
    return tf.distribute.MirroredStrategy(devices)
  if kind == "tpu":
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu_address)
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return tf.distribute.TPUStrategy(resolver)
  raise ValueError(f"make_strategy.kind must be auto, one_device, mirrored, multi_worker or "
                   f"tpu; got '{kind}'.")


def nvidia_smi_gpus():
  """The GPUs `nvidia-smi -L` lists ([] without nvidia-smi, or if it fails)."""
  if not shutil.which("nvidia-smi"):
    return []
  try:
    out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20)
  except (OSError, subprocess.SubprocessError):
    return []
  return [line for line in out.stdout.splitlines() if line.startswith("GPU ")]


def log_devices(strategy):
  """Logs the devices TF found and the strategy's replicas; warns when nvidia-smi sees GPUs
  that TF does not (a CPU-only TF build, or CUDA libraries TF cannot load)."""
  found = {kind: len(tf.config.list_physical_devices(kind)) for kind in ("CPU", "GPU", "TPU")}
  logging.info("Devices: %s; TF %s; %s with %d replica(s) on %s.",
               ", ".join(f"{n} {kind}" for kind, n in found.items()), tf.__version__,
               type(strategy).__name__, strategy.num_replicas_in_sync,
               ", ".join(d.split("device:")[-1] for d in strategy.extended.worker_devices))
  smi = nvidia_smi_gpus() if not found["GPU"] else []
  if smi:
    logging.warning(
        "nvidia-smi lists %d GPU(s) (%s) but TensorFlow sees none: training runs on the CPU. "
        "Install TensorFlow with its CUDA libraries: pip install -e '.[cuda]' "
        "(tensorflow[and-cuda]), then check python -c \"import tensorflow as tf; "
        "print(tf.config.list_physical_devices('GPU'))\".", len(smi), smi[0])
  return found, smi


def _check_int(owner, name, value, minimum, allow_none=False, meaning=""):
  """One-line error naming the setting and the fix unless `value` is an int >= minimum."""
  if value is None and allow_none:
    return
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
    kind = f" (a {type(value).__name__})" if not isinstance(value, (int, np.integer)) else ""
    none = " or None" if allow_none else ""
    raise ValueError(
        f"{owner}.{name} must be an integer >= {minimum}{none}{meaning}, got {value!r}{kind}; "
        f"pass e.g. --gin_param=\"{owner}.{name} = {max(minimum, 1)}\" (numbers unquoted).")


def check_model_dir(model_dir, setting="Trainer.model_dir"):
  """Rejects a run directory that is a file or cannot be written, before any work."""
  if not isinstance(model_dir, (str, os.PathLike)) or not str(model_dir):
    raise ValueError(f"{setting} must be a folder path, got {model_dir!r}.")
  path = os.path.abspath(os.path.expanduser(model_dir))
  if os.path.exists(path) and not os.path.isdir(path):
    raise ValueError(f"{setting} '{model_dir}' is a file, not a folder; pass a folder path "
                     f"(--model_dir=runs/name).")
  existing = path
  while not os.path.exists(existing):
    existing = os.path.dirname(existing)
  if not os.path.isdir(existing) or not os.access(existing, os.W_OK | os.X_OK):
    where = "it" if existing == path else f"its parent '{existing}'"
    raise ValueError(f"{setting} '{model_dir}' cannot be written ({where} is not a writable "
                     f"folder); pass a folder you can write to.")


def _scratch_dir(prefix):
  """A temporary folder for what a non-chief worker must write but nobody reads (its
  checkpoints, summaries); removed when the process exits (not after SIGKILL)."""
  path = tempfile.mkdtemp(prefix=prefix)
  atexit.register(shutil.rmtree, path, ignore_errors=True)
  return path


# With on_nonfinite='skip_step', this many steps in a row with a skipped update end the run.
MAX_CONSECUTIVE_SKIPS = 20


class _StopOnSignal:
  """SIGTERM/SIGINT ask the training loop to stop after the current step; a second one
  exits at once (as schedulers and impatient users expect)."""

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.signum = None
    self._previous = {}

  def __enter__(self):
    if Terminated.received:  # a start-up SIGTERM whose exception was lost (see Terminated)
      raise Terminated()
    if threading.current_thread() is threading.main_thread():
      for sig in self.SIGNALS:
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    return False

  def _handle(self, signum, frame):
    del frame
    if self.signum is not None:
      logging.warning("Second %s: exiting at once (the last checkpoint stays).",
                      signal.Signals(signum).name)
      logging.flush()
      os._exit(128 + signum)  # pylint: disable=protected-access
    self.signum = signum
    logging.warning("%s received: finishing this step and saving a checkpoint (send it again "
                    "to exit at once).", signal.Signals(signum).name)


@configurable
class Trainer:
  """Trains a GAN on an ImageData source.

  Args:
    model_dir: where checkpoints, the gin config, TensorBoard events and samples go; an
      existing checkpoint there is resumed from.
    data: an `ImageData` (gin: `Trainer.data = @ImageData()`).
    train_steps: number of G steps in total (a resumed run continues up to it).
    batch_size: the global batch (all replicas); must be divisible by the replica count.
    log_every: console progress line interval (steps).
    summary_every: TensorBoard scalar interval.
    image_every: fixed-noise EMA sample grid interval.
    checkpoint_every: checkpoint interval (0: only at the end); the last N are kept.
    keep_checkpoints: N (None: all).
    num_samples_grid: samples in the grid.
    eval_every: evaluation interval (0: none); uses `evaluator`. Results go to TensorBoard
      (`eval/fid`, ...) and `eval.jsonl`; the checkpoint with the best FID so far is kept in
      `model_dir/best/` (apart from the rolling checkpoints), with its score in
      `best/best.json`. Every evaluation uses the same latents (seeded by `GAN.seed`), so
      a resumed run scores exactly as an uninterrupted one.
    evaluator: an `Evaluator` from tfgan_eff.eval (gin: `@Evaluator()`), or None.
    on_nonfinite: what a non-finite loss, metric or gradient norm does: 'stop' (the run
      ends with an error naming the step, the metric and the last good checkpoint; nothing
      of that step is saved), or 'skip_step' (a D or G update whose loss or gradients are
      non-finite on any replica is skipped on all of them: no weight, optimizer, EMA-queue
      or ADA state changes; each skip is logged with its metric and counted in TensorBoard
      as `metrics/skipped_updates`; after `MAX_CONSECUTIVE_SKIPS` steps in a row with a
      skip the run stops as with 'stop').
    jit_compile: compile each D and G step with XLA (the input iterator stays outside):
      True, False, or 'auto' (the default): on exactly where it was measured faster, i.e.
      one CPU replica, float32, and a step without depthwise convolutions (BigGAN with any
      method: 1.09-1.25x on the quickstart, docs/performance.md); off for StyleGAN2 (its
      resampling filters are depthwise convolutions, ~13x slower under XLA:CPU), several
      CPU replicas (which XLA cannot compile), mixed precision and GPUs (not measured
      here: set True to try). The choice and its reason are logged when training starts;
      compiling adds ~20-40 s then.

  SIGTERM or SIGINT (a preempted VM, Slurm, Kubernetes, Ctrl-C) finishes the current step,
  saves a checkpoint and raises `TrainingInterrupted` (bin/train exits 128 + signal).
  """

  def __init__(self, model_dir=gin.REQUIRED, data=gin.REQUIRED, train_steps=1000,
               batch_size=64, log_every=10, summary_every=25, image_every=250,
               checkpoint_every=500, keep_checkpoints=3, num_samples_grid=64,
               eval_every=0, evaluator=None, on_nonfinite="stop", jit_compile="auto",
               strategy=None):
    # Every setting is checked before any data or model work (one line each).
    check_model_dir(model_dir)
    for name, value, minimum, allow_none, meaning in (
        ("train_steps", train_steps, 1, False, ""),
        ("batch_size", batch_size, 1, False, ""),
        ("log_every", log_every, 1, False, ""),
        ("summary_every", summary_every, 1, False, ""),
        ("image_every", image_every, 1, False, ""),
        ("checkpoint_every", checkpoint_every, 0, False, " (0: only at the end)"),
        ("keep_checkpoints", keep_checkpoints, 1, True, " (None: keep all)"),
        ("num_samples_grid", num_samples_grid, 1, False, ""),
        ("eval_every", eval_every, 0, False, " (0: no evaluation)")):
      _check_int("Trainer", name, value, minimum, allow_none, meaning)
    if on_nonfinite not in ("stop", "skip_step"):
      raise ValueError(f"Trainer.on_nonfinite must be 'stop' or 'skip_step', got "
                       f"{on_nonfinite!r}.")
    if not any(jit_compile is v for v in (True, False)) and jit_compile != "auto":
      raise ValueError(f"Trainer.jit_compile must be True, False or 'auto', got "
                       f"{jit_compile!r}.")
    if data is None:
      raise ValueError("Trainer.data is None; set it, e.g. Trainer.data = @ImageData().")
    self.on_nonfinite = on_nonfinite
    self.jit_compile = jit_compile
    self.xla = None  # whether the steps are XLA-compiled, once train() has resolved 'auto'
    self.model_dir = os.path.expanduser(model_dir)
    self.data = data
    self.train_steps, self.batch_size = train_steps, batch_size
    self.log_every, self.summary_every = log_every, summary_every
    self.image_every, self.checkpoint_every = image_every, checkpoint_every
    self.keep_checkpoints, self.num_samples_grid = keep_checkpoints, num_samples_grid
    self.eval_every, self.evaluator = eval_every, evaluator
    self.strategy = strategy or make_strategy()
    log_devices(self.strategy)
    n = self.strategy.num_replicas_in_sync
    devices = self.strategy.extended.worker_devices
    if jit_compile is True and len(devices) > 1 and all("CPU" in d.upper() for d in devices):
      names = ", ".join(d.split("device:")[-1] for d in devices)
      raise ValueError(
          f"Trainer.jit_compile=True with {len(devices)} replicas on CPU devices "
          f"({names}) is not supported by TF's XLA: a "
          f"compiled replica step cannot read the variables of its replica on another CPU "
          f"device (https://www.tensorflow.org/xla/known_issues). Train on one CPU replica "
          f"(the default strategy), or set Trainer.jit_compile=False.")
    if batch_size % n:
      raise ValueError(
          f"Trainer.batch_size={batch_size} is not divisible by the {n} replicas; use a "
          f"multiple of {n} (e.g. {batch_size + n - batch_size % n}).")
    self.local_batch = batch_size // n
    with self.strategy.scope():
      self.gan = GAN()
      self.gan.skip_nonfinite = on_nonfinite == "skip_step"
      self._skipped_updates, self._skips_in_a_row = 0, 0
      self._held = {}  # the latest values of intermittent metrics (`_hold_intermittent`)
      self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step",
                              aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
      self.best_fid = tf.Variable(np.inf, dtype=tf.float32, trainable=False, name="best_fid",
                                  aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
      self._check_compatible()
      shape = (data.resolution, data.resolution, data.channels)
      self.gan.build(self.local_batch, shape)
    self.ckpt_items = self.gan.checkpoint_items()
    self.ckpt = tf.train.Checkpoint(step=self.step, best_fid=self.best_fid, **self.ckpt_items)
    self.is_chief = self._is_chief()
    ckpt_dir = os.path.join(self.model_dir, "checkpoints")
    if not self.is_chief:  # TF requires every worker to save; others save to scratch
      ckpt_dir = _scratch_dir("tfgan_eff-worker-")
    self.manager = tf.train.CheckpointManager(self.ckpt, ckpt_dir,
                                              max_to_keep=keep_checkpoints)
    best_dir = (os.path.join(self.model_dir, "best") if self.is_chief else
                _scratch_dir("tfgan_eff-worker-best-"))
    self.best_manager = tf.train.CheckpointManager(self.ckpt, best_dir, max_to_keep=1)

  def _is_chief(self):
    resolver = getattr(self.strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
      return True
    return resolver.task_type in (None, "chief") or (
        resolver.task_type == "worker" and resolver.task_id == 0 and
        "chief" not in resolver.cluster_spec().as_dict())

  def _check_compatible(self):
    g, d = self.gan.G, self.gan.D
    if g.resolution != self.data.resolution or g.channels != self.data.channels:
      raise ValueError(
          f"The generator makes {g.resolution}px images with {g.channels} channels but the "
          f"data is {self.data.resolution}px with {self.data.channels}; set the model's "
          f"resolution/channels to the data's (gin macros RESOLUTION / CHANNELS).")
    if d.resolution != self.data.resolution or d.channels != self.data.channels:
      raise ValueError(f"The discriminator expects {d.resolution}px, {d.channels} channels "
                       f"but the data is {self.data.resolution}px, {self.data.channels}.")
    if self.gan.num_classes == 1 and self.data.num_classes != 1:
      logging.info("The models have one class: every image is class 0 (the data's %d "
                   "classes are not used).", self.data.num_classes)
    elif self.gan.num_classes and self.data.num_classes != self.gan.num_classes:
      fix = (f"set NUM_CLASSES = {self.data.num_classes}, or 0 (1) for an unconditional GAN "
             f"(with one class)"
             if self.data.num_classes else
             "the data has no labels: set NUM_CLASSES = 0 (an unconditional GAN), or give "
             "the data labels (e.g. ImageFolder.labels_from_subfolders = True)")
      raise ValueError(
          f"The models are conditional on {self.gan.num_classes} classes but the data has "
          f"{self.data.num_classes}; {fix}.")

  # -- steps ------------------------------------------------------------------------------
  def _make_train_step(self, iterator):
    """The training step function, XLA-compiled or not as `jit_compile` resolves (logged);
    'auto' traces the plain step on `iterator`'s element spec (no batch is consumed)."""
    if self.jit_compile != "auto":
      self.xla = self.jit_compile
      return self._train_step_fn(self.xla)
    plain = self._train_step_fn(False)
    self.xla, why = self._xla_pays_off(plain, iterator)
    logging.info("XLA (Trainer.jit_compile='auto') %s: %s.", "on" if self.xla else "off", why)
    return self._train_step_fn(True) if self.xla else plain

  def _xla_pays_off(self, plain_step, iterator):
    """-> (whether to compile the steps with XLA, why), by the measurements of
    docs/performance.md: only one float32 CPU replica whose step has no op that XLA:CPU
    runs much slower than TF's kernels."""
    devices = self.strategy.extended.worker_devices
    if self.strategy.num_replicas_in_sync > 1:
      return False, (f"{self.strategy.num_replicas_in_sync} replicas (XLA cannot compile "
                     f"several CPU replicas here and is unmeasured on several GPUs; set "
                     f"Trainer.jit_compile=True to try it on GPUs)")
    if not all("CPU" in d.upper() for d in devices):
      return False, (f"not measured on {devices[0].split('device:')[-1]} (set "
                     f"Trainer.jit_compile=True to try it)")
    if self.gan.mixed_precision:
      return False, f"{self.gan.mixed_precision} is not measured with XLA on CPUs"
    graph = plain_step.get_concrete_function(iterator, tf.constant(False)).graph
    ops = {op.type for op in graph.get_operations()}
    for f in graph.as_graph_def().library.function:
      ops.update(n.op for n in f.node_def)
    slow = sorted(ops & XLA_CPU_SLOW_OPS)
    if slow:
      return False, (f"the step has {', '.join(slow)} ops, which XLA:CPU runs far slower than "
                     f"TF's kernels (StyleGAN2's resampling filters: 13x slower steps)")
    return True, ("one float32 CPU replica, no depthwise convolutions (BigGAN with any method "
                  "measured 1.09-1.25x faster); compiling takes ~20-40 s")

  def _train_step_fn(self, jit_compile):
    gan, strategy = self.gan, self.strategy
    # Functions of their own: the disc_iters D steps call one traced D step (traced once,
    # not once per D step), and with jit_compile XLA compiles the step math while the
    # iterator stays outside.
    d_step = tf.function(gan.d_step, jit_compile=jit_compile or None, autograph=False)
    g_step = tf.function(gan.g_step, jit_compile=jit_compile or None, autograph=False)

    @functools.partial(tf.function, autograph=False)
    def train_step(iterator, stop):
      step = self.step.read_value()
      metrics, d_skipped = {}, []
      for i in range(gan.disc_iters):
        batch = next(iterator)
        metrics = strategy.run(d_step, args=(batch, step, tf.constant(i, tf.int64)))
        d_skipped.append(strategy.reduce(tf.distribute.ReduceOp.SUM,
                                         metrics.pop("d_skipped"), axis=None))
      batch = next(iterator)
      metrics.update(strategy.run(g_step, args=(batch, step)))
      gan.update_ema(step + 1)
      self.step.assign_add(1)
      out = {k: strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None)
             for k, v in metrics.items()}
      out["d_skipped"] = tf.add_n(d_skipped)  # skipped D updates of all the D steps
      # Any worker's signal stops them all after this same step.
      out["_stop"] = strategy.reduce(
          tf.distribute.ReduceOp.SUM, strategy.run(lambda s: tf.cast(s, tf.int32), args=(stop,)),
          axis=None) > 0
      return out

    return train_step

  def fixed_inputs(self, n):
    """The fixed noise (and labels cycling over classes) of the sample grids."""
    z = tf.random.stateless_normal([n, self.gan.G.z_dim], seed=[self.gan.seed, 12345])
    y = (tf.range(n) % self.gan.num_classes) if self.gan.num_classes else None
    return z, y

  def samples(self, n):
    z, y = self.fixed_inputs(n)
    return to_uint8(self.gan.generate(z, y)).numpy()

  # -- the loop ----------------------------------------------------------------------------
  def restore(self):
    """Restores the newest intact checkpoint (a corrupt newest one is skipped with a
    warning); -> its path or None."""
    # Every worker restores the chief's checkpoint (the others only save to scratch), so
    # that a multi-worker run resumes at one step on all of them.
    path = checkpoints.restore_latest(self.ckpt, os.path.join(self.model_dir, "checkpoints"))
    if path:
      logging.info("Resumed from %s at step %d.", path, int(self.step.numpy()))
    return path

  def _write_config(self, resumed):
    """config.gin of this run, written only once the restore has succeeded; a changed
    config keeps the previous one as config.<time>.gin."""
    path = os.path.join(self.model_dir, "config.gin")
    text = gin.config_str()
    if resumed and os.path.exists(path):
      with open(path) as f:
        old = f.read()
      if old != text:
        kept = os.path.join(self.model_dir, f"config.{time.strftime('%Y%m%d-%H%M%S')}.gin")
        atomic_write(kept, old)
        logging.info("The configuration differs from the run's; the previous one is kept "
                     "as %s.", kept)
    atomic_write(path, text)

  def _clean_start(self, resumed_step):
    """Start-up housekeeping of the chief: leftover temporary checkpoint folders of a
    killed save, and eval.jsonl lines past the step training resumes from."""
    if not self.is_chief:
      return
    for d in glob.glob(os.path.join(self.manager.directory, "*_temp*")) + glob.glob(
        os.path.join(self.model_dir, "best", "*_temp*")):
      if os.path.isdir(d):
        shutil.rmtree(d, ignore_errors=True)
        logging.info("Removed %s, left by an interrupted save.", d)
    path = os.path.join(self.model_dir, "eval.jsonl")
    if os.path.exists(path):
      with open(path) as f:
        lines = [line for line in f if line.strip()]
      kept = [line for line in lines if json.loads(line)["step"] <= resumed_step]
      if len(kept) != len(lines):
        atomic_write(path, "".join(kept))

  def train(self):
    os.makedirs(self.model_dir, exist_ok=True)
    resumed = self.restore()  # before anything is written: a failed resume changes nothing
    start = int(self.step.numpy())
    self._write_config(resumed)
    self._clean_start(start)
    if start >= self.train_steps:
      logging.info("Already trained to step %d (train_steps=%d); nothing to do.", start,
                   self.train_steps)
      self._write_final_samples()
      return
    per_step = (self.gan.disc_iters + 1) * self.batch_size
    dataset = self.strategy.distribute_datasets_from_function(
        self.data.dataset_fn(self.batch_size, start_sample=start * per_step))
    iterator = iter(dataset)
    train_step = self._make_train_step(iterator)
    writer = tf.summary.create_file_writer(
        os.path.join(self.model_dir, "train") if self.is_chief else
        _scratch_dir("tfgan_eff-summaries-"))
    logging.info("Training %s from step %d to %d: global batch %d on %d replica(s), "
                 "%d D step(s) per G step.", type(self.gan.G).__name__, start,
                 self.train_steps, self.batch_size, self.strategy.num_replicas_in_sync,
                 self.gan.disc_iters)
    counts = self.parameter_counts()
    logging.info("Parameters: %s", "; ".join(f"{k} {v:,}" for k, v in counts.items()))
    times, t_last = [], time.perf_counter()
    operative_written = False
    with writer.as_default(), _StopOnSignal() as stop:
      tf.summary.text("model/parameters", "\n".join(
          ["| | parameters |", "|---|---|"] + [f"| {k} | {v:,} |" for k, v in counts.items()]),
                      step=start)
      for step in range(start + 1, self.train_steps + 1):
        metrics = train_step(iterator, tf.constant(stop.signum is not None))
        # Every worker stops at the same step: the flag is reduced over all of them.
        stop_now = bool(metrics.pop("_stop").numpy())
        metrics = {k: float(v) for k, v in metrics.items()}
        self._check_finite(step, metrics)
        self._hold_intermittent(metrics)
        if not operative_written:  # after the first step every configurable has been used
          atomic_write(os.path.join(self.model_dir, "operative_config.gin"),
                       gin.operative_config_str())
          operative_written = True
        now = time.perf_counter()
        times.append(now - t_last)
        t_last = now
        if step == start + 1:
          times.clear()  # the first step includes tracing
        if stop_now:
          path = self._save(step)
          writer.flush()
          logging.warning("Stopped at step %d on a signal; saved %s. Re-run the same "
                          "command to resume.", step, path)
          raise TrainingInterrupted(stop.signum or signal.SIGTERM, step, path)
        self._periodic(step, metrics, times, per_step)
      # Still under the signal handler: a signal during the last step's evaluation, the
      # final save or the samples waits for them, then ends the run as interrupted.
      path = self._save(self.train_steps)
      self._write_final_samples()
      if stop.signum is not None:
        logging.warning("Stopped at step %d on a signal; saved %s. The run is complete.",
                        self.train_steps, path)
        raise TrainingInterrupted(stop.signum, self.train_steps, path)
    logging.info("Done: step %d, checkpoint %s.", self.train_steps, path)

  def _hold_intermittent(self, metrics):
    """Metrics of work done on some steps only (lazy regularizers): a metric
    `<prefix>_applied` (1 on the steps where it ran, else 0) marks the metrics `<prefix>_*`;
    on the other steps they are replaced, in place, by their values from the latest step
    where it ran, so that logs and summaries show the penalty rather than the 0 of a skipped
    step (with R1 every 16 steps, a summary every 50 steps would otherwise never see it).
    The flags themselves are dropped. (With `disc_iters > 1` the metrics are those of the
    last D step of the iteration, as for every other D metric.)"""
    for flag in [k for k in metrics if k.endswith("_applied")]:
      prefix = flag[:-len("applied")]
      ran = metrics.pop(flag) > 0.5
      for k in [k for k in metrics if k.startswith(prefix)]:
        if ran:
          self._held[k] = metrics[k]
        elif k in self._held:
          metrics[k] = self._held[k]

  def _check_finite(self, step, metrics):
    """'stop': raises on any non-finite metric. 'skip_step': logs the updates the GAN
    skipped (they changed nothing) and raises only after MAX_CONSECUTIVE_SKIPS in a row."""
    d_skipped, g_skipped = metrics.pop("d_skipped", 0.0), metrics.pop("g_skipped", 0.0)
    bad = [k for k, v in metrics.items() if not np.isfinite(v)]
    if self.on_nonfinite == "skip_step":
      if not (d_skipped or g_skipped):
        self._skips_in_a_row = 0
      else:
        self._skips_in_a_row += 1
        self._skipped_updates += int(round(d_skipped)) + int(round(g_skipped))
        logging.warning("Step %d: skipped %s (%s non-finite); %d update(s) skipped so far.",
                        step, " and ".join(
                            n for n, k in (("the D update", d_skipped),
                                           ("the G update", g_skipped)) if k),
                        bad[0] if bad else "a gradient", self._skipped_updates)
      metrics["skipped_updates"] = float(self._skipped_updates)
      if self._skips_in_a_row >= MAX_CONSECUTIVE_SKIPS:
        raise DivergenceError(
            f"Training diverged: {self._skips_in_a_row} steps in a row up to step {step} had "
            f"non-finite losses or gradients and were skipped (on_nonfinite='skip_step'). The "
            f"weights are those of the last finite update; the last checkpoint is "
            f"{self.manager.latest_checkpoint or 'none (no checkpoint yet)'}. Lower the "
            f"learning rates or check the data, then re-run (it resumes from that checkpoint).")
      return
    if bad:
      last = self.manager.latest_checkpoint
      raise DivergenceError(
          f"Training diverged at step {step}: {bad[0]} is {metrics[bad[0]]}"
          f"{f' (also {bad[1:]})' if len(bad) > 1 else ''}. Nothing of this step was "
          f"saved; the last good checkpoint is {last or 'none (no checkpoint yet)'}. Lower "
          f"the learning rates or check the data, then re-run (it resumes from that "
          f"checkpoint).")

  def _save(self, step, manager=None):
    """Saves the current state after checking that every variable is finite."""
    manager = manager or self.manager
    for key, variables in self.ckpt_items.items():
      for name, v in variables.items():
        if tf.as_dtype(v.dtype).is_floating and not bool(tf.reduce_all(tf.math.is_finite(v))):
          raise DivergenceError(
              f"Not saving step {step}: {key}/{name} holds non-finite values. The last good "
              f"checkpoint is {self.manager.latest_checkpoint or 'none'}; lower the learning "
              f"rates, then re-run to resume from it.")
    try:
      return manager.save(checkpoint_number=step)
    except (tf.errors.ResourceExhaustedError, OSError) as e:
      if "space" not in str(e).lower() and "resource" not in type(e).__name__.lower():
        raise
      raise OSError(
          f"No space left to save step {step} in '{manager.directory}' "
          f"({str(e).splitlines()[0][:200]}). Free some space and re-run the same command: "
          f"training resumes from {self.manager.latest_checkpoint or 'the start'}.") from None

  def parameter_counts(self):
    """{name: count}: trainable and non-trainable (frozen weights, buffers) of G, D, terms."""
    g, d = self.gan.G, self.gan.D
    term_vars = self.gan.d_variables()[len(d.trainable_variables):]
    return {"G trainable": count_params(g.trainable_variables),
            "G non-trainable": count_params(g.non_trainable_variables),
            "D trainable": count_params(d.trainable_variables),
            "D non-trainable": count_params(d.non_trainable_variables),
            "heads (trained with D)": count_params(term_vars)}

  def _periodic(self, step, metrics, times, per_step):
    last = step == self.train_steps
    step_time = float(np.median(times[-50:])) if times else float("nan")
    if step % self.summary_every == 0 or last:
      for k, v in metrics.items():
        tf.summary.scalar(f"losses/{k}" if "loss" in k else f"metrics/{k}", v, step=step)
      if times:  # the first step's time includes tracing and is not a measurement
        tf.summary.scalar("perf/step_time_s", step_time, step=step)
        tf.summary.scalar("perf/images_per_sec", per_step / step_time, step=step)
      for name, opt in (("g", self.gan.g_optimizer), ("d", self.gan.d_optimizer)):
        tf.summary.scalar(f"lr/{name}", tf.convert_to_tensor(opt.learning_rate), step=step)
    if step % self.log_every == 0 or last:
      eta = (self.train_steps - step) * step_time
      shown = " ".join(f"{k} {float(v):.3f}" for k, v in sorted(metrics.items())
                       if k in ("d_loss", "g_loss", "ada_p", "r1_penalty", "pl_penalty"))
      speed = (f"{per_step / step_time:.1f} img/s | {step_time:.3f} s/step" if times else
               "first step: timed from the next (it traces, and compiles with XLA)")
      logging.info("step %d/%d | %s | ETA %s | %s", step, self.train_steps, speed,
                   time.strftime("%H:%M:%S", time.gmtime(eta)) if np.isfinite(eta) else "?",
                   shown)
    if step % self.image_every == 0 or last:
      grid = image_grid(self.samples(self.num_samples_grid))
      tf.summary.image("samples/ema_fixed_noise", grid[None], step=step)
    if self.eval_every and self.evaluator is not None and (step % self.eval_every == 0 or last):
      self.evaluate(step)
    if self.checkpoint_every and step % self.checkpoint_every == 0 and not last:
      self._save(step)

  def evaluate(self, step):
    """Runs the configured evaluator on the EMA generator and writes the results.

    Scalars go to TensorBoard under `eval/` and one JSON line per evaluated step to
    `eval.jsonl`. When FID improves on the best so far, the current state is saved to
    `best/` (one checkpoint, kept apart from the rolling ones) and `best/best.json`.
    Samples that are non-finite or all alike (a collapsed or diverged G) are never a best.
    """
    self._eval_calls = 0
    self._eval_degenerate = []
    results = self.evaluator.evaluate(self.generate_uint8, self.data.eval_batches,
                                      self.data.name)
    scalars = {k: float(v) for k, v in results.items()
               if isinstance(v, (int, float, np.floating)) and not isinstance(v, bool)}
    for k, v in scalars.items():
      tf.summary.scalar(f"eval/{k}", v, step=step)
    logging.info("eval at step %d: %s", step, scalars)
    if self._eval_degenerate:
      logging.error("Evaluation at step %d: the samples are %s; this step cannot be a best.",
                    step, self._eval_degenerate[0])
    if self.is_chief:
      path = os.path.join(self.model_dir, "eval.jsonl")
      lines = []
      if os.path.exists(path):
        with open(path) as f:
          lines = [line for line in f if line.strip() and json.loads(line)["step"] != step]
      row = {"step": step, **scalars}
      if self._eval_degenerate:
        row["invalid"] = self._eval_degenerate[0]
      atomic_write(path, "".join(lines) + json.dumps(row) + "\n")
    fid = scalars.get("fid")
    # best_fid lives in the checkpoint, so every worker (and a resumed run) decides alike;
    # compared in its own float32, so an equal FID is not a new best.
    if (fid is not None and np.isfinite(fid) and not self._eval_degenerate and
        np.float32(fid) < self.best_fid.numpy()):
      self.best_fid.assign(fid)
      path = self._save(step, self.best_manager)
      if self.is_chief:
        atomic_write(os.path.join(self.model_dir, "best", "best.json"),
                     json.dumps({"step": step, "checkpoint": path, **scalars}, indent=2))
      logging.info("New best FID %.4f at step %d (saved to %s).", fid, step, path)
    return results

  def generate_uint8(self, n, truncation=1.0):
    """n EMA samples as uint8 numpy for the evaluator.

    The k-th call of an evaluation draws from seed (GAN.seed, k): every evaluation sees the
    same latents, so checkpoints compare on equal terms and a resumed run scores exactly as
    an uninterrupted one. Non-finite or all-equal samples are flagged (`evaluate`).
    """
    self._eval_calls = getattr(self, "_eval_calls", 0) + 1
    seed = int(np.random.SeedSequence([self.gan.seed, 1000 + self._eval_calls])
               .generate_state(1)[0] >> 1)
    seen = {"finite": True, "lo": np.inf, "hi": -np.inf}

    def generate(z, y):
      x = self.gan.generate(z, y, truncation)
      seen["finite"] &= bool(tf.reduce_all(tf.math.is_finite(x)))
      seen["lo"] = min(seen["lo"], float(tf.reduce_min(x)))
      seen["hi"] = max(seen["hi"], float(tf.reduce_max(x)))
      return to_uint8(x)

    images = sample_in_batches(generate, n, self.gan.G.z_dim, self.gan.num_classes,
                               self.batch_size, seed)
    if not seen["finite"]:
      self._eval_degenerate = getattr(self, "_eval_degenerate", []) + ["non-finite"]
    elif n > 1 and seen["hi"] == seen["lo"]:
      self._eval_degenerate = getattr(self, "_eval_degenerate", []) + ["all one value"]
    return images

  def _write_final_samples(self):
    if self.is_chief:
      write_png(os.path.join(self.model_dir, "samples.png"),
                image_grid(self.samples(self.num_samples_grid)))
