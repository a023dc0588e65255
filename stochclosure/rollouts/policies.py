"""What a rollout does at each solver step with its closure: draw fresh, or evolve the held draw.

A *policy* is an object with behaviour, asked by the rollout loop at every step (it never
``isinstance``-dispatches on it):

* :meth:`BetweenDrawPolicy.init` gives its initial :class:`~.carry.PolicyState`;
* :meth:`BetweenDrawPolicy.closure` returns the closure of the step and the new state, drawing
  fresh at the rollout's resampling steps (through :meth:`DrawContext.draw`, the closure draw)
  and doing what it does in between otherwise;
* :attr:`BetweenDrawPolicy.needs` declares what it needs from the closure (``"latent"``: a
  latent the draw is a function of; ``"grid_sampler"``: a diffusion sampler on a time grid).
  :meth:`DrawContext.check` raises :class:`~stochclosure.errors.IncompatibleComponentsError`
  naming both sides and the fix when the closure lacks it; nothing degrades silently.

Sites (with the rollout's ``prefix``): ``closure/{s}`` (the draw), ``closure_noise/{s}`` (the
latent innovations of :class:`NoiseAR1`), ``closure_ar/{s}`` (the perturbation innovations of
:class:`ClosureAR1`).
"""

from __future__ import annotations

import abc
import math
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import pyro
import pyro.distributions as pdist
import torch
from torch import Tensor

from .._types import Conditioning, check_tensor
from ..distributions import ClosureDistribution, ClosureLawDistribution, KeyedNormal, mix_seeds
from ..errors import ConfigError, IncompatibleComponentsError, NonFiniteError, ShapeError, format_error
from .carry import PolicyState, RolloutCarry

__all__ = ["BetweenDrawPolicy", "DrawContext", "Hold", "ClosureAR1", "NoiseAR1", "WarmStart", "closure_kind",
           "isotropic_spectrum", "colour_noise", "as_policy"]


def _salt(name: str) -> int:
    return zlib.crc32(name.encode())


def closure_kind(closure: Any) -> str:
    """``"model"`` (diffusion :class:`~stochclosure.ClosureModel`), ``"law"`` (any other closure law),
    ``"callable"`` (``cond -> U``) or ``"none"``."""
    from ..closures.base import AbstractClosureLaw
    from ..model import ClosureModel

    if closure is None:
        return "none"
    if isinstance(closure, ClosureModel):
        return "model"
    if isinstance(closure, AbstractClosureLaw):
        return "law"
    if callable(closure):
        return "callable"
    raise ConfigError(format_error("closure", "a ClosureModel, an AbstractClosureLaw, a callable cond -> U, or None",
                                   type(closure).__name__))


