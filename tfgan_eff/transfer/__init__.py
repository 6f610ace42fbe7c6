"""Transfer learning: AdaFM (load a source GAN, freeze low-level layers, modulate their
kernels), fine-tuning a run (`RunWarmStart`) and importing weights from NumPy `.npz`
files."""

from tfgan_eff.transfer.adafm import AdaFMMonitor, AdaFMTransfer, adafm_layers
from tfgan_eff.transfer.sources import (CheckpointSource, NpzImporter, RunWarmStart,
                                        SourceMismatchError, export_npz)
