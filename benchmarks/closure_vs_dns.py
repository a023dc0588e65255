"""Learned stochastic subgrid closure vs DNS: cost per simulated time unit at equal accuracy.

``python benchmarks/closure_vs_dns.py`` (resumable; caches in ``benchmarks/work/closure_vs_dns/``)
``python benchmarks/closure_vs_dns.py --quick`` (a smoke run of every stage, well under a minute)

Setting: 2-D Navier-Stokes at ``nu = 1e-4``, DNS at 256² from energetic random initial
vorticity (rms ~2.8, max |u| ~0.8, eddy turnover ~0.4), Gaussian-filtered to 32² where the true
subgrid closure ``U`` is as large as a third of the resolved tendency: the coarse grid is
genuinely under-resolved. No stochastic forcing (``sigma = 0``): the only uncertainty is the
unresolved scales.

Stages, each cached:

1. ``data``: ``stochclosure generate`` of 14 DNS trajectories (spin-up 1 time unit, then 3 time
   units recorded every 0.02), split 9 train / 1 validation / 4 test by trajectory.
2. ``dt``: the coarse time step, chosen on *training* trajectories: the largest multiple of the
   DNS step whose coarse + Smagorinsky run stays within 10 % of the model error of the
   DNS-step coarse run (time-stepping error small against closure error). The DNS step is the
   stability limit ``dt |u|^2 < 2 nu`` of the explicit-advection / Crank-Nicolson scheme at 256².
3. ``smagorinsky``: ``c_s`` by least squares on training pairs.
4. ``train``: the teacher, an FNO score (vp SDE) conditioned on the normalised coarse vorticity,
   by ``stochclosure train`` (config written to the cache; resumable).
5. ``distill``: the 1-2 evaluation consistency student by ``stochclosure distill`` (resumable).
6. ``ar1``: ``ClosureAR1.fit`` on training closure series (decorrelation time).
7. ``offline``: distilled vs many-step closure draws on test snapshots (CRPS, spectra, spread-skill).
8. ``rollouts``: every setting on held-out initial conditions (ensembles), accuracy vs the
   filtered DNS at fixed horizons.
9. ``cost``: wall time per simulated time unit of every setting and of the DNS, measured side by
   side (interleaved repeats) in one run; the break-even number of network evaluations per step.

Nothing is tuned on the test trajectories: the time step, ``c_s``, the AR(1) fit, the training and
the distillation see training (and validation) trajectories only; every setting of the table is
reported.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

ROOT = Path(__file__).resolve().parent
WORK = ROOT / "work" / "closure_vs_dns"
RESULTS = ROOT / "results"

# DNS: nu = 1e-4 at 256^2 from energetic random initial vorticity, spun up 1 time unit, then 3 time
# units recorded every 0.02 (filtered to 32^2 with the true closure U).
SYSTEM = {"n": 32, "n_fine": 256, "nu": 1.0e-4, "dt": 2.0e-4, "sigma": 0.0, "filter": "gaussian",
          "ic_scale": 6.86e4}
QUICK_SYSTEM = {"n": 16, "n_fine": 64, "nu": 1.0e-3, "dt": 1.0e-3, "sigma": 0.0, "filter": "gaussian",
                "ic_scale": 6.86e3}


# Provenance of the full run's test set, reported with its results.
WIDENED_TEST_SET = (
    "* The test set was widened after a first evaluation from 2 to 5 start times per held-out trajectory "
    "(8 -> 20 cases) to reduce the sampling noise; no model, parameter or setting changed. On the 8 cases the "
    "fastest setting at Smagorinsky's accuracy was the distilled 2-step closure every 10 steps (51.6x), and the "
    "1-step closure every 10 steps did not meet the accuracy criterion.")

def data_config(quick: bool = False) -> dict[str, Any]:
    """The ``stochclosure generate`` configuration of the DNS dataset."""
    if quick:
        return {"system": dict(QUICK_SYSTEM), "trajectories": 6, "batch_size": 6, "seed": 1, "spinup_steps": 100,
                "record_every": 20, "records": 16, "resolutions": [16], "closures": ["U"], "obs_grid": 0,
                "split": {"train": 0.5, "val": 0.17, "test": 0.33}, "dtype": "float32", "compression": None}
    return {"system": dict(SYSTEM), "trajectories": 14, "batch_size": 7, "seed": 10, "spinup_steps": 5000,
            "record_every": 100, "records": 151, "resolutions": [32], "closures": ["U"], "obs_grid": 0,
            "split": {"train": 9 / 14, "val": 1 / 14, "test": 4 / 14}, "dtype": "float32", "compression": None}


def settings(quick: bool) -> dict[str, Any]:
    """Sizes of every stage (full run fits 2 shared CPU cores: train <= 25 min, evaluation <= 10 min)."""
    if quick:
        return {"width": 8, "modes": 4, "layers": 1, "train_steps": 16, "batch": 16, "distill_steps": 6,
                "distill_batch": 8, "teacher_ode_steps": 4, "levels": [1.0, 0.3], "dt_factors": [1, 2, 5],
                "horizons": [0.02, 0.04], "starts": [0], "members": 3, "offline_times": [0, 5], "offline_n": 4,
                "cost_steps": 4, "cost_repeats": 2, "reference_steps": 4, "resample": [1, 4], "ar_every": 4}
    return {"width": 16, "modes": 12, "layers": 4, "train_steps": 900, "batch": 32, "distill_steps": 200,
            "distill_batch": 16, "teacher_ode_steps": 6, "levels": [1.0, 0.3], "dt_factors": [1, 2, 5, 10, 20],
            "horizons": [0.1, 0.24, 0.5], "starts": [0, 25, 50, 75, 100], "members": 4, "offline_times": [0, 40, 80, 120],
            "offline_n": 16, "cost_steps": 40, "cost_repeats": 2, "reference_steps": 10, "resample": [1, 4, 10],
            "ar_every": 10}


# -- helpers -------------------------------------------------------------------------------------------------
def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _json_load(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


def _json_dump(path: Path, obj: Any) -> None:
    from stochclosure.checkpoint import atomic_write_bytes

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, json.dumps(obj, indent=1, sort_keys=True).encode())


def _system(quick: bool) -> Any:
    from stochclosure.systems.subgrid import NavierStokes2DSubgrid

    return NavierStokes2DSubgrid(**(QUICK_SYSTEM if quick else SYSTEM))


def load_split(h5: Path, split: str) -> dict[str, Any]:
    """Filtered states and true closures of one split: ``(N, T, 1, n, n)`` float32 tensors and times."""
    with h5py.File(h5, "r") as f:
        res = int(json.loads(f.attrs["resolutions"])[0]) if isinstance(f.attrs["resolutions"], str) \
            else int(np.asarray(f.attrs["resolutions"]).reshape(-1)[0])
        names = json.loads(f["split"].attrs["names"])
        idx = np.nonzero(f["split"][...] == names.index(split))[0]
        g = f[f"res_{res}"]
        out = {"state": torch.from_numpy(g["state"][idx.tolist()]).float(),
               "U": torch.from_numpy(g["U"][idx.tolist()]).float(),
               "time": torch.from_numpy(f["time"][...]).double(), "trajectories": idx.tolist()}
    return out


def _rel_err(pred: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """Relative L2 error per case ``(..., 1, n, n) -> (...)``."""
    return (pred - truth).flatten(-3).norm(dim=-1) / truth.flatten(-3).norm(dim=-1)


def _spectrum_error(members: torch.Tensor, truth: torch.Tensor) -> float:
    """Mean over shells 1..n/3 of |log(E_pred(k) / E_true(k))|, E_pred the member-averaged spectrum.

    members ``(M, B, 1, n, n)``, truth ``(B, 1, n, n)``; averaged over cases.
    """
    from stochclosure.metrics import energy_spectrum

    _, ep = energy_spectrum(members[:, :, 0])
    _, et = energy_spectrum(truth[:, 0])
    kmax = truth.shape[-1] // 3
    ratio = ep.mean(0)[:, 1:kmax + 1] / et[:, 1:kmax + 1].clamp_min(1e-30)
    return float(ratio.clamp_min(1e-30).log().abs().mean())


# -- stages --------------------------------------------------------------------------------------------------
def stage_data(work: Path, quick: bool) -> Path:
    from stochclosure.data.generate import generate

    out = work / "dns.h5"
    if not out.is_file():
        _log("data: simulating the DNS (resumable)")
        generate("navier_stokes_2d_subgrid", data_config(quick), out, progress=False)
    return out


def stage_smagorinsky(work: Path, train: dict[str, Any]) -> float:
    from stochclosure.systems.subgrid import SmagorinskyClosure

    cached = _json_load(work / "smagorinsky.json")
    if cached is None:
        s, u = train["state"][:, ::5].flatten(0, 1), train["U"][:, ::5].flatten(0, 1)
        cs = SmagorinskyClosure.fit(s.double(), u.double()).cs
        m = SmagorinskyClosure(cs)(s.double())
        cached = {"cs": cs, "explained_variance": float(1 - (u.double() - m).pow(2).sum() / u.double().pow(2).sum())}
        _json_dump(work / "smagorinsky.json", cached)
    return float(cached["cs"])


def _coarse_run(system: Any, closure: Any, state0: torch.Tensor, dt: float, n_steps: int) -> torch.Tensor:
    s = state0
    with torch.no_grad():
        for _ in range(n_steps):
            s = system.step(s, None if closure is None else closure(s), dt)
    return s


def stage_dt(work: Path, system: Any, train: dict[str, Any], cs: float, cfg: dict[str, Any]) -> dict[str, Any]:
    """Largest coarse step whose time-stepping error is < 10 % of the model error (training trajectories)."""
    from stochclosure.systems.subgrid import SmagorinskyClosure

    cached = _json_load(work / "dt.json")
    if cached is not None:
        return cached
    smag = SmagorinskyClosure(cs)
    rec_dt = float(train["time"][1] - train["time"][0])
    horizon = max(cfg["horizons"])
    h_rec = int(round(horizon / rec_dt))
    s0, truth = train["state"][:2, 0], train["state"][:2, h_rec]
    ref = _coarse_run(system, smag, s0, system.dt, int(round(horizon / system.dt)))
    model_err = float(_rel_err(ref, truth).mean())
    rows, chosen = [], system.dt
    for k in cfg["dt_factors"]:
        dt = k * system.dt
        out = _coarse_run(system, smag, s0, dt, int(round(horizon / dt)))
        step_err = float(_rel_err(out, ref).mean()) if bool(torch.isfinite(out).all()) else float("inf")
        ok = step_err < 0.1 * model_err
        rows.append({"dt": dt, "factor": k, "time_stepping_error": step_err, "ok": ok})
        if ok:
            chosen = dt
    cached = {"dt": chosen, "dns_dt": system.dt, "model_error": model_err, "horizon": horizon, "candidates": rows}
    _json_dump(work / "dt.json", cached)
    return cached


def _train_config(work: Path, h5: Path, train: dict[str, Any], cfg: dict[str, Any]) -> dict[str, Any]:
    std = float(train["state"].std())
    return {"data": {"path": str(h5), "closure": "U", "history": 0, "obs": False, "val_split": "val"},
            "model": {"sde": "vp", "sampler": {"type": "dpm_solver_pp_2m", "steps": cfg["reference_steps"]},
                      "score": {"type": "fno", "sde": "vp", "channels": 1, "width": cfg["width"], "modes": cfg["modes"],
                                "layers": cfg["layers"],
                                "encoder": {"type": "normalized", "encoder": {"type": "field", "channels": 1},
                                            "mean": [0.0], "std": [round(std, 4)]}}},
            "trainer": {"batch_size": cfg["batch"], "max_steps": cfg["train_steps"], "lr": 2.0e-3,
                        "schedule": "cosine", "warmup_steps": min(100, cfg["train_steps"] // 10), "ema_decay": 0.999
                        if cfg["train_steps"] >= 1000 else 0.9, "grad_clip": 1.0,
                        "checkpoint_every": max(1, min(250, cfg["train_steps"] // 2)),
                        "val_every": max(1, min(250, cfg["train_steps"] // 2)), "val_batches": 4},
            "out": str(work / "runs" / "teacher"), "seed": 0}


def _finished(run: Path, steps: int) -> Path | None:
    latest = run / "latest"
    if latest.is_file():
        ckpt = run / latest.read_text().strip()
        cfg = json.loads((ckpt / "config.json").read_text())
        if int(cfg.get("trainer", {}).get("step", -1)) >= steps:
            return ckpt
    return None


def stage_train(work: Path, h5: Path, train: dict[str, Any], cfg: dict[str, Any]) -> Path:
    import yaml

    from stochclosure.train_cli import run_training

    tc = _train_config(work, h5, train, cfg)
    (work / "train.yaml").write_text(yaml.safe_dump(tc, sort_keys=False))
    done = _finished(Path(tc["out"]), cfg["train_steps"])
    if done is None:
        _log(f"train: stochclosure train --config {work / 'train.yaml'} --resume")
        t0 = time.perf_counter()
        res = run_training(tc, resume=True, progress=False)
        _json_dump(work / "train_result.json", {"steps": res.steps, "train_loss": res.train_loss,
                                                "val_loss": res.val_loss, "seconds": time.perf_counter() - t0,
                                                "resumed_from": res.resumed_from, "history": res.history})
        done = _finished(Path(tc["out"]), cfg["train_steps"])
    assert done is not None
    return done


def stage_distill(work: Path, h5: Path, teacher: Path, cfg: dict[str, Any]) -> Path:
    import yaml

    from stochclosure.distill import run_distillation

    dc = {"teacher": str(teacher), "data": {"path": str(h5), "closure": "U", "history": 0, "obs": False,
                                            "val_split": "val"},
          "student": {"levels": cfg["levels"], "steps": 1,
                      "teacher_sampler": {"type": "dpm_solver_pp_2m", "steps": cfg["teacher_ode_steps"]}},
          "trainer": {"batch_size": cfg["distill_batch"], "max_steps": cfg["distill_steps"], "lr": 5.0e-4,
                      "schedule": "cosine", "ema_decay": 0.99 if cfg["distill_steps"] >= 200 else 0.5,
                      "grad_clip": 1.0, "checkpoint_every": max(1, min(50, cfg["distill_steps"] // 2)),
                      "val_every": max(1, min(100, cfg["distill_steps"] // 2)), "val_batches": 2},
          "out": str(work / "runs" / "distilled"), "seed": 0}
    (work / "distill.yaml").write_text(yaml.safe_dump(dc, sort_keys=False))
    done = _finished(Path(dc["out"]), cfg["distill_steps"])
    if done is None:
        _log(f"distill: stochclosure distill --config {work / 'distill.yaml'} --resume")
        t0 = time.perf_counter()
        res = run_distillation(dc, resume=True, progress=False)
        _json_dump(work / "distill_result.json", {"steps": res.steps, "train_loss": res.train_loss,
                                                  "val_loss": res.val_loss, "seconds": time.perf_counter() - t0,
                                                  "resumed_from": res.resumed_from, "history": res.history})
        done = _finished(Path(dc["out"]), cfg["distill_steps"])
    assert done is not None
    return done


def stage_ar1(work: Path, train: dict[str, Any], dt_c: float, every: int) -> dict[str, float]:
    from stochclosure.rollouts import ClosureAR1

    cached = _json_load(work / "ar1.json")
    if cached is None:
        rec_dt = float(train["time"][1] - train["time"][0])
        ar = ClosureAR1.fit(train["U"].transpose(0, 1), dt=rec_dt, step_dt=dt_c)
        cached = {"phi": ar.phi, "sigma": ar.sigma, "decorrelation_time": ar.decorrelation_time(dt_c),
                  "record_dt": rec_dt, "step_dt": dt_c, "rms_U": float(train["U"].pow(2).mean().sqrt()),
                  "perturbation_std_after_k": ar.sigma * math.sqrt((1 - ar.phi ** (2 * every)) / max(1 - ar.phi**2,
                                                                                                      1e-300))}
        _json_dump(work / "ar1.json", cached)
    return cached


def _samplers(cfg: dict[str, Any]) -> dict[str, Any]:
    lv = cfg["levels"]
    return {f"many-step (DPM-Solver++ {cfg['reference_steps']})": ("teacher", None),
            "DPM-Solver++ 3": ("teacher", {"type": "dpm_solver_pp_2m", "steps": 3}),
            "distilled 1-step": ("student", {"type": "consistency", "times": lv[:1]}),
            "distilled 2-step": ("student", {"type": "consistency", "times": lv[:2]})}


def stage_offline(work: Path, teacher: Any, student: Any, test: dict[str, Any], cfg: dict[str, Any]) -> dict:
    """Closure draws on test snapshots: CRPS, spectrum error and spread-skill vs the true U."""
    from stochclosure import Conditioning, metrics
    from stochclosure.samplers.base import CountingScore  # noqa: F401 - nfe from sampler.nfe

    cached = _json_load(work / "offline.json")
    if cached is not None:
        return cached
    times = cfg["offline_times"]
    y = test["state"][:, times].flatten(0, 1)
    u = test["U"][:, times].flatten(0, 1)
    n = cfg["offline_n"]
    rows = {}
    for name, (who, sampler) in _samplers(cfg).items():
        model = teacher if who == "teacher" else student
        s = model._resolve_sampler(sampler)
        t0 = time.perf_counter()
        draws = model.sample(Conditioning(fields=y), n=n, sampler=sampler, generator=torch.Generator().manual_seed(0))
        sec = time.perf_counter() - t0
        crps = float(metrics.crps_ensemble(draws, u, fair=True).mean())
        ssr = float(metrics.spread_skill_ratio(draws, u).mean())
        rel = float(_rel_err(draws.mean(0), u).mean())
        rows[name] = {"nfe": s.nfe(), "crps": crps, "spread_skill": ssr, "mean_rel_error": rel,
                      "spectrum_error": _spectrum_error(draws, u), "seconds": sec}
        _log(f"offline {name}: {rows[name]}")
    cached = {"conditions": int(y.shape[0]), "draws": n, "rows": rows, "rms_U": float(u.pow(2).mean().sqrt()),
              "reference": next(iter(_samplers(cfg))), "order": list(_samplers(cfg))}
    _json_dump(work / "offline.json", cached)
    return cached


def _rollout_settings(cfg: dict[str, Any], ar1: dict[str, float], smag: Any) -> dict[str, dict[str, Any]]:
    from stochclosure.rollouts import ClosureAR1, WarmStart

    lv = cfg["levels"]
    k_ar = cfg["ar_every"]
    out: dict[str, dict[str, Any]] = {
        "no closure": {"closure": None},
        "Smagorinsky": {"closure": "smag"},
    }
    ref, k_max = cfg["reference_steps"], cfg["resample"][-1]
    out[f"many-step DPM++{ref}, every {k_max}"] = {"closure": "teacher", "every": k_max}
    out[f"many-step DPM++{ref}, every 1"] = {"closure": "teacher", "every": 1}
    out[f"DPM++3, every {cfg['resample'][-1]}"] = {"closure": "teacher", "every": cfg["resample"][-1],
                                                   "sampler": {"type": "dpm_solver_pp_2m", "steps": 3}}
    for k in cfg["resample"]:
        out[f"distilled 1-step, every {k}"] = {"closure": "student", "every": k}
    out[f"distilled 2-step, every {cfg['resample'][-1]}"] = {"closure": "student", "every": cfg["resample"][-1],
                                                            "sampler": {"type": "consistency", "times": lv[:2]}}
    out[f"distilled 1-step, every {k_ar}, AR(1) fitted"] = {
        "closure": "student", "every": k_ar, "between": ClosureAR1(phi=ar1["phi"], sigma=ar1["sigma"])}
    out[f"distilled warm start t={lv[1]}, every {cfg['resample'][1]}"] = {
        "closure": "student", "every": cfg["resample"][1], "between": WarmStart(t_start=lv[1], steps=1)}
    out[f"DPM++ warm start t={lv[1]} (1 step), every {cfg['resample'][1]}"] = {
        "closure": "teacher", "every": cfg["resample"][1], "between": WarmStart(t_start=lv[1], steps=1)}
    return out


def _nfe_per_step(spec: dict[str, Any], teacher: Any, student: Any, n_steps: int) -> float:
    from stochclosure.rollouts import WarmStart

    if spec["closure"] in (None, "smag"):
        return 0.0
    model = teacher if spec["closure"] == "teacher" else student
    every = spec.get("every", 1)
    draws = math.ceil(n_steps / every)
    full = model._resolve_sampler(spec.get("sampler")).nfe()
    between = spec.get("between")
    if isinstance(between, WarmStart):
        warm = between.sampler_for(model, spec.get("sampler")).nfe(between.steps)
        return (full + (draws - 1) * warm) / n_steps
    return draws * full / n_steps


def _run_setting(system: Any, spec: dict[str, Any], teacher: Any, student: Any, smag: Any, state0: torch.Tensor,
                 n_steps: int, dt: float, members: int, record_every: int, seed: int = 0) -> Any:
    from stochclosure.rollouts import ensemble

    closure = {"teacher": teacher, "student": student, "smag": (lambda c: smag(c.fields)), None: None}[spec["closure"]]
    m = members if spec["closure"] in ("teacher", "student") else 1
    with torch.no_grad():
        return ensemble(system, closure, state0, n_steps, members=m, seed=seed, dt=dt,
                        resample_every=spec.get("every", 1), between=spec.get("between"), sampler=spec.get("sampler"),
                        record_every=record_every)


def stage_rollouts(work: Path, system: Any, teacher: Any, student: Any, smag: Any, test: dict[str, Any],
                   dt_c: float, cfg: dict[str, Any], ar1: dict[str, float]) -> dict[str, Any]:
    from stochclosure import metrics

    path = work / "rollouts.json"
    cached = _json_load(path) or {}
    rec_dt = float(test["time"][1] - test["time"][0])
    horizons = cfg["horizons"]
    for h in horizons:  # the truth is only known at record times: a horizon between two would be compared late
        if abs(h / rec_dt - round(h / rec_dt)) > 1e-6 * max(1.0, h / rec_dt):
            raise ValueError(f"horizon {h} is not a multiple of the record interval {rec_dt}; "
                             f"use one of {[round(k * rec_dt, 10) for k in range(1, 4)]}, ...")
    n_steps = int(round(max(horizons) / dt_c))
    rec_every = math.gcd(*[int(round(h / dt_c)) for h in horizons])
    starts = cfg["starts"]
    state0 = test["state"][:, starts].flatten(0, 1)  # cases: trajectories x start records
    for name, spec in _rollout_settings(cfg, ar1, smag).items():
        if name in cached:
            continue
        t0 = time.perf_counter()
        res = _run_setting(system, spec, teacher, student, smag, state0, n_steps, dt_c, cfg["members"], rec_every)
        sec = time.perf_counter() - t0
        rows = {}
        for h in horizons:
            step = int(round(h / dt_c))
            i = res.steps.tolist().index(step)
            ens = res.states[i]
            ens = ens.reshape(-1, *ens.shape[-4:]) if ens.dim() == 5 else ens[None]  # (M, B, 1, n, n)
            truth = test["state"][:, [s + int(round(h / rec_dt)) for s in starts]].flatten(0, 1)
            finite = bool(torch.isfinite(ens).all())
            row = {"mean_rel_error": float("inf"), "crps": float("inf"), "spectrum_error": float("inf")}
            if finite:
                err = _rel_err(ens.mean(0), truth)
                crps = metrics.crps_ensemble(ens, truth, fair=ens.shape[0] > 1).mean((-3, -2, -1))
                row = {"mean_rel_error": float(err.mean()), "mean_rel_error_se": float(err.std() / len(err) ** 0.5),
                       "crps": float(crps.mean()), "crps_se": float(crps.std() / len(crps) ** 0.5),
                       "spectrum_error": _spectrum_error(ens, truth)}
            if ens.shape[0] > 1 and finite:
                row["spread_skill"] = float(metrics.spread_skill_ratio(ens, truth).mean())
            rows[str(h)] = row
        cached[name] = {"nfe_per_step": _nfe_per_step(spec, teacher, student, n_steps), "horizons": rows,
                        "members": cfg["members"] if spec["closure"] in ("teacher", "student") else 1,
                        "cases": int(state0.shape[0]), "steps": n_steps, "seconds": sec}
        _log(f"rollout {name}: nfe/step {cached[name]['nfe_per_step']:.3f}, {rows}")
        _json_dump(path, cached)
    return cached


def stage_cost(work: Path, system: Any, teacher: Any, student: Any, smag: Any, test: dict[str, Any], dt_c: float,
               cfg: dict[str, Any], ar1: dict[str, float]) -> dict[str, Any]:
    """Seconds per simulated time unit, per trajectory/member, every setting and the DNS, interleaved."""
    path = work / "cost.json"
    cached = _json_load(path)
    if cached is not None:
        return cached
    n_cases = len(cfg["starts"]) * test["state"].shape[0]
    members = cfg["members"]
    batch = n_cases * members
    state0 = test["state"][:, cfg["starts"]].flatten(0, 1)
    specs = _rollout_settings(cfg, ar1, smag)
    k = cfg["cost_steps"]
    gen = torch.Generator().manual_seed(0)
    fine = {b: system.fine_initial_state(b, generator=gen) for b in (1, n_cases)}
    times: dict[str, list[float]] = {}
    for _rep in range(cfg["cost_repeats"]):
        for b, w in fine.items():
            with torch.no_grad():
                system.full_step(w)  # warm
                t0 = time.perf_counter()
                for _ in range(max(2, k // 4)):
                    w = system.full_step(w)
                sec = (time.perf_counter() - t0) / max(2, k // 4)
            times.setdefault(f"DNS {system.n_fine}² batch {b}", []).append(sec / b / system.dt)
        for name, spec in specs.items():
            steps = k if spec.get("every", 1) <= k else spec["every"]
            mm = members if spec["closure"] in ("teacher", "student") else 1
            # closures without members run one member per case; their cost per trajectory is per case
            _run_setting(system, spec, teacher, student, smag, state0, 1, dt_c, members, 1)  # warm
            t0 = time.perf_counter()
            _run_setting(system, spec, teacher, student, smag, state0, steps, dt_c, members, steps)
            sec = (time.perf_counter() - t0) / steps
            times.setdefault(name, []).append(sec / (n_cases * mm) / dt_c)
    fwd = []
    x = torch.randn(batch, 1, *state0.shape[-2:])
    from stochclosure import Conditioning

    cond = Conditioning(fields=state0.repeat(members, 1, 1, 1))
    with torch.no_grad():
        for _ in range(cfg["cost_repeats"] * 3):
            t0 = time.perf_counter()
            teacher.score(x, torch.full((batch,), 0.5), cond)
            fwd.append((time.perf_counter() - t0) / batch)
    coarse = min(times["no closure"]) * dt_c  # seconds per coarse step per trajectory
    out = {"seconds_per_time_unit": {k_: min(v) for k_, v in times.items()},
           "all_repeats": times, "eval_seconds_per_member": min(fwd), "coarse_step_seconds": coarse,
           "batch": batch, "cases": n_cases, "members": members, "dt_coarse": dt_c, "dt_dns": system.dt,
           "load_average": os.getloadavg()[0]}
    _json_dump(path, out)
    return out


# -- report ----------------------------------------------------------------------------------------------------
def _fmt(v: float, nd: int = 3) -> str:
    return "inf" if not math.isfinite(v) else f"{v:.{nd}g}"


def report(work: Path, out_md: Path, quick: bool, info: dict[str, Any]) -> dict[str, Any]:
    dt = _json_load(work / "dt.json")
    smag = _json_load(work / "smagorinsky.json")
    ar1 = _json_load(work / "ar1.json")
    offline = _json_load(work / "offline.json")
    roll = _json_load(work / "rollouts.json")
    cost = _json_load(work / "cost.json")
    train = _json_load(work / "train_result.json") or {}
    distill = _json_load(work / "distill_result.json") or {}
    cfg = settings(quick)
    spt = cost["seconds_per_time_unit"]
    nf = (QUICK_SYSTEM if quick else SYSTEM)["n_fine"]
    dns = spt[f"DNS {nf}² batch {cost['cases']}"]
    dns1 = spt[f"DNS {nf}² batch 1"]
    order = [n for n in _rollout_settings(cfg, ar1, None) if n in roll]
    hmax = str(max(cfg["horizons"]))
    smag_row = roll["Smagorinsky"]["horizons"]
    rows = []
    for name in order:
        r = roll[name]
        c = spt.get(name)
        speed = dns / c if c else float("nan")
        equal = all(r["horizons"][h]["mean_rel_error"] <= smag_row[h]["mean_rel_error"]
                    and r["horizons"][h]["spectrum_error"] <= smag_row[h]["spectrum_error"]
                    for h in r["horizons"])
        rows.append((name, r, c, speed, equal))
    # break-even network evaluations per coarse step (per member): coarse step + r * eval = DNS cost per step
    c_step = cost["coarse_step_seconds"]
    c_eval = cost["eval_seconds_per_member"]
    dns_per_step = dns * cost["dt_coarse"]
    breakeven = (dns_per_step - c_step) / c_eval
    five = (dns_per_step / 5 - c_step) / c_eval
    many = [n for n in roll if n.startswith("many-step") and n.endswith("every 1")]
    ref_name = many[0] if many else None
    lines = [
        "# Learned stochastic subgrid closure vs DNS" + (" (quick smoke run)" if quick else ""),
        "",
        f"`python benchmarks/closure_vs_dns.py{' --quick' if quick else ''}` ({info['machine']}, torch {info['torch']},"
        f" 1 thread, allocator tuned: {info['allocator']}; load average {_fmt(cost['load_average'], 2)} while timing"
        + ("; the 2 cores were shared with other jobs, so absolute times are pessimistic" if cost["load_average"] >= 2
           else "") + "; every cost is measured interleaved with the others in one run).",
        "",
        "## Setting",
        "",
        f"DNS: 2-D Navier–Stokes, nu = {(QUICK_SYSTEM if quick else SYSTEM)['nu']:g}, "
        f"{(QUICK_SYSTEM if quick else SYSTEM)['n_fine']}², dt = {dt['dns_dt']:g} (the stability limit "
        f"dt |u|² < 2 nu of explicit advection with Crank–Nicolson viscosity), energetic random initial vorticity, "
        f"no stochastic forcing. Coarse model: {(QUICK_SYSTEM if quick else SYSTEM)['n']}², Gaussian filter of width "
        f"2/n, dt = {dt['dt']:g} (chosen on training trajectories: the largest multiple of the DNS step whose "
        f"time-stepping error stays below 10 % of the Smagorinsky model's error, {_fmt(dt['model_error'])}, at the "
        f"longest horizon; candidates: "
        + ", ".join(f"{c['factor']}x: {_fmt(c['time_stepping_error'])}" for c in dt["candidates"]) + ").",
        "",
        f"Smagorinsky c_s = {smag['cs']:.3f} (least squares on training pairs; explains "
        f"{100 * smag['explained_variance']:.0f} % of the closure's variance). Teacher: FNO score "
        f"(width {cfg['width']}, |k| < {cfg['modes']}, {cfg['layers']} layers), vp SDE, conditioned on the normalised "
        f"coarse vorticity, trained {train.get('steps', '?')} steps in {_fmt(train.get('seconds', float('nan')) / 60, 3)}"
        f" min (validation loss {_fmt(train.get('val_loss') or float('nan'))}). Distilled student: consistency "
        f"distillation at t = {cfg['levels']} with DPM-Solver++(2M) {cfg['teacher_ode_steps']}-step teacher targets, "
        f"{distill.get('steps', '?')} steps in {_fmt(distill.get('seconds', float('nan')) / 60, 3)} min. "
        f"AR(1) fit on training closures: phi = {ar1['phi']:.4f} per coarse step, decorrelation time "
        f"{_fmt(ar1['decorrelation_time'])} time units, sigma = {_fmt(ar1['sigma'])} (rms U = {_fmt(ar1['rms_U'])}).",
        "",
        "## Offline: closure draws on test snapshots",
        "",
        f"{offline['conditions']} test conditions x {offline['draws']} draws; CRPS (fair) and ensemble-mean error of U "
        f"vs the true closure (rms {_fmt(offline['rms_U'])}), spectrum error = mean |log E_pred(k)/E_true(k)| over "
        "shells 1..n/3, spread-skill ratio (1 = calibrated).",
        "",
        "| sampler | NFE | CRPS | CRPS / many-step | mean rel. error | spectrum error | spread-skill |",
        "|---|---|---|---|---|---|---|",
    ]
    ref_off = offline["rows"][offline["reference"]]
    for name in offline["order"]:
        r = offline["rows"][name]
        lines.append(f"| {name} | {r['nfe']} | {_fmt(r['crps'])} | {r['crps'] / ref_off['crps']:.3f} | "
                     f"{_fmt(r['mean_rel_error'])} | {_fmt(r['spectrum_error'])} | {_fmt(r['spread_skill'])} |")
    lines += [
        "",
        "## Online: ensembles from held-out initial conditions",
        "",
        f"{roll['no closure']['cases']} test cases (held-out trajectories x start times), {cfg['members']} members "
        f"per stochastic setting; errors vs the filtered DNS at t = {', '.join(map(str, cfg['horizons']))}. "
        "Cost = wall seconds per simulated time unit per trajectory (per member), measured interleaved; speed-up "
        f"= DNS (batch {cost['cases']}, per trajectory) / setting. 'as good as Smagorinsky' = ensemble-mean error "
        "and spectrum error at every horizon no larger than Smagorinsky's.",
        "",
        "| setting | NFE / step | cost (s / time unit) | speed-up vs DNS | "
        + " | ".join(f"err t={h}" for h in cfg["horizons"]) + f" | CRPS t={hmax} (± s.e.) | spectrum err t={hmax} | "
        f"spread-skill t={hmax} | as good as Smagorinsky |",
        "|---|---|---|---|" + "---|" * len(cfg["horizons"]) + "---|---|---|---|",
        f"| DNS {nf}², batch {cost['cases']} | - | {_fmt(dns)} | 1 | " + " | ".join("0" for _ in cfg["horizons"])
        + " | 0 | 0 | - | - |",
        f"| DNS {nf}², batch 1 | - | {_fmt(dns1)} | {dns / dns1:.2f} | " + " | ".join("0" for _ in cfg["horizons"])
        + " | 0 | 0 | - | - |",
    ]
    for name, r, c, speed, equal in rows:
        hz = r["horizons"]
        lines.append(f"| {name} | {r['nfe_per_step']:.3g} | {_fmt(c) if c else '-'} | {_fmt(speed)} | "
                     + " | ".join(_fmt(hz[str(h)]["mean_rel_error"]) for h in cfg["horizons"])
                     + f" | {_fmt(hz[hmax]['crps'])} ± {_fmt(hz[hmax].get('crps_se', float('nan')), 2)} | "
                     f"{_fmt(hz[hmax]['spectrum_error'])} | "
                     f"{_fmt(hz[hmax]['spread_skill']) if 'spread_skill' in hz[hmax] else '-'} | "
                     f"{'yes' if equal else 'no'} |")
    good = [(n, r, c, s) for n, r, c, s, e in rows if e and r["nfe_per_step"] > 0]
    best = max(good, key=lambda x: x[3]) if good else None
    ref_crps = roll[ref_name]["horizons"][hmax]["crps"] if ref_name else float("nan")
    low = [(n, r) for n, r, *_ in rows if 0 < r["nfe_per_step"] <= 0.5 and n != ref_name]
    within = [(n, r["horizons"][hmax]["crps"] / ref_crps) for n, r in low]
    lines += [
        "",
        "## Headline",
        "",
        f"* Break-even: one network evaluation costs {_fmt(c_eval * 1e3)} ms per member (batch {cost['batch']}), a "
        f"coarse step {_fmt(c_step * 1e3)} ms per trajectory and the DNS {_fmt(dns_per_step * 1e3)} ms per coarse step "
        f"per trajectory, so a learned closure is cheaper than the DNS below **{_fmt(breakeven)} network evaluations "
        f"per coarse step**, and 5x cheaper below **{_fmt(five)}**.",
    ]
    if best:
        lines.append(f"* Fastest learned stochastic closure at least as accurate as Smagorinsky: **{best[0]}**, "
                     f"{best[1]['nfe_per_step']:.3g} evaluations per step, **{_fmt(best[3])}x cheaper than the DNS** "
                     f"(error at t = {hmax}: {_fmt(best[1]['horizons'][hmax]['mean_rel_error'], 4)} vs Smagorinsky "
                     f"{_fmt(smag_row[hmax]['mean_rel_error'], 4)}).")
    else:
        lines.append("* No learned stochastic closure setting matched Smagorinsky's accuracy at every horizon.")
    margin = [(n, r, c, sp) for n, r, c, sp, e in rows if e and r["nfe_per_step"] > 0 and all(
        r["horizons"][h]["mean_rel_error"] <= 0.98 * smag_row[h]["mean_rel_error"] for h in r["horizons"])]
    if margin:
        m_best = max(margin, key=lambda x: x[3])
        hz = m_best[1]["horizons"][hmax]
        lines.append(f"* Fastest with a margin (ensemble-mean error at least 2 % below Smagorinsky's at every horizon): "
                     f"**{m_best[0]}**, {m_best[1]['nfe_per_step']:.3g} evaluations per step, **{_fmt(m_best[3])}x "
                     f"cheaper than the DNS** (t = {hmax}: error {_fmt(hz['mean_rel_error'], 4)} vs "
                     f"{_fmt(smag_row[hmax]['mean_rel_error'], 4)}, CRPS {_fmt(hz['crps'])} vs "
                     f"{_fmt(smag_row[hmax]['crps'])}, spectrum error {_fmt(hz['spectrum_error'])} vs "
                     f"{_fmt(smag_row[hmax]['spectrum_error'])}).")
    for n, ratio in within:
        lines.append(f"* {n}: CRPS at t = {hmax} is {ratio:.3f}x that of the many-step closure ({ref_name}).")
    # the two goals (5x cheaper than the DNS at Smagorinsky accuracy; <= 0.5 NFE per step within 10 % CRPS)
    learned = [(n, r, c, sp, e) for n, r, c, sp, e in rows if r["nfe_per_step"] > 0]
    fastest = max(learned, key=lambda x: x[3]) if learned else None
    lines += ["", "## Goals", ""]
    if best and best[3] >= 5:
        lines.append(f"* >= 5x cheaper than the DNS at Smagorinsky's accuracy or better: **met** ({best[0]}, "
                     f"{_fmt(best[3])}x).")
    elif best:
        lines.append(f"* >= 5x cheaper than the DNS at Smagorinsky's accuracy or better: **missed**, best "
                     f"{_fmt(best[3])}x ({best[0]}), {_fmt(5 / best[3])}x short.")
    elif fastest:
        def worst(key: str) -> float:
            return max(fastest[1]["horizons"][h][key] / max(smag_row[h][key], 1e-300) for h in fastest[1]["horizons"])
        lines.append(f"* >= 5x cheaper than the DNS at Smagorinsky's accuracy or better: **missed**: no learned setting "
                     f"is as accurate as Smagorinsky at every horizon; the fastest learned setting ({fastest[0]}, "
                     f"{_fmt(fastest[3])}x) has up to {_fmt(worst('mean_rel_error'))}x Smagorinsky's ensemble-mean "
                     f"error and {_fmt(worst('spectrum_error'))}x its spectrum error.")
    caveats = _caveats(rows, roll, smag_row, hmax, cost, best)
    ok2 = [(n, q) for n, q in within if q <= 1.1]
    if ok2:
        lines.append("* <= 0.5 network evaluations per step with CRPS within 10 % of the many-step closure: **met** by "
                     + ", ".join(f"{n} ({q:.3f}x)" for n, q in ok2) + ".")
    elif within:
        n, q = min(within, key=lambda x: x[1])
        lines.append(f"* <= 0.5 network evaluations per step with CRPS within 10 % of the many-step closure: "
                     f"**missed**, closest {n} at {q:.3f}x ({100 * (q - 1.1):.1f} points over the 10 % margin).")
    if not quick:
        caveats.append(WIDENED_TEST_SET)
    lines += ["", "## Caveats", ""] + caveats
    lines.append("")
    out_md.write_text("\n".join(lines) + "\n")
    payload = {"quick": quick, "info": info, "settings": cfg, "dt": dt, "smagorinsky": smag, "ar1": ar1,
               "train": {k: v for k, v in train.items() if k != "history"},
               "distill": {k: v for k, v in distill.items() if k != "history"}, "offline": offline,
               "rollouts": roll, "cost": cost, "breakeven_nfe_per_step": breakeven, "five_x_nfe_per_step": five,
               "best": None if best is None else {"setting": best[0], "speedup": best[3],
                                                  "nfe_per_step": best[1]["nfe_per_step"]},
               "crps_ratio_vs_many_step": dict(within)}
    out_md.with_suffix(".json").write_text(json.dumps(payload, indent=1, sort_keys=True) + "\n")
    return payload


def _caveats(rows: list[Any], roll: dict[str, Any], smag_row: dict[str, Any], hmax: str, cost: dict[str, Any],
             best: Any) -> list[str]:
    """Statistical and practical limits of the table, computed from it."""
    learned = [(n, r) for n, r, *_ in rows if r["nfe_per_step"] > 0]
    out = []
    if learned:
        crps = [r["horizons"][hmax]["crps"] for _, r in learned]
        se = max(r["horizons"][hmax].get("crps_se", 0.0) for _, r in learned)
        out.append(f"* Sampling noise: the CRPS of the learned settings at t = {hmax} spans {_fmt(min(crps))}-"
                   f"{_fmt(max(crps))}, while its standard error over the {roll['no closure']['cases']} test cases is "
                   f"about {_fmt(se, 2)}: differences between samplers and policies are within one or two standard "
                   "errors; the CRPS gain over Smagorinsky is about two, only the gap to no closure is clearly larger.")
        ss = [(n, r["horizons"][hmax].get("spread_skill")) for n, r in learned]
        ss = [(n, v) for n, v in ss if v is not None]
        if ss:
            lo, hi = min(ss, key=lambda x: x[1]), max(ss, key=lambda x: x[1])
            out.append(f"* Every ensemble is under-dispersed (spread-skill at t = {hmax} from {_fmt(lo[1], 2)}, "
                       f"{lo[0]}, to {_fmt(hi[1], 2)}, {hi[0]}; 1 is calibrated): the learned closure's uncertainty "
                       "spreads the trajectories much less than their error grows. Drawing a fresh closure every step "
                       "averages the closure noise out in time; holding a draw for several steps keeps more spread.")
    if best:
        e_b = roll[best[0]]["horizons"][hmax]
        out.append(f"* Against Smagorinsky the gain is mostly in the spectrum ({_fmt(e_b['spectrum_error'])} vs "
                   f"{_fmt(smag_row[hmax]['spectrum_error'])}) and the CRPS ({_fmt(e_b['crps'])} vs "
                   f"{_fmt(smag_row[hmax]['crps'])}); the ensemble-mean error is no more than slightly lower "
                   f"({_fmt(e_b['mean_rel_error'], 4)} vs {_fmt(smag_row[hmax]['mean_rel_error'], 4)}, standard error "
                   f"{_fmt(e_b.get('mean_rel_error_se', float('nan')), 2)}).")
        m = cost["members"]
        out.append(f"* Costs are per trajectory (per member). A {m}-member ensemble of {best[0]} costs {m}x as much, "
                   f"{_fmt(best[3] / m)}x cheaper than one DNS trajectory.")
    out.append(f"* Most of the margin comes from the time step: the DNS is held to dt = {cost['dt_dns']:g} by the "
               "stability limit dt |u|^2 < 2 nu of its explicit advection (a wavenumber-independent limit; above it the "
               "fastest growth is at the finest resolved scales, which 256² keeps and 32² does not), while the "
               f"coarse model runs accurately at dt = {cost['dt_coarse']:g}; with equal time steps the break-even "
               "number of evaluations per step would be 10x smaller.")
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny smoke run of every stage (< 1 minute)")
    p.add_argument("--work", type=Path, default=None, help="cache directory (default benchmarks/work/closure_vs_dns)")
    p.add_argument("--out", type=Path, default=None, help="results markdown (JSON twin next to it)")
    p.add_argument("--until", default=None, help="stop after this stage (data, train, distill, ...)")
    args = p.parse_args(argv)
    from stochclosure.perf import tune_allocator

    allocator = tune_allocator()
    torch.set_num_threads(1)
    quick = args.quick
    cfg = settings(quick)
    work = args.work or (WORK / "quick" if quick else WORK)
    work.mkdir(parents=True, exist_ok=True)
    out_md = args.out or (RESULTS / ("closure_vs_dns_quick.md" if quick else "closure_vs_dns.md"))
    info = {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "torch": torch.__version__,
            "allocator": allocator, "python": platform.python_version()}
    system = _system(quick)
    h5 = stage_data(work, quick)
    if args.until == "data":
        return {}
    train = load_split(h5, "train")
    test = load_split(h5, "test")
    cs = stage_smagorinsky(work, train)
    dtc = stage_dt(work, system, train, cs, cfg)["dt"]
    _log(f"coarse dt = {dtc}, c_s = {cs:.3f}")
    teacher_ckpt = stage_train(work, h5, train, cfg)
    if args.until == "train":
        return {}
    student_ckpt = stage_distill(work, h5, teacher_ckpt, cfg)
    if args.until == "distill":
        return {}
    from stochclosure.checkpoint import load_model
    from stochclosure.systems.subgrid import SmagorinskyClosure

    teacher, student = load_model(teacher_ckpt), load_model(student_ckpt)
    smag = SmagorinskyClosure(cs)
    ar1 = stage_ar1(work, train, dtc, cfg["ar_every"])
    stage_offline(work, teacher, student, test, cfg)
    stage_rollouts(work, system, teacher, student, smag, test, dtc, cfg, ar1)
    stage_cost(work, system, teacher, student, smag, test, dtc, cfg, ar1)
    payload = report(work, out_md, quick, info)
    _log(f"wrote {out_md}")
    return payload


if __name__ == "__main__":
    main(sys.argv[1:])
