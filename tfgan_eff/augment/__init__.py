"""Differentiable augmentation: DiffAugment ops and policies, and ADA (pipeline + controller).

An augmenter is an `Augmenter` (`base.py`): a callable `augment(images, rng) -> images`
(float NHWC in [-1, 1], dtype preserved, differentiable with respect to `images`, per-sample
randomness from a `tfgan_eff.rng.SampleRNG`), with `build`, `update` and `metrics` hooks that
do nothing by default. `AdaptiveAugment` uses `update(real_logits, step, global_batch)`, which
the GAN calls once per D step in replica context, and `metrics()`. `Identity` is no
augmentation (`GAN.augment = None`).

Importing this package registers `DiffAugment` and `AdaptiveAugment` with gin.
"""

from tfgan_eff.augment.ada import PIPELINE_GROUPS, AdaptiveAugment, parse_pipeline
from tfgan_eff.augment.base import Augmenter, Identity
from tfgan_eff.augment.diffaugment import (POLICY_ENTRIES, DiffAugment, brightness, contrast,
                                           cutout, diff_augment, parse_policy, saturation,
                                           translation)
from tfgan_eff.augment.warp import affine_warp, bilinear_sample_reflect, shift_reflect

__all__ = [
    "Augmenter", "Identity", "AdaptiveAugment", "DiffAugment", "diff_augment", "parse_policy",
    "parse_pipeline",
    "brightness", "saturation", "contrast", "translation", "cutout", "POLICY_ENTRIES",
    "PIPELINE_GROUPS", "affine_warp", "bilinear_sample_reflect", "shift_reflect",
]
