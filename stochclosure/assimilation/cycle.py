"""Cycling data assimilation: forecast the ensemble, observe the truth, analyse; resumable.

Each cycle ``c``:

1. **Forecast**: all members advance ``steps_per_cycle`` solver steps in *one* batched
   :func:`~stochclosure.rollout.rollout` (members are its batch of cases), so any closure works
   (a :class:`~stochclosure.ClosureModel`, a callable ``cond -> U``, ``None``). The rollout is
   continued from its carry (``start=``) with the state replaced by the analysis, so the closure's
   between-draw memory (:class:`~stochclosure.rollout.ClosureAR1`, ``NoiseAR1``, ``Hold``) runs on
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
import inspect
import json
import math
import os
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from pyro import poutine
from torch import Tensor

from .. import metrics
from .._io import exclusive_lock, preflight_output, temporary_name
from ..distributions import mix_seeds
from ..errors import CheckpointError, ConfigError, ShapeError, format_error
from .filters import AbstractEnsembleFilter, filter_from_spec
from .inflation import AbstractInflation, inflation_from_spec
from .observations import AbstractObservation, observation_from_spec
from .twins import AbstractTwin, twin_for

__all__ = ["assimilate", "AssimilationResult", "FORMAT", "FORMAT_VERSION"]

FORMAT = "stochclosure.assimilation"
FORMAT_VERSION = 1

_SCORES = ("forecast_rmse", "analysis_rmse", "forecast_spread", "analysis_spread", "forecast_crps", "analysis_crps",
           "innovation_rms", "inflation", "forecast_seconds", "analysis_seconds", "times")
_FIELDS = ("truth", "forecast_mean", "analysis_mean")
_MANAGED = ("members", "start", "on_step", "record_every", "dt", "n_steps", "state0", "progress")


# -- results ----------------------------------------------------------------------------------------------
@dataclass
class AssimilationResult:
    """Per-cycle records of an assimilation run.

    Attributes:
        members: Ensemble size ``M``.
        spinup: Cycles left out of :meth:`summary` and :meth:`rank_histogram`.
        times: ``(cycles,)`` physical time of each analysis.
        forecast_rmse: ``(cycles,)`` RMSE of the forecast mean against the truth (state units).
        analysis_rmse: ``(cycles,)`` RMSE of the analysis mean.
        forecast_spread: ``(cycles,)`` root mean (unbiased) ensemble variance of the forecast.
        analysis_spread: ``(cycles,)`` the same for the analysis.
        forecast_crps: ``(cycles,)`` CRPS of the forecast, averaged over the state.
        analysis_crps: ``(cycles,)`` CRPS of the analysis.
        innovation_rms: ``(cycles,)`` RMS of ``y - H(forecast mean)``.
        inflation: ``(cycles,)`` multiplicative covariance factor applied in each cycle.
        forecast_seconds: ``(cycles,)`` wall-clock seconds of each forecast (all members).
        analysis_seconds: ``(cycles,)`` seconds of each analysis (inflation and filter).
        diverged: ``(cycles,)`` non-finite forecast or analysis RMSE above the divergence threshold.
        rank_counts: ``(cycles, M + 1)`` ranks of the truth's observed values among the forecast's.
        observations: ``(cycles, p)`` the observations assimilated.
        ensemble: ``(M, C, *grid)`` the last analysis ensemble.
        truth: ``(cycles, C, *grid)`` the truth at each analysis (``record_fields``), else ``None``.
        forecast_mean: ``(cycles, C, *grid)`` or ``None``.
        analysis_mean: ``(cycles, C, *grid)`` or ``None``.
        stopped: The run stopped early on a non-finite forecast.
        config: The run's settings (JSON).
    """

    members: int
    spinup: int
    times: Tensor
    forecast_rmse: Tensor
    analysis_rmse: Tensor
    forecast_spread: Tensor
    analysis_spread: Tensor
    forecast_crps: Tensor
    analysis_crps: Tensor
    innovation_rms: Tensor
    inflation: Tensor
    forecast_seconds: Tensor
    analysis_seconds: Tensor
    diverged: Tensor
    rank_counts: Tensor
    observations: Tensor
    ensemble: Tensor
    truth: Tensor | None = None
    forecast_mean: Tensor | None = None
    analysis_mean: Tensor | None = None
    stopped: bool = False
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def cycles(self) -> int:
        """Cycles recorded."""
        return int(self.times.shape[0])

    def rank_histogram(self) -> Tensor:
        """Counts ``(M + 1,)`` of the truth's observed ranks over the cycles after spin-up."""
        return self.rank_counts[self.spinup:].sum(0)

    def summary(self) -> dict[str, float]:
        """Means over the cycles after spin-up (RMSE, spread, CRPS, cost), divergences, rank-histogram p-value.

        ``spread_rmse`` is ``sqrt((M + 1) / M) * mean spread / mean RMSE`` (1 for a calibrated
        ensemble: the truth is statistically one more member).
        """
        s = slice(self.spinup, None)
        out: dict[str, float] = {"cycles": float(max(self.cycles - self.spinup, 0)), "members": float(self.members)}
        for name in ("forecast_rmse", "analysis_rmse", "forecast_spread", "analysis_spread", "forecast_crps",
                     "analysis_crps", "innovation_rms", "inflation", "forecast_seconds", "analysis_seconds"):
            v = getattr(self, name)[s]
            out[name] = float(v.mean()) if v.numel() else math.nan
        k = math.sqrt((self.members + 1) / self.members)
        for kind in ("forecast", "analysis"):
            out[f"{kind}_spread_rmse"] = k * out[f"{kind}_spread"] / out[f"{kind}_rmse"] \
                if out[f"{kind}_rmse"] > 0 else math.nan
        out["divergences"] = float(self.diverged[s].sum())
        hist = self.rank_histogram()
        out["rank_p_value"] = metrics.rank_histogram_chi2(hist)[1] if int(hist.sum()) > 0 else math.nan
        return out

    def _tensors(self) -> dict[str, Tensor]:
        t = {name: getattr(self, name) for name in _SCORES}
        t.update(diverged=self.diverged.to(torch.uint8), rank_counts=self.rank_counts, observations=self.observations,
                 ensemble=self.ensemble)
        for name in _FIELDS:
            if getattr(self, name) is not None:
                t[name] = getattr(self, name)
        return t

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the result atomically to a safetensors file (tensors + JSON metadata; no pickle)."""
        meta = {"format": FORMAT + "-result", "format_version": FORMAT_VERSION, "members": self.members,
                "spinup": self.spinup, "stopped": self.stopped, "config": self.config}
        return _write(Path(path), self._tensors(), meta)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> AssimilationResult:
        """Read a file written by :meth:`save`."""
        t, meta = _read(Path(path), FORMAT + "-result", "path")
        return cls._from(t, meta)

    @classmethod
    def _from(cls, t: dict[str, Tensor], meta: dict[str, Any]) -> AssimilationResult:
        return cls(members=int(meta["members"]), spinup=int(meta["spinup"]),
                   **{name: t[name] for name in _SCORES}, diverged=t["diverged"].bool(), rank_counts=t["rank_counts"],
                   observations=t["observations"], ensemble=t["ensemble"],
                   **{name: t.get(name) for name in _FIELDS}, stopped=bool(meta.get("stopped", False)),
                   config=meta.get("config", {}))


# -- files --------------------------------------------------------------------------------------------------
def _write(path: Path, tensors: dict[str, Tensor], meta: dict[str, Any]) -> Path:
    from safetensors.torch import save

    data = save({k: v.detach().cpu().contiguous() for k, v in tensors.items()},
                metadata={"stochclosure": json.dumps(meta)})
    tmp = temporary_name(path)
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def _read(path: Path, kind: str, argument: str) -> tuple[dict[str, Tensor], dict[str, Any]]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = json.loads((fh.metadata() or {}).get("stochclosure", "null"))
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    except Exception as exc:  # noqa: BLE001 - any parse failure is a bad file
        raise CheckpointError(format_error(argument, f"a readable {kind} file (safetensors)",
                                           f"{str(path)!r}, unreadable ({exc})", "delete it to start over")) from None
    if not isinstance(meta, dict) or meta.get("format") != kind or meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(format_error(argument, f"a {kind} file, version {FORMAT_VERSION}",
                                           f"{str(path)!r} of another kind or version",
                                           "delete it or choose another path"))
    return tensors, meta


# -- identity of a run --------------------------------------------------------------------------------------
def _digest(t: Tensor) -> str:
    t = t.detach().cpu().contiguous()
    h = hashlib.sha256(f"{t.dtype}{tuple(t.shape)}".encode())
    h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _describe(obj: Any, depth: int = 0) -> Any:
    """A stable, JSON-ready description of a component (no memory addresses)."""
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if depth > 6:
        return type(obj).__qualname__
    if isinstance(obj, Tensor):
        return {"tensor": _digest(obj)}
    if isinstance(obj, (list, tuple)):
        return [_describe(v, depth + 1) for v in obj]
    if isinstance(obj, dict):
        return {str(k): _describe(v, depth + 1) for k, v in sorted(obj.items(), key=lambda kv: str(kv[0]))}
    if isinstance(obj, torch.nn.Module):
        from ..checkpoint import model_config

        cfg = model_config(obj) if hasattr(obj, "score") and hasattr(obj, "sampler") else type(obj).__qualname__
        return {"module": _describe(cfg, depth + 1),
                "weights": {k: _digest(v) for k, v in sorted(obj.state_dict().items())}}
    spec = getattr(obj, "spec", None)
    if callable(spec) and not inspect.isclass(obj):
        try:
            return _describe(spec(), depth + 1)
        except Exception:  # noqa: BLE001 - fall back to the object's attributes
            pass
    if inspect.ismethod(obj):
        return {"method": obj.__func__.__qualname__, "self": _describe(obj.__self__, depth + 1)}
    if inspect.isfunction(obj):
        cells = [c.cell_contents for c in (obj.__closure__ or ()) if _has_contents(c)]
        names = {n: obj.__globals__[n] for n in obj.__code__.co_names if n in obj.__globals__}
        used = {n: v for n, v in names.items() if not (inspect.ismodule(v) or inspect.isclass(v)
                                                        or inspect.isbuiltin(v) or v is obj)}
        return {"function": f"{obj.__module__}.{obj.__qualname__}", "closure": _describe(cells, depth + 1),
                "globals": _describe(used, depth + 1), "defaults": _describe(obj.__defaults__, depth + 1)}
    if hasattr(obj, "__dict__"):
        return {"type": f"{type(obj).__module__}.{type(obj).__qualname__}",
                "vars": {k: _describe(v, depth + 1) for k, v in sorted(vars(obj).items()) if not callable(v)
                         or isinstance(v, torch.nn.Module)}}
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


def _has_contents(cell: Any) -> bool:
    try:
        cell.cell_contents  # noqa: B018 - an empty cell raises
    except ValueError:
        return False
    return True


# -- the driver -------------------------------------------------------------------------------------------
def _key(seed: int, use: str, cycle: int) -> int:
    return int(mix_seeds(torch.tensor([int(seed)]), zlib.crc32(f"{use}/{cycle}".encode()))[0])


def _generator(seed: int, use: str, cycle: int) -> torch.Generator:
    return torch.Generator().manual_seed(_key(seed, use, cycle))


def _int(name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(format_error(name, f"an integer >= {low}", repr(value)))
    return value


def _scores(ens: Tensor, truth: Tensor) -> tuple[Tensor, float, float, float]:
    x = ens.double()
    mean = x.mean(0)
    t = truth.double()
    rmse = float((mean - t).pow(2).mean().sqrt())
    spread = float(x.var(0, unbiased=True).mean().sqrt())
    crps = float(metrics.crps_ensemble(x, t, member_dim=0).mean())
    return mean, rmse, spread, crps


class _Records:
    """Per-cycle records, as lists, with the tensor form a checkpoint holds."""

    def __init__(self, record_fields: bool) -> None:
        self.values: dict[str, list[float]] = {k: [] for k in _SCORES}
        self.diverged: list[bool] = []
        self.ranks: list[Tensor] = []
        self.obs: list[Tensor] = []
        self.fields: dict[str, list[Tensor]] | None = {k: [] for k in _FIELDS} if record_fields else None

    def tensors(self) -> dict[str, Tensor]:
        t = {k: torch.tensor(v, dtype=torch.float64) for k, v in self.values.items()}
        t["diverged"] = torch.tensor(self.diverged, dtype=torch.uint8)
        if self.ranks:
            t["rank_counts"], t["observations"] = torch.stack(self.ranks), torch.stack(self.obs)
        if self.fields is not None and self.ranks:
            t.update({k: torch.stack(v) for k, v in self.fields.items()})
        return t

    @classmethod
    def from_tensors(cls, t: dict[str, Tensor], n: int, record_fields: bool) -> _Records:
        r = cls(record_fields)
        r.values = {k: t[k][:n].tolist() for k in _SCORES}
        r.diverged = [bool(v) for v in t["diverged"][:n].tolist()]
        if n:
            r.ranks, r.obs = list(t["rank_counts"][:n]), list(t["observations"][:n])
            if r.fields is not None:
                r.fields = {k: list(t[k][:n]) for k in _FIELDS}
        return r


def assimilate(system: Any, closure: Any, truth_state0: Any, *, observation: AbstractObservation | dict[str, Any],
               filter: AbstractEnsembleFilter | str | dict[str, Any], members: int, cycles: int, steps_per_cycle: int,
               spinup: int = 0, seed: int = 0, checkpoint: str | os.PathLike[str] | None = None,
               inflation: AbstractInflation | float | str | dict[str, Any] | list[Any] | None = None, truth: AbstractTwin | None = None, initial_ensemble: Tensor | None = None,
               init_spread: float | None = None, dt: float | None = None, divergence_rmse: float | None = None,
               record_fields: bool = True, progress: bool = False,
               on_cycle: Callable[[int, dict[str, Any]], None] | None = None,
               **rollout_kwargs: Any) -> AssimilationResult:
    """Run a twin experiment: ``cycles`` forecast/analysis cycles of an ensemble against a truth.

    Args:
        system: The reduced solver (:class:`~stochclosure.systems.AbstractSystem`).
        closure: The forecast model's closure: anything :func:`~stochclosure.rollout.rollout`
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
        **rollout_kwargs: Further :func:`~stochclosure.rollout.rollout` options of the forecast
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
    cycle_time = steps_per_cycle * dt

    # -- the start (checked before any work) --
    tstate = twin.initial(truth_state0, _generator(seed, "truth-init", 0))
    truth_r = twin.reduced(tstate)
    event = op.event_shape_of(truth_r, "truth")
    if truth_r.dim() != len(event):
        raise ShapeError(format_error("truth_state0", f"one state {tuple(event)} (the observation's event)",
                                      f"reduced truth of shape {tuple(truth_r.shape)}"))
    obs_std = op.std_vector(event)
    rms_std = float(obs_std.pow(2).mean().sqrt())
    if initial_ensemble is None:
        spread0 = rms_std if init_spread is None else float(init_spread)
        if not (math.isfinite(spread0) and spread0 >= 0):
            raise ConfigError(format_error("init_spread", "a non-negative std", repr(init_spread)))
        noise = torch.randn((members, *truth_r.shape), generator=_generator(seed, "init", 0), dtype=torch.float64)
        ens0 = (truth_r.double() + spread0 * noise).to(truth_r.dtype)
    else:
        if not isinstance(initial_ensemble, Tensor) or tuple(initial_ensemble.shape) != (members, *truth_r.shape):
            got = f"shape {tuple(initial_ensemble.shape)}" if isinstance(initial_ensemble, Tensor) else \
                type(initial_ensemble).__name__
            raise ShapeError(format_error("initial_ensemble", f"a tensor {(members, *truth_r.shape)} (members, C, *grid)",
                                          got))
        ens0 = initial_ensemble
    threshold = 5.0 * rms_std if divergence_rmse is None else float(divergence_rmse)
    flt.analyse(ens0[:2], op.apply(truth_r), op, generator=torch.Generator().manual_seed(0))  # probe: shapes, locations
    prefix = str(rollout_kwargs.get("prefix", ""))
    keys = torch.randint(0, 2**62, (members,), generator=_generator(seed, "member-keys", 0), dtype=torch.int64)

    config = {"system": _describe(system), "closure": _describe(closure), "observation": op.spec(),
              "filter": flt.spec(), "inflation": infl.spec(), "truth": twin.spec(), "members": members,
              "steps_per_cycle": steps_per_cycle, "dt": dt, "seed": seed, "init_spread": init_spread,
              "divergence_rmse": threshold, "record_fields": bool(record_fields),
              "rollout": _describe(dict(rollout_kwargs))}
    identity = json.dumps({**config, "truth_state0": _describe(truth_state0), "initial_ensemble": _describe(ens0)},
                          sort_keys=True, default=str)
    fingerprint = hashlib.sha256(identity.encode()).hexdigest()

    # -- the loop state: fresh or from the checkpoint --
    ens, carry, records, done, stopped = ens0, None, _Records(record_fields), 0, False
    path = None if checkpoint is None else Path(checkpoint)
    if path is not None:
        preflight_output(path, "checkpoint")
    with exclusive_lock(path, "checkpoint") if path is not None else contextlib.nullcontext():
        if path is not None and path.exists():
            t, meta = _read(path, FORMAT, "checkpoint")
            if meta.get("fingerprint") != fingerprint:
                raise ConfigError(format_error("checkpoint", "the checkpoint of this same run (system, closure, truth, "
                                                             "observation, filter, inflation, sizes, seed)",
                                               f"{str(path)!r}, written by another run",
                                               "rerun with the original arguments, or delete the checkpoint"))
            done, stopped = int(meta["cycles_done"]), bool(meta["stopped"])
            if done > cycles:
                raise ConfigError(format_error("cycles", f"at least the {done} cycles the checkpoint holds",
                                               repr(cycles), "ask for as many cycles or more (a run continues)"))
            ens = t["ensemble"]
            tstate = {k[len("truth."):]: v for k, v in t.items() if k.startswith("truth.")}
            carry = {"anchor": t.get("carry.anchor"), "e": t.get("carry.e"), "z": t.get("carry.z"),
                     "past": [t[f"carry.past.{i}"] for i in range(int(meta["n_past"]))]}
            infl.load_state_dict(meta["inflation_state"])
            records = _Records.from_tensors({k[len("rec."):]: v for k, v in t.items() if k.startswith("rec.")}, done,
                                            record_fields)

        def save() -> None:
            tensors = {"ensemble": ens, "keys": keys, **{f"truth.{k}": v for k, v in tstate.items()},
                       **{f"rec.{k}": v for k, v in records.tensors().items()}}
            n_past = 0
            if carry is not None:
                for k in ("anchor", "e", "z"):
                    if carry[k] is not None:
                        tensors[f"carry.{k}"] = carry[k]
                for i, p in enumerate(carry["past"]):
                    tensors[f"carry.past.{i}"] = p
                n_past = len(carry["past"])
            _write(path, tensors, {"format": FORMAT, "format_version": FORMAT_VERSION, "fingerprint": fingerprint,
                                   "cycles_done": done, "stopped": stopped, "n_past": n_past,
                                   "inflation_state": infl.state_dict()})

        from tqdm.auto import tqdm

        bar = tqdm(total=cycles, initial=min(done, cycles), disable=not progress, desc="assimilate", leave=False)
        while done < cycles and not stopped:
            c = done
            # 1. forecast: one batched rollout of all members, continued from its carry
            grabbed: dict[str, Any] = {}
            start = {"step": c * steps_per_cycle, "state": ens, "anchor": None, "e": None, "z": None, "past": [],
                     "records": [ens], "rec_steps": [c * steps_per_cycle], "closures": {}, "seconds": []}
            if carry is not None:
                start.update(anchor=carry["anchor"], e=carry["e"], z=carry["z"], past=list(carry["past"]))
            n_to = (c + 1) * steps_per_cycle

            def program(state0: Tensor = ens, start: dict[str, Any] = start, n_to: int = n_to,
                        grab: Callable[..., None] = grabbed.update) -> Any:
                from ..rollout import rollout

                return rollout(system, closure, state0, n_to, dt=dt, start=start, on_step=grab, record_every=n_to,
                               **rollout_kwargs)

            tic = time.perf_counter()
            with torch.no_grad():
                run = poutine.condition(program, data={prefix + "member_seed": keys})
                forecast = poutine.seed(run, rng_seed=_key(seed, "forecast", c) % 2**32)().states[-1]
            forecast_seconds = time.perf_counter() - tic
            carry = {"anchor": grabbed.get("anchor"), "e": grabbed.get("e"), "z": grabbed.get("z"),
                     "past": list(grabbed.get("past", []))}
            # 2-3. truth and observations
            tstate = twin.advance(tstate, cycle_time, _generator(seed, "truth", c))
            truth_r = twin.reduced(tstate)
            y = op.sample(truth_r, _generator(seed, "observation", c))
            # 4. analysis (5. scores)
            vals = records.values
            vals["times"].append((c + 1) * cycle_time)
            if not bool(torch.isfinite(forecast).all()):
                stopped = True
                nan = math.nan
                for k, v in (("forecast_rmse", nan), ("analysis_rmse", nan), ("forecast_spread", nan),
                             ("analysis_spread", nan), ("forecast_crps", nan), ("analysis_crps", nan),
                             ("innovation_rms", nan), ("inflation", infl.factor),
                             ("forecast_seconds", forecast_seconds), ("analysis_seconds", 0.0)):
                    vals[k].append(v)
                records.diverged.append(True)
                records.ranks.append(torch.zeros(members + 1, dtype=torch.int64))
                records.obs.append(y.detach().cpu())
                analysis = forecast
                fmean = amean = forecast.double().mean(0)
            else:
                fmean, f_rmse, f_spread, f_crps = _scores(forecast, truth_r)
                hx = op.apply(forecast.double())
                ranks = metrics.rank_histogram(hx, op.apply(truth_r.double()), generator=_generator(seed, "ranks", c))
                tic = time.perf_counter()
                with torch.no_grad():
                    inflated = infl.apply(forecast, y, op, generator=_generator(seed, "inflation", c))
                    analysis = flt.analyse(inflated, y, op, generator=_generator(seed, "analysis", c))
                analysis_seconds = time.perf_counter() - tic
                amean, a_rmse, a_spread, a_crps = _scores(analysis, truth_r)
                for k, v in (("forecast_rmse", f_rmse), ("analysis_rmse", a_rmse), ("forecast_spread", f_spread),
                             ("analysis_spread", a_spread), ("forecast_crps", f_crps), ("analysis_crps", a_crps),
                             ("innovation_rms", float((y.double() - hx.mean(0)).pow(2).mean().sqrt())),
                             ("inflation", infl.factor), ("forecast_seconds", forecast_seconds),
                             ("analysis_seconds", analysis_seconds)):
                    vals[k].append(v)
                records.diverged.append(not (math.isfinite(a_rmse) and a_rmse <= threshold))
                records.ranks.append(ranks)
                records.obs.append(y.detach().cpu())
            if records.fields is not None:
                records.fields["truth"].append(truth_r.detach().cpu())
                records.fields["forecast_mean"].append(fmean.to(truth_r.dtype))
                records.fields["analysis_mean"].append(amean.to(truth_r.dtype))
            ens = analysis
            done = c + 1
            if path is not None:
                save()
            bar.update(1)
            if on_cycle is not None:
                on_cycle(c, {k: v[-1] for k, v in vals.items()} | {"diverged": records.diverged[-1]})
        bar.close()
        if path is not None and done == 0 and not path.exists():
            save()

    n = min(done, cycles)
    t = records.tensors()
    empty = torch.zeros(0, dtype=torch.float64)
    return AssimilationResult(
        members=members, spinup=spinup, **{k: t[k][:n] for k in _SCORES}, diverged=t["diverged"][:n].bool(),
        rank_counts=t["rank_counts"][:n] if "rank_counts" in t else torch.zeros(0, members + 1, dtype=torch.int64),
        observations=t["observations"][:n] if "observations" in t else empty.reshape(0, op.n_obs(event)),
        ensemble=ens, stopped=stopped, config=config,
        **{k: (t[k][:n] if k in t else None) for k in _FIELDS})

