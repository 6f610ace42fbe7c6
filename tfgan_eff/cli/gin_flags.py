"""The gin flags of the tools that train (train, benchmark): --gin_file, --gin_param,
--model_dir, and `setup()`, which parses them."""

from absl import flags, logging

flags.DEFINE_multi_string("gin_file", [], "gin config file(s); later ones override.")
flags.DEFINE_multi_string("gin_param", [], "gin binding(s), e.g. 'Trainer.train_steps=100'.")
flags.DEFINE_string("model_dir", None, "Run directory (overrides Trainer.model_dir).")

FLAGS = flags.FLAGS


def setup(model_dir_required=True, extra_params=()):
  """Parses the gin flags (model_dir included) after registering every configurable."""
  import tfgan_eff.configurables  # noqa: F401  pylint: disable=import-outside-toplevel
  from tfgan_eff import config  # pylint: disable=import-outside-toplevel
  params = list(FLAGS.gin_param) + list(extra_params)
  if FLAGS.model_dir:
    params.append(f"Trainer.model_dir = '{FLAGS.model_dir}'")
  config.parse(FLAGS.gin_file, params)
  logging.set_verbosity(logging.INFO)
  if model_dir_required:
    import gin  # pylint: disable=import-outside-toplevel
    try:
      gin.query_parameter("Trainer.model_dir")
    except ValueError:
      raise SystemExit("No run directory: pass --model_dir=... (or set Trainer.model_dir "
                       "in a gin file).") from None
