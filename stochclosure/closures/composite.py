"""Composite closure laws: a physics closure plus a law of the remainder.

* ``residual``: ``U = m(y) + r`` with ``m`` the (closed-form) mean of a physics closure and ``r``
  drawn from any closure law (learned, Gaussian, noise); the latent is ``r``'s. It trains like its
  remainder: :meth:`ResidualLaw.loss` is the remainder's loss of ``U - m(y)``, so the
  :class:`~stochclosure.training.Trainer` fits a learned remainder on the residual targets (the
  remainder's normalisation is set from them by :meth:`ResidualLaw.fit_normalisation`).
* ``physics_plus_noise``: the same with ``r`` a white or coloured Gaussian noise fitted on training
  residuals ``U - m(y)`` by :meth:`PhysicsPlusNoise.fit`.

Specs nest: ``{"type": "residual", "physics": {"type": "adm", "order": 5}, "residual": {...}}``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor

from .._types import Conditioning
from ..config import Configurable
from ..errors import ConfigError, ShapeError, format_error
from ..registry import resolve
from .base import AbstractClosureLaw
from .noise import ColouredNoise, WhiteNoise

__all__ = ["ResidualLaw", "PhysicsPlusNoise"]


class ResidualLaw(Configurable, AbstractClosureLaw):
    """``U = physics.mean(y) + r``, ``r ~ residual(y)``.

    Args:
        physics: A closure law with a closed-form :meth:`~AbstractClosureLaw.mean` (a physics
            closure), as a registered name, spec dict or instance.
        residual: Any closure law of the remainder (name, spec dict or instance).

    The draw is reparameterised when the residual's is; ``log_prob`` and ``loss`` are the
    residual's at ``u - physics.mean(y)``; the time memory and network evaluations are the
    residual's (plus the physics closure's).

    Training: the :class:`~stochclosure.training.Trainer` calls :meth:`loss`, which needs a learned
    remainder (a law with a ``loss``). The Trainer normalises the targets of laws with a
    ``target_mean`` buffer; this law has none of its own (the statistics of ``U`` are not those of
    the residual), so call :meth:`fit_normalisation` with the training pairs first. A remainder with
    ``noise="coloured"`` gets its spectrum fitted on the residuals by :meth:`fit_spectrum` (the
    Trainer calls it at the end of a run).

    Example:
        >>> law = ResidualLaw({"type": "adm", "order": 10}, {"type": "gaussian", "loss": "crps",
        ...                   "backbone": {"type": "fno", "encoder": {"type": "field"}}})  # doctest: +SKIP
        >>> law.fit_normalisation(cond_train, u_train)                                     # doctest: +SKIP
        >>> Trainer(law, TensorClosureDataset(u_train, fields=y_train)).fit()                # doctest: +SKIP
    """

    component_kind: ClassVar[str] = "closure"

    def __init__(self, physics: Any = "adm", residual: Any = "white") -> None:
        super().__init__()
        self.physics = resolve("closure", physics)
        self.residual = resolve("closure", residual)
        if self.physics.channels != self.residual.channels:
            raise ConfigError(format_error("residual", f"a law of {self.physics.channels} channel(s) like physics",
                                           f"{self.residual.channels} channel(s)"))
        self.channels = self.physics.channels
        self.reparameterised = bool(getattr(self.residual, "reparameterised", False))  # type: ignore[misc]
        self.memory = getattr(self.residual, "memory", "none")  # type: ignore[misc]

    @property
    def nfe_per_draw(self) -> float:
        """The residual's plus the physics closure's network evaluations per draw."""
        return float(self.physics.nfe_per_draw) + float(self.residual.nfe_per_draw)

    def latent_shape(self, cond: Conditioning, grid: tuple[int, ...]) -> tuple[int, ...]:
        """The residual law's latent shape."""
        return tuple(self.residual.latent_shape(cond, grid))

    def draw(self, cond: Conditioning, latent: Tensor | None, *, grid: tuple[int, ...] | None = None,
             generator: torch.Generator | None = None) -> Tensor:
        """``physics.mean(cond) + residual.draw(cond, latent)``, ``(B, C, *grid)``."""
        m = self.physics.mean(cond, grid=grid)
        r = self.residual.draw(cond, latent, grid=grid, generator=generator)
        if r.shape != m.shape:
            raise ShapeError(format_error("residual draw", f"shape {tuple(m.shape)} like the physics closure",
                                          f"shape {tuple(r.shape)}"))
        return m + r.to(m.dtype)

    def mean(self, cond: Conditioning, *, grid: tuple[int, ...] | None = None) -> Tensor:
        """``physics.mean + residual.mean`` (raises where the residual has no closed-form mean)."""
        m = self.physics.mean(cond, grid=grid)
        return m + self.residual.mean(cond, grid=grid).to(m.dtype).to(m.device)

    def log_prob(self, u: Tensor, cond: Conditioning) -> Tensor:
        """``residual.log_prob(u - physics.mean(cond))``, ``(..., B)``."""
        return self.residual.log_prob(u - self.physics.mean(cond).to(u.dtype), cond)

    @property
    def noise(self) -> str | None:
        """The remainder's noise form (``"white"``/``"coloured"`` for a Gaussian remainder), else ``None``."""
        value = getattr(self.residual, "noise", None)
        return value if isinstance(value, str) else None

    def residual_target(self, cond: Conditioning | None, u: Tensor) -> Tensor:
        """``u - physics.mean(cond)``: the remainder's targets, ``(B, C, *grid)``.

        Raises:
            ShapeError: ``u`` is not shaped like the physics closure of ``cond``.
        """
        if cond is None or cond.is_empty():
            raise ShapeError(format_error("cond", "coarse fields (the physics closure is a function of them)",
                                          "an empty condition"))
        m = self.physics.mean(cond)
        if not isinstance(u, Tensor) or tuple(u.shape) != tuple(m.shape):
            raise ShapeError(format_error("u", f"shape {tuple(m.shape)} (the closures of cond)",
                                          f"shape {tuple(getattr(u, 'shape', ()))}"))
        return u - m.to(u.dtype).detach()

    def loss(self, cond: Conditioning | None, u: Tensor) -> Tensor:
        """The remainder's training loss of ``u - physics.mean(cond)``; a scalar.

        Raises:
            ConfigError: the remainder has no ``loss`` (a fitted noise law: use its ``fit``).
        """
        fn = getattr(self.residual, "loss", None)
        if not callable(fn):
            raise ConfigError(format_error("residual", "a learned law with a loss(cond, u) to train",
                                           type(self.residual).__name__,
                                           "fit a noise remainder with PhysicsPlusNoise.fit instead"))
        return fn(cond, self.residual_target(cond, u))

    @torch.no_grad()
    def fit_normalisation(self, cond: Conditioning, u: Tensor) -> tuple[Tensor, Tensor]:
        """Set the remainder's ``target_mean`` / ``target_std`` from the residuals of ``(cond, u)``.

        Args:
            cond: Training conditions, batch ``B``.
            u: True closures ``(B, C, *grid)``.

        Returns:
            ``(mean, std)``, each ``(C,)``.

        Raises:
            ConfigError: the remainder has no normalisation buffers.
        """
        if not hasattr(self.residual, "target_mean"):
            raise ConfigError(format_error("residual", "a learned law with target_mean/target_std buffers",
                                           type(self.residual).__name__))
        r = self.residual_target(cond, u).double().transpose(0, 1).reshape(self.channels, -1)
        mean, std = r.mean(1), r.std(1, unbiased=False).clamp_min(1e-8)
        self.residual.target_mean.copy_(mean.to(self.residual.target_mean))
        self.residual.target_std.copy_(std.to(self.residual.target_std))
        return mean.float(), std.float()

    def fit_spectrum(self, cond: Conditioning, u: Tensor) -> Tensor:
        """Fit a coloured remainder's spectrum on the residuals of ``(cond, u)``; returns it ``(C, bins)``."""
        fn = getattr(self.residual, "fit_spectrum", None)
        if not callable(fn):
            raise ConfigError(format_error("residual", "a law with fit_spectrum (a coloured Gaussian)",
                                           type(self.residual).__name__))
        return fn(cond, self.residual_target(cond, u))


