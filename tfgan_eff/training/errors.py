"""How a training run ends early: the exceptions the Trainer raises and the tools report.

Kept apart from `trainer.py` (which imports TensorFlow and the GAN) so that
`tfgan_eff/cli/entry.py`, shared by every tool, can name them without importing the trainer.
"""

import signal


class TrainingInterrupted(Exception):
  """Training stopped on SIGTERM/SIGINT after saving a checkpoint (resume by re-running)."""

  def __init__(self, signum, step, checkpoint):
    self.signum, self.step, self.checkpoint = signum, step, checkpoint
    self.exit_code = 128 + signum
    name = signal.Signals(signum).name
    super().__init__(f"Interrupted by {name} at step {step}; saved {checkpoint}. Re-run the "
                     f"same command to resume from it.")


class Terminated(BaseException):
  """SIGTERM outside the training steps (start-up, evaluation tools): end cleanly, 143.

  Raised by `raise_terminated`, the handler the tools install at start. An exception raised
  from a signal handler can be lost when the signal lands while native code (TensorFlow,
  numpy) is running and that code clears Python's error state; `received` remembers the
  signal anyway, and the Trainer re-raises it before its first step rather than train on.
  """

  received = False


def raise_terminated(signum, frame):
  """The SIGTERM handler outside the training steps (see `Terminated`)."""
  del signum, frame
  Terminated.received = True
  raise Terminated()


class DivergenceError(RuntimeError):
  """A loss or gradient became non-finite; nothing of that step was saved."""
