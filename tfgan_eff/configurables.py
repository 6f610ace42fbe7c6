"""Imports every module that registers gin configurables, so gin files can name them."""

# pylint: disable=unused-import
from tfgan_eff import augment  # noqa: F401  DiffAugment, AdaptiveAugment
from tfgan_eff import data  # noqa: F401  ImageData, Digits, ImageFolder, Arrays, TFDS
from tfgan_eff.eval import evaluator  # noqa: F401  Evaluator
from tfgan_eff import objectives  # noqa: F401  Adversarial, R1Penalty, ...
from tfgan_eff.objectives import self_supervised, semi_supervised  # noqa: F401  (the S3GAN terms)
from tfgan_eff.objectives import path_length  # noqa: F401  PathLengthPenalty
from tfgan_eff.objectives import instance  # noqa: F401  InstanceDiscrimination (InsGen)
from tfgan_eff.models import biggan, stylegan2  # noqa: F401
from tfgan_eff.training import gan, optimizers, trainer  # noqa: F401
from tfgan_eff import transfer  # noqa: F401  AdaFMTransfer, AdaFMMonitor, NpzImporter
from tfgan_eff import precision  # noqa: F401  LossScale
