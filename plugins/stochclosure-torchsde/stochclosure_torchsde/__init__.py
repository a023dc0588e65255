"""torchsde adaptor for stochclosure.

Two public pieces:

* :class:`TorchSDESampler` (registered as the sampler ``"torchsde"``): solves the reverse-time
  SDE, or the probability-flow ODE, with ``torchsde.sdeint`` / ``sdeint_adjoint``, any of the
  methods ``euler``, ``milstein``, ``srk``, ``heun``, ``midpoint``, ``reversible_heun``, fixed or
  adaptive steps, one seeded Brownian interval per ensemble member.
* :class:`ReverseTimeSDE`: the torchsde module itself, built from any registered SDE, a score
  operator (or score function) and a condition, to hand to ``torchsde.sdeint`` directly. It is
  not a sampler, so it is not in the ``stochclosure.samplers`` entry-point group; import it from
  this package.

Example:
    >>> import stochclosure as sc, torch
    >>> from stochclosure.scores import GaussianScore
    >>> sde = sc.resolve("sde", "vp"); op = GaussianScore(sde, std=0.5)
    >>> sampler = sc.resolve("sampler", {"type": "torchsde", "method": "srk", "steps": 50})
    >>> x = sampler.sample(lambda x, t: op(x, t), sde, (8, 1, 4, 4), generator=torch.Generator().manual_seed(0))
    >>> tuple(x.shape), sampler.nfe(50)
    ((8, 1, 4, 4), 101)
"""

from .brownian import MemberBrownian, member_entropies
from .sampler import METHODS, MethodInfo, TorchSDESampler
from .sde import DiagonalReverseTimeSDE, ReverseTimeSDE

__version__ = "0.1.0"

__all__ = [
    "TorchSDESampler",
    "ReverseTimeSDE",
    "DiagonalReverseTimeSDE",
    "MemberBrownian",
    "member_entropies",
    "METHODS",
    "MethodInfo",
]
