"""The sampler interface, step callbacks, noise sources and the grid-sampler skeleton.

A sampler solves the reverse-time dynamics of an :class:`~stochclosure.sdes.AbstractSDE` given
only a score function ``score_fn(x, t)``. Each algorithm is a small function with the shared
signature ``solver(score_fn, sde, x, ts, *, noise, callback, **options) -> x`` that integrates
from ``ts[0]`` down to ``ts[-1]``; a tiny registered class picks the time grid and the start.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from .._types import ScoreFn
from ..config import Configurable
from ..errors import ConfigError, ShapeError, format_error
from ..sdes.base import AbstractSDE
from . import grids

__all__ = ["AbstractSampler", "GridSampler", "StepInfo", "NoiseSource", "GaussianNoise", "CountingScore",
           "check_steps", "Callback"]


@dataclass
class StepInfo:
    """What a sampler reports to ``callback`` after each step.

    Attributes:
        step: Index of the step just taken (0-based).
        n_steps: Total number of steps.
        t: Time at the start of the step.
        t_next: Time at the end of the step.
        x: ``(batch, *event)`` state after the step.
        nfe: Score evaluations so far.
    """

    step: int
    n_steps: int
    t: float
    t_next: float
    x: Tensor
    nfe: int


Callback = Callable[[StepInfo], Any]


class NoiseSource(abc.ABC):
    """Where stochastic samplers get their randomness.

    ``increment(t0, t1, like)`` returns a Brownian increment ``W(t1) - W(t0)`` (variance
    ``|t1 - t0|``) shaped like ``like``; ``normal(like)`` a standard normal draw (churn, Langevin
    corrector). A path-consistent source returns the same Brownian path for any time grid.
    """

    @abc.abstractmethod
    def increment(self, t0: float, t1: float, like: Tensor) -> Tensor:
        """Brownian increment between diffusion times ``t0`` and ``t1``."""

    def normal(self, like: Tensor) -> Tensor:
        """A standard normal tensor like ``like`` (default: a unit increment)."""
        return self.increment(0.0, 1.0, like)


class GaussianNoise(NoiseSource):
    """Independent Gaussian increments from a ``torch.Generator`` (the default source).

    Args:
        generator: Random generator; ``None`` uses torch's global one.
    """

    def __init__(self, generator: torch.Generator | None = None) -> None:
        self.generator = generator

    def increment(self, t0: float, t1: float, like: Tensor) -> Tensor:
        return abs(t1 - t0) ** 0.5 * self.normal(like)

    def normal(self, like: Tensor) -> Tensor:
        gen = self.generator
        if gen is not None and gen.device != like.device:
            return torch.randn(like.shape, generator=gen, dtype=like.dtype).to(like.device)
        return torch.randn(like.shape, generator=gen, dtype=like.dtype, device=like.device)


class CountingScore:
    """Wrap a score function and count its evaluations (``.nfe``)."""

    def __init__(self, score_fn: ScoreFn) -> None:
        self.score_fn = score_fn
        self.nfe = 0

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        self.nfe += 1
        return self.score_fn(x, t)


def check_steps(steps: Any, name: str = "steps") -> int:
    """Validate a step count (a positive int)."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ConfigError(format_error(name, "a positive integer", repr(steps), f"use e.g. {name}=10"))
    return steps


