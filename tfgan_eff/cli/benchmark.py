"""Measures training speed and memory of a gin config on this machine.

  bin/benchmark --gin_file=gin/quickstart.gin --steps=20
  bin/benchmark --gin_file=gin/quickstart.gin \
      --variant="diffaug:GAN.augment=@DiffAugment();DiffAugment.policy='translation,cutout'"
  bin/benchmark --describe --gin_file=gin/biggan/biggan_imagenet128.gin
  bin/benchmark --extractor=digits            # FID feature extraction throughput
  bin/benchmark --extractor=inception --inception_path=classify_image_graph_def.pb
  bin/benchmark --data_only --gin_file=gin/stylegan2/stylegan2_ffhq256_ada.gin \
      --gin_param="DATA_DIR='/data/ffhq256'" --step_seconds=40   # the input pipeline alone

For each variant (the base config first): the median step time (one G step with its D
steps) with its min and max, training images/sec (real images consumed per second:
(disc_iters + 1) x global batch per step), the FLOPs of one step (the TF profiler's count
of the traced step, `tfgan_eff.perf`) and the GFLOP/s they imply, as a share of a peak
measured here (a 2048² matmul and the step's largest convolution). The variants are timed in
interleaved rounds in one process, each round in another order (rotated), after --warmup
(>= 3) untimed steps each; ratios are to the base's median. The load average at the start
and the end says how quiet the machine was. Machines are noisy: compare ratios measured side
by side, not numbers from different runs.

--data_only builds only the config's data (`Trainer.data`, e.g. an image folder) and times
its training stream at the config's batch: images/s delivered (decoded, prepared, batched,
prefetched), median and range over rounds, against what a training step consumes
((disc_iters + 1) x batch real images per step, so images/s needed = that / s per step).
"""

import inspect
import os
import resource
import tempfile
import time

from absl import app, flags

from tfgan_eff.cli import entry, gin_flags  # noqa: F401  (defines --gin_file, --gin_param)

flags.DEFINE_integer("steps", 10, "Timed steps per round (with --data_only: batches).")
flags.DEFINE_integer("rounds", 3, "Interleaved rounds (variants alternate).")
flags.DEFINE_integer("warmup", 3, "Untimed steps per variant first (tracing, caches); >= 3. "
                     "With --data_only: untimed batches first, >= 1 (the first one includes "
                     "filling a streamed source's shuffle buffer).")
flags.DEFINE_bool("flops", True, "Count each step's FLOPs and measure this machine's peak.")
flags.DEFINE_bool("data_only", False,
                  "Time only the input pipeline of --gin_file: build the config's data "
                  "(Trainer.data; in-memory data is decoded and prepared then, a streamed "
                  "source's file cache written or found), take --warmup batches of "
                  "Trainer.batch_size, then time --rounds x --steps batches and print the "
                  "images/s delivered (median, min, max over rounds), the load average at the "
                  "start and end, the cores and threads, and how that compares with a training "
                  "step: it consumes (GAN.disc_iters + 1) x batch real images, so the images/s "
                  "it needs are that / seconds per step (see --step_seconds).")
flags.DEFINE_float("step_seconds", None,
                   "With --data_only: seconds per training step of the same config (the median "
                   "step time that bin/benchmark without --data_only prints, on the machine "
                   "that will train). Prints the images/s the step consumes, (disc_iters + 1) "
                   "x batch / step_seconds, and the pipeline's ratio to it (goal >= 10x). "
                   "Without it, the shortest steps the pipeline keeps up with are printed.")
flags.DEFINE_multi_string("variant", [], "name:binding;binding... timed against the base.")
flags.DEFINE_bool("describe", False, "Print parameter counts of G and D and exit.")
flags.DEFINE_enum("extractor", None, ["inception", "digits", "inception_v3_untrained"],
                  "Measure feature-extraction images/sec of an evaluation network instead of "
                  "training. 'inception_v3_untrained' is Keras' InceptionV3 with random "
                  "weights at 299 px: the same architecture and cost as the FID network, for "
                  "machines without the FID graph file (speed only, never for scores).")
flags.DEFINE_string("inception_path", None, "FID Inception graph (with --extractor=inception).")
flags.DEFINE_integer("extractor_batch", 50, "Images per forward pass (--extractor).")
flags.DEFINE_integer("image_size", 32, "Input image size for --extractor (resized inside).")
FLAGS = flags.FLAGS


def _parse(extra):
  import gin  # pylint: disable=import-outside-toplevel
  from tfgan_eff import config  # pylint: disable=import-outside-toplevel
  gin.clear_config()
  config.parse(FLAGS.gin_file, list(FLAGS.gin_param) + list(extra), finalize=False)


