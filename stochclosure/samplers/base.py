"""The sampler interface, step callbacks, noise sources and the one grid-sampler driver.

A sampler solves the reverse-time dynamics of an :class:`~stochclosure.sdes.AbstractSDE` given
only a score function ``score_fn(x, t)``. Grid samplers share one loop, :meth:`GridSampler.sample`:
it builds the time grid, draws (or checks) the start, runs the sampler's
``step(state, t_cur, t_next, score_fn, noise) -> state`` for each interval, counts score
evaluations, calls the callback, takes the final denoising step and checks that the result is
finite. An algorithm implements only ``step`` (and ``init`` when it carries multistep memory).
"""

from __future__ import annotations

import abc
import inspect
import math
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor

from .._types import ScoreFn
from ..config import Configurable
from ..errors import ConfigError, DTypeError, NonFiniteError, ShapeError, format_error
from ..sdes.base import AbstractSDE
from . import grids

__all__ = ["AbstractSampler", "GridSampler", "StepInfo", "SolverState", "NoiseSource", "GaussianNoise",
           "CountingScore", "check_steps", "check_x_init", "Callback"]


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


@dataclass
class SolverState:
    """What a grid sampler carries from one step to the next.

    Attributes:
        x: ``(batch, *event)`` the current estimate in the SDE's coordinates: reported to the
            callback after each step and returned (before the final denoising step) at the end.
        sde: The forward SDE being reversed.
        index: Index of the step being taken (0-based).
        n_steps: Number of steps of the solve.
        memory: Sampler-specific values carried between steps (a multistep method's previous
            denoised estimate, a change of variables), set up by ``init``.
    """

    x: Tensor
    sde: AbstractSDE
    index: int = 0
    n_steps: int = 1
    memory: dict[str, Any] = field(default_factory=dict)


class _FiniteWatch:
    """Records, without synchronising, each step's per-member sums; finds the first non-finite step at the end.

    One reduction per step (a per-member sum, accumulated in at least float32, which is
    non-finite exactly when a value is NaN or inf, barring overflow of finite values near
    ``3e38``); the check that syncs and raises runs once, at the end of the solve.
    """

    def __init__(self, x: Tensor) -> None:
        self.sums: list[Tensor] = []
        self.acc = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else None

    def update(self, x: Tensor) -> None:
        self.sums.append(x.reshape(x.shape[0], -1).sum(dim=1, dtype=self.acc))

    def raise_if_bad(self, sampler: str, times: list[float]) -> None:
        if not self.sums:
            return
        bad = ~torch.isfinite(torch.stack(self.sums))  # (steps seen, batch)
        hit = torch.nonzero(bad.any(dim=0)).flatten()
        if hit.numel() == 0:
            return
        k = int(torch.nonzero(bad.any(dim=1)).flatten()[0])
        members = hit.tolist()
        shown = ", ".join(map(str, members[:10])) + (f", ... ({len(members)} in all)" if len(members) > 10 else "")
        n = len(times) - 1
        where = (f"step {k} of {n} (t = {times[k]:.4g} -> {times[k + 1]:.4g})" if k < n
                 else f"the final denoising step (t = {times[-1]:.4g})")
        raise NonFiniteError(format_error(
            "score_fn", "finite values throughout the solve",
            f"non-finite samples first at {sampler} {where} in batch members [{shown}]",
            "check the score (network weights, the condition of those members, the dtype); "
            "check_finite=False returns the raw output instead"))


