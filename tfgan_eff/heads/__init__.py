"""Heads that sit on D's features: rotation and classifier heads (linear, SN like D), InsGen's
contrastive instance heads (projection, momentum copy, key queue)."""

from tfgan_eff.heads.linear import LinearHead
from tfgan_eff.heads.contrastive import (InstanceHead, InstanceHeads, ProjectionHead,
                                         info_nce)
