"""Heads that sit on D's features: rotation and classifier heads (linear, SN like D)."""

from tfgan_eff.heads.linear import LinearHead, uses_spectral_norm
