"""Converts a published network of the reference code into a run directory of this library.

  bin/convert --source=ffhq.pkl --model_dir=runs/ffhq              # stylegan2-ada-pytorch
  bin/convert --source=weights/BigGAN_I128 --model_dir=runs/biggan  # G.pth, D.pth, G_ema.pth
  bin/sample --model_dir=runs/ffhq                                  # samples, as any run

The run directory holds `config.gin` (our networks, as the source's architecture) and
`checkpoints/ckpt-0` (G, G_ema, D). Fine-tune it with `RunWarmStart.model_dir`, or transfer
it with `AdaFMTransfer.source` (README, "Start from a published model"). Reading `.pkl` /
`.pt` / `.pth` files needs torch: `pip install -e '.[convert]'`; `.npz` state dicts do not.
"""

from absl import flags, logging

from tfgan_eff.cli import entry

flags.DEFINE_string("source", None, "A stylegan2-ada-pytorch network pickle (.pkl), a "
                    "BigGAN-PyTorch weights folder (G.pth, D.pth, G_ema.pth), or state dicts "
                    "(.npz/.pt/.pth; names prefixed G., D., G_ema.).", required=True)
flags.DEFINE_string("model_dir", None, "The run directory to write (must not exist or be "
                    "empty).", required=True)
flags.DEFINE_enum("format", "auto", ["auto", "stylegan2-ada", "biggan-pytorch"],
                  "Which reference code made the source (auto: from the tensor names).")
flags.DEFINE_multi_string("hint", [], "name=value for what a bare state dict does not "
                          "record, e.g. --hint=conv_clamp=None --hint=mbstd_group_size=8.")
flags.DEFINE_bool("overwrite", False, "Replace an existing run directory.")
FLAGS = flags.FLAGS


def main(argv):
  del argv
  # pylint: disable=import-outside-toplevel
  from tfgan_eff.convert import common, reader
  logging.set_verbosity(logging.INFO)
  converted = reader.convert(FLAGS.source, FLAGS.format, reader.parse_hints(FLAGS.hint))
  model_dir, gan = common.write_run(converted, FLAGS.model_dir, overwrite=FLAGS.overwrite)
  n = {k: len(v) for k, v in converted.tensors.items()}
  g = gan.G
  logging.info("Converted %s into %s: %s tensors; G %d px, %d classes, %s parameters.",
               converted.description, model_dir, n, g.resolution, gan.num_classes,
               f"{sum(int(v.shape.num_elements()) for v in g.trainable_variables):,}")


def run():
  """`tfgan-convert` and bin/convert."""
  entry.run(main, __name__)


if __name__ == "__main__":
  run()
