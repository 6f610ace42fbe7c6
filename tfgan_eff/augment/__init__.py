"""Differentiable augmentation: DiffAugment ops and policies, and ADA (pipeline + controller).

An augmenter is a callable `augment(images, rng) -> images` (float NHWC in [-1, 1], dtype
preserved, differentiable with respect to `images`, per-sample randomness from a
`tfgan_eff.rng.SampleRNG`). `AdaptiveAugment` also has `update(real_logits, step,
global_batch) -> metrics`, which the GAN calls once per D step in replica context.

Importing this package registers `DiffAugment` and `AdaptiveAugment` with gin.
"""

from tfgan_eff.augment.ada import PIPELINE_GROUPS, AdaptiveAugment, parse_pipeline
from tfgan_eff.augment.diffaugment import (POLICY_ENTRIES, DiffAugment, brightness, contrast,
                                           cutout, diff_augment, parse_policy, saturation,
                                           translation)
from tfgan_eff.augment.warp import affine_warp, bilinear_sample_reflect, shift_reflect

__all__ = [
    "AdaptiveAugment", "DiffAugment", "diff_augment", "parse_policy", "parse_pipeline",
    "brightness", "saturation", "contrast", "translation", "cutout", "POLICY_ENTRIES",
    "PIPELINE_GROUPS", "affine_warp", "bilinear_sample_reflect", "shift_reflect",
]
