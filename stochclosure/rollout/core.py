"""``rollout``: a coarse solver driven by closure draws, written as a pyro program.

Sites of one rollout (names get ``prefix`` in front):

* ``member_seed``: one integer key per batch element (``keyed=True``); every later random
  draw of element ``j`` comes from generators seeded by this key, so a member does not depend
  on the ensemble it runs in.
* ``init_noise``: standard-normal perturbation of the initial state (``init_perturbation``).
* ``closure/{s}``: the closure term drawn at solver step ``s`` (a :class:`ClosureDistribution`).
* ``closure_noise/{s}``: innovations of the sampler-noise AR(1) policy (:class:`NoiseAR1`).
* ``closure_ar/{s}``: innovations of the closure AR(1) policy (:class:`ClosureAR1`).
* ``state/{s}``: deterministic sites, the state after ``s`` steps (every ``record_every``).

Batch axes are pyro plates: ``cases`` (dim -1) for a batched ``state0`` and ``members`` for the
ensemble; any enclosing plate (e.g. :class:`pyro.infer.Predictive`'s) adds axes on the left, and
every member is advanced in the same batched solver call and the same sampler solve.
"""

from __future__ import annotations

import math
import time
import zlib
from collections import deque
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any, NamedTuple

import pyro
import pyro.distributions as pdist
import torch
from pyro import poutine
from pyro.poutine.runtime import get_plates
from torch import Tensor
from tqdm.auto import tqdm

from .._types import Conditioning, channels_last_hint, check_tensor
from ..distributions import ClosureDistribution, KeyedNormal, MemberSeed, mix_seeds
from ..errors import ConfigError, ShapeError, format_error
from .handlers import rollout_option
from .result import RolloutResult

__all__ = ["rollout", "ensemble", "Hold", "ClosureAR1", "NoiseAR1", "WarmStart", "Observation", "StreamedObservations",
           "default_condition", "regular_points"]


# -- what happens between fresh closure draws ---------------------------------------------------------
@dataclass(frozen=True)
class Hold:
    """Keep the last drawn closure unchanged until the next draw."""


