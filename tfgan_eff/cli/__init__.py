"""The command-line tools: one module per tool, each with `main(argv)` and `run()`.

    train      bin/train      tfgan-train       train a GAN from gin files (resumes)
    eval       bin/eval       tfgan-eval        FID / IS / KID / precision-recall of a run
    export     bin/export     tfgan-export      SavedModel of a run's EMA generator
    sample     bin/sample     tfgan-sample      a PNG grid from an export or a run
    benchmark  bin/benchmark  tfgan-benchmark   training speed, memory, parameter counts
    study      bin/study      tfgan-study       a grid of runs, evaluated and tabulated

`bin/<tool>` (from a checkout) and `tfgan-<tool>` (installed by pip) both call
`tfgan_eff.cli.<tool>.run()`. Importing a tool module imports no TensorFlow: the
environment TF reads once at start-up is set first (here, and in `entry.py`), and TF comes
in with `main`.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import flags  # noqa: E402


def adopt_help(tool):
  """Makes `--help` of the script that started a tool (bin/<tool>, the installed
  tfgan-<tool>) show the docstring and flags of the tool's module (`tool`: its __name__),
  as absl shows those of `__main__`."""
  module, started = sys.modules[tool], sys.modules["__main__"]
  if started is not module:
    started.__doc__ = module.__doc__
  for flag in flags.FLAGS.get_key_flags_for_module(tool):
    flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag)


def define_standing_stats_flag(tool):
  """--standing_stats of the tools that sample a run's checkpoint (eval, sample, export;
  `tool`: the module's __name__); they pass it to `training.runs.load_gan`."""
  flags.DEFINE_integer(
      "standing_stats", 0, "Standing statistics: before sampling, re-estimate the EMA "
      "generator's batch-norm statistics as the mean over this many training-mode batches "
      "of 64 fresh (z, labels) (BigGAN-PyTorch's --accumulate_stats "
      "--num_standing_accumulations); 0: off, the moving averages of training. The run's "
      "checkpoints are not changed; generators without batch norm (StyleGAN2) are not "
      "affected.", lower_bound=0, module_name=tool)
