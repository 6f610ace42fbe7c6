"""What a training step costs and what this machine can do: FLOPs and a measured peak.

`bin/benchmark` prints, next to every measured step time, the step's floating-point
operations and the share of a peak measured on the spot, so that no figure it prints can be
physically impossible:

    cost = step_cost(trainer, iterator)         # D steps + G step, TF profiler's count
    peak = measure_peak(cost["conv"])
    achieved = cost["flops"] / seconds_per_step

FLOPs are the TF profiler's count of the traced graph (`float_operation`: convolutions,
their two gradients, matrix products, ...; multiply-add = 2). Ops inside conditionals (the
lazy R1 of every 16th D step, the path length of every 4th G step) are nested functions the
profiler does not enter: the count is then a lower bound, which `step_cost` says.
"""

import time

import numpy as np
import tensorflow as tf


def graph_flops(graph):
  """The TF profiler's floating-point operation count of `graph` (its top level)."""
  from tensorflow.python.profiler import model_analyzer, option_builder  # pylint: disable=import-outside-toplevel
  opts = option_builder.ProfileOptionBuilder.float_operation()
  opts["output"] = "none"
  return int(model_analyzer.profile(graph, options=opts).total_float_ops)


def _has_conditionals(graph):
  return any(op.type in ("If", "StatelessIf", "While", "StatelessWhile")
             for op in graph.get_operations())


def _step_graph(trainer, iterator):
  """The graph of one training step's math (D steps + G step, inline, on every replica)."""
  gan, strategy = trainer.gan, trainer.strategy
  step = tf.constant(0, tf.int64)
  batches = [next(iterator) for _ in range(gan.disc_iters + 1)]

  def fn(*batches):
    for i in range(gan.disc_iters):
      strategy.run(gan.d_step, args=(batches[i], step, tf.constant(i, tf.int64)))
    strategy.run(gan.g_step, args=(batches[-1], step))
    return tf.constant(0)

  return tf.function(fn, autograph=False).get_concrete_function(*batches).graph


def step_cost(trainer, iterator):
  """One training step of `trainer`, traced once more (nothing is run) on batches of
  `iterator` -> {"flops": the profiler's count, "lower_bound": whether conditionals hide
  some of it, "conv": (input shape, filter shape, strides) of its forward 2-D convolution
  with the most FLOPs, or None}."""
  graph = _step_graph(trainer, iterator)
  best, conv = 0, None
  for op in graph.get_operations():
    if op.type != "Conv2D":
      continue
    x, w, out = op.inputs[0].shape, op.inputs[1].shape, op.outputs[0].shape
    if not (x.is_fully_defined() and w.is_fully_defined() and out.is_fully_defined()):
      continue
    flops = 2 * int(np.prod(out)) * int(np.prod(w[:3]))
    if flops > best:
      best, conv = flops, (tuple(x), tuple(w), tuple(op.get_attr("strides")))
  return {"flops": graph_flops(graph), "lower_bound": _has_conditionals(graph), "conv": conv}


def _time_gflops(fn, flops, repeats):
  fn()  # trace, warm
  fn()
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn().numpy()
    times.append(time.perf_counter() - t0)
  return flops / float(np.median(times)) / 1e9


def measure_peak(conv=None, matmul=2048, repeats=7):
  """Measured GFLOP/s of a float32 `matmul`² product and, given `conv` (from
  `step_cost`), of that convolution: {"matmul": ..., "conv": ..., "peak": max}."""
  out = {}
  a = tf.random.normal([matmul, matmul])
  b = tf.random.normal([matmul, matmul])
  mm = tf.function(lambda: tf.reduce_sum(tf.matmul(a, b)))
  out["matmul"] = _time_gflops(mm, 2 * matmul ** 3, repeats)
  if conv is not None:
    x_shape, w_shape, strides = conv
    x, w = tf.random.normal(x_shape), tf.random.normal(w_shape)
    op = tf.function(lambda: tf.reduce_sum(tf.nn.conv2d(x, w, strides, "SAME")))
    out_pixels = x_shape[0] * (-(-x_shape[1] // strides[1])) * (-(-x_shape[2] // strides[2]))
    out["conv"] = _time_gflops(op, 2 * out_pixels * w_shape[3] * int(np.prod(w_shape[:3])),
                               repeats)
  out["peak"] = max(out.values())
  return out