NOISES = {"white": WhiteNoise, "coloured": ColouredNoise}


class PhysicsPlusNoise(ResidualLaw):
    """A physics closure plus white or coloured Gaussian noise fitted on training residuals.

    Args:
        physics: The physics closure (name, spec dict or instance).
        noise: ``"white"``, ``"coloured"``, or a spec / instance of either (fitted values kept).

    Example:
        >>> law = PhysicsPlusNoise("adm", "coloured")  # doctest: +SKIP
        >>> law.fit(cond_train, u_train)                # doctest: +SKIP
    """

    def __init__(self, physics: Any = "adm", noise: Any = "white") -> None:
        if isinstance(noise, str) and noise not in NOISES:
            raise ConfigError(format_error("noise", f"one of {sorted(NOISES)} or a noise spec", repr(noise)))
        super().__init__(physics, noise)
        if not isinstance(self.residual, (WhiteNoise, ColouredNoise)):
            raise ConfigError(format_error("noise", "a white or coloured noise law", type(self.residual).__name__,
                                           "use ResidualLaw for other residual laws"))

    @classmethod
    def example(cls) -> PhysicsPlusNoise:
        """ADM + coloured noise fitted on random 16^2 fields, for contract tests."""
        g = torch.Generator().manual_seed(0)
        cond = Conditioning(fields=torch.randn(4, 1, 16, 16, generator=g))
        return cls("adm", "coloured").fit(cond, torch.randn(4, 1, 16, 16, generator=g))

    def fit(self, cond: Conditioning, u: Tensor) -> PhysicsPlusNoise:
        """Fit the noise on the residuals ``u - physics.mean(cond)``.

        Args:
            cond: Training conditions, batch ``B``.
            u: True closures ``(B, C, *grid)``.

        Returns:
            ``self``.
        """
        m = self.physics.mean(cond)
        if not isinstance(u, Tensor) or u.shape != m.shape:
            raise ShapeError(format_error("u", f"shape {tuple(m.shape)} (the closures of cond)",
                                          f"shape {tuple(getattr(u, 'shape', ()))}"))
        self.residual.fit((u.to(m.dtype) - m).detach())
        self.config["noise"] = self.residual.spec()
        return self
