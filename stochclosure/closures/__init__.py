"""Closure laws ``p(U | y)``: one interface for diffusion, learned, physics and residual closures.

See :class:`~stochclosure.closures.base.AbstractClosureLaw`. Implementations are registered under
the ``closure`` kind (entry-point group ``stochclosure.closures``).
"""

from .base import AbstractClosureLaw, LikelihoodUnavailable, TimeMemory
from .learned import DeterministicClosure, GaussianClosure, LearnedClosureLaw

__all__ = ["AbstractClosureLaw", "LikelihoodUnavailable", "TimeMemory", "DeterministicClosure", "GaussianClosure",
           "LearnedClosureLaw"]
