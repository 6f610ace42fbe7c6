"""How the bin/ tools end: a user's mistake is one line naming the fix, not a traceback.

    from tfgan_eff import entry
    entry.run(main)          # instead of absl.app.run(main)

Errors the user can cause (a bad setting, a missing file, a damaged or mismatched
checkpoint, a diverged run) print `<tool>: error: <message>` and exit 1; set
TFGAN_EFF_TRACEBACK=1 for the full traceback. Training stopped by SIGTERM/SIGINT exits
128 + the signal (143, 130), as schedulers expect of an interrupted job.
"""

import os
import sys

from absl import app

TRACEBACK_ENV = "TFGAN_EFF_TRACEBACK"


def _user_errors():
  from tfgan_eff.training.trainer import DivergenceError  # pylint: disable=import-outside-toplevel
  return (ValueError, OSError, DivergenceError)


def run(main):
  """absl's app.run(main) with the error handling above."""

  def wrapped(argv):
    from tfgan_eff.training.trainer import TrainingInterrupted  # pylint: disable=import-outside-toplevel
    prog = os.path.basename(sys.argv[0])
    try:
      return main(argv)
    except TrainingInterrupted as e:
      print(f"{prog}: {e}", file=sys.stderr)
      sys.exit(e.exit_code)
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
