"""Data sources and the training/eval pipeline."""

from tfgan_eff.data.pipeline import ImageData, label_mask, subset_indices
from tfgan_eff.data.sources import Arrays, Digits, ImageFolder, Source, TFDS
