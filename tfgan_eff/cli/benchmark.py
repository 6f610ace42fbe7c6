"""Measures training speed and memory of a gin config on this machine.

  bin/benchmark --gin_file=gin/quickstart.gin --steps=20
  bin/benchmark --gin_file=gin/quickstart.gin \
      --variant="diffaug:GAN.augment=@DiffAugment();DiffAugment.policy='translation,cutout'"
  bin/benchmark --describe --gin_file=gin/biggan/biggan_imagenet128.gin
  bin/benchmark --extractor=digits            # FID feature extraction throughput
  bin/benchmark --extractor=inception --inception_path=classify_image_graph_def.pb

For each variant (the base config first): the median step time (one G step with its D
steps) with its min and max, training images/sec (real images consumed per second:
(disc_iters + 1) x global batch per step), the FLOPs of one step (the TF profiler's count
of the traced step, `tfgan_eff.perf`) and the GFLOP/s they imply, as a share of a peak
measured here (a 2048² matmul and the step's largest convolution). The variants are timed in
interleaved rounds in one process, each round in another order (rotated), after --warmup
(>= 3) untimed steps each; ratios are to the base's median. The load average at the start
and the end says how quiet the machine was. Machines are noisy: compare ratios measured side
by side, not numbers from different runs.
"""

import os
import resource
import tempfile
import time

from absl import app, flags

from tfgan_eff.cli import entry, gin_flags  # noqa: F401  (defines --gin_file, --gin_param)

flags.DEFINE_integer("steps", 10, "Timed steps per round.")
flags.DEFINE_integer("rounds", 3, "Interleaved rounds (variants alternate).")
flags.DEFINE_integer("warmup", 3, "Untimed steps per variant first (tracing, caches); >= 3.")
flags.DEFINE_bool("flops", True, "Count each step's FLOPs and measure this machine's peak.")
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
    step = trainer._make_train_step()  # pylint: disable=protected-access
    run_ = {"name": name, "step": step, "it": it, "times": [], "per_step": per_step,
            "replicas": trainer.strategy.num_replicas_in_sync, "flops": None}
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
        f"{'ratio':>8}{'GFLOP/step':>12}{'GFLOP/s':>9}{'of peak':>9}{'replicas':>9}")
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
          f"{r['per_step'] / med:>9.1f}{med / base:>8.3f}{flops}{r['replicas']:>9}")
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