def describe():
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  from tfgan_eff.params import count_params  # pylint: disable=import-outside-toplevel
  from tfgan_eff.training.gan import GAN  # pylint: disable=import-outside-toplevel
  _parse([])
  gan = GAN()
  g = gan.G
  y = tf.zeros([1], tf.int32) if gan.num_classes else None
  start = time.perf_counter()
  x = g(tf.zeros([1, g.z_dim]), y)  # creates and initialises G's variables
  g_seconds = time.perf_counter() - start
  start = time.perf_counter()
  gan.D(x, y)
  d_seconds = time.perf_counter() - start
  print(f"config: {' '.join(FLAGS.gin_file)}")
  print(f"G {type(g).__name__}: {count_params(g.trainable_variables):,} parameters "
        f"({g.resolution}px, {g.channels} channels, z_dim {g.z_dim}); built in "
        f"{g_seconds:.1f} s")
  print(f"D {type(gan.D).__name__}: {count_params(gan.D.trainable_variables):,} parameters; "
        f"built in {d_seconds:.1f} s")
  print(f"load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


def _binding(name, configurable):
  """The gin parameter `name` ('Configurable.param'): as bound, else the default."""
  import gin  # pylint: disable=import-outside-toplevel
  try:
    return gin.query_parameter(name)
  except ValueError:
    return inspect.signature(configurable).parameters[name.split(".")[-1]].default


def benchmark_data():
  """--data_only: images/s of the config's training input stream, alone."""
  import gin  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  from tfgan_eff.training.gan import GAN  # pylint: disable=import-outside-toplevel
  from tfgan_eff.training.trainer import Trainer  # pylint: disable=import-outside-toplevel
  if FLAGS.warmup < 1 or FLAGS.steps < 1 or FLAGS.rounds < 1:
    raise app.UsageError("--data_only needs --warmup, --steps and --rounds >= 1.")
  if FLAGS.variant:
    raise app.UsageError("--variant compares training steps; it does not apply to "
                         "--data_only (time each data setting with its own --gin_param).")
  if FLAGS.step_seconds is not None and FLAGS.step_seconds <= 0:
    raise app.UsageError(f"--step_seconds must be > 0, got {FLAGS.step_seconds}.")
  _parse([])
  try:
    ref = gin.query_parameter("Trainer.data")
  except ValueError:
    raise app.UsageError(f"--data_only times the config's data, Trainer.data, which "
                         f"{' '.join(FLAGS.gin_file)} does not set (e.g. Trainer.data = "
                         f"@ImageData()).") from None
  batch = _binding("Trainer.batch_size", Trainer)
  disc_iters = _binding("GAN.disc_iters", GAN)
  per_step = (disc_iters + 1) * batch
  load_start = os.getloadavg()
  start = time.perf_counter()
  data = ref.scoped_configurable_fn() if isinstance(ref, gin.config.ConfigurableReference) \
      else ref
  build_seconds = time.perf_counter() - start
  it = iter(data.dataset_fn(batch)(None))
  start = time.perf_counter()
  next(it)
  first_seconds = time.perf_counter() - start
  for _ in range(FLAGS.warmup - 1):
    next(it)
  rates = []
  for _ in range(FLAGS.rounds):
    start = time.perf_counter()
    for _ in range(FLAGS.steps):
      next(it)  # an eager tensor: the batch is ready
    rates.append(FLAGS.steps * batch / (time.perf_counter() - start))
  load_end = os.getloadavg()
  med, low, high = float(np.median(rates)), min(rates), max(rates)

  shape = f"{data.resolution}x{data.resolution}x{data.channels}"
  if data.in_memory:
    how = (f"in memory: {data.num_examples} images decoded and prepared once (in parallel) "
           f"in {build_seconds:.1f} s ({data.num_examples / build_seconds:.1f} images/s), "
           f"then served from memory")
  elif data.cache_path:
    how = (f"streamed from the file cache {data.cache_path} ("
           + (f"written in {build_seconds:.1f} s, {len(data.source) / build_seconds:.1f} "
              f"images/s" if data.cache_built else "found, not rebuilt") + ")")
  else:
    how = ("streamed from the source, read and decoded in every epoch (parallel map, "
           "no ImageData.cache_dir)")
  threads = [tf.config.threading.get_intra_op_parallelism_threads(),
             tf.config.threading.get_inter_op_parallelism_threads()]
  cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  print(f"config: {' '.join(FLAGS.gin_file)} {' '.join(FLAGS.gin_param)}")
  print(f"data: {data.name}: ~{data.num_examples} images, {shape}; {how}")
  print(f"machine: {os.cpu_count()} CPU cores ({cores} usable), TF {tf.__version__}, "
        f"intra-/inter-op threads {'/'.join(str(t or 'default') for t in threads)} "
        f"(default: one per core; tf.data's pool: one per core); load average (1/5/15 min) "
        f"{'/'.join(f'{x:.2f}' for x in load_start)} at the start, "
        f"{'/'.join(f'{x:.2f}' for x in load_end)} at the end")
  fill = ("" if data.in_memory else
          f" (includes filling the shuffle buffer of {data.shuffle_buffer} images)")
  print(f"first batch after {first_seconds:.2f} s{fill}; then {FLAGS.warmup - 1} untimed, "
        f"{FLAGS.rounds} rounds x {FLAGS.steps} batches of {batch} timed")
  print(f"images/s delivered: median {med:.1f} (min {low:.1f}, max {high:.1f}); "
        f"peak resident memory {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f}"
        f" MB")
  print(f"a training step of this config consumes (disc_iters {disc_iters} + 1) x batch "
        f"{batch} = {per_step} real images")
  if FLAGS.step_seconds:
    need = per_step / FLAGS.step_seconds
    print(f"at {FLAGS.step_seconds:g} s/step it needs {per_step} / {FLAGS.step_seconds:g} = "
          f"{need:.2f} images/s; the pipeline delivers {med / need:.1f}x that (median; "
          f"slowest round {low / need:.1f}x; goal >= 10x)")
  else:
    print(f"the pipeline keeps up with steps of >= {per_step / med:.3f} s and delivers >= 10x "
          f"the consumption of steps of >= {10 * per_step / med:.2f} s; pass --step_seconds "
          f"(the median step time of `bin/benchmark --gin_file=...`) for the ratio")


def _untrained_inception_v3():
  """Keras InceptionV3 (random weights) with the FID network's interface and cost."""
  import keras  # pylint: disable=import-outside-toplevel
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  net = keras.applications.InceptionV3(weights=None, include_top=False, pooling="avg",
                                       input_shape=(299, 299, 3))

  @tf.function(reduce_retracing=True)
  def forward(images):
    x = tf.image.resize(tf.cast(images, tf.float32), [299, 299], method="bilinear")
    return {"pool": net(x / 127.5 - 1.0, training=False)}

  return lambda images: {k: v.numpy() for k, v in forward(images).items()}


def benchmark_extractor():
  import numpy as np  # pylint: disable=import-outside-toplevel
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  from tfgan_eff.eval.evaluator import make_extractor  # pylint: disable=import-outside-toplevel
  if FLAGS.extractor == "inception_v3_untrained":
    extractor, channels = _untrained_inception_v3(), 3
  else:
    extractor = make_extractor(FLAGS.extractor, inception_path=FLAGS.inception_path,
                               batch_size=FLAGS.extractor_batch)
    channels = 3 if getattr(extractor, "needs_rgb", True) else 1
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, [FLAGS.extractor_batch, FLAGS.image_size, FLAGS.image_size,
                                 channels], dtype=np.uint8)
  for _ in range(FLAGS.warmup):
    extractor(images)
  times = []
  for _ in range(FLAGS.rounds * FLAGS.steps):
    t0 = time.perf_counter()
    extractor(images)
    times.append(time.perf_counter() - t0)
  med = float(np.median(times))
  print(f"extractor: {FLAGS.extractor}, {FLAGS.image_size}px uint8 input, batch "
        f"{FLAGS.extractor_batch}, {len(times)} timed batches")
  print(f"machine: {os.cpu_count()} CPU cores, GPUs: "
        f"{len(tf.config.list_physical_devices('GPU'))}, TF {tf.__version__}")
  print(f"median batch time {med:.4f} s, {FLAGS.extractor_batch / med:.1f} images/sec; "
        f"peak resident memory {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f}"
        f" MB")


