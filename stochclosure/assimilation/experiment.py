"""Twin experiments from a configuration: what ``stochclosure assimilate --config FILE.yaml`` runs.

An :class:`ExperimentConfig` names the system (its full model is the truth), the truth's spin-up
and seed, the observation operator and its schedule (every ``every`` forecast steps), the
forecast closure, the filter, the inflation, the ensemble size, the cycles and the seed.
:func:`run_experiment` builds the pieces, runs :func:`~stochclosure.assimilation.assimilate`
with a checkpoint in the output folder (a killed run continues where it stopped) and writes:

* ``result.safetensors``: the :class:`~.result.AssimilationResult` (safetensors + JSON);
* ``summary.json``: the summary scores and the resolved configuration;
* ``report/report.md`` with figures: analysis and forecast RMSE vs cycle, spread vs RMSE, the
  rank histogram of the observed values.

Closures (``closure:``):

* ``none``: the resolved dynamics only;
* ``cubic`` (Lorenz-96): the cubic polynomial ``U = sum_p a_p X^p`` fitted by least squares to
  the step-consistent closure of a separate full-model run (or ``coefficients:`` as given), with
  ``noise: ar1`` the AR(1) residual noise of Arnold et al. (2013) (``phi``, ``sigma`` fitted on
  the same run): ``U_n = cubic(X_n) + e_n``, ``e_n = phi e_{n-1} + sigma sqrt(1 - phi^2) xi_n``,
  ``xi`` keyed per member so the run is reproducible and resumable;
* ``smagorinsky`` (Navier–Stokes subgrid): ``SmagorinskyClosure(cs)``, optionally with ``noise: ar1``
  (``phi``, ``sigma`` given);
* ``checkpoint``: a trained :class:`~stochclosure.ClosureModel` (``path:``), optionally with its
  sampler's starting noise correlated in time (``noise_rho:``, :class:`~stochclosure.rollouts.NoiseAR1`);
* any other ``type``: a closure law registered under the ``closure`` kind, built with ``options:``
  (e.g. ``{type: adm, options: {filter: spectral}}``), optionally with ``noise_rho:``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .._io import preflight_output, resolve_config_path, temporary_name
from ..config import check_number, check_seed, to_jsonable
from ..errors import ConfigError, format_error
from .cycle import assimilate
from .filters import filter_from_spec
from .inflation import inflation_from_spec
from .observations import observation_from_spec
from .result import AssimilationResult
from .twins import AbstractTwin, Lorenz96Twin, twin_for

__all__ = ["ExperimentConfig", "ClosureSpec", "run_experiment", "build_forecast", "fit_cubic_ar1",
           "write_report", "BaselineSystem", "RecordedTwin", "CLOSURE_KINDS"]

CLOSURE_KINDS = ("none", "cubic", "smagorinsky", "checkpoint")
"""Built-in closure kinds; any other ``type`` is looked up in the ``closure`` registry."""

_TOP_KEYS = ("system", "dt", "truth", "observation", "every", "closure", "filter", "inflation", "members", "cycles",
             "spinup_cycles", "seed", "init_spread", "out", "root", "title")
_CLOSURE_KEYS = ("type", "coefficients", "noise", "phi", "sigma", "fit_time", "fit_seed", "cs", "path", "noise_rho",
                 "sampler_steps", "resample_every", "physics_every_step", "options")


def _mapping(value: Any, key: str) -> dict[str, Any]:
    if isinstance(value, str):
        return {"type": value}
    if not isinstance(value, dict) or not isinstance(value.get("type"), str):
        raise ConfigError(format_error(key, "a name or a mapping with a string 'type'",
                                       f"{type(value).__name__} {value!r}"))
    return dict(value)


def _observation(spec: dict[str, Any]) -> dict[str, Any]:
    """Expand ``points: {regular: n}`` (an ``n x n`` lattice at cell centres ``(i + 1/2) / n``) of a point operator."""
    pts = spec.get("points")
    if spec.get("type") == "points" and isinstance(pts, dict):
        n = pts.get("regular")
        if set(pts) != {"regular"} or isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ConfigError(format_error("observation.points", "a list of points or {regular: n} with n >= 1",
                                           repr(pts)))
        c = (torch.arange(n, dtype=torch.float64) + 0.5) / n
        spec = {**spec, "points": torch.stack(torch.meshgrid(c, c, indexing="ij"), -1).reshape(-1, 2).tolist()}
    return spec


@dataclass
class ClosureSpec:
    """The forecast model's closure (see the module docstring).

    Attributes:
        type: ``"none"``, ``"cubic"``, ``"smagorinsky"``, ``"checkpoint"`` or a registered closure name.
        coefficients: Cubic coefficients ``a_0..a_3`` (``None``: fitted).
        noise: ``"none"`` or ``"ar1"`` (AR(1) noise added to a cubic or Smagorinsky closure).
        phi: AR(1) correlation over one forecast step (``None``: fitted; cubic only).
        sigma: AR(1) stationary std (``None``: fitted; cubic only).
        fit_time: Time units of the full-model run the cubic is fitted to.
        fit_seed: Seed of that run (independent of the truth's).
        cs: Smagorinsky constant.
        path: Checkpoint of a trained closure model.
        noise_rho: Correlation of successive sampler starting noises of a checkpoint closure (``None``: white).
        sampler_steps: Sampler steps of a checkpoint closure (``None``: its default).
        resample_every: Forecast steps between fresh draws of a checkpoint closure.
        physics_every_step: For a physics + remainder law (a ``residual`` checkpoint or registered
            law) drawn every ``resample_every`` steps: evaluate its physics part at every step and
            hold only the remainder (``Hold`` / ``NoiseAR1`` with ``physics_every_step=True``).
        options: Keyword arguments of a registered closure law (any other ``type``), e.g. the
            filter of a physics closure: ``{filter: spectral}``.
    """

    type: str = "none"
    coefficients: list[float] | None = None
    noise: str = "none"
    phi: float | None = None
    sigma: float | None = None
    fit_time: float = 20.0
    fit_seed: int = 12345
    cs: float = 0.17
    path: str | None = None
    noise_rho: float | None = None
    sampler_steps: int | None = None
    resample_every: int = 1
    physics_every_step: bool = False
    options: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_raw(cls, raw: Any, config_path: str | os.PathLike[str] | None = None,
                 root: str | None = None) -> ClosureSpec:
        """Check a ``closure:`` entry (a name or a mapping)."""
        d = _mapping(raw, "closure")
        unknown = sorted(set(d) - set(_CLOSURE_KEYS))
        if unknown:
            raise ConfigError(format_error(f"closure.{unknown[0]}", f"one of {list(_CLOSURE_KEYS)}", repr(unknown[0])))
        spec = cls(type=d["type"])
        if d.get("noise", "none") not in ("none", "ar1"):
            raise ConfigError(format_error("closure.noise", "'none' or 'ar1'", repr(d.get("noise"))))
        spec.noise = d.get("noise", "none")
        if spec.noise == "ar1" and spec.type not in ("cubic", "smagorinsky"):
            raise ConfigError(format_error("closure.noise", "'ar1' only with a cubic or smagorinsky closure",
                                           f"noise ar1 with {spec.type!r}", "use noise_rho for a checkpoint closure"))
        if d.get("coefficients") is not None:
            c = d["coefficients"]
            if not isinstance(c, list) or len(c) < 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                                 and math.isfinite(v) for v in c):
                raise ConfigError(format_error("closure.coefficients", "a list of >= 2 finite numbers", repr(c)))
            spec.coefficients = [float(v) for v in c]
        if d.get("phi") is not None:
            spec.phi = check_number(d["phi"], "closure.phi", minimum=0.0, maximum=1.0, open_max=True)
        if d.get("sigma") is not None:
            spec.sigma = check_number(d["sigma"], "closure.sigma", minimum=0.0)
        if spec.type == "smagorinsky" and spec.noise == "ar1" and (spec.phi is None or spec.sigma is None):
            raise ConfigError(format_error("closure.phi, closure.sigma", "both given for smagorinsky + ar1",
                                           f"phi={spec.phi}, sigma={spec.sigma}"))
        spec.fit_time = check_number(d.get("fit_time", spec.fit_time), "closure.fit_time", minimum=0.0, open_min=True)
        spec.fit_seed = check_seed(d.get("fit_seed", spec.fit_seed), "closure.fit_seed")
        spec.cs = check_number(d.get("cs", spec.cs), "closure.cs", minimum=0.0)
        if d.get("noise_rho") is not None:
            spec.noise_rho = check_number(d["noise_rho"], "closure.noise_rho", minimum=0.0, maximum=1.0, open_max=True)
        if d.get("sampler_steps") is not None:
            spec.sampler_steps = check_number(d["sampler_steps"], "closure.sampler_steps", integer=True, minimum=1)
        spec.resample_every = check_number(d.get("resample_every", 1), "closure.resample_every", integer=True,
                                           minimum=1)
        spec.physics_every_step = d.get("physics_every_step", False)
        if not isinstance(spec.physics_every_step, bool):
            raise ConfigError(format_error("closure.physics_every_step", "true or false",
                                           repr(spec.physics_every_step)))
        if spec.physics_every_step and spec.type in ("none", "cubic", "smagorinsky"):
            raise ConfigError(format_error("closure.physics_every_step", "only with a physics + remainder law "
                                           "(a checkpoint or registered residual law)", f"type {spec.type!r}"))
        opts = d.get("options", {}) or {}
        if not isinstance(opts, dict) or not all(isinstance(k, str) for k in opts):
            raise ConfigError(format_error("closure.options", "a mapping of keyword arguments", repr(opts)))
        if opts and spec.type in CLOSURE_KINDS:
            raise ConfigError(format_error("closure.options", f"only with a registered closure law, not {spec.type!r}",
                                           repr(opts), "use the closure's own keys (cs, coefficients, path, ...)"))
        spec.options = dict(opts)
        if spec.type == "checkpoint":
            if d.get("path") is None:
                raise ConfigError(format_error("closure.path", "the checkpoint of a trained closure model", "missing",
                                               "add path: model.pt (relative to the config file)"))
            spec.path = resolve_config_path(d["path"], "closure.path", config_path, root) if config_path is not None \
                else str(Path(d["path"]).expanduser().resolve())
            if not Path(spec.path).exists():
                raise ConfigError(format_error("closure.path", "an existing checkpoint (file or directory)",
                                               repr(spec.path)))
        return spec


@dataclass
class ExperimentConfig:
    """A twin experiment (the ``--config`` file of ``stochclosure assimilate``).

    Attributes:
        system: System spec ``{"type": name, **kwargs}`` (its full model is the truth).
        observation: Observation spec (:func:`~.observations.observation_from_spec`).
        closure: The forecast closure.
        filter: Filter spec (``"etkf"``, ``{"type": "letkf", "radius": 0.2}``).
        inflation: Inflation spec (``None``, a factor, ``"adaptive"``, a mapping or a list).
        dt: Forecast model step (``None``: the system's).
        every: Forecast steps between analyses (the observation schedule).
        truth_spinup: Time units the truth runs before the first cycle.
        truth_seed: Seed of the truth's initial state.
        members: Ensemble size.
        cycles: Analysis cycles.
        spinup_cycles: First cycles left out of the summary scores.
        seed: Seed of the run (observation noise, forecasts, filter).
        init_spread: Std of the initial ensemble's perturbations (``None``: the observation noise).
        out: Output folder (``None``: given on the command line).
        title: Title of the report.
    """

    system: dict[str, Any]
    observation: dict[str, Any]
    closure: ClosureSpec = field(default_factory=ClosureSpec)
    filter: Any = "etkf"
    inflation: Any = None
    dt: float | None = None
    every: int = 1
    truth_spinup: float = 5.0
    truth_seed: int = 0
    members: int = 20
    cycles: int = 100
    spinup_cycles: int = 10
    seed: int = 0
    init_spread: float | None = None
    out: str | None = None
    title: str = "Twin experiment"

    @classmethod
    def from_dict(cls, raw: dict[str, Any], config_path: str | os.PathLike[str] | None = None) -> ExperimentConfig:
        """Check a configuration mapping; relative paths are resolved against ``config_path``'s folder.

        Raises:
            ConfigError: an unknown key, a missing ``system``/``observation``, a bad number, filter,
                inflation, observation or closure, each naming its key.
        """
        if not isinstance(raw, dict):
            raise ConfigError(format_error("config", "a mapping", type(raw).__name__))
        unknown = sorted(set(raw) - set(_TOP_KEYS))
        if unknown:
            raise ConfigError(format_error(unknown[0], f"one of {list(_TOP_KEYS)}", f"unknown key {unknown[0]!r}",
                                           "check the spelling (see configs/assimilation/)"))
        for key in ("system", "observation"):
            if key not in raw:
                raise ConfigError(format_error(key, f"a '{key}' entry", "missing"))
        root = raw.get("root")
        system = _mapping(raw["system"], "system")
        observation = _observation(_mapping(raw["observation"], "observation"))
        observation_from_spec(observation)              # checked now, not after the spin-up
        filter_from_spec(raw.get("filter", "etkf"))
        inflation_from_spec(raw.get("inflation"))
        truth = raw.get("truth", {}) or {}
        if not isinstance(truth, dict) or set(truth) - {"spinup", "seed"}:
            raise ConfigError(format_error("truth", "a mapping with keys spinup (time units) and seed", repr(truth)))
        num = check_number
        cfg = cls(system=system, observation=observation,
                  closure=ClosureSpec.from_raw(raw.get("closure", "none"), config_path, root),
                  filter=raw.get("filter", "etkf"), inflation=raw.get("inflation"),
                  dt=None if raw.get("dt") is None else num(raw["dt"], "dt", minimum=0.0, open_min=True),
                  every=num(raw.get("every", 1), "every", integer=True, minimum=1),
                  truth_spinup=num(truth.get("spinup", 5.0), "truth.spinup", minimum=0.0),
                  truth_seed=check_seed(truth.get("seed", 0), "truth.seed"),
                  members=num(raw.get("members", 20), "members", integer=True, minimum=2,
                              fix="an ensemble needs at least 2 members"),
                  cycles=num(raw.get("cycles", 100), "cycles", integer=True, minimum=1),
                  spinup_cycles=num(raw.get("spinup_cycles", 10), "spinup_cycles", integer=True, minimum=0),
                  seed=check_seed(raw.get("seed", 0)),
                  init_spread=None if raw.get("init_spread") is None else
                  num(raw["init_spread"], "init_spread", minimum=0.0, open_min=True),
                  title=str(raw.get("title", "Twin experiment")))
        if cfg.spinup_cycles >= cfg.cycles:
            raise ConfigError(format_error("spinup_cycles", f"fewer than cycles ({cfg.cycles})",
                                           repr(cfg.spinup_cycles), "scores are averaged over the cycles after it"))
        if raw.get("out") is not None:
            cfg.out = resolve_config_path(raw["out"], "out", config_path, root) if config_path is not None \
                else str(Path(raw["out"]).expanduser().resolve())
        return cfg

    def to_dict(self) -> dict[str, Any]:
        """The configuration as JSON-ready data (recorded with the results)."""
        return to_jsonable(dataclasses.asdict(self))


# -- forecast model ------------------------------------------------------------------------------------------
class BaselineSystem:
    """A system whose step adds a deterministic closure ``base(state)`` to the closure term it is given.

    With the rollout's closure a zero field and :class:`~stochclosure.rollouts.ClosureAR1` between
    draws, the forecast is ``x_{n+1} = step(x_n, base(x_n) + e_n)`` with an AR(1) ``e``, keyed per
    member and carried across analyses. Every other attribute is the wrapped system's.

    Args:
        system: The reduced system.
        base: ``state (N, C, *grid) -> U (N, C, *grid)`` (a cubic or Smagorinsky closure).
    """

    def __init__(self, system: Any, base: Any) -> None:
        self.system, self.base = system, base

    def __getattr__(self, name: str) -> Any:
        if name in ("system", "base"):
            raise AttributeError(name)
        return getattr(self.system, name)

    def step(self, state: Tensor, closure_term: Tensor | None, dt: float | None = None) -> Tensor:
        """``system.step(state, base(state) + closure_term, dt)``."""
        u = self.base(state)
        return self.system.step(state, u if closure_term is None else u + closure_term, dt)

    def spec(self) -> dict[str, Any]:
        """What identifies this forecast model (for a run's fingerprint)."""
        from ._identity import describe

        base = {k: describe(v) for k, v in sorted(vars(self.base).items())}
        return {"type": "BaselineSystem", "system": describe(self.system), "base": type(self.base).__name__, **base}


def _zero_closure(cond: Any) -> Tensor:
    """The zero closure: the baseline lives in :class:`BaselineSystem`, the AR(1) noise is added by the rollout."""
    return torch.zeros_like(cond.fields)


def fit_cubic_ar1(system: Any, dt: float, fit_time: float, seed: int, batch: int = 4) -> dict[str, Any]:
    """Fit the cubic closure and its AR(1) residual to a full two-scale Lorenz-96 run.

    ``U_n = (X_{n+1} - Phi_dt(X_n)) / dt`` (the step-consistent closure of the forecast step ``dt``)
    along ``batch`` trajectories of ``fit_time`` time units after 3 time units of spin-up.

    Returns:
        ``{"coefficients", "phi", "sigma", "dt"}`` (``phi`` over one step ``dt``), rounded to 10
        significant digits.
    """
    from ..systems.lorenz96 import PolynomialAR1Closure

    gen = torch.Generator().manual_seed(int(seed))
    x, y = system.full_initial_state(batch, generator=gen, dtype=torch.float64)
    for _ in range(round(3.0 / system.dt)):
        x, y = system.full_step(x, y)
    sub = round(dt / system.dt)
    xs = [x]
    for _ in range(max(round(fit_time / dt), 4)):
        for _ in range(sub):
            x, y = system.full_step(x, y)
        xs.append(x)
    X = torch.stack(xs, 1)                                                        # (batch, T, 1, K)
    U = (X[:, 1:] - system.resolved_step(X[:, :-1].reshape(-1, 1, system.K), dt).reshape(X[:, 1:].shape)) / dt
    fit = PolynomialAR1Closure.fit(X[:, :-1], U, degree=3, dt=dt)
    # rounded to 10 significant digits, as the fits recorded in earlier results files were (the fit itself
    # is bitwise reproducible since it uses LAPACK's gelsd)
    r = lambda v: float(f"{float(v):.10g}")  # noqa: E731
    return {"coefficients": [r(c) for c in fit.coefficients], "phi": r(fit.phi), "sigma": r(fit.sigma), "dt": dt}


def build_forecast(cfg: ExperimentConfig, system: Any, cache: Path | None = None
                   ) -> tuple[Any, Any, dict[str, Any], dict[str, Any]]:
    """The forecast model of a configuration: ``(system, closure, rollout options, fitted values)``.

    Args:
        cfg: The configuration.
        system: The reduced system built from ``cfg.system``.
        cache: JSON file keeping a fitted cubic (a resumed run reuses it).
    """
    from ..rollouts import ClosureAR1
    from ..systems import Lorenz96, PolynomialClosure, SmagorinskyClosure

    spec, dt = cfg.closure, float(system.dt if cfg.dt is None else cfg.dt)
    if spec.type == "none":
        return system, None, {}, {}
    if spec.type in ("cubic", "smagorinsky"):
        info: dict[str, Any] = {}
        if spec.type == "cubic":
            if not isinstance(system, Lorenz96):
                raise ConfigError(format_error("closure", "a cubic closure only for Lorenz-96",
                                               f"cubic for {type(system).__name__}", "use smagorinsky or a checkpoint"))
            if spec.coefficients is None or (spec.noise == "ar1" and (spec.phi is None or spec.sigma is None)):
                if cache is not None and cache.is_file():
                    info = json.loads(cache.read_text())
                else:
                    info = fit_cubic_ar1(system, dt, spec.fit_time, spec.fit_seed)
                    if cache is not None:
                        _write_text(cache, json.dumps(info, indent=1))
            coefficients = spec.coefficients or info["coefficients"]
            base: Any = PolynomialClosure(coefficients)
            phi = spec.phi if spec.phi is not None else info.get("phi")
            sigma = spec.sigma if spec.sigma is not None else info.get("sigma")
            info = {"coefficients": list(coefficients), "phi": phi, "sigma": sigma}
        else:
            base = SmagorinskyClosure(cs=spec.cs)
            phi, sigma = spec.phi, spec.sigma
            info = {"cs": spec.cs, "phi": phi, "sigma": sigma}
        forecast_system = BaselineSystem(system, base)
        if spec.noise == "none":
            return forecast_system, None, {}, info
        ar1 = ClosureAR1(phi=float(phi), sigma=float(sigma) * math.sqrt(max(1.0 - float(phi) ** 2, 0.0)))
        return forecast_system, _zero_closure, {"resample_every": 2**62, "between": ar1}, info
    if spec.type == "checkpoint":
        from ..model import ClosureModel

        model = ClosureModel.load(spec.path)
        kw: dict[str, Any] = {"resample_every": spec.resample_every, **_between(spec)}
        if spec.sampler_steps is not None:
            kw["sampler_steps"] = spec.sampler_steps
        return system, model, kw, {"path": spec.path}
    from ..registry import resolve

    kw = {"resample_every": spec.resample_every, **_between(spec)}
    return system, resolve("closure", {"type": spec.type, **spec.options}), kw, dict(spec.options)


def _between(spec: ClosureSpec) -> dict[str, Any]:
    """The rollout's ``between`` policy of a checkpoint or registered closure law (none: the default hold)."""
    from ..rollouts import Hold, NoiseAR1

    if spec.noise_rho is not None:
        return {"between": NoiseAR1(rho=spec.noise_rho, physics_every_step=spec.physics_every_step)}
    return {"between": Hold(physics_every_step=True)} if spec.physics_every_step else {}


# -- truth ---------------------------------------------------------------------------------------------------
def _truth_start(system: Any, twin: AbstractTwin, spinup: float, seed: int) -> Any:
    """The truth's state after ``spinup`` time units, in the form ``assimilate(truth_state0=...)`` takes."""
    gen = torch.Generator().manual_seed(int(seed))
    if isinstance(twin, Lorenz96Twin):
        x, y = system.full_initial_state(1, generator=gen, dtype=torch.float64)
        state: dict[str, Tensor] = {"x": x, "y": y}
    else:
        make = getattr(system, "fine_initial_state", None) or system.initial_state
        state = twin.initial(make(1, generator=gen, dtype=torch.float64), gen)
    n = round(spinup / twin.dt)
    if n > 0:
        state = twin.advance(state, n * twin.dt, gen)
    if isinstance(twin, Lorenz96Twin):
        return state["x"][0], state["y"][0]
    return state["state"][0]


class RecordedTwin(AbstractTwin):
    """A truth replayed from a recording: reduced states ``(T + 1, C, *grid)`` every ``period`` time units.

    Several experiments against one truth (forecast models, inflation factors) then share its
    cost; ``truth_state0`` is ignored (the recording starts at its first state).

    Args:
        states: The recorded reduced truth, ``states[i]`` at time ``i * period``.
        period: Time between records.
    """

    def __init__(self, states: Tensor, period: float) -> None:
        if not isinstance(states, Tensor) or states.dim() < 2:
            raise ConfigError(format_error("states", "a tensor (T + 1, C, *grid)", type(states).__name__))
        self.states, self.period = states, float(period)

    def initial(self, truth_state0: Any, generator: torch.Generator) -> dict[str, Tensor]:
        return {"index": torch.zeros(1, dtype=torch.int64)}

    def advance(self, state: dict[str, Tensor], duration: float, generator: torch.Generator) -> dict[str, Tensor]:
        n = round(duration / self.period)
        i = int(state["index"][0]) + n
        if n < 1 or abs(n * self.period - duration) > 1e-9 * duration or i >= self.states.shape[0]:
            raise ConfigError(format_error("truth", f"a recording long enough, in steps of {self.period:g}",
                                           f"record {i} of {self.states.shape[0]} after a step of {duration:g}",
                                           "record more of the truth or run fewer cycles"))
        return {"index": torch.full((1,), i, dtype=torch.int64)}

    def reduced(self, state: dict[str, Tensor]) -> Tensor:
        return self.states[int(state["index"][0])]

    def spec(self) -> dict[str, Any]:
        from ._identity import describe

        return {"type": "RecordedTwin", "period": self.period, "states": describe(self.states)}


# -- running and reporting --------------------------------------------------------------------------------------
def _write_text(path: Path, text: str) -> Path:
    tmp = temporary_name(path)
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def run_experiment(config: ExperimentConfig, out_dir: str | os.PathLike[str] | None = None, progress: bool = True,
                   report: bool = True, truth: AbstractTwin | None = None) -> AssimilationResult:
    """Run a twin experiment into ``out_dir`` (or ``config.out``); continues a killed run.

    Writes ``checkpoint.safetensors`` after every cycle, then ``result.safetensors``,
    ``summary.json`` and (``report``) ``report/report.md`` with its figures.

    Args:
        config: The experiment.
        out_dir: Output folder (default ``config.out``).
        progress: Show a progress bar.
        report: Write the report folder.
        truth: A twin to use instead of the system's full model run from ``config.truth``
            (e.g. a :class:`RecordedTwin` shared by several experiments).

    Returns:
        The :class:`~.result.AssimilationResult`.

    Raises:
        ConfigError: no output folder, or a component that does not fit the system.
        OutputError: the folder cannot be written, or another process is writing it.
    """
    from ..registry import resolve

    out_value = out_dir if out_dir is not None else config.out
    if out_value is None:
        raise ConfigError(format_error("out", "an output folder", "none", "pass --out DIR or add out: to the config"))
    out = Path(out_value)
    preflight_output(out, "out", is_dir=True)
    system = resolve("system", dict(config.system))
    twin = twin_for(system, None) if truth is None else truth
    fc_system, closure, kwargs, fitted = build_forecast(config, system, out / "closure_fit.json")
    truth0 = _truth_start(system, twin, config.truth_spinup, config.truth_seed) if truth is None else None
    result = assimilate(fc_system, closure, truth0, observation=dict(config.observation), filter=config.filter,
                        inflation=config.inflation, truth=twin, members=config.members, cycles=config.cycles,
                        steps_per_cycle=config.every, dt=config.dt, spinup=config.spinup_cycles, seed=config.seed,
                        init_spread=config.init_spread, checkpoint=out / "checkpoint.safetensors",
                        record_fields=False, progress=progress, **kwargs)
    result.config = {**result.config, "experiment": config.to_dict(), "fitted": to_jsonable(fitted)}
    result.save(out / "result.safetensors")
    summary = {"summary": result.summary(), "config": config.to_dict(), "fitted": to_jsonable(fitted)}
    _write_text(out / "summary.json", json.dumps(summary, indent=1, default=float))
    if report:
        write_report(result, out / "report", config.title, fitted)
    return result


def write_report(result: AssimilationResult, folder: str | os.PathLike[str], title: str = "Twin experiment",
                 fitted: dict[str, Any] | None = None) -> Path:
    """``report.md`` with three figures (error vs cycle, spread vs error, rank histogram) in ``folder``.

    Returns:
        The path of ``report.md``.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from ..plots import plot_rank_histogram

    def _save(fig: Any, path: Path) -> None:                  # atomically, like every file of a run
        tmp = temporary_name(path)
        try:
            fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
            os.replace(tmp, path)
        finally:
            plt.close(fig)
            if tmp.exists():
                tmp.unlink()

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    c = torch.arange(result.cycles)
    fig, ax = plt.subplots(figsize=(7, 3.2))
    ax.semilogy(c, result.forecast_rmse.clamp_min(1e-12), color="C1", lw=0.8, label="forecast RMSE")
    ax.semilogy(c, result.analysis_rmse.clamp_min(1e-12), color="C0", lw=0.8, label="analysis RMSE")
    ax.semilogy(c, result.analysis_spread.clamp_min(1e-12), color="C0", lw=0.8, ls="--", label="analysis spread")
    ax.axvline(result.spinup, color="k", lw=0.6, ls=":")
    ax.set_xlabel("cycle")
    ax.set_ylabel("error (state units)")
    ax.legend(fontsize=8)
    _save(fig, folder / "error_vs_cycle.png")
    fig, ax = plt.subplots(figsize=(4.2, 4))
    s = slice(result.spinup, None)
    for kind, col in (("forecast", "C1"), ("analysis", "C0")):
        ax.scatter(getattr(result, f"{kind}_spread")[s], getattr(result, f"{kind}_rmse")[s], s=6, color=col,
                   alpha=0.6, label=kind)
    hi = float(torch.cat([result.forecast_rmse[s], result.forecast_spread[s]]).max()) if result.cycles > result.spinup \
        else 1.0
    ax.plot([0, hi], [0, hi], "k--", lw=0.8, label="spread = RMSE")
    ax.set_xlabel("ensemble spread")
    ax.set_ylabel("RMSE of the mean")
    ax.legend(fontsize=8)
    _save(fig, folder / "spread_vs_rmse.png")
    _save(plot_rank_histogram(result.rank_histogram(), None,
                              title="rank of the observed truth among the forecast members"), folder / "rank_histogram.png")
    sm = result.summary()
    rows = "\n".join(f"| {k} | {v:.4g} |" for k, v in sm.items())
    fit = "" if not fitted else "\nFitted / used closure parameters: `" + json.dumps(to_jsonable(fitted)) + "`\n"
    text = (f"# {title}\n\n{result.cycles} cycles, {result.members} members; scores averaged over the "
            f"{int(sm['cycles'])} cycles after the first {result.spinup}.\n{fit}\n| score | value |\n|---|---|\n{rows}\n\n"
            "![error vs cycle](error_vs_cycle.png)\n\n![spread vs RMSE](spread_vs_rmse.png)\n\n"
            "![rank histogram](rank_histogram.png)\n")
    return _write_text(folder / "report.md", text)