class AbstractSampler(Configurable, abc.ABC):
    """Draws ``x_0`` approximately from the data law behind a score function.

    Capabilities (class attributes):
        stochastic: Injects noise (SDE) rather than integrating an ODE.
        accepts_noise: Takes a :class:`NoiseSource` through ``noise=``.
    """

    component_kind: ClassVar[str] = "sampler"
    stochastic: ClassVar[bool] = True
    accepts_noise: ClassVar[bool] = True

    @classmethod
    def example(cls) -> "AbstractSampler":
        """A small instance for contract tests and docs (default ``cls()``)."""
        return cls()

    @abc.abstractmethod
    def sample(
        self,
        score_fn: ScoreFn,
        sde: AbstractSDE,
        shape: tuple[int, ...],
        *,
        steps: int | None = None,
        generator: torch.Generator | None = None,
        noise: NoiseSource | None = None,
        callback: Callback | None = None,
        x_init: Tensor | None = None,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> Tensor:
        """Sample ``shape = (batch, *event)`` from the law whose score is ``score_fn``.

        Args:
            score_fn: ``score_fn(x, t) -> score`` with the condition already bound.
            sde: The forward SDE the score belongs to.
            shape: ``(batch, *event)``.
            steps: Number of steps (default: the sampler's own).
            generator: Seeds the start and, unless ``noise`` is given, the noise.
            noise: A :class:`NoiseSource` for the stochastic increments.
            callback: Called with a :class:`StepInfo` after every step.
            x_init: Starting point instead of a prior draw, ``shape``.
            dtype: Dtype of the samples.
            device: Device of the samples.

        Returns:
            ``(batch, *event)`` samples.
        """

    @abc.abstractmethod
    def nfe(self, steps: int | None = None) -> int:
        """Score evaluations one call to :meth:`sample` makes with ``steps`` steps."""


class GridSampler(AbstractSampler):
    """Skeleton of samplers that integrate over a decreasing time grid.

    Subclasses set ``solver`` (a function with the shared signature) and ``nfe_per_step``.

    Args:
        steps: Default number of steps.
        grid: ``"uniform"`` in ``t``, ``"karras"`` (rho-spaced in ``t``, the research code's),
            ``"karras_sigma"`` (rho-spaced in ``sigma_t / alpha_t``, Karras et al. 2022) or
            ``"log_snr"`` (uniform in ``log(alpha_t / sigma_t)``).
        t_start: Start time (default ``sde.T``); ``t_start < T`` is a truncated start.
        t_end: Final time (default ``sde.eps``).
        rho: Exponent of the Karras grids.
        denoise: Finish with Tweedie's denoising step ``E[x_0 | x_{t_end}]`` (one more evaluation).
        data_std: Std of the data assumed by the starting law (see ``AbstractSDE.prior_std``).
    """

    solver: ClassVar[Callable[..., Tensor]]
    nfe_per_step: ClassVar[int] = 1
    default_steps: ClassVar[int] = 1000

    def __init__(self, steps: int | None = None, grid: str = "uniform", t_start: float | None = None,
                 t_end: float | None = None, rho: float = 7.0, denoise: bool = True, data_std: float = 0.0,
                 **options: Any) -> None:
        self.steps = check_steps(self.default_steps if steps is None else steps)
        if grid not in grids.GRIDS:
            raise ConfigError(format_error("grid", f"one of {sorted(grids.GRIDS)}", repr(grid)))
        if t_start is not None and t_end is not None and not t_start > t_end:
            raise ConfigError(format_error("t_start", f"a time > t_end={t_end}", repr(t_start)))
        self.grid, self.t_start, self.t_end, self.rho = grid, t_start, t_end, float(rho)
        self.denoise, self.data_std, self.options = bool(denoise), float(data_std), options

    def nfe(self, steps: int | None = None) -> int:
        n = self.steps if steps is None else check_steps(steps)
        return self.nfe_per_step * n + int(self.denoise)

    def time_grid(self, sde: AbstractSDE, steps: int) -> Tensor:
        """The decreasing float64 grid ``(steps + 1,)`` from ``t_start`` to ``t_end``."""
        t0 = sde.T if self.t_start is None else self.t_start
        t1 = sde.eps if self.t_end is None else self.t_end
        if not (0 < t1 < t0 <= sde.T + 1e-12):
            raise ConfigError(format_error("t_start/t_end", f"0 < t_end < t_start <= T={sde.T}",
                                           f"t_start={t0}, t_end={t1}"))
        return grids.make_grid(self.grid, sde, t0, t1, steps, rho=self.rho)

    def sample(self, score_fn: ScoreFn, sde: AbstractSDE, shape: tuple[int, ...], *, steps: int | None = None,
               generator: torch.Generator | None = None, noise: NoiseSource | None = None,
               callback: Callback | None = None, x_init: Tensor | None = None, dtype: torch.dtype = torch.float32,
               device: torch.device | str | None = None) -> Tensor:
        n = self.steps if steps is None else check_steps(steps)
        shape = tuple(int(s) for s in shape)
        if len(shape) < 2 or shape[0] < 1 or min(shape) < 1:
            raise ShapeError(format_error("shape", "(batch >= 1, *event) with positive sizes", repr(shape),
                                          "an ensemble needs at least one member"))
        ts = self.time_grid(sde, n)
        if x_init is None:
            x = sde.prior_sample(shape, t=float(ts[0]), data_std=self.data_std, generator=generator,
                                 dtype=dtype, device=device)
        else:
            if tuple(x_init.shape) != shape:
                raise ShapeError(format_error("x_init", f"shape {shape}", f"shape {tuple(x_init.shape)}"))
            x = x_init.to(dtype=dtype, device=device)
        counted = CountingScore(score_fn)
        noise = GaussianNoise(generator) if noise is None else noise
        x = type(self).solver(counted, sde, x, ts.to(x.device), noise=noise, callback=callback, **self.options)
        if self.denoise:
            t_last = torch.full((shape[0],), float(ts[-1]), dtype=x.dtype, device=x.device)
            x = sde.denoise(x, t_last, counted(x, t_last))
        return x
