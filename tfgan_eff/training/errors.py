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


class DivergenceError(RuntimeError):
  """A loss or gradient became non-finite; nothing of that step was saved."""
