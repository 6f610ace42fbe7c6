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
  from a signal handler is lost when the signal lands in a finalizer (`__del__`: Python
  prints it as "Exception ignored" and goes on) or in native code that clears Python's
  error state; seen once in CI, where the run then trained to its end and exited 0. So the
  handler also records the signal (`received`), does not raise inside a finalizer, and the
  Trainer raises it before its first step (the tools, when their work returns).
  """

  received = False


def raise_terminated(signum, frame):
  """The SIGTERM handler outside the training steps (see `Terminated`)."""
  del signum
  Terminated.received = True
  while frame is not None:
    if frame.f_code.co_name == "__del__":
      return  # an exception here would be printed and dropped: raised later instead
    frame = frame.f_back
  raise Terminated()


class DivergenceError(RuntimeError):
  """A loss or gradient became non-finite; nothing of that step was saved."""