# -- the closure draw ---------------------------------------------------------------------------------
@dataclass
class DrawContext:
    """What policies see: the closure, the batch layout, the member keys and the draw options.

    Attributes:
        closure: The closure (see :func:`closure_kind`).
        batch: Batch shape (plates), ``event``: one state's ``(C, *spatial)``.
        seeds: Member keys ``batch`` (``None``: one stream for the batch).
        prefix: Site-name prefix.
        dtype: Dtype of the state and the closures.
        every: Solver steps between fresh draws.
        condition: ``(carry, step) -> Conditioning`` (flattened batch).
        sampler: Sampler override of a diffusion closure; ``sampler_steps`` its steps.
        deterministic: ``k``: the mean-of-``k`` frozen-noise closure (closures with noise to freeze).
        deterministic_seed: Seed of the frozen noise.
        on_nonfinite: ``"raise"``: a callable's non-finite closure raises at once; ``"mark"``: the
            members it reaches are frozen by the rollout's state check.
        cache: Objects a policy builds once per rollout (e.g. a warm-start sampler).
    """

    closure: Any
    batch: tuple[int, ...]
    event: tuple[int, ...]
    seeds: Tensor | None
    prefix: str
    dtype: torch.dtype
    every: int
    condition: Callable[[RolloutCarry, int], Conditioning]
    sampler: Any = None
    sampler_steps: int | None = None
    deterministic: int | None = None
    deterministic_seed: int = 0
    on_nonfinite: str = "raise"
    cache: dict[str, Any] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        """:func:`closure_kind` of the closure."""
        return closure_kind(self.closure)

    def capabilities(self) -> set[str]:
        """What the closure offers policies: ``"latent"``, ``"grid_sampler"``."""
        caps: set[str] = set()
        if self.kind == "model" and not self.deterministic:
            caps.add("latent")
            s = self.closure._resolve_sampler(self.sampler)
            if hasattr(s, "time_grid") and "t_start" in s.spec():
                caps.add("grid_sampler")
        elif self.kind == "law" and not self.deterministic and self._has_latent():
            caps.add("latent")
        return caps

    def _has_latent(self) -> bool:
        return bool(self.closure.latent_shape(Conditioning(), self.event[1:]))

    def check(self, policy: BetweenDrawPolicy) -> None:
        """Raise unless the closure offers what ``policy`` needs."""
        if self.deterministic and not (self.kind == "model" or self.kind == "law" and self._has_latent()):
            raise IncompatibleComponentsError(format_error(
                "deterministic", "a closure law with a latent (its noise can be frozen)",
                f"a {self.kind} closure {type(self.closure).__name__} without one",
                "drop deterministic= (a callable or a Dirac law is deterministic already)"))
        missing = set(policy.needs) - self.capabilities()
        if missing:
            raise IncompatibleComponentsError(format_error(
                "between", f"a policy the closure supports ({type(self.closure).__name__} offers "
                           f"{sorted(self.capabilities()) or 'no latent'})",
                f"{policy!r}, which needs {sorted(missing)}",
                policy.fix_hint))

    def draws_at(self, step: int, held: Tensor | None) -> bool:
        """``True`` where a fresh closure is drawn (every ``every`` steps, and the first step)."""
        return held is None or step % self.every == 0

    def std_normal(self, name: str, event: tuple[int, ...]) -> Tensor:
        """A standard-normal site ``prefix + name`` of ``batch + event`` (keyed per member when keyed)."""
        name = self.prefix + name
        if self.seeds is not None:
            return pyro.sample(name, KeyedNormal(self.seeds, _salt(name), event)).to(self.dtype)
        zeros = torch.zeros(self.batch + event, dtype=self.dtype)
        return pyro.sample(name, pdist.Normal(zeros, 1.0).to_event(len(event)))

    def latent_event(self, cond: Conditioning) -> tuple[int, ...]:
        """One element's latent shape (the closure field for a diffusion model)."""
        grid = tuple(cond.spatial_shape or self.event[1:])
        return tuple(self.closure.latent_shape(cond, grid))

    def draw(self, step: int, cond: Conditioning, *, latent: Tensor | None = None, warm: Tensor | None = None,
             sampler: Any = None, steps: int | None = None) -> Tensor:
        """The closure draw at site ``closure/{step}``, ``(*batch, C, *grid)``.

        Args:
            step: Solver step.
            cond: The condition (flattened batch).
            latent: ``(*batch, *latent_shape)`` standard-normal latent of the draw.
            warm: A previous draw to refresh (SDEdit, diffusion only) with ``sampler``/``steps``.
            sampler: Sampler override of this draw (default the rollout's).
            steps: Sampler steps of this draw.
        """
        name = f"{self.prefix}closure/{step}"
        kind = self.kind
        if kind == "callable":
            value = self.closure(cond)
            _check_closure_value(value, step, self.on_nonfinite == "raise")
            return pyro.deterministic(name, value.reshape(self.batch + tuple(value.shape[1:])),
                                      event_dim=len(self.event))
        seeds = None if self.seeds is None else mix_seeds(self.seeds, _salt(name))
        if kind == "law":
            frozen = {"frozen_seed": self.deterministic_seed, "average": int(self.deterministic)} \
                if self.deterministic else {}
            law = ClosureLawDistribution(self.closure, cond, batch_shape=self.batch, seeds=seeds, latent=latent,
                                         dtype=self.dtype, **frozen)
            if law.is_dirac:
                return pyro.deterministic(name, law.sample(), event_dim=len(law.event_shape))
            return pyro.sample(name, law, infer={"closure": True, "step": step})
        kw: dict[str, Any] = {"seeds": seeds, "init_noise": latent}
        if warm is not None:
            kw.update(warm_start=warm)
        model_law = ClosureDistribution(self.closure, cond, batch_shape=self.batch, dtype=self.dtype,
                                        sampler=self.sampler if sampler is None else sampler,
                                        steps=self.sampler_steps if steps is None else steps, **kw)
        if self.deterministic:
            model_law = model_law.with_options(frozen_seed=self.deterministic_seed, average=int(self.deterministic),
                                               seeds=None, init_noise=None)
        return pyro.sample(name, model_law, infer={"closure": True, "step": step})