def _check_option(name: str, value: Any, low: float, strict: bool, fix: str) -> float:
    """A finite real ``> low`` (``strict``) or ``>= low``, as a float, else :class:`ConfigError`."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > low if strict else value >= low)
    if not ok:
        raise ConfigError(format_error(name, f"a finite number {'>' if strict else '>='} {low:g}", repr(value), fix))
    return float(value)


def _check_time(name: str, value: Any) -> float | None:
    return None if value is None else _check_option(name, value, 0.0, True, "give a diffusion time in (0, T]")


class GridSampler(AbstractSampler):
    """The shared driver of samplers that integrate over a decreasing time grid.

    :meth:`sample` builds the grid, draws the start (or checks ``x_init``), then for each interval
    ``[t_cur, t_next]`` calls the subclass's :meth:`step`, calls ``callback`` and counts score
    evaluations; it finishes with Tweedie's denoising step ``E[x_0 | x_{t_end}]`` and checks the
    result is finite. A subclass implements :meth:`step` (and :meth:`init` for multistep memory)
    and sets ``nfe_per_step`` and its defaults (``default_steps``, ``default_grid``,
    ``default_t_start``, ``default_t_end``, ``default_denoise``). Its ``__init__`` declares only
    its own options, keyword-only, and forwards ``**common`` (the arguments below); the
    signature that configurations, checkpoints and ``help()`` see is the merged one.

    Args:
        steps: Default number of steps (with an explicit grid: implied by it).
        grid: One value: a name of :data:`~stochclosure.samplers.grids.GRIDS` (``"uniform"`` in
            ``t``, ``"karras"`` rho-spaced in ``t``, ``"karras_sigma"`` rho-spaced in
            ``sigma_t / alpha_t`` as in Karras et al. 2022, ``"log_snr"`` uniform in
            ``log(alpha_t / sigma_t)``), or an explicit grid ``{"times": [...]}`` (diffusion times)
            or ``{"sigmas": [...]}`` (noise levels ``sigma_t / alpha_t``; a trailing ``0`` is the
            final denoising step, so k-diffusion's ``get_sigmas_karras(n, ...)`` passes as is).
            ``None``: the sampler's default.
        t_start: Start of a named grid (default ``sde.T``); ``t_start < T`` is a truncated start.
        t_end: End of a named grid (default ``sde.eps``).
        rho: Exponent of the Karras grids (finite, > 0).
        denoise: Finish with Tweedie's denoising step (one more evaluation); ``None``: the
            sampler's default.
        data_std: Std of the data assumed by the starting law (finite, >= 0; see
            ``AbstractSDE.prior_std``).
        check_finite: Raise :class:`~stochclosure.errors.NonFiniteError` naming the step and the
            members when the solve produced NaN or inf (one reduction per step, one check at the end).
    """

    nfe_per_step: ClassVar[int] = 1
    default_steps: ClassVar[int] = 1000
    default_grid: ClassVar[str] = "uniform"
    default_t_start: ClassVar[float | None] = None
    default_t_end: ClassVar[float | None] = None
    default_denoise: ClassVar[bool] = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        init = cls.__dict__.get("__init__")
        if init is not None and not getattr(init, "_captures_config", False):
            _merge_common_signature(init)
        super().__init_subclass__(**kwargs)

    def __init__(self, steps: int | None = None, *, grid: grids.GridSpec | None = None, t_start: float | None = None,
                 t_end: float | None = None, rho: float = 7.0, denoise: bool | None = None, data_std: float = 0.0,
                 check_finite: bool = True) -> None:
        parsed = grids.parse_grid(self.default_grid if grid is None else grid)
        self.grid: str | grids.ExplicitGrid = parsed
        self.t_start = _check_time("t_start", self.default_t_start if t_start is None else t_start)
        self.t_end = _check_time("t_end", self.default_t_end if t_end is None else t_end)
        if isinstance(parsed, grids.ExplicitGrid):
            self._explicit_checks(parsed, steps, t_start, t_end, denoise)
            steps = parsed.steps
            denoise = True if parsed.to_zero else denoise
            # the range the grid visits, as the trainer reads it (sigmas need the SDE: unknown here)
            known = parsed.kind == "times"
            self.t_start, self.t_end = (parsed.values[0], parsed.values[-1]) if known else (None, None)
        if self.t_start is not None and self.t_end is not None and not self.t_start > self.t_end:
            raise ConfigError(format_error("t_start", f"a time > t_end={self.t_end}", repr(self.t_start)))
        self.steps = check_steps(self.default_steps if steps is None else steps)
        self.rho = _check_option("rho", rho, 0.0, True, "use the Karras exponent, e.g. rho=7")
        self.data_std = _check_option("data_std", data_std, 0.0, False, "use 0 (start from the SDE's prior) or "
                                      "the data's std (1 after normalisation)")
        for name, flag in (("denoise", denoise), ("check_finite", check_finite)):
            if flag is not None and not isinstance(flag, bool):
                raise ConfigError(format_error(name, "true or false", repr(flag)))
        self.denoise = self.default_denoise if denoise is None else denoise
        self.check_finite = check_finite

    @staticmethod
    def _explicit_checks(g: grids.ExplicitGrid, steps: int | None, t_start: float | None, t_end: float | None,
                         denoise: bool | None) -> None:
        if steps is not None and steps != g.steps:
            raise ConfigError(format_error("steps", f"{g.steps} (the explicit grid's) or None", repr(steps),
                                           "drop steps: an explicit grid fixes it"))
        if t_start is not None or t_end is not None:
            raise ConfigError(format_error("t_start/t_end", "None with an explicit grid", f"{t_start}, {t_end}",
                                           "put the start and end points in the grid itself"))
        if g.to_zero and denoise is False:
            raise ConfigError(format_error("denoise", "true (sigmas ending with 0 end with the denoising step)",
                                           "false", "drop the trailing 0 from the sigmas, or denoise=True"))

    # -- the grid ---------------------------------------------------------------------------------
    def _steps(self, steps: int | None) -> int:
        n = self.steps if steps is None else check_steps(steps)
        if isinstance(self.grid, grids.ExplicitGrid) and n != self.grid.steps:
            raise ConfigError(format_error("steps", f"{self.grid.steps} (fixed by the explicit grid) or None",
                                           repr(n), "build the sampler with another grid instead"))
        return n

    def nfe(self, steps: int | None = None) -> int:
        return self.nfe_per_step * self._steps(steps) + int(self.denoise)

    def time_grid(self, sde: AbstractSDE, steps: int) -> Tensor:
        """The decreasing float64 grid ``(steps + 1,)`` of diffusion times under ``sde``.

        Raises:
            ConfigError: ``t_start``/``t_end`` (or explicit points) outside ``0 < t_end < t_start <= T``.
        """
        if isinstance(self.grid, grids.ExplicitGrid):
            self._steps(steps)
            return self.grid.times(sde)
        t0 = sde.T if self.t_start is None else self.t_start
        t1 = sde.eps if self.t_end is None else self.t_end
        if not (0 < t1 < t0 <= sde.T + 1e-12):
            raise ConfigError(format_error("t_start/t_end", f"0 < t_end < t_start <= T={sde.T}",
                                           f"t_start={t0}, t_end={t1}"))
        return grids.make_grid(self.grid, sde, t0, t1, steps, rho=self.rho)

    # -- what a subclass implements -----------------------------------------------------------------
    def init(self, state: SolverState, times: list[float]) -> SolverState:
        """Set up ``state.memory`` before the first step (default: nothing).

        Args:
            state: ``x`` at ``times[0]``, ``index = 0``.
            times: The ``steps + 1`` decreasing grid times.

        Returns:
            The state the first :meth:`step` receives.
        """
        return state

    @abc.abstractmethod
    def step(self, state: SolverState, t_cur: float, t_next: float, score_fn: ScoreFn,
             noise: NoiseSource) -> SolverState:
        """Advance ``state.x`` from diffusion time ``t_cur`` to ``t_next < t_cur``.

        Args:
            state: Current state (``state.index`` is this step's index).
            t_cur: Time at the start of the step.
            t_next: Time at its end.
            score_fn: ``score_fn(x, t)``, ``x`` ``(batch, *event)``, ``t`` ``(batch,)``; counted.
            noise: Source of all randomness of the step.

        Returns:
            The state at ``t_next`` (may be ``state`` itself, updated).
        """

    # -- the driver ---------------------------------------------------------------------------------
    def integrate(self, score_fn: ScoreFn, sde: AbstractSDE, x: Tensor, ts: Tensor, *, noise: NoiseSource,
                  callback: Callback | None = None) -> Tensor:
        """Run :meth:`step` over the grid ``ts`` ``(steps + 1,)`` from ``x`` ``(batch, *event)`` at ``ts[0]``.

        Returns:
            ``(batch, *event)`` the state at ``ts[-1]`` (no denoising step, no finiteness check).
        """
        return self._run(score_fn, sde, x, [float(v) for v in ts.tolist()], noise, callback, None)

    def _run(self, score_fn: ScoreFn, sde: AbstractSDE, x: Tensor, times: list[float], noise: NoiseSource,
             callback: Callback | None, watch: _FiniteWatch | None) -> Tensor:
        """The one loop of every grid sampler."""
        counted = CountingScore(score_fn)
        n = len(times) - 1
        state = self.init(SolverState(x, sde, 0, n), times)
        for i in range(n):
            state.index = i
            state = self.step(state, times[i], times[i + 1], counted, noise)
            if watch is not None:
                watch.update(state.x)
            if callback is not None:
                callback(StepInfo(i, n, times[i], times[i + 1], state.x, counted.nfe))
        return state.x

    def sample(self, score_fn: ScoreFn, sde: AbstractSDE, shape: tuple[int, ...], *, steps: int | None = None,
               generator: torch.Generator | None = None, noise: NoiseSource | None = None,
               callback: Callback | None = None, x_init: Tensor | None = None, dtype: torch.dtype | None = None,
               device: torch.device | str | None = None) -> Tensor:
        """Sample ``shape = (batch, *event)``; see :meth:`AbstractSampler.sample`.

        ``dtype`` is the dtype of the samples: by default float32 for a prior draw and ``x_init``'s
        own dtype for a given start (float64 in, float64 out); an explicit ``dtype`` casts ``x_init``.

        Raises:
            NonFiniteError: ``x_init`` holds NaN/inf, or (with ``check_finite``) the solve produced them.
        """
        n = self._steps(steps)
        shape = _check_shape(shape)
        ts = self.time_grid(sde, n)
        x = self._start(sde, shape, float(ts[0]), generator, x_init, dtype, device)
        counted = CountingScore(score_fn)
        noise = GaussianNoise(generator) if noise is None else noise
        times = [float(v) for v in ts.tolist()]
        watch = _FiniteWatch(x) if self.check_finite else None
        x = self._run(counted, sde, x, times, noise, callback, watch)
        if self.denoise:
            t_last = torch.full((shape[0],), float(ts[-1]), dtype=x.dtype, device=x.device)
            x = sde.denoise(x, t_last, counted(x, t_last))
            if watch is not None:
                watch.update(x)
        if watch is not None:
            watch.raise_if_bad(type(self).__name__, times)
        return x

    def _start(self, sde: AbstractSDE, shape: tuple[int, ...], t0: float, generator: torch.Generator | None,
               x_init: Tensor | None, dtype: torch.dtype | None, device: torch.device | str | None) -> Tensor:
        if x_init is None:
            return sde.prior_sample(shape, t=t0, data_std=self.data_std, generator=generator,
                                    dtype=torch.float32 if dtype is None else dtype, device=device)
        check_x_init(x_init, shape)
        return x_init.to(dtype=x_init.dtype if dtype is None else dtype, device=device)


def check_x_init(x_init: Any, shape: tuple[int, ...]) -> None:
    """Check a sampler's starting point: a finite floating-point tensor of ``shape`` ``(batch, *event)``.

    Raises:
        ShapeError: Not a tensor of ``shape``.
        DTypeError: Not floating point.
        NonFiniteError: NaN or inf, naming the batch members.
    """
    if not isinstance(x_init, Tensor) or tuple(x_init.shape) != tuple(shape):
        got = f"shape {tuple(x_init.shape)}" if isinstance(x_init, Tensor) else type(x_init).__name__
        raise ShapeError(format_error("x_init", f"a tensor of shape {tuple(shape)}", got))
    if not x_init.is_floating_point():
        raise DTypeError(format_error("x_init", "a floating-point tensor", str(x_init.dtype),
                                      "pass x_init.float() or x_init.double()"))
    bad = ~torch.isfinite(x_init.reshape(x_init.shape[0], -1)).all(dim=1)
    if bool(bad.any()):
        members = torch.nonzero(bad).flatten().tolist()
        raise NonFiniteError(format_error("x_init", "finite values", f"NaN/inf in batch members {members[:10]}",
                                          "start from finite values (or x_init=None for a prior draw)"))


def _check_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    shape = tuple(int(s) for s in shape)
    if len(shape) < 2 or shape[0] < 1 or min(shape) < 1:
        raise ShapeError(format_error("shape", "(batch >= 1, *event) with positive sizes", repr(shape),
                                      "an ensemble needs at least one member"))
    return shape


def _merge_common_signature(init: Callable[..., None]) -> None:
    """Give a subclass ``__init__(self, steps=None, *, own..., **common)`` the merged signature.

    Configurations, checkpoints (:class:`~stochclosure.config.Configurable`), key checks and
    ``help()`` then see every argument, each declared once: the common ones on
    :class:`GridSampler`, the sampler's own on the subclass.
    """
    sig = inspect.signature(init)
    params = list(sig.parameters.values())
    if not params or params[-1].kind is not inspect.Parameter.VAR_KEYWORD or params[-1].name != "common":
        return
    base_init = inspect.unwrap(GridSampler.__init__)
    base = list(inspect.signature(base_init).parameters.values())
    own = [p for p in params[1:-1] if p.name not in {b.name for b in base}]
    hints = {**typing.get_type_hints(base_init), **typing.get_type_hints(init)}
    init.__signature__ = sig.replace(parameters=[params[0], *base[1:], *own])  # type: ignore[attr-defined]
    init.__annotations__ = {k: v for k, v in hints.items() if k != "common"}
