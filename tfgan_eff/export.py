"""SavedModel export of the EMA generator, with serving signatures.

The exported module has one function, `generate(z, labels=None, truncation=1.0)`, returning
uint8 images [B, H, W, C], traced for every combination of the optional inputs, and a
`serving_default` signature taking all inputs (`z`, `labels` for conditional models,
`truncation`) for TF Serving and `saved_model_cli`.

    m = tf.saved_model.load(export_dir)
    images = m.generate(tf.random.normal([8, m.z_dim]), labels=tf.range(8) % 10)
"""

import os
import shutil
import tempfile

import tensorflow as tf


class GeneratorModule(tf.Module):
  """The servable generator; holds the EMA generator's variables only."""

  def __init__(self, generator):
    super().__init__(name="tfgan_eff_generator")
    # Track the variables, not the Keras model: Keras would add a signature of its own.
    self.generator_variables = list(generator.weights)
    self.z_dim = tf.Variable(generator.z_dim, trainable=False, name="z_dim")
    self.num_classes = tf.Variable(generator.num_classes, trainable=False, name="num_classes")
    self.resolution = tf.Variable(generator.resolution, trainable=False, name="resolution")
    conditional = generator.num_classes > 0
    z = tf.TensorSpec([None, generator.z_dim], tf.float32, name="z")
    y = tf.TensorSpec([None], tf.int32, name="labels")
    t = tf.TensorSpec([], tf.float32, name="truncation")

    @tf.function
    def generate(z, labels=None, truncation=1.0):
      if conditional and labels is None:
        labels = tf.zeros([tf.shape(z)[0]], tf.int32)
      x = generator(z, labels if conditional else None, training=False,
                    truncation=truncation)
      return tf.cast(tf.clip_by_value(tf.round((x + 1.0) * 127.5), 0, 255), tf.uint8)

    self.generate = generate
    generate.get_concrete_function(z)
    generate.get_concrete_function(z, truncation=t)
    if conditional:
      generate.get_concrete_function(z, y)
      generate.get_concrete_function(z, y, t)
      self.serving = tf.function(lambda z, labels, truncation: {
          "images": generate(z, labels, truncation)}).get_concrete_function(z, y, t)
    else:
      self.serving = tf.function(lambda z, truncation: {
          "images": generate(z, truncation=truncation)}).get_concrete_function(z, t)


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