def _check_closure_value(value: Any, step: int, finite: bool) -> None:
    if not isinstance(value, Tensor):
        raise ConfigError(format_error("closure", "a callable returning a tensor (N, C, *grid)",
                                       f"{type(value).__name__} at step {step}"))
    if finite and not bool(torch.isfinite(value).all()):
        bad = (~torch.isfinite(value)).reshape(value.shape[0], -1).any(1).nonzero().flatten().tolist()
        raise NonFiniteError(format_error("closure", "finite closure values from the callable",
                                          f"NaN/inf at step {step} for flattened batch elements {bad[:10]}",
                                          "check the closure function (its inputs are the condition of that step)"))


# -- the policies ------------------------------------------------------------------------------------
class BetweenDrawPolicy(abc.ABC):
    """What happens with the closure at every solver step (a fresh draw or the held one evolved).

    Attributes:
        needs: Capabilities the closure must offer (see :meth:`DrawContext.capabilities`).
        fix_hint: What to do when it does not (shown in the incompatibility error).
    """

    needs: ClassVar[frozenset[str]] = frozenset()
    fix_hint: ClassVar[str] = ""

    def init(self, ctx: DrawContext) -> PolicyState:
        """The state before the first step (checks compatibility first)."""
        ctx.check(self)
        return PolicyState()

    @abc.abstractmethod
    def closure(self, ctx: DrawContext, carry: RolloutCarry, step: int) -> tuple[Tensor, PolicyState]:
        """The closure of solver step ``step`` ``(*batch, C, *grid)`` and the new policy state."""


def _physics_mean(ctx: DrawContext, cond: Conditioning) -> Tensor:
    """The physics part of a physics + remainder law at ``cond``, ``(*batch, C, *grid)``."""
    m = ctx.closure.physics.mean(cond)
    return m.reshape(ctx.batch + tuple(m.shape[1:])).to(ctx.dtype)


def _check_flag(value: Any) -> None:
    if not isinstance(value, bool):
        raise ConfigError(format_error("physics_every_step", "True or False", repr(value)))


def _check_physics_every_step(ctx: DrawContext, policy: Any) -> None:
    if getattr(policy, "physics_every_step", False) and not (
            ctx.kind == "law" and hasattr(ctx.closure, "physics") and hasattr(ctx.closure, "residual")):
        raise IncompatibleComponentsError(format_error(
            "physics_every_step", "a physics + remainder closure law (e.g. ResidualLaw)",
            f"a {ctx.kind} closure {type(ctx.closure).__name__}", "drop physics_every_step=True"))


def _held_remainder(ctx: DrawContext, carry: RolloutCarry, step: int, held: Tensor, fresh: bool,
                    cond: Conditioning | None, memory: dict[str, Tensor | None]) -> Tensor:
    """``physics(y_s) + r`` with the remainder ``r = U_draw - physics(y_draw)`` kept in ``memory["r"]``."""
    cond = cond if cond is not None else ctx.condition(carry, step)
    physics = _physics_mean(ctx, cond)
    if fresh:
        memory["r"] = held - physics
        return held
    r = memory["r"]
    assert r is not None
    return physics + r


@dataclass(frozen=True)
class Hold(BetweenDrawPolicy):
    """Keep the last drawn closure unchanged until the next draw.

    Attributes:
        physics_every_step: For a physics + remainder law (:class:`~stochclosure.closures.ResidualLaw`):
            evaluate the physics closure at every step and hold only the remainder of the last draw,
            ``U_s = physics(y_s) + (U_draw - physics(y_draw))`` (the physics is cheap and tracks the
            state; holding it too can destabilise a rollout). The remainder is kept in the policy's
            memory as ``"r"``.
    """

    physics_every_step: bool = False

    def __post_init__(self) -> None:
        _check_flag(self.physics_every_step)

    def init(self, ctx: DrawContext) -> PolicyState:
        """The state before the first step (checks compatibility first)."""
        _check_physics_every_step(ctx, self)
        return super().init(ctx)

    def closure(self, ctx: DrawContext, carry: RolloutCarry, step: int) -> tuple[Tensor, PolicyState]:
        held, memory = carry.policy.held, dict(carry.policy.memory)
        fresh, cond = ctx.draws_at(step, held), None
        if fresh:
            cond = ctx.condition(carry, step)
            held = ctx.draw(step, cond)
        assert held is not None
        if not self.physics_every_step:
            return held, PolicyState(held=held)
        return _held_remainder(ctx, carry, step, held, fresh, cond, memory), PolicyState(held=held, memory=memory)


