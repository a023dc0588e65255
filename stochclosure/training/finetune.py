"""A-posteriori fine-tuning of a closure law by the score of short ensemble rollouts.

An a-priori trained closure law ``p(U | y)`` is fitted on snapshot pairs; online, its draws feed
back into the coarse solver and errors compound, and a law calibrated offline is often
under-dispersed online. Fine-tuning a-posteriori fixes the law *in the loop*: for a batch of
initial coarse states ``w0`` cut from filtered-truth trajectories, ``members`` copies of each are
rolled out together (one batched solver call per step) through the differentiable coarse solver

``w_{s+1} = step(w_s, U_s, dt)``,  ``U_s = law.draw(cond(w_s), z_s)``,

with the latent ``z`` drawn every ``hold`` steps (the closure held in between; for a law with a
physics part, e.g. :class:`~stochclosure.closures.ResidualLaw`, ``hold_physics=False`` evaluates
the physics closure at every step and holds only the remainder, as it is then run online) as an
AR(1) across draws, ``z <- rho z + sqrt(1 - rho^2) xi``, and the ensemble at every record
``record_every * r`` (``r = 1..records``) is scored against the filtered truth by the fair CRPS
(Ferro 2014) averaged over grid points, or by the fair energy score of the whole field (per point),
each divided by the truth's rms at that record so that records weigh alike. The score is
minimised over the law's parameters by Adam; the gradient flows through the solver (the states
are never detached), which needs a *reparameterised* law (a draw differentiable in its
parameters for a fixed latent: the Gaussian laws, residual laws with a Gaussian remainder).

Validation: the same score, and the spread-skill ratio at the last record, on validation windows
with a fixed seed (before the first step and every ``val_every`` steps); the state with the best
validation score is kept. With ``out``, an atomic checkpoint (law, optimiser, best state, history,
configuration) is written at every validation; calling again with the same ``out`` resumes, and,
as the randomness of step ``k`` is derived from ``(seed, k)`` alone, a run stopped anywhere and
resumed ends with exactly the weights of an uninterrupted one.

Example:
    >>> windows = FinetuneWindows(w0=w[:, 0], truth=w[:, 1:6], record_every=20)       # doctest: +SKIP
    >>> result = finetune(law, system, windows, FinetuneConfig(steps=50), dt=1e-3)      # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .._types import Conditioning
from ..errors import ConfigError, IncompatibleComponentsError, NonFiniteError, ShapeError, format_error
from ..metrics import crps_ensemble, spread_skill_ratio

__all__ = ["FinetuneConfig", "FinetuneWindows", "FinetuneResult", "finetune", "ensemble_rollout",
           "rollout_score", "fair_energy_score", "SCORES", "CHECKPOINT_NAME"]

SCORES = ("crps", "energy")
CHECKPOINT_NAME = "finetune-state.pt"
_VAL_SEED_OFFSET = 7_919


def _positive_int(value: Any, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(format_error(name, f"an integer >= {minimum}", repr(value)))
    return value


def _number(value: Any, name: str, what: str, ok: Callable[[float], bool]) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not ok(value):
        raise ConfigError(format_error(name, what, repr(value)))
    return float(value)


@dataclass(frozen=True)
class FinetuneConfig:
    """Settings of :func:`finetune` (checked on construction; a bad value raises :class:`ConfigError`).

    Attributes:
        steps: Optimiser steps.
        members: Ensemble members per window (>= 2: the fair CRPS needs two).
        windows_per_step: Windows drawn (without replacement, seeded) per optimiser step.
        records: Records of each window scored (``records * record_every`` coarse steps).
        hold: Coarse steps a draw is held for.
        hold_physics: With ``hold > 1`` and a law with a physics part (``physics`` and ``residual``,
            e.g. :class:`~stochclosure.closures.ResidualLaw`): ``True`` holds the whole closure,
            ``False`` evaluates the physics closure at every step and holds only the remainder's
            draw. Fine-tune in the form the law will be run in. Laws without a physics part ignore it.
        rho: AR(1) coefficient of the latent across draws, in ``[0, 1)``.
        lr: Adam learning rate.
        score: ``"crps"`` (fair CRPS averaged over points) or ``"energy"`` (energy score per point).
        params: ``"all"``; ``"variance"`` (the log-variance rows of a Gaussian law's last layer);
            or a substring of the parameter names to train (the others are frozen).
        clip: Gradient-norm clip (``0``: none).
        val_every: Steps between validations (and checkpoints).
        seed: Seeds the window choice and the latents of every step.
    """

    steps: int = 100
    members: int = 4
    windows_per_step: int = 4
    records: int = 5
    hold: int = 1
    hold_physics: bool = True
    rho: float = 0.0
    lr: float = 1e-4
    score: str = "crps"
    params: str = "all"
    clip: float = 1.0
    val_every: int = 10
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("steps", "windows_per_step", "records", "hold", "val_every"):
            _positive_int(getattr(self, name), name)
        _positive_int(self.members, "members", 2)
        _positive_int(self.seed, "seed", 0)
        if not isinstance(self.hold_physics, bool):
            raise ConfigError(format_error("hold_physics", "true or false", repr(self.hold_physics)))
        _number(self.rho, "rho", "a number in [0, 1)", lambda v: 0 <= v < 1)
        _number(self.lr, "lr", "a positive number", lambda v: v > 0)
        _number(self.clip, "clip", "a number >= 0 (0: no clipping)", lambda v: v >= 0)
        if self.score not in SCORES:
            raise ConfigError(format_error("score", f"one of {list(SCORES)}", repr(self.score)))
        if not isinstance(self.params, str) or not self.params:
            raise ConfigError(format_error("params", "'all', 'variance' or a substring of parameter names",
                                           repr(self.params)))

    def to_dict(self) -> dict[str, Any]:
        """The settings as a plain mapping (stored in checkpoints, compared on resume)."""
        return dataclasses.asdict(self)


@dataclass
class FinetuneWindows:
    """Rollout windows cut from filtered-truth coarse trajectories.

    Attributes:
        w0: ``(N, C, *grid)`` initial coarse states.
        truth: ``(N, R, C, *grid)`` filtered truth ``record_every * (1..R)`` coarse steps after ``w0``.
        record_every: Coarse steps between records.
    """

    w0: Tensor
    truth: Tensor
    record_every: int

    def __post_init__(self) -> None:
        _positive_int(self.record_every, "record_every")
        if not isinstance(self.w0, Tensor) or self.w0.dim() < 3:
            raise ShapeError(format_error("w0", "a tensor (N, C, *grid)", repr(getattr(self.w0, "shape", self.w0))))
        if not isinstance(self.truth, Tensor) or self.truth.dim() != self.w0.dim() + 1 or \
                self.truth.shape[0] != self.w0.shape[0] or self.truth.shape[2:] != self.w0.shape[1:]:
            raise ShapeError(format_error("truth", f"shape (N, R, *{tuple(self.w0.shape[1:])}) with N = "
                                          f"{self.w0.shape[0]}", f"shape {tuple(getattr(self.truth, 'shape', ()))}"))
        if not (bool(torch.isfinite(self.w0).all()) and bool(torch.isfinite(self.truth).all())):
            raise NonFiniteError(format_error("windows", "finite initial states and truth", "NaN or inf"))

    def __len__(self) -> int:
        return int(self.w0.shape[0])

    @property
    def records(self) -> int:
        """Records ``R`` stored per window."""
        return int(self.truth.shape[1])


@dataclass
class FinetuneResult:
    """What :func:`finetune` returns.

    Attributes:
        law: The fine-tuned law, with the validation-best state loaded (the last one without ``val``).
        history: One dict per validation: ``step``, ``loss`` (mean training score since the last
            one; ``None`` at step 0), ``val_crps`` (the validation score), ``val_spread_skill``.
        best_step: Step of the state kept (0: the law as given).
        resumed_from: Step the run resumed from (0: a fresh run).
        seconds: Wall time of this call.
    """

    law: Any
    history: list[dict[str, Any]] = field(default_factory=list)
    best_step: int = 0
    resumed_from: int = 0
    seconds: float = 0.0


# -- the rollout and its score ------------------------------------------------------------------------------
def ensemble_rollout(law: Any, system: Any, w0: Tensor, *, members: int, records: int, record_every: int,
                     dt: float, hold: int = 1, rho: float = 0.0, generator: torch.Generator | None = None,
                     condition: Callable[[Tensor], Conditioning] | None = None, hold_physics: bool = True) -> Tensor:
    """Ensemble of ``members`` rollouts of each initial state in one batched solver call (differentiable).

    Args:
        law: A closure law (``draw(cond, latent, grid=)``, ``latent_shape``).
        system: A system with ``step(state, closure, dt=)``.
        w0: ``(B, C, *grid)`` initial states.
        members: Copies of each state.
        records: Records returned.
        record_every: Coarse steps between records.
        dt: Coarse time step.
        hold: Steps a draw is held for.
        rho: AR(1) coefficient of the latent across draws.
        generator: Source of the latents.
        condition: ``state -> Conditioning`` (default ``Conditioning(fields=state)``).
        hold_physics: ``False``: a law with ``physics`` and ``residual`` parts evaluates the physics
            closure at every step and holds only the remainder (see :class:`FinetuneConfig`).

    Returns:
        ``(records, members, B, C, *grid)`` states after ``record_every * (1..records)`` steps.
    """
    condition = condition or (lambda w: Conditioning(fields=w))
    grid = tuple(w0.shape[2:])
    split = not hold_physics and hasattr(law, "physics") and hasattr(law, "residual")
    part = law.residual if split else law
    w = w0.repeat(members, *([1] * (w0.dim() - 1)))
    z: Tensor | None = None
    u: Tensor | None = None
    r: Tensor | None = None
    out = []
    for s in range(records * record_every):
        cond = None
        if s % hold == 0:
            cond = condition(w)
            shape = tuple(law.latent_shape(cond, grid))
            if shape:
                xi = torch.randn((w.shape[0], *shape), generator=generator, dtype=w.dtype).to(w.device)
                z = xi if z is None else rho * z + math.sqrt(1.0 - rho**2) * xi
            u = r = part.draw(cond, z, grid=grid)
        if split:
            assert r is not None
            p = law.physics.mean(cond if cond is not None else condition(w), grid=grid)
            u = p + r.to(p.dtype)
        w = system.step(w, u, dt=dt)
        if (s + 1) % record_every == 0:
            out.append(w.reshape(members, *w0.shape))
    return torch.stack(out)


def rollout_score(ens: Tensor, truth: Tensor, score: str = "crps") -> Tensor:
    """Normalised score of ensembles ``(R, M, B, C, *grid)`` against ``truth (B, R, C, *grid)``; a scalar.

    ``crps``: the fair CRPS averaged over batch, channels and points; ``energy``: the fair energy
    score (:func:`fair_energy_score`) of each field divided by ``sqrt(points)``; each record's score is divided by the truth's rms
    at that record, then records are averaged.
    """
    ref = truth.transpose(0, 1).to(ens)  # (R, B, C, *grid)
    rms = ref.pow(2).flatten(1).mean(1).sqrt().clamp_min(1e-12).detach()
    if score == "crps":
        per = crps_ensemble(ens, ref, member_dim=1, fair=True).flatten(1).mean(1)
    else:
        d = math.prod(ref.shape[2:])
        per = fair_energy_score(ens.flatten(3), ref.flatten(2)).mean(1) / math.sqrt(d)
    return (per / rms).mean()


def fair_energy_score(ens: Tensor, truth: Tensor) -> Tensor:
    """Fair energy score ``E||X - y|| - 1/(2 M (M - 1)) sum_{i != j} ||X_i - X_j||`` (Ferro 2014's weight).

    Args:
        ens: ``(..., M, B, D)`` members (member axis third from last).
        truth: ``(..., B, D)``.

    Returns:
        ``(..., B)``. The pair term skips ``i = j`` (its zero distance has no gradient), so the
        expected score does not depend on ``M``; the plain empirical score (``1 / M^2`` weight) is
        minimised by an under-dispersed ensemble for small ``M``.
    """
    m = ens.shape[-3]
    skill = (ens - truth.unsqueeze(-3)).norm(dim=-1).mean(-2)
    pairs = [(ens.select(-3, i) - ens.select(-3, j)).norm(dim=-1) for i in range(m) for j in range(i + 1, m)]
    return skill - torch.stack(pairs).sum(0) / (m * (m - 1))


# -- parameters ------------------------------------------------------------------------------------------------
def _gaussian_of(law: Any) -> Any:
    from ..closures.learned import GaussianClosure

    for module in law.modules():
        if isinstance(module, GaussianClosure):
            return module
    return None


def select_parameters(law: Any, params: str) -> tuple[list[Tensor], Callable[[], None]]:
    """The parameters to train and a function that masks their gradients (``"variance"`` rows only).

    Raises:
        ConfigError: no parameter matches ``params``.
        IncompatibleComponentsError: ``"variance"`` for a law without a Gaussian component.
    """
    named = [(n, p) for n, p in law.named_parameters() if p.is_floating_point()]
    masks: list[tuple[Tensor, Tensor]] = []
    if params == "all":
        chosen = [p for _, p in named]
    elif params == "variance":
        g = _gaussian_of(law)
        if g is None:
            raise IncompatibleComponentsError(format_error(
                "params", "a law with a Gaussian (mean and log-variance heads) component for 'variance'",
                type(law).__name__, "use params: all or a substring of parameter names"))
        rows = 2 * g.channels
        last = [p for _, p in g.backbone.named_parameters() if p.dim() >= 1 and p.shape[0] == rows][-2:]
        chosen = last
        for p in last:
            mask = torch.zeros_like(p)
            mask[g.channels:] = 1.0
            masks.append((p, mask))
    else:
        chosen = [p for n, p in named if params in n]
    if not chosen:
        raise ConfigError(format_error("params", "'all', 'variance' or a substring of the law's parameter names",
                                       repr(params), f"names look like {[n for n, _ in named][:3]}"))

    def mask_grads() -> None:
        for p, m in masks:
            if p.grad is not None:
                p.grad.mul_(m)

    return chosen, mask_grads


# -- checkpoints -----------------------------------------------------------------------------------------------
@dataclass
class _State:
    step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Tensor] | None = None
    best_step: int = 0
    best_val: float = math.inf
    losses: list[float] = field(default_factory=list)


def _run_key(cfg: FinetuneConfig, windows: FinetuneWindows, val: FinetuneWindows | None, dt: float) -> dict[str, Any]:
    def shape(w: FinetuneWindows | None) -> Any:
        return None if w is None else [list(w.truth.shape), w.record_every]

    return {"config": cfg.to_dict(), "dt": float(dt), "windows": shape(windows), "val": shape(val)}


def _save(path: Path, law: Any, opt: torch.optim.Optimizer, st: _State, key: dict[str, Any]) -> None:
    from ..checkpoint import atomic_write_bytes

    buf = io.BytesIO()
    torch.save({"key": key, "step": st.step, "law": law.state_dict(), "optimiser": opt.state_dict(),
                "history": st.history, "best": st.best, "best_step": st.best_step, "best_val": st.best_val,
                "losses": st.losses}, buf)
    atomic_write_bytes(path, buf.getvalue())


def _resume(path: Path, law: Any, opt: torch.optim.Optimizer, key: dict[str, Any]) -> _State:
    stored = torch.load(path, weights_only=True)
    old = stored.get("key", {})
    if isinstance(old.get("config"), dict):  # settings added since the run was written take their defaults
        old = {**old, "config": {**FinetuneConfig().to_dict(), **old["config"]}}
    if old != key:
        diff = sorted(k for k in {**old.get("config", {}), **key["config"]}
                      if old.get("config", {}).get(k) != key["config"].get(k)) or \
            [k for k in key if old.get(k) != key[k]]
        raise ConfigError(format_error("out", "the folder of a run with this same configuration",
                                       f"a run with other settings ({', '.join(map(str, diff))})",
                                       "choose another out, or restore the run's configuration"))
    law.load_state_dict(stored["law"])
    opt.load_state_dict(stored["optimiser"])
    return _State(step=int(stored["step"]), history=list(stored["history"]), best=stored["best"],
                  best_step=int(stored["best_step"]), best_val=float(stored["best_val"]),
                  losses=list(stored["losses"]))


# -- the loop --------------------------------------------------------------------------------------------------
def _check_inputs(law: Any, windows: FinetuneWindows, val: FinetuneWindows | None, cfg: FinetuneConfig,
                  dt: float) -> None:
    if not isinstance(cfg, FinetuneConfig):
        raise ConfigError(format_error("cfg", "a FinetuneConfig", type(cfg).__name__))
    if not bool(getattr(law, "reparameterised", False)):
        raise IncompatibleComponentsError(format_error(
            "law", "a reparameterised closure law (draws differentiable in the parameters for a fixed latent)",
            f"{type(law).__name__} (reparameterised = False)",
            "fine-tune a Gaussian law or a residual law with a Gaussian remainder"))
    _number(dt, "dt", "a positive time step", lambda v: v > 0)
    for name, w in (("windows", windows), ("val", val)):
        if w is None:
            continue
        if not isinstance(w, FinetuneWindows):
            raise ConfigError(format_error(name, "FinetuneWindows", type(w).__name__))
        if w.records < cfg.records:
            raise ConfigError(format_error("records", f"at most the {w.records} records of {name}",
                                           repr(cfg.records)))
    if cfg.windows_per_step > len(windows):
        raise ConfigError(format_error("windows_per_step", f"at most the {len(windows)} training windows",
                                       repr(cfg.windows_per_step)))


def _device_of(law: Any) -> torch.device:
    """The device of the law's first parameter or buffer (the CPU for a law with neither)."""
    for t in (*law.parameters(), *law.buffers()):
        return t.device
    return torch.device("cpu")


def _step_generator(cfg: FinetuneConfig, step: int) -> torch.Generator:
    return torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)


def _validate(law: Any, system: Any, val: FinetuneWindows, cfg: FinetuneConfig, dt: float,
              condition: Callable[[Tensor], Conditioning] | None) -> tuple[float, float]:
    was = law.training
    law.eval()
    gen = torch.Generator().manual_seed(cfg.seed + _VAL_SEED_OFFSET)
    with torch.no_grad():
        ens = ensemble_rollout(law, system, val.w0.to(_device_of(law)), members=cfg.members, records=cfg.records,
                               record_every=val.record_every, dt=dt, hold=cfg.hold, rho=cfg.rho, generator=gen,
                               condition=condition, hold_physics=cfg.hold_physics)
        truth = val.truth[:, :cfg.records].to(ens)
        score = float(rollout_score(ens, truth, cfg.score))
        ssr = float(spread_skill_ratio(ens[-1].double(), truth[:, -1].double()))
    law.train(was)
    return score, ssr


def _train_step(law: Any, system: Any, windows: FinetuneWindows, cfg: FinetuneConfig, dt: float, step: int,
                opt: torch.optim.Optimizer, chosen: list[Tensor], mask: Callable[[], None],
                condition: Callable[[Tensor], Conditioning] | None) -> float:
    gen = _step_generator(cfg, step)
    idx = torch.randperm(len(windows), generator=gen)[:cfg.windows_per_step]
    device = _device_of(law)
    ens = ensemble_rollout(law, system, windows.w0[idx].to(device), members=cfg.members, records=cfg.records,
                           record_every=windows.record_every, dt=dt, hold=cfg.hold, rho=cfg.rho, generator=gen,
                           condition=condition, hold_physics=cfg.hold_physics)
    loss = rollout_score(ens, windows.truth[idx, :cfg.records].to(device), cfg.score)
    if not bool(torch.isfinite(loss)):
        raise NonFiniteError(format_error("rollout score", "a finite score", f"{float(loss)} at step {step}",
                                          "lower lr or records; check that the base law is stable online"))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    mask()
    if cfg.clip > 0:
        torch.nn.utils.clip_grad_norm_(chosen, cfg.clip)
    opt.step()
    return float(loss.detach())


def _record(law: Any, st: _State, step: int, val_score: float | None, ssr: float | None) -> None:
    loss = sum(st.losses) / len(st.losses) if st.losses else None
    st.history.append({"step": step, "loss": loss, "val_crps": val_score, "val_spread_skill": ssr})
    st.losses = []
    score = val_score if val_score is not None else -float(step)  # no validation: keep the last state
    if score < st.best_val:
        st.best_val, st.best_step = score, step
        st.best = {k: v.detach().clone() for k, v in law.state_dict().items()}


@contextlib.contextmanager
def _frozen_except(law: Any, chosen: list[Tensor]) -> Iterator[None]:
    """Only ``chosen`` require gradients inside the block (restored after)."""
    keep = {id(p) for p in chosen}
    before = [(p, p.requires_grad) for p in law.parameters()]
    try:
        for p, _ in before:
            p.requires_grad_(id(p) in keep)
        yield
    finally:
        for p, flag in before:
            p.requires_grad_(flag)


def finetune(law: Any, system: Any, windows: FinetuneWindows, cfg: FinetuneConfig, *, dt: float,
             val: FinetuneWindows | None = None, condition: Callable[[Tensor], Conditioning] | None = None,
             out: Path | None = None, progress: bool = True,
             callback: Callable[[int, dict[str, Any]], None] | None = None) -> FinetuneResult:
    """Fine-tune ``law`` by the score of short ensemble rollouts through ``system`` (see the module docstring).

    Args:
        law: A reparameterised closure law (an ``nn.Module``); trained in place.
        system: A differentiable coarse solver with ``step(state, closure, dt=)``.
        windows: Training windows.
        cfg: The settings.
        dt: Coarse time step.
        val: Validation windows (the best state by their score is kept); ``None``: the last state.
        condition: ``state -> Conditioning`` (default ``Conditioning(fields=state)``).
        out: Folder of the run's checkpoint (``finetune-state.pt``); an existing one of the same
            run is resumed.
        progress: Show a tqdm progress bar.
        callback: ``callback(step, info)`` after every optimiser step (``info``: ``loss``).

    Returns:
        A :class:`FinetuneResult`.

    Raises:
        IncompatibleComponentsError: the law is not reparameterised.
        ConfigError: bad settings, too few windows or records, or ``out`` holds another run.
        NonFiniteError: a rollout score is not finite.
    """
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    _check_inputs(law, windows, val, cfg, dt)
    chosen, mask = select_parameters(law, cfg.params)
    opt = torch.optim.Adam(chosen, lr=cfg.lr)
    key = _run_key(cfg, windows, val, dt)
    path = None if out is None else Path(out) / CHECKPOINT_NAME
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    st = _resume(path, law, opt, key) if path is not None and path.exists() else _State()
    resumed = st.step
    if not st.history:
        _record(law, st, 0, *(_validate(law, system, val, cfg, dt, condition) if val is not None else (None, None)))
    bar = tqdm(total=cfg.steps, initial=st.step, disable=not progress, desc="finetune", leave=False)
    with _frozen_except(law, chosen):
        law.train()
        while st.step < cfg.steps:
            loss = _train_step(law, system, windows, cfg, dt, st.step, opt, chosen, mask, condition)
            st.losses.append(loss)
            st.step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4g}")
            if st.step % cfg.val_every == 0 or st.step == cfg.steps:
                scores = _validate(law, system, val, cfg, dt, condition) if val is not None else (None, None)
                _record(law, st, st.step, *scores)
                if path is not None:
                    _save(path, law, opt, st, key)
            if callback is not None:
                callback(st.step, {"loss": loss})
    bar.close()
    if st.best is not None:
        law.load_state_dict(st.best)
    law.eval()
    return FinetuneResult(law=law, history=st.history, best_step=st.best_step, resumed_from=resumed,
                          seconds=time.perf_counter() - t0)