def main(argv):
  del argv
  import tfgan_eff.configurables  # noqa: F401  pylint: disable=import-outside-toplevel
  if FLAGS.describe:
    describe()
    return
  if FLAGS.extractor:
    benchmark_extractor()
    return
  if FLAGS.data_only:
    if not FLAGS.gin_file:
      raise app.UsageError("--data_only needs --gin_file (a training config with data).")
    benchmark_data()
    return
  if not FLAGS.gin_file:
    raise app.UsageError("Pass --gin_file (a training config), or --extractor.")
  import numpy as np  # pylint: disable=import-outside-toplevel
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  from tfgan_eff.training.trainer import Trainer  # pylint: disable=import-outside-toplevel
  variants = [("base", [])]
  for v in FLAGS.variant:
    name, _, bindings = v.partition(":")
    variants.append((name, [b for b in bindings.split(";") if b.strip()]))
  if FLAGS.warmup < 3:
    raise app.UsageError(f"--warmup must be >= 3 (got {FLAGS.warmup}): the first steps of a "
                         f"variant include tracing and warm caches.")
  from tfgan_eff import perf  # pylint: disable=import-outside-toplevel
  load_start = os.getloadavg()
  runs = []
  for name, extra in variants:
    _parse(extra)
    trainer = Trainer(model_dir=tempfile.mkdtemp(prefix="tfgan_eff-bench-"))
    per_step = (trainer.gan.disc_iters + 1) * trainer.batch_size
    it = iter(trainer.strategy.distribute_datasets_from_function(
        trainer.data.dataset_fn(trainer.batch_size)))
    step = trainer._make_train_step(it)  # pylint: disable=protected-access
    run_ = {"name": name, "step": step, "it": it, "times": [], "per_step": per_step,
            "replicas": trainer.strategy.num_replicas_in_sync, "flops": None,
            "xla": "on" if trainer.xla else "off"}
    if FLAGS.flops:
      cost = perf.step_cost(trainer, it)
      run_.update(flops=cost["flops"], lower_bound=cost["lower_bound"], conv=cost["conv"])
    runs.append(run_)
  # Warm-up once every variant exists: creating a GAN sets the global random seed, and
  # tf.function retraces every step function after that (before, the base paid for that
  # retrace in its first timed step, 20x a step, after the variants were built).
  for r in runs:
    for _ in range(FLAGS.warmup):
      r["step"](r["it"], tf.constant(False))
  for k in range(FLAGS.rounds):
    for r in runs[k % len(runs):] + runs[:k % len(runs)]:  # rotated: no fixed first place
      for _ in range(FLAGS.steps):
        t0 = time.perf_counter()
        out = r["step"](r["it"], tf.constant(False))  # False: no stop signal
        tf.nest.map_structure(lambda t: t.numpy(), out)  # wait for the step to finish
        r["times"].append(time.perf_counter() - t0)
  peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  peak = perf.measure_peak(runs[0].get("conv")) if FLAGS.flops else None
  load_end = os.getloadavg()
  print(f"config: {' '.join(FLAGS.gin_file)} {' '.join(FLAGS.gin_param)}")
  print(f"machine: {os.cpu_count()} CPU cores, GPUs: "
        f"{len(tf.config.list_physical_devices('GPU'))}, TF {tf.__version__}; load average "
        f"(1/5/15 min) {'/'.join(f'{x:.2f}' for x in load_start)} at the start, "
        f"{'/'.join(f'{x:.2f}' for x in load_end)} at the end")
  if peak:
    conv = runs[0].get("conv")
    print(f"peak measured here: matmul 2048² {peak['matmul']:.1f} GFLOP/s"
          + (f", conv {conv[0]} * {conv[1]} {peak['conv']:.1f} GFLOP/s" if conv else ""))
  base = float(np.median(runs[0]["times"]))
  print(f"{'variant':<16}{'step s (median)':>16}{'min':>9}{'max':>9}{'img/s':>9}"
        f"{'ratio':>8}{'GFLOP/step':>12}{'GFLOP/s':>9}{'of peak':>9}{'replicas':>9}{'XLA':>5}")
  for r in runs:
    med = float(np.median(r["times"]))
    flops = ""
    if r["flops"]:
      rate = r["flops"] / med / 1e9
      bound = ">=" if r["lower_bound"] else ""
      flops = (f"{bound + format(r['flops'] / 1e9, '.2f'):>12}{bound + format(rate, '.1f'):>9}"
               f"{format(100 * rate / peak['peak'], '.0f') + '%':>9}")
    else:
      flops = f"{'-':>12}{'-':>9}{'-':>9}"
    print(f"{r['name']:<16}{med:>16.4f}{min(r['times']):>9.4f}{max(r['times']):>9.4f}"
          f"{r['per_step'] / med:>9.1f}{med / base:>8.3f}{flops}{r['replicas']:>9}{r['xla']:>5}")
  if any(r.get("lower_bound") for r in runs):
    print("(>=: the step has conditionals, e.g. lazy R1 / path length, whose FLOPs the "
          "profiler does not count)")
  print(f"peak resident memory of the process: {peak_mb:.0f} MB "
        f"({FLAGS.rounds} rounds x {FLAGS.steps} steps per variant, {FLAGS.warmup} warm-up)")


def run():
  """`tfgan-benchmark` and bin/benchmark."""
  entry.run(main, __name__)


if __name__ == "__main__":
  run()