def isotropic_spectrum(fields: Tensor, spatial_dims: int) -> Tensor:
    """Mean power per integer wavenumber shell ``|k|`` of ``(..., *grid)`` fields, ``(k_max + 1,)``.

    ``|k|`` is rounded to the nearest integer (``k`` in cycles per domain); the power is the
    squared FFT modulus averaged over the leading axes and summed over each shell.
    """
    grid = tuple(fields.shape[-spatial_dims:])
    power = torch.fft.fftn(fields.double(), dim=tuple(range(-spatial_dims, 0))).abs().pow(2)
    power = power.reshape(-1, *grid).mean(0)
    shells = _shells(grid)
    return torch.zeros(int(shells.max()) + 1, dtype=torch.float64).index_add_(0, shells.reshape(-1),
                                                                              power.reshape(-1))


def _shells(grid: tuple[int, ...]) -> Tensor:
    ks = torch.meshgrid(*[torch.fft.fftfreq(n, 1.0 / n, dtype=torch.float64) for n in grid], indexing="ij")
    return torch.sqrt(sum(k**2 for k in ks)).round().long()


def colour_noise(xi: Tensor, spectrum: Tensor, spatial_dims: int) -> Tensor:
    """White noise ``(..., *grid)`` filtered to the isotropic ``spectrum`` with unit variance per point.

    The Fourier amplitude of shell ``k`` is ``sqrt(spectrum[k] / modes in shell k)`` (shells past
    the spectrum's end get none), scaled so that the pointwise variance stays 1.
    """
    grid = tuple(xi.shape[-spatial_dims:])
    shells = _shells(grid)
    spec = torch.as_tensor(spectrum, dtype=torch.float64)
    count = torch.bincount(shells.reshape(-1), minlength=int(shells.max()) + 1).double()
    padded = torch.zeros(len(count), dtype=torch.float64)
    m = min(len(spec), len(count))
    padded[:m] = spec[:m]
    amp = torch.sqrt(padded / count.clamp_min(1.0))[shells]
    amp = amp / amp.pow(2).mean().sqrt().clamp_min(1e-300)
    dims = tuple(range(-spatial_dims, 0))
    out = torch.fft.ifftn(torch.fft.fftn(xi.double(), dim=dims) * amp, dim=dims).real
    return out.to(xi.dtype)


