"""Evaluation: FID / IS / KID / precision-recall on Inception (or digits / MNIST) features.

Metric maths (numpy/scipy, float64) in `metrics`, feature extractors in `features` and
`inception`, and the gin-configurable `Evaluator` that ties them to a generator and a
cached real set; pixel-space memorisation and augmentation-leak checks in `memorisation`, the
orientation leak check (flipped or rotated samples) in `orientation`.
Nothing here downloads at import time.
"""

from tfgan_eff.eval.evaluator import Evaluator, make_extractor
from tfgan_eff.eval.features import (DigitsClassifierExtractor, FeatureExtractor,
                                     MnistClassifierExtractor, heldout_digits,
                                     heldout_mnist, mnist_split)
from tfgan_eff.eval.memorisation import augmentation_leak, memorisation_rate
from tfgan_eff.eval.inception import (InceptionExtractor, InceptionNotFoundError,
                                      load_inception, locate_inception)
from tfgan_eff.eval.orientation import OrientationProbe
from tfgan_eff.eval.metrics import (StreamingMoments, frechet_distance, inception_score,
                                    intra_fid, kernel_inception_distance, load_reference_stats,
                                    precision_recall, trace_sqrt_product)
from tfgan_eff.io import to_uint8  # the one quantizer, here too for evaluation code

__all__ = [
    "Evaluator", "make_extractor", "DigitsClassifierExtractor", "FeatureExtractor",
    "MnistClassifierExtractor", "heldout_digits", "heldout_mnist", "mnist_split", "to_uint8",
    "memorisation_rate", "augmentation_leak", "OrientationProbe", "InceptionExtractor",
    "InceptionNotFoundError",
    "load_inception", "locate_inception", "StreamingMoments", "frechet_distance",
    "inception_score", "intra_fid", "kernel_inception_distance", "load_reference_stats",
    "precision_recall", "trace_sqrt_product",
]
