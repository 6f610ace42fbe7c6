"""SavedModel export of the EMA generator, with serving signatures.

The exported module has one function,

    generate(z, labels=None, truncation_psi=1.0, noise_mode="const")

returning uint8 images [B, H, W, C] (quantized by `io.to_uint8`, as every image this library
writes), traced for every combination of the optional inputs, and a `serving_default`
signature taking all inputs for TF Serving and `saved_model_cli`.

* `truncation_psi` is the one truncation knob for every backbone, with the meaning of the
  generators' `truncation` argument: 1.0 is none and 0.0 the mean image. BigGAN scales z
  by ψ; StyleGAN2 moves w towards its running average, w_avg + ψ (w − w_avg).
* `noise_mode` exists only for generators with noise inputs (StyleGAN2; `m.has_noise` is
  1): "const" (the default) uses each layer's fixed noise buffer, so the same z always
  gives the same image; "random" draws fresh noise at every call; "none" adds no noise.
  BigGAN exports do not take it.

    m = tf.saved_model.load(export_dir)
    images = m.generate(tf.random.normal([8, m.z_dim]), labels=tf.range(8) % 10)
    images = m.generate(z, truncation_psi=tf.constant(0.7), noise_mode=tf.constant("random"))
"""

import inspect
import os
import shutil
import tempfile

import tensorflow as tf

from tfgan_eff.io import to_uint8
from tfgan_eff.rng import SampleRNG, sample_in_batches

NOISE_MODES = ("const", "random", "none")


def has_noise(generator):
  """True when the generator's call takes a `noise_mode` (StyleGAN2)."""
  return "noise_mode" in inspect.signature(generator.call).parameters


class GeneratorModule(tf.Module):
  """The servable generator; holds the EMA generator's variables only."""

  def __init__(self, generator):
    super().__init__(name="tfgan_eff_generator")
    # Track the variables, not the Keras model: Keras would add a signature of its own.
    self.generator_variables = list(generator.weights)
    self.z_dim = tf.Variable(generator.z_dim, trainable=False, name="z_dim")
    self.num_classes = tf.Variable(generator.num_classes, trainable=False, name="num_classes")
    self.resolution = tf.Variable(generator.resolution, trainable=False, name="resolution")
    noise = has_noise(generator)
    self.has_noise = tf.Variable(int(noise), trainable=False, name="has_noise")
    conditional = generator.num_classes > 0
    z = tf.TensorSpec([None, generator.z_dim], tf.float32, name="z")
    y = tf.TensorSpec([None], tf.int32, name="labels")
    t = tf.TensorSpec([], tf.float32, name="truncation_psi")
    n = tf.TensorSpec([], tf.string, name="noise_mode")

    def fresh_rng():
      # seed = seed2 = 0: seeded anew by the kernel, so every call (and every concrete
      # function) draws other noise, even when a global seed was set while tracing.
      seed = tf.raw_ops.RandomUniformInt(shape=[2], minval=tf.constant(0, tf.int64),
                                         maxval=tf.constant(2 ** 62, tf.int64), seed=0,
                                         seed2=0)
      return SampleRNG(seed)

    def run(z, labels, truncation_psi, noise_mode):
      if conditional and labels is None:
        labels = tf.zeros([tf.shape(z)[0]], tf.int32)
      labels = labels if conditional else None
      if not noise:
        return generator(z, labels, training=False, truncation=truncation_psi)
      if isinstance(noise_mode, str):  # the default: one branch only
        return generator(z, labels, training=False, truncation=truncation_psi,
                         noise_mode=noise_mode, rng=fresh_rng())
      tf.debugging.Assert(tf.reduce_any(tf.equal(noise_mode, NOISE_MODES)),
                          ["noise_mode must be one of", NOISE_MODES, "got", noise_mode])
      branches = [
          (lambda m=m: generator(z, labels, training=False, truncation=truncation_psi,
                                 noise_mode=m, rng=fresh_rng())) for m in NOISE_MODES]
      index = tf.argmax(tf.cast(tf.equal(noise_mode, NOISE_MODES), tf.int32))
      return tf.switch_case(tf.cast(index, tf.int32), branches)

    if noise:
      @tf.function
      def generate(z, labels=None, truncation_psi=1.0, noise_mode="const"):
        return to_uint8(run(z, labels, truncation_psi, noise_mode))
    else:
      @tf.function
      def generate(z, labels=None, truncation_psi=1.0):
        return to_uint8(run(z, labels, truncation_psi, None))

    self.generate = generate
    label_options = [None, y] if conditional else [None]
    noise_options = [{}, {"noise_mode": n}] if noise else [{}]
    for labels in label_options:
      for trunc in ({}, {"truncation_psi": t}):
        for nm in noise_options:
          generate.get_concrete_function(z, labels, **trunc, **nm)
    if conditional and noise:
      self.serving = tf.function(lambda z, labels, truncation_psi, noise_mode: {
          "images": generate(z, labels, truncation_psi, noise_mode)}
                                 ).get_concrete_function(z, y, t, n)
    elif conditional:
      self.serving = tf.function(lambda z, labels, truncation_psi: {
          "images": generate(z, labels, truncation_psi)}).get_concrete_function(z, y, t)
    elif noise:
      self.serving = tf.function(lambda z, truncation_psi, noise_mode: {
          "images": generate(z, None, truncation_psi, noise_mode)}
                                 ).get_concrete_function(z, t, n)
    else:
      self.serving = tf.function(lambda z, truncation_psi: {
          "images": generate(z, truncation_psi=truncation_psi)}).get_concrete_function(z, t)


def export(generator, export_dir):
  """Writes the SavedModel to `export_dir` atomically (a temp dir renamed into place)."""
  export_dir = os.path.abspath(os.path.expanduser(export_dir))
  parent = os.path.dirname(export_dir)
  os.makedirs(parent, exist_ok=True)
  module = GeneratorModule(generator)
  tmp = tempfile.mkdtemp(dir=parent, prefix=".export-")
  try:
    tf.saved_model.save(module, tmp, signatures={"serving_default": module.serving})
    if os.path.exists(export_dir):
      shutil.rmtree(export_dir)
    os.replace(tmp, export_dir)
  finally:
    if os.path.exists(tmp):
      shutil.rmtree(tmp)
  return export_dir


def sampler(exported, truncation_psi=1.0, batch_size=100):
  """(n, seed) -> n uint8 samples [n, H, W, C] of an export (a path or a loaded module).

  Labels are uniform over the classes. For the same seed it feeds the same latents and
  labels as `runs.generate_uint8` does the run's EMA generator
  (`rng.sample_in_batches`), so an export and its checkpoint evaluate to the same numbers
  (`bin/eval --saved_model`).
  """
  m = tf.saved_model.load(exported) if isinstance(exported, str) else exported
  psi = tf.constant(truncation_psi, tf.float32)
  generate = lambda z, y: (m.generate(z, y, psi) if y is not None  # noqa: E731
                           else m.generate(z, truncation_psi=psi))
  return lambda n, seed: sample_in_batches(generate, n, int(m.z_dim), int(m.num_classes),
                                           batch_size, seed)