@dataclass(frozen=True)
class ClosureAR1(BetweenDrawPolicy):
    """An AR(1) perturbation in time added to the held closure, over the whole run.

    ``U_s = U*_s + e_s`` where ``U*_s`` is the draw held at step ``s`` (fresh every
    ``resample_every`` steps) and ``e_s = phi e_{s-1} + sigma xi_s`` runs through the whole
    rollout; fresh draws do not reset it. ``e_0`` starts in the stationary law
    ``sigma / sqrt(1 - phi^2) xi_0`` (for ``phi = 1``, a random walk, ``sigma xi_0``), so for
    ``phi < 1`` every ``e_s`` has pointwise std ``sigma / sqrt(1 - phi^2)`` and lag-1
    correlation ``phi``. ``xi`` is white in space, or coloured with the isotropic power
    ``spectrum`` (unit variance per point, see :func:`colour_noise`). ``sigma`` is in
    physical closure units. ``phi = 0`` is fresh white-in-time forcing at every step
    (:meth:`white_forcing`): for a closure that contains a forcing ``sigma dW`` (the G closure of
    the stochastic Navier–Stokes model), hold the learned drift and draw the forcing each step,
    so ``k`` held steps accumulate ``sqrt(k) sigma sqrt(dt)`` rather than ``k sigma sqrt(dt)``.

    Attributes:
        phi: Autoregressive coefficient in ``[0, 1]``.
        sigma: Innovation std (finite, ``>= 0``).
        spectrum: 1-D isotropic power per wavenumber shell ``k = 0, 1, ...`` of the innovations
            (``None``: white in space).
    """

    phi: float = 1.0
    sigma: float = 0.0
    spectrum: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.phi <= 1.0:
            raise ConfigError(format_error("phi", "a value in [0, 1]", repr(self.phi)))
        if not (math.isfinite(self.sigma) and self.sigma >= 0.0):
            raise ConfigError(format_error("sigma", "a finite, non-negative std", repr(self.sigma)))
        if self.spectrum is not None:
            spec = tuple(float(x) for x in self.spectrum)
            if not spec or not all(math.isfinite(x) and x >= 0 for x in spec) or not any(spec):
                raise ConfigError(format_error("spectrum", "finite non-negative powers per shell, not all zero",
                                               repr(self.spectrum)))
            object.__setattr__(self, "spectrum", spec)

    @classmethod
    def white_forcing(cls, sigma: float, spectrum: tuple[float, ...] | None = None) -> ClosureAR1:
        """Fresh forcing with pointwise std ``sigma`` at every solver step (``phi = 0``) on the held draw.

        Args:
            sigma: Std of the forcing per step in closure units (``sigma_W / sqrt(dt)`` for a
                forcing ``sigma_W dW`` written as a closure term over a step ``dt``).
            spectrum: Isotropic power of the forcing per wavenumber shell (``None``: white in space).
        """
        return cls(phi=0.0, sigma=sigma, spectrum=spectrum)

    @property
    def stationary_std(self) -> float:
        """Pointwise std of ``e`` in the stationary law (``inf`` for a random walk with ``sigma > 0``)."""
        if self.phi >= 1.0:
            return math.inf if self.sigma > 0 else 0.0
        return self.sigma / math.sqrt(1.0 - self.phi**2)

    def _innovation(self, ctx: DrawContext, step: int, event: tuple[int, ...]) -> Tensor:
        xi = ctx.std_normal(f"closure_ar/{step}", event)
        if self.spectrum is not None and len(event) > 1:
            xi = colour_noise(xi, torch.tensor(self.spectrum), len(event) - 1)
        return xi

    def closure(self, ctx: DrawContext, carry: RolloutCarry, step: int) -> tuple[Tensor, PolicyState]:
        held = carry.policy.held
        if ctx.draws_at(step, held):
            held = ctx.draw(step, ctx.condition(carry, step))
        assert held is not None
        xi = self._innovation(ctx, step, tuple(held.shape[len(ctx.batch):]))
        e = carry.policy.memory.get("e")
        if e is None:
            e = (self.sigma if self.phi >= 1.0 else self.stationary_std) * xi
        else:
            e = self.phi * e + self.sigma * xi
        return held + e, PolicyState(held=held, memory={"e": e})

    @classmethod
    def fit(cls, closure_series: Tensor, dt: float, step_dt: float | None = None, *,
            spatial_dims: int | None = None) -> ClosureAR1:
        """Fit ``phi``, ``sigma`` and the spatial spectrum to a closure (or residual) time series.

        With ``x_t = U_t - mean_t U_t`` (temporal anomalies at each point, each trajectory), the
        lag-1 autocorrelation ``r = sum x_t x_{t+1} / sum x_t^2`` (pooled, clipped to ``[0, 1)``)
        at the series interval ``dt`` gives the decorrelation time ``tau = -dt / log r``. For
        solver steps ``step_dt``: ``phi = r^(step_dt / dt)`` and ``sigma = std(x) sqrt(1 - phi^2)``,
        so the perturbation's stationary std is the series' temporal std. The innovations get
        the isotropic spectrum of the anomalies (:func:`isotropic_spectrum`).

        Args:
            closure_series: ``(T, *batch, *event)`` closures at times ``i * dt``, ``T >= 3``.
            dt: Physical time between entries of the series.
            step_dt: Solver time step of the rollout (default ``dt``).
            spatial_dims: Spatial axes at the end of the event (default ``rank - 3``, i.e. a
                ``(T, B, C, *grid)`` series; ``0``: white in space).

        Returns:
            The fitted :class:`ClosureAR1`.
        """
        check_tensor("closure_series", closure_series, min_rank=2)
        if closure_series.shape[0] < 3:
            raise ShapeError(format_error("closure_series", "at least 3 times on the first axis",
                                          f"shape {tuple(closure_series.shape)}"))
        if not dt > 0 or (step_dt is not None and not step_dt > 0):
            raise ConfigError(format_error("dt/step_dt", "positive time steps", f"dt={dt}, step_dt={step_dt}"))
        x = closure_series.double()
        x = x - x.mean(0, keepdim=True)
        r = float((x[1:] * x[:-1]).sum() / (x[:-1] ** 2).sum().clamp_min(1e-300))
        r = min(max(r, 0.0), 1.0 - 1e-12)
        phi = r ** ((dt if step_dt is None else step_dt) / dt)
        sigma = float(x.pow(2).mean().sqrt()) * math.sqrt(max(1.0 - phi**2, 0.0))
        nd = max(x.dim() - 3, 0) if spatial_dims is None else int(spatial_dims)
        spectrum = tuple(isotropic_spectrum(x, nd).tolist()) if nd > 0 else None
        return cls(phi=phi, sigma=sigma, spectrum=spectrum)

    def decorrelation_time(self, step_dt: float) -> float:
        """``tau = -step_dt / log(phi)`` (``inf`` for a random walk ``phi = 1``)."""
        return math.inf if self.phi >= 1.0 else (0.0 if self.phi <= 0.0 else -step_dt / math.log(self.phi))


