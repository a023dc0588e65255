"""Closure laws ``p(U | y)``: one interface for diffusion, learned, physics and residual closures.

See :class:`~stochclosure.closures.base.AbstractClosureLaw`. Implementations are registered under
the ``closure`` kind (entry-point group ``stochclosure.closures``).
"""

from .base import AbstractClosureLaw, LikelihoodUnavailable, NormalisedTarget, TimeMemory
from .composite import PhysicsPlusNoise, ResidualLaw
from .learned import DeterministicClosure, GaussianClosure, LearnedClosureLaw
from .noise import AR1Fit, ColouredNoise, WhiteNoise, fit_ar1
from .physics import ADM, Bardina, DynamicSmagorinsky, GradientModel, PhysicsClosure, ResolvedCorrection, Smagorinsky

__all__ = ["AbstractClosureLaw", "LikelihoodUnavailable", "NormalisedTarget", "TimeMemory", "PhysicsClosure", "Smagorinsky",
           "DynamicSmagorinsky", "GradientModel", "Bardina", "ADM", "ResolvedCorrection", "WhiteNoise",
           "ColouredNoise", "AR1Fit", "fit_ar1", "ResidualLaw", "PhysicsPlusNoise", "DeterministicClosure",
           "GaussianClosure", "LearnedClosureLaw"]
