"""``rollout``: a coarse solver driven by closure draws, written as a pyro program.

Sites of one rollout (names get ``prefix`` in front):

* ``member_seed``: one integer key per batch element (``keyed=True``); every later random
  draw of element ``j`` comes from generators seeded by this key, so a member does not depend
  on the ensemble it runs in.
* ``init_noise``: standard-normal perturbation of the initial state (``init_perturbation``).
* ``closure/{s}``: the closure term drawn at solver step ``s`` (a :class:`ClosureDistribution`
  for a diffusion model, a :class:`ClosureLawDistribution` for another closure law; a
  deterministic site for a callable or a Dirac law).
* ``closure_noise/{s}``: latent innovations of the AR(1) latent policy (:class:`NoiseAR1`).
* ``closure_ar/{s}``: innovations of the closure AR(1) policy (:class:`ClosureAR1`).
* ``state/{s}``: deterministic sites, the state after ``s`` steps (every ``record_every``).
* ``obs/{s}``: observed sites ``observe.likelihood(state after s steps)`` with ``obs=`` the
  observations (every ``observe_every`` steps), when ``observe`` is given.

Batch axes are pyro plates: ``cases`` (dim -1) for a batched ``state0`` and ``members`` for the
ensemble; any enclosing plate (e.g. :class:`pyro.infer.Predictive`'s) adds axes on the left, and
every member is advanced in the same batched solver call and the same sampler solve.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import pyro
import torch
from pyro import poutine
from pyro.poutine.runtime import get_plates
from torch import Tensor
from tqdm.auto import tqdm

from .._memory import check_ensemble_memory
from .._types import Conditioning, channels_last_hint, check_tensor
from ..config import ENSEMBLE_SEED_LIMIT, check_seed
from ..distributions import MemberSeed
from ..errors import ConfigError, NonFiniteError, ShapeError, format_error
from .carry import RolloutCarry
from .measurements import Observation, StreamedObservations, default_condition, regular_points
from .policies import BetweenDrawPolicy, ClosureAR1, DrawContext, Hold, NoiseAR1, WarmStart, as_policy, closure_kind
from .result import RolloutResult

__all__ = ["rollout", "ensemble", "Hold", "ClosureAR1", "NoiseAR1", "WarmStart", "BetweenDrawPolicy",
           "Observation", "StreamedObservations", "default_condition", "regular_points"]

_NONFINITE = ("raise", "mark")


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


def _positive_int(name: str, value: Any, allow_zero: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < (0 if allow_zero else 1):
        raise ConfigError(format_error(name, "a non-negative integer" if allow_zero else "a positive integer",
                                       repr(value)))


def _check_options(n_steps: Any, members: Any, every: Any, record_every: Any, history: Any, dt: float,
                   init_perturbation: Any, on_nonfinite: str, observe_every: Any) -> None:
    """Every scalar option checked before any work (typed errors naming the argument)."""
    _positive_int("n_steps", n_steps, allow_zero=True)
    _positive_int("record_every", record_every)
    _positive_int("resample_every", every)
    _positive_int("history", history, allow_zero=True)
    _positive_int("observe_every", observe_every)
    if members is not None:
        _positive_int("members", members)
    if not (math.isfinite(dt) and dt > 0):
        raise ConfigError(format_error("dt", "a finite time step > 0", repr(dt),
                                       "integrate backward in time by another system, not a negative dt"))
    if init_perturbation is not None and not (math.isfinite(float(init_perturbation)) and init_perturbation >= 0):
        raise NonFiniteError(format_error("init_perturbation", "a finite std >= 0 (or None)", repr(init_perturbation)))
    if on_nonfinite not in _NONFINITE:
        raise ConfigError(format_error("on_nonfinite", f"one of {_NONFINITE}", repr(on_nonfinite)))


def _check_state0(system: Any, state0: Any, ne: int) -> tuple[int, ...]:
    """The event ``(C, *spatial)`` of a valid ``state0``; the system checks it before any network runs."""
    hint = channels_last_hint(state0.shape if state0.dim() == ne + 1 else (1, *state0.shape)) \
        if isinstance(state0, Tensor) and state0.dim() >= ne >= 3 else None
    if hint:
        raise ShapeError(format_error("state0", "a channels-first state (C, *spatial) or (B, C, *spatial)",
                                      f"shape {tuple(state0.shape)}", hint))
    check_tensor("state0", state0, rank=(ne, ne + 1))
    if state0.dim() == ne + 1 and state0.shape[0] == 0:
        raise ShapeError(format_error("state0", "at least one initial state (B >= 1)", f"shape {tuple(state0.shape)}",
                                      "pass one state (C, *spatial) or a non-empty batch"))
    check = getattr(system, "check_state", None)
    if check is not None:
        check(state0 if state0.dim() == ne + 1 else state0[None])
    return tuple(state0.shape[state0.dim() - ne:])


@dataclass
class _Layout:
    """Batch layout of one rollout: plate shape and names, the event, and the reshapes between them."""

    batch: tuple[int, ...]
    names: tuple[str, ...]
    event: tuple[int, ...]

    def flat(self, x: Tensor) -> Tensor:
        return x.reshape(math.prod(self.batch), *x.shape[len(self.batch):])

    def unflat(self, x: Tensor) -> Tensor:
        return x.reshape(self.batch + tuple(x.shape[1:]))

    def full(self, x: Tensor, what: str) -> Tensor:
        try:
            return torch.broadcast_to(x, self.batch + tuple(x.shape[x.dim() - len(self.event):]))
        except RuntimeError as e:
            raise ShapeError(format_error(what, f"a tensor broadcastable to {self.batch + self.event}",
                                          f"shape {tuple(x.shape)}")) from e


def _condition_fn(layout: _Layout, history: int, observations: StreamedObservations | None,
                  make_condition: Callable[..., Conditioning]) -> Callable[[RolloutCarry, int], Conditioning]:
    def condition(carry: RolloutCarry, step: int) -> Conditioning:
        past = carry.past
        hist = torch.stack([layout.flat(h) for h in past], 1) if history and len(past) == history else None
        obs = observations.at(step, layout.batch) if observations is not None else None
        return make_condition(layout.flat(carry.state), hist, obs)

    return condition


def _guard(carry: RolloutCarry, new: Tensor, layout: _Layout, on_nonfinite: str, step: int) -> Tensor:
    """``new`` with non-finite members raised on (``"raise"``) or frozen at their last state (``"mark"``)."""
    nb = len(layout.batch)
    ok = torch.isfinite(new).reshape(*layout.batch, -1).all(-1) if nb else torch.isfinite(new).all()
    if carry.finite is not None:
        ok = ok & carry.finite
    if bool(ok.all()):
        return new
    bad = [tuple(i) for i in (~ok).nonzero().tolist()]
    if on_nonfinite == "raise":
        raise NonFiniteError(format_error(
            "state", "finite states", f"NaN/inf after step {step + 1} in members {bad[:10]} (batch axes "
            f"{layout.names})", "lower dt, check the closure's scale, or pass on_nonfinite='mark' to freeze them"))
    if carry.nonfinite_step is None:
        carry.nonfinite_step = step + 1
    carry.finite = ok
    keep = ok.reshape(*ok.shape, *([1] * len(layout.event)))
    return torch.where(keep, new, carry.state)


def _record(carry: RolloutCarry, prefix: str, ne: int, record_every: int, n_steps: int) -> None:
    s = carry.step
    if s % record_every == 0 or s == n_steps:
        pyro.deterministic(f"{prefix}state/{s}", carry.state, event_dim=ne)
        carry.records.append(carry.state)
        carry.rec_steps.append(s)


def _observe(carry: RolloutCarry, observe: Any, observed: Any, every: int, prefix: str) -> None:
    """The observed site ``obs/{s}``: ``observe.likelihood(state)`` (batch = the plates) with ``obs=`` the data."""
    s = carry.step
    if observe is None or s % every != 0:
        return
    if callable(observed):
        values = observed(s)
    else:
        if s // every > observed.shape[0]:
            raise ShapeError(format_error("observed", f"observations for observed step {s} (entry {s // every - 1})",
                                          f"{observed.shape[0]} entries", "pass one entry per observed step"))
        values = observed[s // every - 1]
    law = observe.likelihood(carry.state)
    pyro.sample(f"{prefix}obs/{s}", law, obs=torch.as_tensor(values, dtype=carry.state.dtype).expand(law.shape()))


def _loop(system: Any, policy: BetweenDrawPolicy, ctx: DrawContext | None, carry: RolloutCarry, n_steps: int,
          dt: float, layout: _Layout, *, record_every: int, on_nonfinite: str, prefix: str, progress: bool,
          observe: Any, observed: Any, observe_every: int,
          on_step: Callable[[RolloutCarry], None] | None) -> RolloutCarry:
    """The rollout proper: per step a closure from the policy, a solver step, guards, records."""
    ne = len(layout.event)
    bar = tqdm(total=n_steps, initial=carry.step, disable=not progress, desc=prefix + "rollout", leave=False)
    for s in range(carry.step, n_steps):
        tic = time.perf_counter()
        u = None
        if ctx is not None:
            fresh = ctx.draws_at(s, carry.policy.held)
            u, carry.policy = policy.closure(ctx, carry, s)
            u = layout.full(u, f"{prefix}closure/{s}")
            if fresh:
                carry.closures[s] = layout.full(carry.policy.held, f"{prefix}closure/{s}")
        if carry.past.maxlen:
            carry.past.append(carry.state)
        new = layout.unflat(system.step(layout.flat(carry.state), None if u is None else layout.flat(u), dt))
        carry.state, carry.step = _guard(carry, new, layout, on_nonfinite, s), s + 1
        _record(carry, prefix, ne, record_every, n_steps)
        _observe(carry, observe, observed, observe_every, prefix)
        carry.seconds.append(time.perf_counter() - tic)
        bar.update(1)
        if on_step is not None:
            on_step(carry)
    bar.close()
    return carry


def _start(start: RolloutCarry | None, state0: Tensor, layout: _Layout, seeds: Tensor | None,
           init_perturbation: float | None, ctx: DrawContext | None, policy: BetweenDrawPolicy, history: int,
           prefix: str) -> RolloutCarry:
    """The carry of a fresh run (initial perturbation, ``state/0``) or the given one, continued."""
    if start is not None:
        if not isinstance(start, RolloutCarry):
            raise ConfigError(format_error("start", "a RolloutCarry (from on_step or resume.carry_from_tensors)",
                                           type(start).__name__))
        start.past = deque(start.past, maxlen=history)
        return start
    state = layout.full(state0, "state0")
    if init_perturbation:
        noise = DrawContext(None, layout.batch, layout.event, seeds, prefix, state.dtype, 1, lambda c, s: None)
        state = state + float(init_perturbation) * noise.std_normal("init_noise", layout.event)
    pyro.deterministic(prefix + "state/0", state, event_dim=len(layout.event))
    carry = RolloutCarry.initial(state)
    carry.past = deque(maxlen=history)
    if ctx is not None:
        carry.policy = policy.init(ctx)
    return carry


def rollout(system: Any, closure: Any, state0: Tensor, n_steps: int, *, members: int | None = None,
            dt: float | None = None, t0: float = 0.0, resample_every: int = 1, between: Any = None,
            observations: StreamedObservations | None = None,
            make_condition: Callable[[Tensor, Tensor | None, Observation | None], Conditioning] | None = None,
            history: int = 0, init_perturbation: float | None = None, deterministic: int | None = None,
            deterministic_seed: int = 0, sampler: Any = None, sampler_steps: int | None = None, keyed: bool = True,
            record_every: int = 1, progress: bool = False, prefix: str = "",
            state_event_ndim: int | None = None, start: RolloutCarry | None = None,
            on_step: Callable[[RolloutCarry], None] | None = None, on_nonfinite: str = "raise",
            observe: Any = None, observed: Any = None, observe_every: int = 1) -> RolloutResult:
    """Advance ``system`` for ``n_steps`` steps with closures drawn from ``closure``.

    At every step the policy ``between`` gives the closure: a fresh draw ``U ~ closure(. | y)``
    at site ``"closure/{s}"`` every ``resample_every`` steps, with ``y = make_condition(state,
    history, obs_s)``, and in between what the policy does (:class:`Hold`, :class:`ClosureAR1`,
    :class:`NoiseAR1`, :class:`WarmStart`). Then ``state = system.step(state, U, dt)``.

    Every option is a keyword of this function (one spelling): the resampling interval, the
    policy, the initial perturbation, the deterministic closure and switching the closure off
    (``closure=None``) have no handler form.

    Gradients: the rollout is differentiable (pyro's gradient-based inference may need that), so
    with a closure law whose parameters require gradients every step's draw stays in the autograd
    graph. For forecasting, run it under ``torch.inference_mode()`` (or ``torch.no_grad()``), or
    memory grows with the number of steps.

    Args:
        system: An :class:`~stochclosure.systems.AbstractSystem` (``step(state, closure, dt)``);
            its ``check_state`` sees ``state0`` before any network runs.
        closure: A :class:`~stochclosure.ClosureModel`; any
            :class:`~stochclosure.closures.AbstractClosureLaw` (its draw is a sample site of a
            :class:`~stochclosure.distributions.ClosureLawDistribution`; a Dirac law without a
            latent is a deterministic site); a callable ``cond -> U (N, C, *grid)`` (a
            deterministic site, checked finite); or ``None`` (no closure).
        state0: ``(C, *spatial)`` one initial state, or ``(B, C, *spatial)`` (plate ``cases``).
        n_steps: Solver steps.
        members: Ensemble size (plate ``members``); ``None`` for none of its own.
        dt: Time step ``> 0`` (default ``system.dt``).
        t0: Physical time of ``state0``.
        resample_every: Solver steps between fresh closure draws.
        between: Policy (default :class:`Hold`); one the closure cannot serve raises
            :class:`~stochclosure.errors.IncompatibleComponentsError`.
        observations: Sparse measurements per step for the condition, or ``None``.
        make_condition: ``(state (N, C, *grid), history (N, k, C, *grid) | None, obs) -> Conditioning``;
            default :func:`default_condition`.
        history: Earlier states kept for the condition (``>= 0``; 0: none).
        init_perturbation: Std (finite, ``>= 0``) of Gaussian noise added to each member's initial state.
        deterministic: ``k``: the deterministic mean-of-``k`` closure (frozen noise: the same latents for
            every member; a diffusion model or any closure law with a latent).
        deterministic_seed: Seed of the frozen noise.
        sampler: Sampler override for a diffusion closure.
        sampler_steps: Sampler step override.
        keyed: Per-member random streams (``member_seed`` site), so members are reproducible
            whatever the ensemble size; ``False`` uses one stream for the batch (slightly faster).
        record_every: Record the state every this many steps (and at the end).
        progress: Show a tqdm progress bar.
        prefix: Prefix of every site name (several rollouts in one program).
        state_event_ndim: Rank of one state ``(C, *spatial)``; default from the system.
        start: Continue from a :class:`~stochclosure.rollouts.carry.RolloutCarry` (as passed to
            ``on_step``, or from :func:`stochclosure.rollouts.resume.carry_from_tensors`); ``state0``
            then only fixes shapes.
        on_step: Called after every solver step with the carry (the live object, not a copy).
        on_nonfinite: ``"raise"``: a non-finite state raises
            :class:`~stochclosure.errors.NonFiniteError` naming the step and the members;
            ``"mark"``: those members are frozen at their last finite state and the result's
            ``nonfinite_step`` / ``finite_members`` say which and when.
        observe: An observation model (:mod:`stochclosure.assimilation.observations`) whose
            ``likelihood(state (N, C, *grid))`` is a pyro distribution: observed states become
            sites ``obs/{s}``.
        observed: The observations: a tensor whose entry ``i`` is observed step
            ``(i + 1) * observe_every``, or a callable ``step -> values``.
        observe_every: Solver steps between observed states.

    Returns:
        A :class:`RolloutResult` (states ``(time, *batch, C, *spatial)``, timings, trace).
    """
    every, dt = resample_every, float(system.dt if dt is None else dt)
    _check_options(n_steps, members, every, record_every, history, dt, init_perturbation, on_nonfinite, observe_every)
    if observe is not None and observed is None:
        raise ConfigError(format_error("observed", "the observations of the observe= sites", "None"))
    policy, kind = as_policy(between), closure_kind(closure)
    ne = _event_ndim(system, state_event_ndim)
    event = _check_state0(system, state0, ne)
    # before any allocation (a plate of size N allocates its N indices): the records of members x cases
    batch = (members or 1) * (state0.shape[0] if state0.dim() == ne + 1 else 1)
    check_ensemble_memory(batch, n_steps, record_every, event, state0.dtype, state0.device)
    with ExitStack() as stack:
        if state0.dim() == ne + 1:
            stack.enter_context(pyro.plate(prefix + "cases", state0.shape[0], dim=-1))
        if members is not None:
            stack.enter_context(pyro.plate(prefix + "members", members, dim=-2 if state0.dim() == ne + 1 else -1))
        tracer = stack.enter_context(poutine.trace())
        layout = _Layout(*_plate_shape(state0.dim() - ne), event)
        seeds = pyro.sample(prefix + "member_seed", MemberSeed(layout.batch)) if keyed else None
        cond_fn = _condition_fn(layout, history, observations, make_condition or default_condition)
        ctx = None if kind == "none" else DrawContext(
            closure, layout.batch, event, seeds, prefix, state0.dtype, every, cond_fn, sampler, sampler_steps,
            deterministic, deterministic_seed, on_nonfinite)
        carry = _start(start, state0, layout, seeds, init_perturbation, ctx, policy, history, prefix)
        carry = _loop(system, policy, ctx, carry, n_steps, dt, layout, record_every=record_every,
                      on_nonfinite=on_nonfinite, prefix=prefix, progress=progress, observe=observe,
                      observed=observed, observe_every=observe_every, on_step=on_step)
    return _result(carry, layout, t0, dt, prefix, tracer.trace)


def _result(carry: RolloutCarry, layout: _Layout, t0: float, dt: float, prefix: str, trace: Any) -> RolloutResult:
    ne = len(layout.event)
    spatial_names = ("x",) if ne == 2 else ("y", "x") if ne == 3 else tuple(f"s{i}" for i in range(ne - 1))
    member_dim = next((c for c in (prefix + "members", "_num_predictive_samples") if c in layout.names), None)
    steps_t = torch.tensor(carry.rec_steps, dtype=torch.int64)
    return RolloutResult(states=torch.stack(carry.records), times=t0 + dt * steps_t.double(), steps=steps_t,
                         step_seconds=torch.tensor(carry.seconds, dtype=torch.float64), batch_dims=layout.names,
                         event_dims=("channel", *spatial_names), member_dim=member_dim, closures=carry.closures,
                         trace=trace, nonfinite_step=carry.nonfinite_step, finite_members=carry.finite)


def ensemble(system: Any, closure: Any, state0: Tensor, n_steps: int, members: int, *, seed: int | None = None,
             **kwargs: Any) -> RolloutResult:
    """Run a ``members``-member ensemble in one batched pass (a thin wrapper of :func:`rollout`).

    Args:
        system: The reduced solver.
        closure: The closure (see :func:`rollout`).
        state0: ``(C, *spatial)`` or ``(B, C, *spatial)`` initial state(s).
        n_steps: Solver steps.
        members: Ensemble size.
        seed: Seeds the whole ensemble through :func:`pyro.poutine.seed` (same seed, same ensemble);
            an integer in ``[0, 2**32)`` (:data:`stochclosure.config.ENSEMBLE_SEED_LIMIT`).
        **kwargs: Any other :func:`rollout` argument.

    Returns:
        The :class:`RolloutResult`; ``result.members`` is ``(time, members, ...)``.
    """
    if seed is not None:
        seed = check_seed(seed, limit=ENSEMBLE_SEED_LIMIT)  # pyro.poutine.seed also seeds NumPy (32-bit)

    def program() -> RolloutResult:
        return rollout(system, closure, state0, n_steps, members=members, **kwargs)

    if seed is not None:
        return poutine.seed(program, rng_seed=seed)()
    return program()