@dataclass(frozen=True)
class NoiseAR1(BetweenDrawPolicy):
    """AR(1) in time on the closure law's latent; the closure is held between draws.

    Draw ``k`` uses the latent ``z_k`` with ``z_0 = eta_0`` and ``z_k = rho z_{k-1} +
    sqrt(1 - rho^2) eta_k`` (``eta`` i.i.d. standard normal, site ``closure_noise/{s}``), so
    every ``z_k`` is standard normal (each draw keeps the law) while successive draws are
    correlated. For a diffusion model the latent is the sampler's starting noise (scaled by
    its prior std); any closure law with a latent works the same way.

    Attributes:
        rho: Correlation of successive latents, in ``[0, 1)``.
        physics_every_step: For a physics + remainder law: the physics closure evaluated at every
            step, only the remainder held (see :class:`Hold`).
    """

    rho: float = 0.9
    physics_every_step: bool = False
    needs: ClassVar[frozenset[str]] = frozenset({"latent"})
    fix_hint: ClassVar[str] = ("use a closure law with a latent (a ClosureModel without deterministic=, or a "
                               "stochastic closure law), or between=ClosureAR1(...) to perturb a deterministic closure")

    def __post_init__(self) -> None:
        _check_flag(self.physics_every_step)
        if not 0.0 <= self.rho < 1.0:
            raise ConfigError(format_error("rho", "a value in [0, 1)", repr(self.rho)))

    @classmethod
    def fit(cls, memory: float, interval: float) -> NoiseAR1:
        """``rho = exp(-interval / memory)`` for a fitted memory (decorrelation time) of the closure.

        Args:
            memory: Decorrelation time ``tau > 0`` of the closure (e.g. from
                :meth:`ClosureAR1.fit` ``.decorrelation_time``), physical time.
            interval: Physical time between fresh draws (``resample_every * dt``).
        """
        if not (math.isfinite(memory) and memory > 0) or not (math.isfinite(interval) and interval > 0):
            raise ConfigError(format_error("memory/interval", "positive finite times",
                                           f"memory={memory}, interval={interval}"))
        return cls(rho=min(math.exp(-interval / memory), 1.0 - 1e-9))

    def init(self, ctx: DrawContext) -> PolicyState:
        """The state before the first step (checks compatibility first)."""
        _check_physics_every_step(ctx, self)
        return super().init(ctx)

    def closure(self, ctx: DrawContext, carry: RolloutCarry, step: int) -> tuple[Tensor, PolicyState]:
        held, memory = carry.policy.held, dict(carry.policy.memory)
        z, fresh, cond = memory.get("z"), ctx.draws_at(step, held), None
        if fresh:
            cond = ctx.condition(carry, step)
            eta = ctx.std_normal(f"closure_noise/{step}", ctx.latent_event(cond))
            z = eta if z is None else self.rho * z + math.sqrt(1 - self.rho**2) * eta
            held = ctx.draw(step, cond, latent=z)
        assert held is not None
        memory["z"] = z
        u = _held_remainder(ctx, carry, step, held, fresh, cond, memory) if self.physics_every_step else held
        return u, PolicyState(held=held, memory=memory)


