"""A loopback plugin (as networkx tests its backends): components that delegate to built-ins.

Installed only by the test command, it proves that a separately installed distribution's
components are discovered through entry points exactly like the core's.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from stochclosure.samplers import AbstractSampler, EulerMaruyama
from stochclosure.sdes import VPSDE, AbstractSDE


class LoopbackSDE(AbstractSDE):
    """A VP SDE reached through a plugin: every call is forwarded to :class:`VPSDE`."""

    family = "vp"

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0) -> None:
        self.inner = VPSDE(beta_min, beta_max)
        self.T, self.eps = self.inner.T, self.inner.eps

    def marginal_coefficients(self, t: Tensor) -> tuple[Tensor, Tensor]:
        return self.inner.marginal_coefficients(t)

    def drift(self, x: Tensor, t: Tensor) -> Tensor:
        return self.inner.drift(x, t)

    def diffusion(self, t: Tensor) -> Tensor:
        return self.inner.diffusion(t)


class LoopbackSampler(AbstractSampler):
    """Euler–Maruyama reached through a plugin."""

    def __init__(self, steps: int = 500) -> None:
        self.inner = EulerMaruyama(steps=steps)

    def sample(self, score_fn: Any, sde: Any, shape: Any, **kwargs: Any) -> Tensor:
        return self.inner.sample(score_fn, sde, shape, **kwargs)

    def nfe(self, steps: int | None = None) -> int:
        return self.inner.nfe(steps)