@dataclass(frozen=True)
class ClosureAR1:
    """AR(1) perturbation of the held closure between fresh draws.

    With ``U*`` the last draw (at step ``s0``), ``U_s = U* + e_s`` for ``s0 < s < s0 + n`` where
    ``e_{s0} = 0`` and ``e_s = phi e_{s-1} + sigma xi_s``, ``xi_s`` i.i.d. standard normal per grid
    point. ``phi = 1`` is a random walk (the research code's "tiny random walk"); ``phi < 1``
    has stationary std ``sigma / sqrt(1 - phi^2)``. ``sigma`` is in physical closure units.

    Attributes:
        phi: Autoregressive coefficient in ``[0, 1]``.
        sigma: Innovation std.
    """

    phi: float = 1.0
    sigma: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.phi <= 1.0:
            raise ConfigError(format_error("phi", "a value in [0, 1]", repr(self.phi)))
        if not self.sigma >= 0.0:
            raise ConfigError(format_error("sigma", "a non-negative std", repr(self.sigma)))

    @classmethod
    def fit(cls, closure_series: Tensor, dt: float, step_dt: float | None = None) -> ClosureAR1:
        """Fit ``phi`` and ``sigma`` to a closure time series (a fitted decorrelation time).

        With ``x_t = U_t - mean_t U_t`` (temporal anomalies at each point, each trajectory), the
        lag-1 autocorrelation ``r = sum x_t x_{t+1} / sum x_t^2`` (pooled over points and
        trajectories, clipped to ``[0, 1)``) at the series interval ``dt`` gives the decorrelation
        time ``tau = -dt / log r``. For solver steps ``step_dt``: ``phi = r^(step_dt / dt)`` and
        ``sigma = std(x) sqrt(1 - phi^2)``, so the perturbation's stationary std is the closure's
        temporal std and, for a true AR(1) closure, ``Var(U_{t+s} - U_t)`` is matched to first order
        in ``s``.

        Args:
            closure_series: ``(T, *batch, *event)`` closures at times ``i * dt``, ``T >= 3``.
            dt: Physical time between entries of the series.
            step_dt: Solver time step of the rollout (default ``dt``).

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
        return cls(phi=phi, sigma=float(x.pow(2).mean().sqrt()) * math.sqrt(max(1.0 - phi**2, 0.0)))

    def decorrelation_time(self, step_dt: float) -> float:
        """``tau = -step_dt / log(phi)`` (``inf`` for a random walk ``phi = 1``)."""
        return math.inf if self.phi >= 1.0 else (0.0 if self.phi <= 0.0 else -step_dt / math.log(self.phi))


@dataclass(frozen=True)
class WarmStart:
    """Refresh the previous closure by a short reverse-SDE solve from a small noise level (SDEdit).

    At every resampling step after the first, the previous draw ``U*`` is noised to diffusion
    time ``t_start`` through the forward SDE's marginal, ``x = alpha_t normalise(U*) + sigma_t z``,
    and the model's sampler (or the rollout's ``sampler``) runs from ``t_start`` with ``steps``
    steps (Meng et al. 2022, SDEdit). The closure is held in between. Because ``x`` has the law
    of the noised data at ``t_start`` when ``U*`` is a draw of the closure law for a nearby
    condition, a few steps suffice; the new draw keeps the large-scale part of ``U*`` (signal
    above the noise) and re-draws the small scales for the current condition. ``t_start >= T``
    (the SDE's final time) is exactly a fresh full draw (``alpha_T``, e.g. ``7e-3`` for the
    default VP SDE, is dropped). The first draw of a rollout is always a full draw.

    Attributes:
        t_start: Diffusion time to noise the previous draw to, in ``(0, T]``.
        steps: Sampler steps from ``t_start`` (``None``: the sampler's own).
    """

    t_start: float = 0.2
    steps: int | None = 2

    def __post_init__(self) -> None:
        if not self.t_start > 0:
            raise ConfigError(format_error("t_start", "a diffusion time > 0", repr(self.t_start)))
        if self.steps is not None and (isinstance(self.steps, bool) or not isinstance(self.steps, int)
                                       or self.steps < 1):
            raise ConfigError(format_error("steps", "a positive integer or None", repr(self.steps)))

    def sampler_for(self, model: Any, sampler: Any = None) -> Any:
        """The sampler of warm draws: ``sampler`` (or the model's) with ``t_start`` set."""
        from ..registry import resolve

        base = model.sampler if sampler is None else resolve("sampler", sampler)
        spec = base.spec()
        if "t_start" not in spec:
            raise ConfigError(format_error("sampler", "a sampler with a t_start option (a grid sampler)",
                                           f"{spec.get('type')!r}",
                                           "use a GridSampler whose __init__ takes t_start, t_end, rho and data_std "
                                           "and passes them on to GridSampler.__init__ (a subclass that drops them "
                                           "cannot be warm-started), e.g. dpm_solver_pp_2m or consistency"))
        return resolve("sampler", {**spec, "t_start": float(self.t_start)})


@dataclass(frozen=True)
class NoiseAR1:
    """AR(1) in time on the sampler's starting noise; the closure is held between draws.

    Draw ``k`` starts the sampler from ``z_k * prior_std`` with ``z_0 = eta_0`` and
    ``z_k = rho z_{k-1} + sqrt(1 - rho^2) eta_k`` (``eta`` i.i.d. standard normal), so every
    ``z_k`` is standard normal (each draw keeps the model's law) while successive draws are
    correlated: ``rho = 0`` is independent draws, ``rho -> 1`` nearly frozen noise. With a
    deterministic sampler (probability-flow ODE) the closure is a smooth function of ``z``.

    Attributes:
        rho: Correlation of successive starting noises, in ``[0, 1)``.
    """

    rho: float = 0.9

    def __post_init__(self) -> None:
        if not 0.0 <= self.rho < 1.0:
            raise ConfigError(format_error("rho", "a value in [0, 1)", repr(self.rho)))


# -- sparse measurements --------------------------------------------------------------------------------
class Observation(NamedTuple):
    """Sparse measurements at one step: ``values (N, c_o, P)`` at ``points (P, d)`` in ``[0, 1)^d``."""

    values: Tensor
    points: Tensor


def regular_points(per_side: int, dims: int = 2) -> Tensor:
    """A regular lattice of ``per_side ** dims`` physical points ``(P, dims)`` at ``i / per_side``."""
    axes = [torch.arange(per_side, dtype=torch.float32) / per_side] * dims
    grid = torch.meshgrid(*axes, indexing="ij")
    return torch.stack([g.reshape(-1) for g in grid], -1)


class StreamedObservations:
    """Sparse measurements streamed step by step (e.g. from a reference run).

    Args:
        values: ``(n_steps, *obs_batch, c_o, P)``; ``obs_batch`` must broadcast against the
            rollout's batch (e.g. ``(cases,)`` or nothing).
        points: ``(P, d)`` physical coordinates in ``[0, 1)^d``.
    """

    def __init__(self, values: Tensor, points: Tensor) -> None:
        check_tensor("values", values, min_rank=3)
        check_tensor("points", points, rank=2)
        if points.shape[0] != values.shape[-1]:
            raise ShapeError(format_error("points", f"{values.shape[-1]} points (values' last axis)",
                                          f"{points.shape[0]} points"))
        self.values, self.points = values, points

    @classmethod
    def from_reference(cls, fields: Tensor, points: Tensor) -> StreamedObservations:
        """Sample reference fields ``(n_steps, *batch, C, *grid)`` at the grid points nearest ``points``."""
        d = points.shape[1]
        grid = fields.shape[-d:]
        idx = [torch.round(points[:, i] * grid[i]).long() % grid[i] for i in range(d)]
        vals = fields[(..., *idx)] if d > 1 else fields[..., idx[0]]
        return cls(vals, points)

    def __len__(self) -> int:
        return int(self.values.shape[0])

    def at(self, step: int, batch_shape: tuple[int, ...]) -> Observation:
        """The measurements of solver step ``step`` broadcast to ``batch_shape`` and flattened."""
        if step >= len(self):
            raise ShapeError(format_error("observations", f"measurements for step {step}",
                                          f"{len(self)} steps of measurements", "stream as many steps as the rollout"))
        v = self.values[step]
        try:
            target = torch.broadcast_shapes(tuple(v.shape), tuple(batch_shape) + tuple(v.shape[-2:]))
        except RuntimeError:
            target = None
        if target is None or math.prod(target[:-2]) != math.prod(batch_shape):
            raise ShapeError(format_error("observations", f"values per step broadcastable to the batch {tuple(batch_shape)}",
                                          f"per-step shape {tuple(v.shape)}"))
        v = torch.broadcast_to(v, target)
        return Observation(v.reshape(-1, *v.shape[-2:]), self.points)


def default_condition(state: Tensor, history: Tensor | None, obs: Observation | None) -> Conditioning:
    """The default condition: the current state as fields, plus history and sparse values if any.

    Args:
        state: ``(N, C, *spatial)``.
        history: ``(N, k, C, *spatial)`` oldest first, or ``None``.
        obs: Sparse measurements or ``None``.
    """
    return Conditioning(fields=state, history=history, obs_values=None if obs is None else obs.values,
                        obs_points=None if obs is None else obs.points)


# -- helpers --------------------------------------------------------------------------------------------------
def _salt(name: str) -> int:
    return zlib.crc32(name.encode())


def _std_normal(name: str, batch: tuple[int, ...], event: tuple[int, ...], seeds: Tensor | None,
                dtype: torch.dtype) -> Tensor:
    if seeds is not None:
        return pyro.sample(name, KeyedNormal(seeds, _salt(name), event)).to(dtype)
    zeros = torch.zeros(batch + event, dtype=dtype)
    return pyro.sample(name, pdist.Normal(zeros, 1.0).to_event(len(event)))


def _plate_shape(min_rank: int) -> tuple[tuple[int, ...], tuple[str, ...]]:
    frames = [f for f in get_plates() if f.vectorized and f.dim is not None]
    rank = max([min_rank] + [-f.dim for f in frames])
    shape, names = [1] * rank, [f"batch{i}" for i in range(rank)]
    for f in frames:
        shape[rank + f.dim] = f.size
        names[rank + f.dim] = f.name
    return tuple(shape), tuple(names)


def _event_ndim(system: Any, given: int | None) -> int:
    if given is not None:
        return int(given)
    spatial = getattr(system, "spatial", None)
    if isinstance(spatial, tuple):
        return 1 + len(spatial)
    return 1 + int(system.spatial_dims)


# -- the program --------------------------------------------------------------------------------------------
def rollout(system: Any, closure: Any, state0: Tensor, n_steps: int, *, members: int | None = None,
            dt: float | None = None, t0: float = 0.0, resample_every: int = 1, between: Any = None,
            observations: StreamedObservations | None = None,
            make_condition: Callable[[Tensor, Tensor | None, Observation | None], Conditioning] | None = None,
            history: int = 0, init_perturbation: float | None = None, deterministic: int | None = None,
            deterministic_seed: int = 0, sampler: Any = None, sampler_steps: int | None = None, keyed: bool = True,
            record_every: int = 1, progress: bool = False, prefix: str = "",
            state_event_ndim: int | None = None, start: dict[str, Any] | None = None,
            on_step: Callable[[dict[str, Any]], None] | None = None) -> RolloutResult:
    """Advance ``system`` for ``n_steps`` steps with closures drawn from ``closure``.

    At every resampling step ``s`` the condition ``y = make_condition(state, history, obs_s)``
    is built and ``U ~ closure(. | y)`` is drawn at site ``"closure/{s}"``; in between, ``between``
    decides (:class:`Hold`, :class:`ClosureAR1`, :class:`NoiseAR1`). Then
    ``state = system.step(state, U, dt)``. Handlers from :mod:`.handlers` override
    ``resample_every``, ``between``, ``init_perturbation`` and switch the closure off.

    Args:
        system: An :class:`~stochclosure.systems.AbstractSystem` (``step(state, closure, dt)``).
        closure: A :class:`~stochclosure.ClosureModel`; a callable ``cond -> U (N, C, *grid)``
            (a deterministic baseline, recorded as a deterministic site); or ``None`` (no closure).
        state0: ``(C, *spatial)`` one initial state, or ``(B, C, *spatial)`` (plate ``cases``).
        n_steps: Solver steps.
        members: Ensemble size (plate ``members``); ``None`` for none of its own.
        dt: Time step (default ``system.dt``).
        t0: Physical time of ``state0``.
        resample_every: Solver steps between fresh closure draws.
        between: Policy between draws (default :class:`Hold`; :class:`ClosureAR1`,
            :class:`NoiseAR1`, :class:`WarmStart`).
        observations: Sparse measurements per step, or ``None``.
        make_condition: ``(state (N, C, *grid), history (N, k, C, *grid) | None, obs) -> Conditioning``;
            default :func:`default_condition`.
        history: Earlier states kept for the condition (0: none).
        init_perturbation: Std of Gaussian noise added to each member's initial state.
        deterministic: ``k``: use the deterministic mean-of-``k`` closure (frozen noise).
        deterministic_seed: Seed of the frozen noise.
        sampler: Sampler override for the closure model.
        sampler_steps: Sampler step override.
        keyed: Per-member random streams (``member_seed`` site), so members are reproducible
            whatever the ensemble size; ``False`` uses one stream for the batch (slightly faster).
        record_every: Record the state every this many steps (and at the end).
        progress: Show a tqdm progress bar.
        prefix: Prefix of every site name (several rollouts in one program).
        state_event_ndim: Rank of one state ``(C, *spatial)``; default from the system.
        start: Continue an interrupted rollout from a carry passed to ``on_step`` (see
            :mod:`stochclosure.rollout.resume`); ``state0`` then only fixes shapes.
        on_step: Called after every solver step with the carry: a dict with ``step`` (steps done),
            ``state``, the between-draws policy state ``anchor``, ``e``, ``z``, the ``past`` states,
            and ``records``, ``rec_steps``, ``closures``, ``seconds`` so far (not copies).

    Returns:
        A :class:`RolloutResult` (states ``(time, *batch, C, *spatial)``, timings, trace).
    """
    if isinstance(n_steps, bool) or not isinstance(n_steps, int) or n_steps < 0:
        raise ConfigError(format_error("n_steps", "a non-negative integer", repr(n_steps)))
    if isinstance(record_every, bool) or not isinstance(record_every, int) or record_every < 1:
        raise ConfigError(format_error("record_every", "a positive integer", repr(record_every)))
    if members is not None and (isinstance(members, bool) or not isinstance(members, int) or members < 1):
        raise ConfigError(format_error("members", "a positive integer or None", repr(members),
                                       "an ensemble needs at least one member"))
    every = rollout_option("resample_every", name="_option/resample_every", default=resample_every)
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise ConfigError(format_error("resample_every", "a positive integer", repr(every)))
    between = rollout_option("between", name="_option/between", default=Hold() if between is None else between)
    if not isinstance(between, (Hold, ClosureAR1, NoiseAR1, WarmStart)):
        raise ConfigError(format_error("between", "Hold(), ClosureAR1(phi, sigma), NoiseAR1(rho) or WarmStart(t_start)",
                                       repr(between)))
    if not rollout_option("closure", name="_option/closure", default=True):
        closure = None
    init_perturbation = rollout_option("init_perturbation", name="_option/init_perturbation", default=init_perturbation)
    dt = float(system.dt if dt is None else dt)
    make_condition = default_condition if make_condition is None else make_condition
    ne = _event_ndim(system, state_event_ndim)
    hint = channels_last_hint(state0.shape if state0.dim() == ne + 1 else (1, *state0.shape)) \
        if isinstance(state0, Tensor) and state0.dim() >= ne >= 3 else None
    if hint:
        raise ShapeError(format_error("state0", "a channels-first state (C, *spatial) or (B, C, *spatial)",
                                      f"shape {tuple(state0.shape)}", hint))
    check_tensor("state0", state0, rank=(ne, ne + 1))
    if state0.dim() == ne + 1 and state0.shape[0] == 0:
        raise ShapeError(format_error("state0", "at least one initial state (B >= 1)", f"shape {tuple(state0.shape)}",
                                      "pass one state (C, *spatial) or a non-empty batch"))
    event = tuple(state0.shape[state0.dim() - ne:])
    is_model = isinstance(closure, torch.nn.Module) and hasattr(closure, "sample")
    if closure is not None and not is_model and not callable(closure):
        raise ConfigError(format_error("closure", "a ClosureModel, a callable cond -> U, or None",
                                       type(closure).__name__))
    if isinstance(between, (NoiseAR1, WarmStart)) and (deterministic or not is_model):
        between = Hold()  # frozen or absent sampler noise: nothing to correlate or refresh
    warm_sampler = None
    if isinstance(between, WarmStart):
        if between.t_start >= closure.sde.T:
            between = Hold()  # noised to T the previous draw carries weight alpha_T only: a full draw
        else:
            warm_sampler = between.sampler_for(closure, sampler)

    with ExitStack() as stack:
        if state0.dim() == ne + 1:
            stack.enter_context(pyro.plate(prefix + "cases", state0.shape[0], dim=-1))
        if members is not None:
            stack.enter_context(pyro.plate(prefix + "members", members, dim=-2 if state0.dim() == ne + 1 else -1))
        tracer = stack.enter_context(poutine.trace())
        batch, names = _plate_shape(state0.dim() - ne)
        n_b = math.prod(batch)
        nb = len(batch)

        def flat(x: Tensor) -> Tensor:
            return x.reshape(n_b, *x.shape[nb:])

        def full(x: Tensor, what: str) -> Tensor:
            try:
                return torch.broadcast_to(x, batch + tuple(x.shape[x.dim() - ne:]))
            except RuntimeError as e:
                raise ShapeError(format_error(what, f"a tensor broadcastable to {batch + event}",
                                              f"shape {tuple(x.shape)}")) from e

        state = full(state0, "state0")
        seeds = pyro.sample(prefix + "member_seed", MemberSeed(batch)) if keyed else None
        past: deque[Tensor] = deque(maxlen=max(history, 1))
        if start is None:
            if init_perturbation:
                state = state + float(init_perturbation) * _std_normal(prefix + "init_noise", batch, event, seeds,
                                                                        state.dtype)
            pyro.deterministic(prefix + "state/0", state, event_dim=ne)
            records, rec_steps = [state], [0]
            closures: dict[int, Tensor] = {}
            anchor: Tensor | None = None
            e: Tensor | None = None
            z: Tensor | None = None
            seconds: list[float] = []
            first = 0
        else:  # resume: the carry holds everything the loop below reads
            state, anchor, e, z = start["state"], start["anchor"], start["e"], start["z"]
            past.extend(start["past"])
            records, rec_steps = list(start["records"]), list(start["rec_steps"])
            closures, seconds, first = dict(start["closures"]), list(start["seconds"]), int(start["step"])
        bar = tqdm(total=n_steps, initial=first, disable=not progress, desc=prefix + "rollout", leave=False)
        for s in range(first, n_steps):
            tic = time.perf_counter()
            u: Tensor | None = None
            if closure is not None:
                if s % every == 0 or anchor is None:
                    hist = torch.stack([flat(h) for h in past], 1) if history and len(past) == history else None
                    obs = observations.at(s, batch) if observations is not None else None
                    cond = make_condition(flat(state), hist, obs)
                    name = f"{prefix}closure/{s}"
                    if is_model:
                        kw: dict[str, Any] = {}
                        if seeds is not None:
                            kw["seeds"] = mix_seeds(seeds, _salt(name))
                        if isinstance(between, NoiseAR1):
                            eta = _std_normal(f"{prefix}closure_noise/{s}", batch, event, seeds, state.dtype)
                            z = eta if z is None else between.rho * z + math.sqrt(1 - between.rho**2) * eta
                            kw["init_noise"] = z
                        draw_sampler, draw_steps = sampler, sampler_steps
                        if warm_sampler is not None and anchor is not None:
                            kw["warm_start"] = anchor
                            draw_sampler, draw_steps = warm_sampler, between.steps
                        law = ClosureDistribution(closure, cond, batch_shape=batch, sampler=draw_sampler,
                                                  steps=draw_steps, dtype=state.dtype, **kw)
                        if deterministic:
                            law = law.with_options(frozen_seed=deterministic_seed, average=int(deterministic),
                                                   seeds=None, init_noise=None)
                        u = pyro.sample(name, law, infer={"closure": True, "step": s})
                    else:
                        value = closure(cond)
                        u = pyro.deterministic(name, value.reshape(batch + tuple(value.shape[1:])), event_dim=ne)
                    u = full(u, name)
                    closures[s] = u
                    anchor, e = u, None
                elif isinstance(between, ClosureAR1):
                    xi = _std_normal(f"{prefix}closure_ar/{s}", batch, tuple(anchor.shape[nb:]), seeds, anchor.dtype)
                    e = between.sigma * xi if e is None else between.phi * e + between.sigma * xi
                    u = anchor + e
                else:
                    u = anchor
            if history:
                past.append(state)
            new = system.step(flat(state), None if u is None else flat(u), dt)
            state = new.reshape(batch + tuple(new.shape[1:]))
            if (s + 1) % record_every == 0 or s == n_steps - 1:
                pyro.deterministic(f"{prefix}state/{s + 1}", state, event_dim=ne)
                records.append(state)
                rec_steps.append(s + 1)
            seconds.append(time.perf_counter() - tic)
            bar.update(1)
            if on_step is not None:
                on_step({"step": s + 1, "state": state, "anchor": anchor, "e": e, "z": z, "past": list(past),
                         "records": records, "rec_steps": rec_steps, "closures": closures, "seconds": seconds})
        bar.close()

    spatial_names = ("x",) if ne == 2 else ("y", "x") if ne == 3 else tuple(f"s{i}" for i in range(ne - 1))
    member_dim = None
    for cand in (prefix + "members", "_num_predictive_samples"):
        if cand in names:
            member_dim = cand
            break
    steps_t = torch.tensor(rec_steps, dtype=torch.int64)
    return RolloutResult(states=torch.stack(records), times=t0 + dt * steps_t.double(), steps=steps_t,
                         step_seconds=torch.tensor(seconds, dtype=torch.float64), batch_dims=names,
                         event_dims=("channel", *spatial_names), member_dim=member_dim, closures=closures,
                         trace=tracer.trace)


def ensemble(system: Any, closure: Any, state0: Tensor, n_steps: int, members: int, *, seed: int | None = None,
             **kwargs: Any) -> RolloutResult:
    """Run a ``members``-member ensemble in one batched pass (a thin wrapper of :func:`rollout`).

    Args:
        system: The reduced solver.
        closure: The closure (see :func:`rollout`).
        state0: ``(C, *spatial)`` or ``(B, C, *spatial)`` initial state(s).
        n_steps: Solver steps.
        members: Ensemble size.
        seed: Seeds the whole ensemble through :func:`pyro.poutine.seed` (same seed, same ensemble).
        **kwargs: Any other :func:`rollout` argument.

    Returns:
        The :class:`RolloutResult`; ``result.members`` is ``(time, members, ...)``.
    """
    def program() -> RolloutResult:
        return rollout(system, closure, state0, n_steps, members=members, **kwargs)

    if seed is not None:
        return poutine.seed(program, rng_seed=seed)()
    return program()
