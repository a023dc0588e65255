"""The closure-law interface: a conditional law ``p(U | y)`` of a closure term.

Every closure a rollout can use is a *closure law*: the diffusion :class:`~stochclosure.ClosureModel`,
a deterministic network, a heteroscedastic Gaussian, a physics closure (a Dirac law at a function
of the coarse state), a physics closure plus noise, or a residual law ``U = physics(y) + r``.
They share one interface so that rollouts, checkpoints, training and metrics treat them alike.

A draw is a function of the condition and a *latent* standard-normal tensor: ``U = draw(y, z)``
with ``z ~ N(0, I)`` of :meth:`AbstractClosureLaw.latent_shape`. Policies that correlate draws in
time (an AR(1) in latent space) only need this map; laws without a latent (Dirac laws) have an
empty latent shape. Extra randomness a law consumes inside ``draw`` (e.g. the noise of a
stochastic reverse-SDE sampler) comes from ``generator``.

Shapes: ``cond`` has batch ``B``; a sample is ``(n, B, C, *grid)``; the latent of one draw of
the whole batch is ``(B, *latent_shape)``.
"""

from __future__ import annotations

import abc
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn

from .._types import Conditioning
from ..errors import ShapeError, StochClosureError, format_error

__all__ = ["AbstractClosureLaw", "LikelihoodUnavailable", "NormalisedTarget", "TimeMemory"]

TimeMemory = Literal["none", "latent"]
"""What a law declares about memory in time: ``"none"`` (draws are independent given ``y``) or
``"latent"`` (the law itself carries an AR(1) in its latent; rollouts pass the previous latent)."""


class LikelihoodUnavailable(StochClosureError, NotImplementedError):
    """The law has no tractable density (e.g. a Dirac law, or a diffusion law without likelihood options)."""


class AbstractClosureLaw(nn.Module, abc.ABC):
    """A conditional law ``p(U | y)`` of a closure term on the condition's grid.

    Subclasses implement :meth:`draw` and :meth:`latent_shape` and set :attr:`channels`; the rest
    has defaults. They are ``nn.Module`` so learned laws save their weights in checkpoints.

    Attributes:
        channels: Channels ``C`` of the closure term.
        reparameterised: ``True`` when :meth:`draw` is differentiable in the law's parameters and
            the condition for a fixed latent (needed for a-posteriori fine-tuning by CRPS).
        memory: Declared time-memory behaviour (:data:`TimeMemory`).
    """

    channels: int = 1
    reparameterised: ClassVar[bool] = False
    memory: ClassVar[TimeMemory] = "none"

    # -- what every law implements ---------------------------------------------------------------
    @abc.abstractmethod
    def latent_shape(self, cond: Conditioning, grid: tuple[int, ...]) -> tuple[int, ...]:
        """Shape of one element's latent, without the batch axis (``()`` for a Dirac law).

        Args:
            cond: The condition (batch ``B``).
            grid: Spatial shape of the closure.
        """

    @abc.abstractmethod
    def draw(self, cond: Conditioning, latent: Tensor | None, *, grid: tuple[int, ...] | None = None,
             generator: torch.Generator | None = None) -> Tensor:
        """One draw per batch element for a given latent.

        Args:
            cond: The condition, batch ``B``.
            latent: ``(B, *latent_shape)`` standard-normal latent (``None`` for a Dirac law).
            grid: Spatial shape (default: the condition's grid).
            generator: Randomness consumed inside the draw beyond the latent (may be ``None``
                for laws that use none).

        Returns:
            ``(B, C, *grid)`` closures in physical units.
        """

    # -- defaults ----------------------------------------------------------------------------------
    @property
    def nfe_per_draw(self) -> float:
        """Network evaluations per draw of one batch (0 for a physics closure)."""
        return 0.0

    def sample(self, cond: Conditioning, n: int = 1, *, generator: torch.Generator | None = None,
               grid: tuple[int, ...] | None = None) -> Tensor:
        """``n`` independent draws per batch element, ``(n, B, C, *grid)``.

        The default draws the latent from ``generator`` and calls :meth:`draw` once on the
        condition repeated ``n`` times (one batched call).
        """
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ShapeError(format_error("n", "a positive integer (draws per condition)", repr(n)))
        grid = _grid(cond, grid)
        b = cond.batch_size or 1
        rep = cond.index(torch.arange(n * b) % b) if cond.batch_size else cond
        shape = self.latent_shape(cond, grid)
        latent = None
        if shape:
            latent = torch.randn((n * b, *shape), generator=generator, dtype=torch.float32,
                                 device=_device(cond))
        u = self.draw(rep, latent, grid=grid, generator=generator)
        return u.reshape(n, b, *u.shape[1:])

    def mean(self, cond: Conditioning, *, grid: tuple[int, ...] | None = None) -> Tensor:
        """Conditional mean ``E[U | y]``, ``(B, C, *grid)``; raises where not available in closed form."""
        raise LikelihoodUnavailable(format_error(
            "mean", f"a closed-form mean of {type(self).__name__}", "none implemented",
            "average draws instead: law.sample(cond, n=64).mean(0)"))

    def log_prob(self, u: Tensor, cond: Conditioning) -> Tensor:
        """``log p(U | y)`` of ``u`` ``(..., B, C, *grid)``, shape ``(..., B)``; raises where intractable."""
        raise LikelihoodUnavailable(format_error(
            "log_prob", f"a tractable density of {type(self).__name__}", "none implemented",
            "score draws with stochclosure.metrics (CRPS, energy score) instead"))


class NormalisedTarget:
    """Per-channel target normalisation ``(U - mean) / std`` for a law whose network works in normalised units.

    The law holds ``channels`` and the buffers ``target_mean`` and ``target_std`` of shape ``(C,)``.
    """

    channels: int
    target_mean: Tensor
    target_std: Tensor

    def normalise(self, u: Tensor) -> Tensor:
        """Physical closure ``(B, C, *grid)`` -> normalised units."""
        shape = (1, self.channels) + (1,) * (u.dim() - 2)
        return (u - self.target_mean.view(shape).to(u)) / self.target_std.view(shape).to(u)

    def denormalise(self, x: Tensor) -> Tensor:
        """Normalised ``(B, C, *grid)`` -> physical units."""
        shape = (1, self.channels) + (1,) * (x.dim() - 2)
        return x * self.target_std.view(shape).to(x) + self.target_mean.view(shape).to(x)


def _grid(cond: Conditioning, grid: tuple[int, ...] | None) -> tuple[int, ...]:
    if grid is not None:
        return tuple(int(g) for g in grid)
    if cond.spatial_shape is None:
        raise ShapeError(format_error("grid", "a spatial shape (the condition has no fields)", "None",
                                      "pass grid=(n, n)"))
    return tuple(cond.spatial_shape)


def _device(cond: Conditioning) -> Any:
    for v in (cond.fields, cond.history, cond.obs_values, cond.features):
        if v is not None:
            return v.device
    return None
