"""Trains a GAN described by gin files; resumes from --model_dir when it holds a checkpoint.

  bin/train --gin_file=gin/quickstart.gin --model_dir=runs/quickstart
  bin/train --gin_file=gin/quickstart.gin --model_dir=runs/quickstart \
      --gin_param=Trainer.train_steps=2000          # resumes and continues
"""

from tfgan_eff.cli import entry, gin_flags


def main(argv):
  del argv
  gin_flags.setup()
  from tfgan_eff.training import trainer  # pylint: disable=import-outside-toplevel
  # The strategy comes first: MultiWorkerMirroredStrategy must configure collective ops
  # before any TF op runs (loading the data would run some).
  trainer.Trainer(strategy=trainer.make_strategy()).train()


def run():
  """`tfgan-train` and bin/train."""
  entry.run(main, __name__)


if __name__ == "__main__":
  run()