@dataclass(frozen=True)
class WarmStart(BetweenDrawPolicy):
    """Refresh the previous closure by a short reverse-SDE solve from a small noise level (SDEdit).

    At every resampling step after the first, the previous draw ``U*`` is noised to diffusion
    time ``t_start`` through the forward SDE's marginal, ``x = alpha_t normalise(U*) + sigma_t z``,
    and the model's sampler (or the rollout's ``sampler``) runs from ``t_start`` with ``steps``
    steps (Meng et al. 2022, SDEdit). The closure is held in between. ``t_start >= T`` (the
    SDE's final time) is exactly a fresh full draw. The first draw of a rollout is always a full
    draw.

    Attributes:
        t_start: Diffusion time to noise the previous draw to, in ``(0, T]``.
        steps: Sampler steps from ``t_start`` (``None``: the sampler's own).
    """

    t_start: float = 0.2
    steps: int | None = 2
    needs: ClassVar[frozenset[str]] = frozenset({"grid_sampler"})
    fix_hint: ClassVar[str] = ("use a diffusion ClosureModel without deterministic= whose sampler takes t_start "
                               "(a grid sampler such as dpm_solver_pp_2m or consistency), or between=Hold()")

    def __post_init__(self) -> None:
        if not (math.isfinite(self.t_start) and self.t_start > 0):
            raise ConfigError(format_error("t_start", "a finite diffusion time > 0", repr(self.t_start)))
        if self.steps is not None and (isinstance(self.steps, bool) or not isinstance(self.steps, int)
                                       or self.steps < 1):
            raise ConfigError(format_error("steps", "a positive integer or None", repr(self.steps)))

    def sampler_for(self, model: Any, sampler: Any = None) -> Any:
        """The sampler of warm draws: ``sampler`` (or the model's) with ``t_start`` set."""
        from ..registry import resolve

        base = model.sampler if sampler is None else resolve("sampler", sampler)
        spec = base.spec()
        if "t_start" not in spec:
            raise ConfigError(format_error(
                "sampler", "a sampler with a t_start option (a grid sampler)", f"{spec.get('type')!r}",
                "use e.g. dpm_solver_pp_2m or consistency; a custom GridSampler must forward the common grid "
                "arguments (t_start, t_end, rho, data_std, grid: take **common and call "
                "super().__init__(steps, **common), as tutorial 02 does) so that spec() lists them"))
        return resolve("sampler", {**spec, "t_start": float(self.t_start)})

    def init(self, ctx: DrawContext) -> PolicyState:
        ctx.check(self)
        if self.t_start < float(ctx.closure.sde.T):
            ctx.cache["warm_sampler"] = self.sampler_for(ctx.closure, ctx.sampler)
        return PolicyState()

    def closure(self, ctx: DrawContext, carry: RolloutCarry, step: int) -> tuple[Tensor, PolicyState]:
        held = carry.policy.held
        if ctx.draws_at(step, held):
            cond = ctx.condition(carry, step)
            warm = ctx.cache.get("warm_sampler")
            if held is None or warm is None:  # the first draw, or t_start >= T: a full draw
                held = ctx.draw(step, cond)
            else:
                held = ctx.draw(step, cond, warm=held, sampler=warm, steps=self.steps)
        assert held is not None
        return held, PolicyState(held=held)


def as_policy(between: Any) -> BetweenDrawPolicy:
    """``between`` checked to be a policy (``None``: :class:`Hold`)."""
    if between is None:
        return Hold()
    if not isinstance(between, BetweenDrawPolicy):
        raise ConfigError(format_error("between", "a BetweenDrawPolicy: Hold(), ClosureAR1(phi, sigma), "
                                                  "NoiseAR1(rho) or WarmStart(t_start)", repr(between)))
    return between

