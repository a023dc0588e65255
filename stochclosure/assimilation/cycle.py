"""Cycling data assimilation: forecast the ensemble, observe the truth, analyse; resumable.

Each cycle ``c``:

1. **Forecast**: all members advance ``steps_per_cycle`` solver steps in *one* batched
   :func:`~stochclosure.rollouts.rollout` (members are its batch of cases), so any closure works
   (a :class:`~stochclosure.ClosureModel`, a callable ``cond -> U``, ``None``). The rollout is
   continued from its carry (``start=``) with the state replaced by the analysis, so the closure's
   between-draw memory (:class:`~stochclosure.rollouts.ClosureAR1`, ``NoiseAR1``, ``Hold``) runs on
   across analyses, and every member keeps its key (``member_seed``) for the whole run: the draws
   of member ``j`` at solver step ``s`` are the same whatever happened before.
2. **Truth**: the twin (:mod:`.twins`) advances by the same physical time.
3. **Observation**: ``y = H(truth) + eps``.
4. **Analysis**: inflation (:mod:`.inflation`), then the filter (:mod:`.filters`).
5. **Scores** of the forecast and of the analysis against the truth: RMSE of the mean, spread
   (root mean ensemble variance), CRPS (:func:`~stochclosure.metrics.crps_ensemble`), the rank of
   the truth's observed values among the forecast's (rank histogram), divergence.

Every random number of cycle ``c`` comes from generators seeded by ``(seed, c, use)``, so a run
is a function of its seed. With ``checkpoint=`` the whole loop state is written after every
cycle (safetensors + JSON, never pickle; temporary file + ``os.replace``); calling again with the
same arguments continues from the last completed cycle and returns, bit for bit, what an
uninterrupted run returns (a killed run loses at most the cycle in progress). A run with more
``cycles`` than its checkpoint continues it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from pyro import poutine
from torch import Tensor
from tqdm.auto import tqdm

from .. import metrics
from .._io import exclusive_lock, preflight_output
from ..distributions import mix_seeds
from ..errors import ConfigError, NonFiniteError, ShapeError, format_error
from ..rollouts import rollout
from ..rollouts.carry import RolloutCarry
from ..rollouts.resume import carry_from_tensors, carry_to_tensors
from ._identity import describe
from .filters import AbstractEnsembleFilter, filter_from_spec
from .inflation import AbstractInflation, inflation_from_spec
from .observations import AbstractObservation, observation_from_spec
from .result import FORMAT, FORMAT_VERSION, SCORES, AssimilationResult, Records, read_file, write_file
from .twins import AbstractTwin, twin_for

__all__ = ["assimilate"]

_MANAGED = ("members", "start", "on_step", "record_every", "dt", "n_steps", "state0", "progress")


def _key(seed: int, use: str, cycle: int) -> int:
    return int(mix_seeds(torch.tensor([int(seed)]), zlib.crc32(f"{use}/{cycle}".encode()))[0])


def _generator(seed: int, use: str, cycle: int) -> torch.Generator:
    """The generator of one use (``"truth"``, ``"observation"``, ...) in one cycle of a run."""
    return torch.Generator().manual_seed(_key(seed, use, cycle))


def _int(name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(format_error(name, f"an integer >= {low}", repr(value)))
    return value


def _scores(ens: Tensor, truth: Tensor) -> tuple[Tensor, float, float, float]:
    """Mean ``(C, *grid)``, RMSE of the mean, spread (root mean variance) and mean CRPS of an ensemble."""
    x, t = ens.double(), truth.double()
    mean = x.mean(0)
    rmse = float((mean - t).pow(2).mean().sqrt())
    spread = float(x.var(0, unbiased=True).mean().sqrt())
    crps = float(metrics.crps_ensemble(x, t, member_dim=0).mean())
    return mean, rmse, spread, crps


def _forecast(system: Any, closure: Any, ens: Tensor, carry: RolloutCarry | None, cycle: int, steps: int, dt: float,
              keys: Tensor, seed: int, rollout_kwargs: dict[str, Any]) -> tuple[Tensor, RolloutCarry]:
    """All members ``steps`` solver steps ahead in one rollout continued from ``carry``; the new carry."""
    s0 = cycle * steps
    start = RolloutCarry.initial(ens, s0) if carry is None else replace(carry, step=s0).continued(ens)
    grabbed: dict[str, RolloutCarry] = {}

    def program() -> Any:
        return rollout(system, closure, ens, s0 + steps, dt=dt, start=start,
                       on_step=lambda c: grabbed.__setitem__("carry", c), record_every=s0 + steps, **rollout_kwargs)

    prefix = str(rollout_kwargs.get("prefix", ""))
    with torch.no_grad():
        run = poutine.condition(program, data={prefix + "member_seed": keys})
        try:
            forecast = poutine.seed(run, rng_seed=_key(seed, "forecast", cycle) % 2**32)().states[-1]
        except NonFiniteError:  # the forecast blew up (state or closure): recorded as such, the run stops
            forecast = torch.full_like(ens, math.nan)
    return forecast, grabbed.get("carry", start)


def _save(path: Path, fingerprint: str, done: int, stopped: bool, ens: Tensor, keys: Tensor,
          tstate: dict[str, Tensor], records: Records, carry: RolloutCarry | None, inflation: AbstractInflation) -> None:
    tensors = {"ensemble": ens, "keys": keys, **{f"truth.{k}": v for k, v in tstate.items()},
               **{f"rec.{k}": v for k, v in records.tensors().items()}}
    carry_meta = None
    if carry is not None:  # the policy's memory and the history go on; the records restart each cycle
        ct, carry_meta = carry_to_tensors(carry.continued(carry.state), prefix="carry.")
        tensors.update(ct)
    write_file(path, tensors, {"format": FORMAT, "format_version": FORMAT_VERSION, "fingerprint": fingerprint,
                               "cycles_done": done, "stopped": stopped, "carry": carry_meta,
                               "inflation_state": inflation.state_dict()})


def _restore(path: Path, fingerprint: str, cycles: int, record_fields: bool, inflation: AbstractInflation
             ) -> tuple[int, bool, Tensor, dict[str, Tensor], Records, RolloutCarry | None]:
    t, meta = read_file(path, FORMAT, "checkpoint")
    if meta.get("fingerprint") != fingerprint:
        raise ConfigError(format_error("checkpoint", "the checkpoint of this same run (system, closure, truth, "
                                                     "observation, filter, inflation, sizes, seed)",
                                       f"{str(path)!r}, written by another run",
                                       "rerun with the original arguments, or delete the checkpoint"))
    done = int(meta["cycles_done"])
    if done > cycles:
        raise ConfigError(format_error("cycles", f"at least the {done} cycles the checkpoint holds", repr(cycles),
                                       "ask for as many cycles or more (a run continues)"))
    inflation.load_state_dict(meta["inflation_state"])
    tstate = {k[len("truth."):]: v for k, v in t.items() if k.startswith("truth.")}
    records = Records.from_tensors({k[len("rec."):]: v for k, v in t.items() if k.startswith("rec.")}, done,
                                   record_fields)
    carry = None if meta.get("carry") is None else carry_from_tensors(t, meta["carry"], prefix="carry.")
    return done, bool(meta["stopped"]), t["ensemble"], tstate, records, carry


def assimilate(system: Any, closure: Any, truth_state0: Any, *, observation: AbstractObservation | dict[str, Any],
               filter: AbstractEnsembleFilter | str | dict[str, Any], members: int, cycles: int, steps_per_cycle: int,
               spinup: int = 0, seed: int = 0, checkpoint: str | os.PathLike[str] | None = None,
               inflation: AbstractInflation | float | str | dict[str, Any] | list[Any] | None = None,
               truth: AbstractTwin | None = None, initial_ensemble: Tensor | None = None,
               init_spread: float | None = None, dt: float | None = None, divergence_rmse: float | None = None,
               record_fields: bool = True, progress: bool = False,
               on_cycle: Callable[[int, dict[str, Any]], None] | None = None,
               **rollout_kwargs: Any) -> AssimilationResult:
    """Run a twin experiment: ``cycles`` forecast/analysis cycles of an ensemble against a truth.

    Args:
        system: The reduced solver (:class:`~stochclosure.systems.AbstractSystem`).
        closure: The forecast model's closure: anything :func:`~stochclosure.rollouts.rollout`
            takes (a :class:`~stochclosure.ClosureModel`, a callable ``cond -> U``, ``None``).
        truth_state0: The truth's initial state, in the form its twin takes (one reduced state
            ``(C, *grid)`` for a reduced twin, ``X`` or ``(X, Y)`` for two-scale Lorenz-96, a fine
            vorticity for the subgrid system).
        observation: The observation operator (or its spec), applied to the reduced truth.
        filter: The analysis (:class:`~.filters.ETKF`, ``"enkf"``, ``{"type": "letkf", "radius": 0.1}``).
        members: Ensemble size ``M >= 2``.
        cycles: Analysis cycles.
        steps_per_cycle: Solver steps of the reduced model between analyses.
        spinup: First cycles left out of the summary scores and the rank histogram.
        seed: Seed of every random number of the run.
        checkpoint: Safetensors file written after every cycle and continued from when it exists.
        inflation: ``None``, a covariance factor, ``"adaptive"``, a spec, an inflation object or
            a list of them (:func:`~.inflation.inflation_from_spec`).
        truth: The twin (default :func:`~.twins.twin_for`: the system's full model if it has one,
            else the reduced model with ``closure``, a perfect-model experiment).
        initial_ensemble: ``(M, C, *grid)``; default: the initial reduced truth plus
            ``init_spread`` times standard normal noise.
        init_spread: Std of the initial perturbations (default: the RMS observation-noise std).
        dt: Solver step of the forecast model (default ``system.dt``).
        divergence_rmse: Analysis RMSE above which a cycle counts as diverged (default 5 times
            the RMS observation-noise std).
        record_fields: Keep the truth and the forecast and analysis means of every cycle.
        progress: Show a progress bar.
        on_cycle: Called after each cycle (and its checkpoint) with ``(cycle, scores)``.
        **rollout_kwargs: Further :func:`~stochclosure.rollouts.rollout` options of the forecast
            (``resample_every``, ``between``, ``sampler``, ``sampler_steps``, ``keyed``, ...).

    Returns:
        The :class:`AssimilationResult`.

    Raises:
        ConfigError: bad sizes or components, or a checkpoint of another run.
        ShapeError: an initial ensemble or truth of the wrong shape.
        CheckpointError: an unreadable checkpoint.
        OutputError: the checkpoint cannot be written, or another process is writing it.
    """
    members = _int("members", members, 2)
    cycles = _int("cycles", cycles, 0)
    steps_per_cycle = _int("steps_per_cycle", steps_per_cycle, 1)
    spinup = _int("spinup", spinup, 0)
    seed = _int("seed", seed, 0)
    bad = sorted(set(rollout_kwargs) & set(_MANAGED))
    if bad:
        raise ConfigError(format_error(bad[0], "not set (assimilate manages it)", repr(rollout_kwargs[bad[0]])))
    if not callable(getattr(system, "step", None)):
        raise ConfigError(format_error("system", "a system with step(state, closure, dt)", type(system).__name__))
    op = observation_from_spec(observation)
    flt = filter_from_spec(filter)
    infl = inflation_from_spec(inflation)
    twin = twin_for(system, closure) if truth is None else truth
    if not isinstance(twin, AbstractTwin):
        raise ConfigError(format_error("truth", "a twin (AbstractTwin)", type(twin).__name__))
    dt = float(system.dt if dt is None else dt)
    if not dt > 0:
        raise ConfigError(format_error("dt", "a positive time step", repr(dt)))

    # -- the start, checked before any work --
    tstate = twin.initial(truth_state0, _generator(seed, "truth-init", 0))
    truth_r = twin.reduced(tstate)
    event = op.event_shape_of(truth_r, "truth")
    if truth_r.dim() != len(event):
        raise ShapeError(format_error("truth_state0", f"one state {tuple(event)} (the observation's event)",
                                      f"reduced truth of shape {tuple(truth_r.shape)}"))
    rms_std = float(op.std_vector(event).pow(2).mean().sqrt())
    ens0 = _initial_ensemble(truth_r, members, initial_ensemble, init_spread, rms_std, seed)
    threshold = 5.0 * rms_std if divergence_rmse is None else float(divergence_rmse)
    flt.analyse(ens0[:2], op.apply(truth_r), op, generator=torch.Generator().manual_seed(0))  # probe: shapes, locations
    keys = torch.randint(0, 2**62, (members,), generator=_generator(seed, "member-keys", 0), dtype=torch.int64)
    config = {"system": describe(system), "closure": describe(closure), "observation": op.spec(),
              "filter": flt.spec(), "inflation": infl.spec(), "truth": twin.spec(), "members": members,
              "steps_per_cycle": steps_per_cycle, "dt": dt, "seed": seed, "init_spread": init_spread,
              "divergence_rmse": threshold, "record_fields": bool(record_fields),
              "rollout": describe(dict(rollout_kwargs))}
    identity = json.dumps({**config, "truth_state0": describe(truth_state0), "initial_ensemble": describe(ens0)},
                          sort_keys=True, default=str)
    fingerprint = hashlib.sha256(identity.encode()).hexdigest()
    run = _Run(system, closure, twin, op, flt, infl, members, steps_per_cycle, dt, seed, keys, threshold,
               rollout_kwargs)

    # -- the loop, fresh or from the checkpoint --
    ens, carry, records, done, stopped = ens0, None, Records(record_fields), 0, False
    path = None if checkpoint is None else Path(checkpoint)
    if path is not None:
        preflight_output(path, "checkpoint")
    with exclusive_lock(path, "checkpoint") if path is not None else contextlib.nullcontext():
        if path is not None and path.exists():
            done, stopped, ens, tstate, records, carry = _restore(path, fingerprint, cycles, record_fields, infl)
        bar = tqdm(total=cycles, initial=done, disable=not progress, desc="assimilate", leave=False)
        while done < cycles and not stopped:
            ens, tstate, carry, scores, diverged, stopped = run.cycle(done, ens, tstate, carry, records)
            done += 1
            if path is not None:
                _save(path, fingerprint, done, stopped, ens, keys, tstate, records, carry, infl)
            bar.update(1)
            if on_cycle is not None:
                on_cycle(done - 1, {**scores, "diverged": diverged})
        bar.close()
        if path is not None and not path.exists():
            _save(path, fingerprint, done, stopped, ens, keys, tstate, records, carry, infl)
    return records.result(done, members, spinup, op.n_obs(event), ens, stopped, config)


def _initial_ensemble(truth_r: Tensor, members: int, initial_ensemble: Tensor | None, init_spread: float | None,
                      rms_std: float, seed: int) -> Tensor:
    """The given ``(M, C, *grid)`` ensemble, or the reduced truth plus ``init_spread`` standard normal noise."""
    if initial_ensemble is None:
        spread0 = rms_std if init_spread is None else float(init_spread)
        if not (math.isfinite(spread0) and spread0 >= 0):
            raise ConfigError(format_error("init_spread", "a non-negative std", repr(init_spread)))
        noise = torch.randn((members, *truth_r.shape), generator=_generator(seed, "init", 0), dtype=torch.float64)
        return (truth_r.double() + spread0 * noise).to(truth_r.dtype)
    if isinstance(initial_ensemble, Tensor) and tuple(initial_ensemble.shape) == (members, *truth_r.shape):
        return initial_ensemble
    got = f"shape {tuple(initial_ensemble.shape)}" if isinstance(initial_ensemble, Tensor) else \
        type(initial_ensemble).__name__
    raise ShapeError(format_error("initial_ensemble", f"a tensor {(members, *truth_r.shape)} (members, C, *grid)", got))


@dataclass
class _Run:
    """The fixed parts of one twin experiment; :meth:`cycle` runs one forecast/analysis cycle."""

    system: Any
    closure: Any
    twin: AbstractTwin
    op: AbstractObservation
    flt: AbstractEnsembleFilter
    infl: AbstractInflation
    members: int
    steps_per_cycle: int
    dt: float
    seed: int
    keys: Tensor
    threshold: float
    rollout_kwargs: dict[str, Any]

    def cycle(self, c: int, ens: Tensor, tstate: Any, carry: Any, records: Records
              ) -> tuple[Tensor, Any, Any, dict[str, Any], bool, bool]:
        """Cycle ``c``: forecast, advance the truth, observe, analyse, record; returns the new
        ``(ensemble, truth state, carry, scores, diverged, stopped)``."""
        seed, op = self.seed, self.op
        tic = time.perf_counter()
        forecast, carry = _forecast(self.system, self.closure, ens, carry, c, self.steps_per_cycle, self.dt, self.keys,
                                    seed, self.rollout_kwargs)
        scores = {"forecast_seconds": time.perf_counter() - tic, "times": (c + 1) * self.steps_per_cycle * self.dt}
        tstate = self.twin.advance(tstate, self.steps_per_cycle * self.dt, _generator(seed, "truth", c))
        truth_r = self.twin.reduced(tstate)
        y = op.sample(truth_r, _generator(seed, "observation", c))
        stopped = not bool(torch.isfinite(forecast).all())
        if stopped:                                                  # the forecast blew up: record and stop
            analysis, ranks = forecast, torch.zeros(self.members + 1, dtype=torch.int64)
            fmean = amean = forecast.double().mean(0)
            scores.update({k: math.nan for k in SCORES if k not in scores}, inflation=self.infl.factor,
                          analysis_seconds=0.0)
            diverged = True
        else:
            fmean, scores["forecast_rmse"], scores["forecast_spread"], scores["forecast_crps"] = \
                _scores(forecast, truth_r)
            hx = op.apply(forecast.double())
            ranks = metrics.rank_histogram(hx, op.apply(truth_r.double()), generator=_generator(seed, "ranks", c))
            tic = time.perf_counter()
            with torch.no_grad():
                inflated = self.infl.apply(forecast, y, op, generator=_generator(seed, "inflation", c))
                analysis = self.flt.analyse(inflated, y, op, generator=_generator(seed, "analysis", c))
            scores["analysis_seconds"] = time.perf_counter() - tic
            amean, scores["analysis_rmse"], scores["analysis_spread"], scores["analysis_crps"] = \
                _scores(analysis, truth_r)
            scores.update(inflation=self.infl.factor,
                          innovation_rms=float((y.double() - hx.mean(0)).pow(2).mean().sqrt()))
            diverged = not (math.isfinite(scores["analysis_rmse"]) and scores["analysis_rmse"] <= self.threshold)
        records.append(scores, diverged, ranks, y, {"truth": truth_r, "forecast_mean": fmean.to(truth_r.dtype),
                                                    "analysis_mean": amean.to(truth_r.dtype)})
        return analysis, tstate, carry, scores, diverged, stopped
