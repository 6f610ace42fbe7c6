"""How the tools end: a user's mistake is one line naming the fix, not a traceback.

    from tfgan_eff.cli import entry
    entry.run(main, __name__)          # instead of absl.app.run(main)

Errors the user can cause (a bad setting, a missing file, a damaged or mismatched
checkpoint, a diverged run) print `<tool>: error: <message>` and exit 1; set
TFGAN_EFF_TRACEBACK=1 for the full traceback. Training stopped by SIGTERM/SIGINT exits
128 + the signal (143, 130), as schedulers expect of an interrupted job.
"""

import os
import signal
import sys

from absl import app

from tfgan_eff.cli import adopt_help

TRACEBACK_ENV = "TFGAN_EFF_TRACEBACK"

# TF's default CPU allocator hands large buffers back to the OS after each use, and every step
# then faults them in again page by page: measured here, half of the CPU time of a StyleGAN2
# MNIST step went to the kernel (450 million minor page faults per training process in an
# hour). TF's BFC allocator keeps a pool instead: the same steps, bit-identical losses, at
# half the time (docs/performance.md). Set before TF makes its first tensor; the user's own
# setting wins.
os.environ.setdefault("TF_CPU_ALLOCATOR_USE_BFC", "1")
# TF turns its oneDNN CPU kernels on by default only on AVX-512 CPUs; on this project's
# AVX2-only machine they made the StyleGAN2 quickstart step 2.5x faster (0.099 against 0.25
# s/step) and BigGAN's uncompiled step 1.24x faster; XLA-compiled BigGAN steps do not use TF's
# kernels and are unchanged (docs/performance.md). On for every tool, so that all runs (and
# all cells of a study) use the same kernels on any x86 machine; the user's setting wins.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")


def _user_errors():
  from tfgan_eff.training.errors import DivergenceError  # pylint: disable=import-outside-toplevel
  return (ValueError, OSError, DivergenceError)


def run(main, tool=None):
  """absl's app.run(main) with the error handling above; `tool`: see `cli.adopt_help`."""
  if tool:
    adopt_help(tool)

  def wrapped(argv):
    from tfgan_eff.training.errors import (  # pylint: disable=import-outside-toplevel
        Terminated, TrainingInterrupted, raise_terminated)
    prog = os.path.basename(sys.argv[0])
    # The training loop installs its own handler (finish the step, save); outside it a
    # SIGTERM ends the tool like Ctrl-C does, with the exit code schedulers expect.
    signal.signal(signal.SIGTERM, raise_terminated)
    try:
      result = main(argv)
      if Terminated.received:  # its exception was lost (see Terminated)
        raise Terminated()
      return result
    except TrainingInterrupted as e:
      print(f"{prog}: {e}", file=sys.stderr)
      sys.exit(e.exit_code)
    except Terminated:
      print(f"{prog}: stopped by SIGTERM outside the training steps (nothing unsaved was "
            f"trained); re-run the same command to resume.", file=sys.stderr)
      sys.exit(128 + signal.SIGTERM)
    except KeyboardInterrupt:
      print(f"{prog}: interrupted.", file=sys.stderr)
      sys.exit(130)
    except _user_errors() as e:
      if os.environ.get(TRACEBACK_ENV):
        raise
      message = str(e).split("\n  In call to configurable")[0]  # gin's own suffix
      print(f"{prog}: error: {message}\n(set {TRACEBACK_ENV}=1 for the traceback)",
            file=sys.stderr)
      sys.exit(1)

  app.run(wrapped)
