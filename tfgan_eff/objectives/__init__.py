"""Loss terms: each has d_loss(ctx) / g_loss(ctx); the GAN sums the terms listed in gin."""

from tfgan_eff.objectives.adversarial import Adversarial, R1Penalty
from tfgan_eff.objectives.base import Term
from tfgan_eff.objectives.path_length import PathLengthPenalty
from tfgan_eff.objectives.self_supervised import RotationTerm
from tfgan_eff.objectives.semi_supervised import ClassifierTerm
from tfgan_eff.objectives.instance import InstanceDiscrimination
