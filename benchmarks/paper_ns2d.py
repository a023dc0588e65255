"""The reduced-scale reference experiment, end to end: generate -> train -> evaluate.

REFERENCE §4/§5 on a CPU: simulate the stochastic Navier–Stokes system at 64^2, train closures
at 32^2, test at 32^2, 64^2 and 128^2 with the same 16x16 physical measurement points, and
compare with the paper's numbers. Every stage is resumable: data generation and training resume
from their own checkpoints, evaluations are cached per model in the work folder.

The ``online`` stage needs no training: with ``--pretrained ns2d_G_sparse_32`` (the shipped
G_sparse_interp model) it regenerates only the starts of the validation and test trajectories of
``configs/paper/ns2d_data.yaml`` (about 2 minutes on one core), fits the forcing scale of the
calibrated policy on validation cases, and compares on the test cases the committed policy (a
fresh draw every 10 steps, held), the calibrated one (a draw every 5 steps plus fresh forcing of
the system's noise law each step), the learned draw with the physics closure between draws (its
between-draw forcing scale fitted on validation too, ``physics_between_cal``), the physics closure
(also with its forcing scale fitted on validation, ``physics_cal``: the simple baseline) and no
closure. Each run is cached in
``work/online_cases/``; ``--val-cases`` / ``--test-cases`` split the work between processes.
Measured: 6 to 13 minutes of wall time per learned-closure run of 10 time units with 4 members
(1 thread, nice, on a 2-core machine shared by other jobs, load 10-16), 20-30 s for the
references; the starts take 2 minutes (35 s at load 7). The fitted between-draw run took 7 minutes
per case (four in parallel), the fitted physics-alone run under a minute.

Usage:
    python benchmarks/paper_ns2d.py [--quick] [--models G_sparse_interp,...] [--stages generate,train,evaluate]
    python benchmarks/paper_ns2d.py [--quick] --stages online --pretrained ns2d_G_sparse_32 [--members 8]

Writes ``benchmarks/results/paper_ns2d.md`` and ``paper_ns2d.json`` (``*_quick.*`` with ``--quick``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs" / "paper"
MODELS = ["G_sparse_interp", "G_sparse_smooth", "G_noobs", "H_sparse_interp"]
PAPER = {  # REFERENCE §4, relative Frobenius error, trained at 64^2, tested at 64^2 / 128^2 / 256^2
    "G_sparse_interp": [0.092, 0.130, 0.166],
    "G_sparse_smooth": [0.093, 0.111, 0.135],
    "H_sparse_interp": [0.040, 0.058, 0.071],
}
EARLIER = (" — from the earlier run (its trained checkpoints and data are not on disk; not regenerated, "
           "kept as committed)")
PAPER_ONLINE = {"with learned G": {35: 0.011, 40: 0.039, 45: 0.063, 50: 0.063},
                "without G": {35: 0.24, 40: 0.58, 45: 0.92, 50: 1.03}}


def sh(*args: str) -> None:
    """Run a stochclosure command single-threaded (fastest for these sizes on a shared 2-core machine)."""
    print("+", " ".join(args), flush=True)
    subprocess.run(args, check=True, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"})


def quick_data_config(src: Path, dst: Path, **over: Any) -> Path:
    cfg = yaml.safe_load(src.read_text())
    cfg.update(over)
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_text(yaml.safe_dump(cfg))
    return dst


def train_config(model: str, work: Path, data: Path, quick: bool) -> Path:
    cfg = yaml.safe_load((CONFIGS / f"train_{model}.yaml").read_text())
    cfg["data"]["path"] = str(data)
    cfg["out"] = str(work / "runs" / model)
    if quick:
        cfg["trainer"].update(max_steps=40, val_every=20, checkpoint_every=20, warmup_steps=5, batch_size=16)
    path = work / "configs" / f"train_{model}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg))
    return path


def load_records(path: Path, res: int, closure: str, split: int, n: int, stride: int = 1) -> dict[str, torch.Tensor]:
    import h5py

    with h5py.File(path, "r") as f:
        trajs = [i for i, s in enumerate(f["split"][:]) if s == split]
        idx = list(range(0, f["time"].shape[0], stride))
        pick = [(tr, r) for tr in trajs for r in idx][:n]
        get = lambda key: torch.stack([torch.from_numpy(f[key][tr, r]) for tr, r in pick]).float()  # noqa: E731
        return {"state": get(f"res_{res}/state"), "target": get(f"res_{res}/{closure}"),
                "obs_values": get(f"obs/{closure}"), "obs_points": torch.from_numpy(f["obs_points"][:]).float()}


def sample_errors(model: Any, data: dict[str, torch.Tensor], n: int, seed: int = 0, **kw: Any) -> dict[str, float]:
    import stochclosure as sc
    from stochclosure import metrics

    cond = sc.Conditioning(fields=data["state"], obs_values=data["obs_values"], obs_points=data["obs_points"])
    t0 = time.perf_counter()
    with torch.inference_mode():
        u = model.sample(cond, n=n, generator=torch.Generator().manual_seed(seed), **kw)
    dt = time.perf_counter() - t0
    tr = data["target"]
    return {"rel_fro_single": float(metrics.relative_frobenius_error(u[0], tr).mean()),
            "rel_fro_mean": float(metrics.relative_frobenius_error(u.mean(0), tr).mean()),
            "mse_single": float(metrics.mse(u[0], tr)), "crps": float(metrics.crps_ensemble(u, tr).mean()),
            "seconds": dt}


def evaluate_offline(model_name: str, work: Path, quick: bool) -> dict[str, Any]:
    from stochclosure.checkpoint import load_model

    run = work / "runs" / model_name
    model = load_model(run / (run / "latest").read_text().strip())
    closure = model_name.split("_")[0]
    out: dict[str, Any] = {}
    sets = {"32 (64^2 runs)": (work / "ns2d_data.h5", 32, 2)}
    for res in (32, 64, 128):
        sets[f"{res} (128^2 runs)"] = (work / "ns2d_test128.h5", res, 2)
    for label, (path, res, split) in sets.items():
        # fewer conditions on finer grids keep the cost per set about equal (16 samples each)
        n_rec = 6 if quick else {32: 32, 64: 16, 128: 8}[res]
        data = load_records(path, res, closure, split, n_rec, stride=1 if quick else 12)
        out[label] = sample_errors(model, data, 16)
        out[label]["conditions"] = n_rec
    return out


def evaluate_samplers(work: Path, quick: bool) -> dict[str, Any]:
    from stochclosure.checkpoint import load_model

    run = work / "runs" / "G_sparse_interp"
    model = load_model(run / (run / "latest").read_text().strip())
    data = load_records(work / "ns2d_data.h5", 32, "G", 2, 4 if quick else 8, stride=25)
    em_steps = 50 if quick else 1000
    settings = {
        f"Euler-Maruyama, {em_steps} steps": {"sampler": {"type": "euler_maruyama", "steps": em_steps}},
        "research: truncated-start Karras EM, 10 steps": {"sampler": {"type": "truncated_karras_em", "data_std": 1.0}},
        "EDM Heun, 4 steps": {"sampler": {"type": "edm_heun", "steps": 4}},
        "DPM-Solver++(2M), 5 steps": {"sampler": {"type": "dpm_solver_pp_2m", "steps": 5}},
        "DPM-Solver++(2M), 9 steps": {"sampler": {"type": "dpm_solver_pp_2m", "steps": 9}},
    }
    import stochclosure as sc

    out = {}
    for label, kw in settings.items():
        r = sample_errors(model, data, 8, **kw)
        r["nfe"] = sc.resolve("sampler", kw["sampler"]).nfe()
        out[label] = r
    return out


def evaluate_online(work: Path, quick: bool, members: int = 16, model_name: str = "G_sparse_interp") -> dict[str, Any]:
    import h5py

    from stochclosure import metrics
    from stochclosure.checkpoint import load_model
    from stochclosure.cli.demo import _truth_run
    from stochclosure.rollouts import StreamedObservations, ensemble, rollout
    from stochclosure.systems.navier_stokes import NavierStokes2D, coarsen

    run = work / "runs" / model_name
    model = load_model(run / (run / "latest").read_text().strip())
    with h5py.File(work / "ns2d_data.h5", "r") as f:
        test = [i for i, s in enumerate(f["split"][:]) if s == 2][0]
        w0 = torch.from_numpy(f["res_64/state"][test, 0]).double()[None]
        t_start = float(f["time"][0])
        sys_cfg = {k: v for k, v in json.loads(f.attrs["system_config"]).items() if k not in ("type", "closure")}
    fine = NavierStokes2D(**sys_cfg)
    coarse = NavierStokes2D(**{**sys_cfg, "n": 32, "closure": "G"})
    horizon = 0.5 if quick else 10.0
    n_steps, rec = int(round(horizon / fine.dt)), 50 if quick else 500
    truth = _truth_run(fine, w0, n_steps, 32, "G", 16, rec, 7, True)
    axes = torch.arange(16, dtype=torch.float32) / 16
    points = torch.stack(torch.meshgrid(axes, axes, indexing="ij"), -1).reshape(-1, 2)
    v0 = coarsen(w0, 32, "stride")[0].float()
    t0 = time.perf_counter()
    with torch.inference_mode():
        ens = ensemble(coarse, model, v0, n_steps, members, seed=0, resample_every=10,
                       observations=StreamedObservations(truth["obs"][:, 0], points),
                       sampler={"type": "dpm_solver_pp_2m", "steps": 5}, record_every=rec, progress=True, t0=t_start)
    t_cl = time.perf_counter() - t0
    t0 = time.perf_counter()
    base = rollout(coarse, None, v0, n_steps, record_every=rec, t0=t_start)
    t_base = time.perf_counter() - t0
    tr, mem = truth["states"], ens.members.float()
    _, e_truth = metrics.energy_spectrum(tr[-1, 0])
    _, e_mem = metrics.energy_spectrum(mem[-1, :, 0])
    _, e_base = metrics.energy_spectrum(base.states[-1].float()[0])
    return {
        "times": [float(t) for t in ens.times],
        "rel_error_ensemble_mean": [float(v) for v in metrics.relative_frobenius_error(mem.mean(1), tr)[:, 0]],
        "rel_error_members_median": [float(v) for v in
                                     metrics.relative_frobenius_error(mem, tr[:, None].expand_as(mem))[..., 0].median(1).values],
        "rel_error_no_closure": [float(v) for v in metrics.relative_frobenius_error(base.states.float(), tr)[:, 0]],
        "crps": [float(v) for v in metrics.crps_ensemble(mem, tr, member_dim=1).mean((-1, -2, -3))],
        "spread_skill_ratio": float(metrics.spread_skill_ratio(mem[1:], tr[1:], member_dim=1)),
        "rank_histogram": [int(c) for c in metrics.rank_histogram(mem[1:].movedim(1, 0), tr[1:])],
        "energy_spectrum_end": {"truth": e_truth.tolist(), "ensemble_mean_of_spectra": e_mem.mean(0).tolist(),
                                "no_closure": e_base.tolist()},
        "seconds": {"closure_ensemble": t_cl, "no_closure": t_base, "members": members, "steps": n_steps},
    }


def evaluate_oracle(work: Path, quick: bool, hold: int = 10) -> dict[str, Any]:
    """The error floor of the reduced model: the *true* G fed every step, and held ``hold`` steps.

    Same truth run as :func:`evaluate_online` (same initial state and noise seed). Whatever error
    remains with the true closure is structural (discretisation, holding), not closure uncertainty.
    """
    import h5py

    from stochclosure import metrics
    from stochclosure.systems.navier_stokes import NavierStokes2D, coarsen

    with h5py.File(work / "ns2d_data.h5", "r") as f:
        test = [i for i, s in enumerate(f["split"][:]) if s == 2][0]
        w0 = torch.from_numpy(f["res_64/state"][test, 0]).double()[None]
        sys_cfg = {k: v for k, v in json.loads(f.attrs["system_config"]).items() if k not in ("type", "closure")}
    fine = NavierStokes2D(**sys_cfg)
    coarse = NavierStokes2D(**{**sys_cfg, "n": 32, "closure": "G"})
    horizon = 0.5 if quick else 10.0
    n_steps, rec = int(round(horizon / fine.dt)), 50 if quick else 500
    gen = torch.Generator().manual_seed(7)
    w = w0
    v = {"true G every step": coarsen(w0, 32, "stride"), f"true G held {hold} steps": coarsen(w0, 32, "stride")}
    held = None
    err: dict[str, list[float]] = {k: [0.0] for k in v}
    for step in range(n_steps):
        w, clos = fine.full_step_with_closures(w, generator=gen)
        g = coarsen(clos["G"], 32, "stride")
        held = g if step % hold == 0 else held
        for k, u in (("true G every step", g), (f"true G held {hold} steps", held)):
            v[k] = coarse.step(v[k], u)
        if (step + 1) % rec == 0:
            truth = coarsen(w, 32, "stride")
            for k in v:
                err[k].append(float(metrics.relative_frobenius_error(v[k].float(), truth.float())[0]))
    return err


# -- online evaluation over held-out cases with the shipped pretrained closure -------------------------
#: Policies of the online comparison. ``held``: the committed policy (a fresh draw every 10 steps,
#: DPM-Solver++(2M) 5 steps = 6 network evaluations, held unchanged). ``calibrated``: a draw every 5
#: steps (2 sampler steps = 3 evaluations, the same 0.6 per step) plus fresh forcing of the system's
#: noise law on the held draw at every step (``stochclosure.cli.demo.forcing_policy``), its scale
#: fitted on the validation cases (:func:`fit_forcing_scale`); ``trial`` is that policy at the trial
#: scale the fit starts from (validation only).
HELD = {"resample_every": 10, "sampler_steps": 5, "forcing_scale": 0.0}
CALIBRATED = {"resample_every": 5, "sampler_steps": 2}
TRIAL_SCALE = 2.5  # the demo's value (a 2-time-unit horizon); the fit rescales it for 10 time units


#: A parameter-free alternative, fixed before any test run: the learned draw at the draw steps
#: (every 5 steps, 3 evaluations) and, at the steps between, the physics closure of G with the
#: system's own forcing law, ``nu Lap w + 2 sigma dW`` (fresh dW, scale 1).
PHYSICS_BETWEEN = {**CALIBRATED, "forcing_scale": 1.0, "between": "physics"}
#: ``physics_between_cal``: the same policy with its between-draw forcing ``scale * 2 sigma dW``
#: scaled for spread-skill 1, fitted (:func:`fit_forcing_scale`, trial scale 1) on the validation
#: runs of :data:`PHYSICS_BETWEEN` alone and written to ``calibration_between.json`` before any of
#: its test runs (which wait for it).
OPTIONAL_RUNS = {"physics_between", "physics_between_cal", "physics_cal"}
#: The simple baseline of the same fit: the physics closure alone (no network, no measurements) with
#: its forcing ``scale * 2 sigma dW``, the scale fitted on its validation runs at scale 1
#: (``calibration_physics.json``, before any of its test runs).
PHYSICS_ALONE = {"physics_scale": 1.0}


def physics_between_draws(coarse: Any, scale: float = 1.0) -> Any:
    """A between-draw policy: the learned draw at the draw steps; between them the physics closure
    ``nu Lap w + scale * 2 sigma dW`` of the current state with fresh ``dW`` of the system's law.

    The closure ``G = nu Lap w + 2 sigma dW`` of a held draw repeats its forcing realisation; here
    each step between draws gets its own, unknown to the measurements of the draw step, so the
    draw contributes the measured forcing of its own step only.
    """
    from dataclasses import dataclass

    from stochclosure.cli.demo import forcing_policy
    from stochclosure.rollouts.carry import PolicyState
    from stochclosure.rollouts.policies import ClosureAR1

    @dataclass(frozen=True)
    class PhysicsBetweenDraws(ClosureAR1):
        system: Any = None

        def closure(self, ctx: Any, carry: Any, step: int) -> tuple[torch.Tensor, Any]:
            held = carry.policy.held
            if ctx.draws_at(step, held):
                held = ctx.draw(step, ctx.condition(carry, step))
                return held, PolicyState(held=held)
            w = carry.state
            xi = self._innovation(ctx, step, tuple(w.shape[len(ctx.batch):]))
            drift = self.system.closure_terms(w.reshape(-1, *w.shape[-3:]))["G"].reshape(w.shape)
            return (drift + self.sigma * xi).to(held.dtype), PolicyState(held=held)

    white = forcing_policy(coarse, scale)
    return PhysicsBetweenDraws(phi=0.0, sigma=white.sigma, spectrum=white.spectrum, system=coarse)


def generate_starts(data_cfg: Path, work: Path, starts: tuple[int, ...]) -> dict[str, Any]:
    """Fine-grid states of the validation and test trajectories of ``data_cfg`` at records ``starts``.

    Exactly the states ``stochclosure generate --config data_cfg`` stores as ``res_<n>/state``
    (same batches, batch seeds, initial fields and noise stream), without the other trajectories'
    work: every batch draws its full noise, but only its validation and test members are stepped.
    Cached in ``work/ns2d_starts.pt``.

    Returns:
        ``{"val" | "test": [{"traj", "record", "time", "state" (1, 1, n, n) float64}], "system": {...}}``.
    """
    from stochclosure.data.generate import _split_array, batch_seed
    from stochclosure.systems.navier_stokes import NavierStokes2D

    path = work / "ns2d_starts.pt"
    if path.is_file():
        return torch.load(path, weights_only=True)
    cfg = yaml.safe_load(data_cfg.read_text())
    sys_cfg = cfg["system"]
    labels = _split_array(cfg["trajectories"], cfg["split"], cfg.get("seed", 0))
    out: dict[str, Any] = {"val": [], "test": [], "system": dict(sys_cfg)}
    bsz = cfg["batch_size"]
    for g in range(-(-cfg["trajectories"] // bsz)):
        size = min(bsz, cfg["trajectories"] - g * bsz)
        keep = [i for i in range(size) if labels[g * bsz + i] in (1, 2)]
        if not keep:
            continue
        system = NavierStokes2D(**sys_cfg)
        idx = torch.tensor(keep)
        system._noise_block = (lambda batch, _s=system, _n=size, _i=idx, **kw:  # type: ignore[method-assign]
                               NavierStokes2D._noise_block(_s, _n, **kw)[_i])
        gen = torch.Generator().manual_seed(batch_seed(cfg.get("seed", 0), g))
        w = system.initial_state(size, generator=gen, dtype=torch.float64)[idx]
        step = 0
        for r in sorted(starts):
            target = cfg["spinup_steps"] + r * cfg["record_every"]
            w = system.simulate(w, target - step, generator=gen)
            step = target
            for j, i in enumerate(keep):
                out["val" if labels[g * bsz + i] == 1 else "test"].append(
                    {"traj": g * bsz + i, "record": r, "time": step * sys_cfg["dt"], "state": w[j:j + 1].clone()})
    for split in ("val", "test"):
        out[split].sort(key=lambda c: (c["record"], c["traj"]))
    tmp = path.with_suffix(".tmp")
    torch.save(out, tmp)
    os.replace(tmp, path)
    return out


def _ensemble_scores(mem: torch.Tensor, tr: torch.Tensor) -> dict[str, Any]:
    """Scores of an ensemble ``mem`` ``(T, M, 1, n, n)`` against the truth ``tr`` ``(T, 1, n, n)`` (t > 0)."""
    from stochclosure import metrics

    mem, tr = mem.double(), tr.double()
    return {
        "err_mean": [float(v) for v in metrics.relative_frobenius_error(mem.mean(1), tr)[:, 0]],
        "crps": [float(v) for v in metrics.crps_ensemble(mem, tr, member_dim=1).mean((-1, -2, -3))],
        "spread2": [float(v) for v in mem.var(1, unbiased=True).mean((-1, -2, -3))],
        "mse": [float(v) for v in (mem.mean(1) - tr).pow(2).mean((-1, -2, -3))],
        "ratio": float(metrics.spread_skill_ratio(mem[1:], tr[1:], member_dim=1)),
        "rank_histogram": [int(c) for c in metrics.rank_histogram(mem[1:].movedim(1, 0), tr[1:],
                                                                   generator=torch.Generator().manual_seed(0))],
        "members": mem.shape[1],
    }


def _learned_run(model: Any, coarse: Any, v0: torch.Tensor, truth: dict[str, torch.Tensor], policy: dict[str, Any],
                 n_steps: int, members: int, rec: int, t_start: float, seed: int) -> dict[str, Any]:
    """One learned-closure ensemble under ``policy`` (``resample_every``, ``sampler_steps``, ``forcing_scale``)."""
    from stochclosure.cli.demo import forcing_policy
    from stochclosure.rollouts import StreamedObservations, ensemble

    axes = torch.arange(16, dtype=torch.float32) / 16
    points = torch.stack(torch.meshgrid(axes, axes, indexing="ij"), -1).reshape(-1, 2)
    t0 = time.perf_counter()
    with torch.inference_mode():
        ens = ensemble(coarse, model, v0, n_steps, members, seed=seed, resample_every=policy["resample_every"],
                       between=(physics_between_draws(coarse, policy["forcing_scale"])
                                if policy.get("between") == "physics" else forcing_policy(coarse, policy["forcing_scale"])),
                       observations=StreamedObservations(truth["obs"][:, 0], points),
                       sampler={"type": "dpm_solver_pp_2m", "steps": policy["sampler_steps"]},
                       record_every=rec, t0=t_start)
    out = _ensemble_scores(ens.members.float(), truth["states"])
    out.update(seconds=time.perf_counter() - t0, nfe_per_step=(policy["sampler_steps"] + 1) / policy["resample_every"],
               policy=dict(policy), times=[float(t) for t in ens.times])
    return out


def _physics_run(sys_cfg: dict[str, Any], v0: torch.Tensor, truth: dict[str, torch.Tensor], scale: float,
                 n_steps: int, members: int, rec: int) -> dict[str, Any]:
    """The physics closure ensemble ``nu Lap w + scale * 2 sigma dW`` (seed 1, as the reference row)."""
    from stochclosure.cli.demo import _physics_ensemble
    from stochclosure.systems.navier_stokes import NavierStokes2D

    coarse = NavierStokes2D(**{**sys_cfg, "n": 32, "sigma": sys_cfg["sigma"] * scale})
    t0 = time.perf_counter()
    phys = _physics_ensemble(coarse, v0, n_steps, members, rec, 1)
    return {**_ensemble_scores(phys, truth["states"]), "seconds": time.perf_counter() - t0, "nfe_per_step": 0.0,
            "policy": {"physics_scale": scale}}


def _reference_runs(coarse: Any, v0: torch.Tensor, truth: dict[str, torch.Tensor], n_steps: int, members: int,
                    rec: int, t_start: float, seed: int) -> dict[str, Any]:
    """No closure, the physics closure ensemble, and the true closure held 10 steps / fed every step."""
    from stochclosure import metrics
    from stochclosure.cli.demo import _physics_ensemble, _true_closure_run
    from stochclosure.rollouts import rollout

    tr = truth["states"]
    t0 = time.perf_counter()
    run = rollout(coarse, None, v0, n_steps, record_every=rec, t0=t_start)
    base = run.states.float()
    out: dict[str, Any] = {"no closure": {"err_mean": [float(v) for v in metrics.relative_frobenius_error(base, tr)[:, 0]],
                                          "seconds": time.perf_counter() - t0, "nfe_per_step": 0.0,
                                          "times": [float(t) for t in run.times]}}
    t0 = time.perf_counter()
    phys = _physics_ensemble(coarse, v0, n_steps, members, rec, seed)
    out["physics"] = {**_ensemble_scores(phys, tr), "seconds": time.perf_counter() - t0, "nfe_per_step": 0.0}
    for name, hold in (("true G held 10 steps", 10), ("true G every step", 1)):
        states = _true_closure_run(coarse, v0, truth["closures"], hold, rec)
        out[name] = {"err_mean": [float(v) for v in metrics.relative_frobenius_error(states, tr)[:, 0]]}
    return out


def online_case(model: Any, case: dict[str, Any], system: dict[str, Any], runs: dict[str, dict[str, Any] | None],
                folder: Path, tag: str, quick: bool, members: int, truth_seed: int = 7) -> dict[str, Any]:
    """Score the ``runs`` (a learned policy, or ``None`` for the references) on one case, cached per run.

    The truth is the full model on the fine grid from the case's state with noise seed
    ``truth_seed`` (the committed single-case run used seed 7 too); every learned ensemble uses
    seed 0, the physics ensemble seed 1. Each run is written to ``folder/<tag>_<run>.json`` as it
    finishes, so an interrupted evaluation resumes and separate processes can share the work.
    """
    from stochclosure.cli.demo import _truth_run
    from stochclosure.systems.navier_stokes import NavierStokes2D, coarsen

    files = {name: folder / f"{tag}_{name}.json" for name in runs}
    todo = [name for name, f in files.items() if not f.is_file()]
    if todo:
        sys_cfg = {k: v for k, v in system.items() if k not in ("type", "closure")}
        fine = NavierStokes2D(**sys_cfg)
        coarse = NavierStokes2D(**{**sys_cfg, "n": 32, "closure": "G"})
        horizon = 0.5 if quick else 10.0
        n_steps, rec = int(round(horizon / fine.dt)), 50 if quick else 500
        truth = _truth_run(fine, case["state"], n_steps, 32, "G", 16, rec, truth_seed, False)
        v0 = coarsen(case["state"], 32, "stride")[0].float()
        for name in todo:
            policy = runs[name]
            r = (_reference_runs(coarse, v0, truth, n_steps, members, rec, case["time"], 1) if policy is None else
                 _physics_run(sys_cfg, v0, truth, policy["physics_scale"], n_steps, members, rec)
                 if "physics_scale" in policy else
                 _learned_run(model, coarse, v0, truth, policy, n_steps, members, rec, case["time"], 0))
            r["case"] = {k: v for k, v in case.items() if k != "state"}
            folder.mkdir(parents=True, exist_ok=True)
            tmp = files[name].with_suffix(".tmp")
            tmp.write_text(json.dumps(r))
            os.replace(tmp, files[name])
            print(f"  {tag} {name} done", flush=True)
    return {name: json.loads(f.read_text()) for name, f in files.items()}


def fit_forcing_scale(trials: list[dict[str, Any]], trial_scale: float) -> dict[str, Any]:
    """The forcing scale for spread-skill 1, from validation runs at ``trial_scale``.

    With ``M`` members the spread ``S`` grows in proportion to the forcing scale, and the error of
    the ensemble mean is ``E^2 = E0^2 + S^2 / M`` (``E0``: the error every member shares). The
    ratio ``sqrt((M + 1) / M) S / E`` is 1 where ``S = E0``, i.e. at ``trial_scale * E0 / S``
    (``S^2``, ``E^2``: pooled over the validation cases and the recorded times ``t > 0``).
    """
    m = trials[0]["members"]
    s2 = sum(sum(r["spread2"][1:]) for r in trials) / sum(len(r["spread2"]) - 1 for r in trials)
    e2 = sum(sum(r["mse"][1:]) for r in trials) / sum(len(r["mse"]) - 1 for r in trials)
    e02 = max(e2 - s2 / m, 1e-30)
    return {"trial_scale": trial_scale, "forcing_scale": round(trial_scale * (e02 / s2) ** 0.5, 2),
            "trial_ratio_pooled": ((m + 1) / m * s2 / e2) ** 0.5, "cases": len(trials), "members": m,
            "trial_ratios": [r["ratio"] for r in trials]}


def evaluate_online_cases(work: Path, data_cfg: Path, quick: bool, pretrained: str, wanted: list[str],
                          members: int = 4, n_val: int = 1, only: dict[str, list[int]] | None = None
                          ) -> dict[str, Any]:
    """Validation fit and test comparison of the online policies with a shipped pretrained closure.

    ``wanted`` runs among ``trial`` (validation, trial scale), ``held``, ``references``,
    ``calibrated`` (test), ``physics_between`` (test), ``confirm`` (validation, fitted scale) and
    ``physics_between_val`` (validation); ``only`` restricts the
    ``"val"`` / ``"test"`` case indices this process works on (several processes can share the
    work folder). The fit is written to ``online_cases/calibration.json`` from the trial runs of
    all validation cases alone, before any calibrated test run (which waits for it).
    """
    from stochclosure.pretrained import load_pretrained

    starts = generate_starts(data_cfg, work, (0,))
    model = load_pretrained(pretrained)
    folder = work / "online_cases"
    val, test = starts["val"][:1 if quick else n_val], starts["test"][:1 if quick else None]
    pick = {k: set((only or {}).get(k, range(len(v)))) for k, v in (("val", val), ("test", test))}
    if "trial" in wanted:
        for i, case in enumerate(val):
            if i in pick["val"]:
                online_case(model, case, starts["system"], {"trial": {**CALIBRATED, "forcing_scale": TRIAL_SCALE}},
                            folder, f"val{i}", quick, members)
    cal = _calibration(folder, len(val), wait="calibrated" in wanted or "confirm" in wanted)
    fitted = None if cal is None else {**CALIBRATED, "forcing_scale": cal["forcing_scale"]}
    if "physics_between_val" in wanted:  # the trial runs of the between-draw fit
        for i, case in enumerate(val):
            if i in pick["val"]:
                online_case(model, case, starts["system"], {"physics_between": PHYSICS_BETWEEN}, folder, f"val{i}",
                            quick, members)
    cal_b = _calibration(folder, len(val), wait=bool({"physics_between_cal", "physics_between_cal_val"} & set(wanted)),
                         trial="physics_between", trial_scale=PHYSICS_BETWEEN["forcing_scale"],
                         name="calibration_between.json")
    fitted_b = None if cal_b is None else {**PHYSICS_BETWEEN, "forcing_scale": cal_b["forcing_scale"]}
    if "physics_val" in wanted:  # the trial runs of the physics-alone fit
        for i, case in enumerate(val):
            if i in pick["val"]:
                online_case(model, case, starts["system"], {"physics": PHYSICS_ALONE}, folder, f"val{i}", quick, members)
    cal_p = _calibration(folder, len(val), wait=bool({"physics_cal", "physics_cal_val"} & set(wanted)),
                         trial="physics", trial_scale=1.0, name="calibration_physics.json")
    fitted_p = None if cal_p is None else {"physics_scale": cal_p["forcing_scale"]}
    for i, case in enumerate(test):
        runs: dict[str, Any] = {k: v for k, v in (("held", HELD), ("references", None),
                                                  ("physics_between", PHYSICS_BETWEEN)) if k in wanted}
        if fitted is not None and "calibrated" in wanted:
            runs["calibrated"] = fitted
        if fitted_b is not None and "physics_between_cal" in wanted:
            runs["physics_between_cal"] = fitted_b
        if fitted_p is not None and "physics_cal" in wanted:
            runs["physics_cal"] = fitted_p
        if i in pick["test"]:
            online_case(model, case, starts["system"], runs, folder, f"test{i}", quick, members)
    checks = {k: v for k, v in (("calibrated", fitted), ("physics_between_cal", fitted_b), ("physics_cal", fitted_p))
              if v is not None and {"calibrated": "confirm", "physics_between_cal": "physics_between_cal_val",
                                    "physics_cal": "physics_cal_val"}[k] in wanted}
    for i, case in enumerate(val):
        if i in pick["val"] and checks:
            online_case(model, case, starts["system"], checks, folder, f"val{i}", quick, members)
    out = collect_online_cases(folder, pretrained, cal)
    out["calibration_between"], out["calibration_physics"] = cal_b, cal_p
    return out


def _calibration(folder: Path, n_val: int, wait: bool, trial: str = "trial", trial_scale: float = TRIAL_SCALE,
                 name: str = "calibration.json") -> dict[str, Any] | None:
    """The fitted forcing scale (fitted once from the validation runs ``val<i>_<trial>`` at
    ``trial_scale`` and written to ``name``); with ``wait``, waits for trial runs still running in
    another process."""
    cal_path = folder / name
    trials = [folder / f"val{i}_{trial}.json" for i in range(n_val)]
    while wait and not cal_path.is_file() and not all(f.is_file() for f in trials):
        time.sleep(20)
    if not cal_path.is_file() and all(f.is_file() for f in trials):
        tmp = cal_path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(fit_forcing_scale([json.loads(f.read_text()) for f in trials], trial_scale)))
        os.replace(tmp, cal_path)
    return json.loads(cal_path.read_text()) if cal_path.is_file() else None

def collect_online_cases(folder: Path, pretrained: str, cal: dict[str, Any] | None) -> dict[str, Any]:
    """The finished runs in ``folder``, grouped ``{split: {run: [per-case result]}}``, cases in order.

    Only the cases on which every run of the split has finished are kept, so all runs are
    compared on the same cases (``incomplete`` lists the cases left out); a run in
    :data:`OPTIONAL_RUNS` is reported on the kept cases it finished (its case count is shown).
    """
    out: dict[str, Any] = {"pretrained": pretrained, "calibration": cal, "val": {}, "test": {}, "incomplete": []}
    by_case: dict[str, dict[str, dict[str, Any]]] = {"val": {}, "test": {}}
    for f in sorted(folder.glob("*_*.json")):
        if not f.stem.startswith(("val", "test")):
            continue
        tag, name = f.stem.split("_", 1)
        r = json.loads(f.read_text())
        parts = {k: v for k, v in r.items() if k != "case"} if name == "references" else {name: r}
        split = "val" if tag.startswith("val") else "test"
        by_case[split].setdefault(tag, {}).update({k: {**v, "case": r["case"]} for k, v in parts.items()})
    for split, cases in by_case.items():
        names = (set().union(*cases.values()) if cases else set()) - OPTIONAL_RUNS
        for tag in sorted(cases, key=lambda t: int(t.lstrip("valtes"))):
            if not names <= set(cases[tag]):
                out["incomplete"].append(tag)
                continue
            for key, v in cases[tag].items():
                out[split].setdefault(key, []).append(v)
    return out


def summarise_runs(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and standard error over cases of each score, the pooled spread-skill ratio and the summed
    rank histogram of one policy's per-case results."""
    n = len(runs)

    def mean_se(key: str) -> tuple[list[float], list[float]]:
        v = torch.tensor([r[key] for r in runs], dtype=torch.float64).reshape(n, -1)
        se = v.std(0) / n**0.5 if n > 1 else torch.full_like(v[0], float("nan"))
        return v.mean(0).tolist(), se.tolist()

    out: dict[str, Any] = {"cases": n, "nfe_per_step": runs[0].get("nfe_per_step", 0.0),
                           "seconds": sum(r.get("seconds", 0.0) for r in runs) / n}
    out["err_mean"], out["err_mean_se"] = mean_se("err_mean")
    if "crps" in runs[0]:
        m = runs[0]["members"]
        out["crps"], out["crps_se"] = mean_se("crps")
        ratio, ratio_se = mean_se("ratio")
        out["ratio_mean"], out["ratio_se"] = ratio[0], ratio_se[0]
        s2 = sum(sum(r["spread2"][1:]) for r in runs)
        e2 = sum(sum(r["mse"][1:]) for r in runs)
        out["ratio_pooled"] = ((m + 1) / m * s2 / e2) ** 0.5
        out["rank_histogram"] = [sum(c) for c in zip(*(r["rank_histogram"] for r in runs))]
        out["members"] = m
        # the same error for 16 members (the committed run's ensemble size): E^2 = E0^2 + S^2 / M
        e16 = [[e * ((q - v / m + v / 16) / q) ** 0.5 if q > 0 else 0.0 for e, q, v in zip(r["err_mean"], r["mse"], r["spread2"])]
               for r in runs]
        out["err_mean_16"] = torch.tensor(e16, dtype=torch.float64).mean(0).tolist()
    return out


RUN_LABELS = {
    "held": "learned G, fresh draw every 10 steps (6 NFE), held",
    "calibrated": "learned G, draw every 5 steps (3 NFE) + fresh forcing per step (calibrated)",
    "physics_between": "learned G drawn every 5 steps (3 NFE), physics nu Lap w + 2 sigma dW between draws",
    "physics_between_cal": "the same, between-draw forcing scaled (fitted on validation)",
    "physics": "physics closure nu Lap w + 2 sigma dW (no learning, no measurements)",
    "physics_cal": "physics closure, forcing scaled (fitted on validation; no learning, no measurements)",
    "no closure": "no closure",
    "true G held 10 steps": "true G held 10 steps (floor of the held policy)",
    "true G every step": "true G every step (floor of the reduced model)",
}


def online_cases_lines(oc: dict[str, Any]) -> list[str]:
    """The markdown of the multi-case online comparison (:func:`evaluate_online_cases`)."""
    test = {k: summarise_runs(v) for k, v in oc["test"].items()}
    if not test:
        return []
    any_run = next(v for v in oc["test"].values() if "times" in v[0])
    cases = ", ".join(f"trajectory {r['case']['traj']} (t0 = {r['case']['time']:g})" for r in any_run)
    cal = oc.get("calibration") or {}
    ens = next((v for v in test.values() if "members" in v), {"members": "?"})
    L = [f"## Online, G with measurements, shipped closure `{oc['pretrained']}`: policies side by side", "",
         f"This run. The shipped pretrained closure is the G_sparse_interp model of this benchmark. Test cases: "
         f"the starts of the test-split trajectories of `configs/paper/ns2d_data.yaml` ({cases}; regenerated "
         f"exactly, same seeds), truth = the full model on the 64^2 grid with noise seed 7 (the committed "
         f"single-case run's seed), {ens['members']} members, {any_run[0]['times'][-1] - any_run[0]['times'][0]:g} "
         "time units. Mean over the test cases +- standard error over cases."
         + (f" Cases not finished by every run, left out: {', '.join(oc['incomplete'])}." if oc.get("incomplete") else ""),
         ""]
    if cal:
        L += [f"Calibration, fixed before any test run and fitted on {cal['cases']} VALIDATION cases only "
              f"(validation-split trajectories, {cal['members']} members): trial forcing scale {cal['trial_scale']:g} "
              f"gave spread-skill {cal['trial_ratio_pooled']:.2f} (per case {', '.join(f'{x:.2f}' for x in cal['trial_ratios'])}); "
              f"the spread grows in proportion to the scale, so the fitted scale is {cal['forcing_scale']:g} x 2 sigma dW "
              "(fit_forcing_scale). Draw every 5 steps with 2 sampler steps, as the demo.", ""]
    cb = oc.get("calibration_between") or {}
    if cb:
        L += [f"Between-draw scale of the physics-between policy, fixed before any of its test runs and fitted the same "
              f"way on {cb['cases']} VALIDATION case(s) only ({cb['members']} members): at scale {cb['trial_scale']:g} "
              f"(the system's own forcing law) its spread-skill was {cb['trial_ratio_pooled']:.2f}, so the fitted "
              f"between-draw forcing is {cb['forcing_scale']:g} x 2 sigma dW (one fixed-point step of fit_forcing_scale; "
              "the learned draws are unchanged).", ""]
    cp = oc.get("calibration_physics") or {}
    if cp:
        L += [f"Forcing scale of the physics closure alone (the simple baseline), fitted the same way on the same "
              f"validation case(s) before any of its test runs: scale 1 gave spread-skill {cp['trial_ratio_pooled']:.2f}, "
              f"fitted {cp['forcing_scale']:g} x 2 sigma dW.", ""]
    names = [k for k in RUN_LABELS if k in test]
    times = next(r[0]["times"] for r in oc["test"].values() if "times" in r[0])
    idx = [i for i in range(1, len(times)) if i % 2 == 0 or len(times) <= 12]
    L += ["Relative error of the ensemble mean (single runs: of the run):", "",
          "| t - t0 | " + " | ".join(RUN_LABELS[k] for k in names) + " |", "|---|" + "---|" * len(names)]
    for i in idx:
        L.append(f"| {times[i] - times[0]:g} | " + " | ".join(f"{test[k]['err_mean'][i]:.4f} +- {test[k]['err_mean_se'][i]:.4f}"
                                                 for k in names) + " |")
    ensembles = [k for k in names if "crps" in test[k]]
    L += ["", "CRPS (mean over the grid):", "", "| t - t0 | " + " | ".join(RUN_LABELS[k] for k in ensembles) + " |",
          "|---|" + "---|" * len(ensembles)]
    for i in idx:
        L.append(f"| {times[i] - times[0]:g} | " + " | ".join(f"{test[k]['crps'][i]:.2e} +- {test[k]['crps_se'][i]:.1e}"
                                                 for k in ensembles) + " |")
    L += ["", "| run | test cases | spread-skill (pooled) | spread-skill, mean over cases +- s.e. | "
          "rank histogram (all times, cases) | NFE per step | seconds per case (shared core) |",
          "|---|---|---|---|---|---|---|"]
    for k in names:
        t = test[k]
        if "crps" in t:
            L.append(f"| {RUN_LABELS[k]} | {t['cases']} | {t['ratio_pooled']:.2f} | {t['ratio_mean']:.2f} +- "
                     f"{t['ratio_se']:.2f} | {t['rank_histogram']} | {t['nfe_per_step']:g} | {t['seconds']:.0f} |")
    val = {k: summarise_runs(v) for k, v in oc["val"].items()}
    for k in ("calibrated", "physics_between", "physics_between_cal", "physics", "physics_cal"):
        if k in val:
            v = val[k]
            L += ["", f"Validation ({v['cases']} case(s)), {RUN_LABELS[k]}: spread-skill {v['ratio_pooled']:.2f}, "
                  f"ensemble-mean error at the end {v['err_mean'][-1]:.4f}."]
    if "trial" in val:
        v = val["trial"]
        L += ["", f"Validation trial (scale {TRIAL_SCALE:g}): spread-skill {v['ratio_pooled']:.2f}, ensemble-mean "
              f"error at the end {v['err_mean'][-1]:.4f}."]
    return L + [""]


def online_cases_findings(oc: dict[str, Any], committed_end: float | None) -> list[str]:
    """What the multi-case comparison says, with its numbers (written under the goals)."""
    test = {k: summarise_runs(v) for k, v in oc["test"].items()}
    if not {"held", "calibrated", "physics"} <= set(test):
        return []
    h, c, p = test["held"], test["calibrated"], test["physics"]
    first = oc["test"]["held"][0]
    cal = oc.get("calibration") or {}
    L = ["", "What the side-by-side run shows (G with measurements, shipped closure):", ""]
    horizon = first["times"][-1] - first["times"][0]
    d = torch.tensor([a["err_mean"][-1] - b["err_mean"][-1] for a, b in zip(oc["test"]["calibrated"], oc["test"]["held"])])
    diff, diff_se = float(d.mean()), float(d.std() / len(d) ** 0.5) if len(d) > 1 else float("nan")
    if committed_end is not None:
        same = abs(first["err_mean"][-1] - committed_end) <= 0.05 * committed_end
        L.append(f"- The committed policy on trajectory {first['case']['traj']} ends at {first['err_mean'][-1]:.4f} "
                 f"after {horizon:g} time units, the earlier run's single case {committed_end:.4f}: "
                 + ("the regenerated start, the truth seed and the shipped closure reproduce the committed run "
                    "(its members agree to the reported digits, so the ensemble size does not matter there)."
                    if same else "not the same case or not the same model; compare the side-by-side rows only."))
    L.append(f"- The calibrated policy reaches spread-skill {c['ratio_pooled']:.2f} with the forcing scale "
             f"{cal.get('forcing_scale', float('nan')):g} fitted on validation; its ensemble-mean error after {horizon:g} "
             f"time units is {c['err_mean'][-1]:.4f} +- {c['err_mean_se'][-1]:.4f} against {h['err_mean'][-1]:.4f} "
             f"+- {h['err_mean_se'][-1]:.4f} for the committed policy on the same cases "
             f"(x{c['err_mean'][-1] / h['err_mean'][-1]:.2f}; paired difference over the cases "
             f"{diff:+.4f} +- {diff_se:.4f}). The spread it needs is the size of the hold's "
             f"structural error, and it is made by forcing {cal.get('forcing_scale', float('nan')) ** 2:.0f} times "
             "the system's own forcing variance per step"
             + (", which moves every member, and so their mean, away from the truth." if
                diff > diff_se else ", which does not make the mean better."))
    L.append(f"- The physics closure nu Lap w + 2 sigma dW (the true closure's law, no learning, no measurements, "
             f"no network) ends at {p['err_mean'][-1]:.4f} +- {p['err_mean_se'][-1]:.4f} with spread-skill "
             f"{p['ratio_pooled']:.2f}: its deterministic part is exact on the coarse grid and its forcing is "
             "drawn fresh at every step, while a learned draw held for k steps repeats one forcing realisation.")
    if "physics_between" in test:
        b = test["physics_between"]
        L.append(f"- The learned draw every 5 steps with the physics closure in between ends at "
                 f"{b['err_mean'][-1]:.4f} +- {b['err_mean_se'][-1]:.4f} with spread-skill {b['ratio_pooled']:.2f} "
                 f"(mean over cases {b['ratio_mean']:.2f} +- {b['ratio_se']:.2f}) on {b['cases']} test cases, at the "
                 "same 0.6 network evaluations per step. It was designed after the reference rows of the first test "
                 "case had been seen (the physics closure beating both learned policies there), so it is not a "
                 "blind test in the strict sense; it has no fitted parameter (the system's own forcing law, scale "
                 "1), its configuration was committed before any of its runs, and it was also run on the "
                 "validation case.")
    L.append("- What the calibrated policy would need to keep the committed error: not more spread but less "
             "structural error. Its spread covers the error of holding one forcing realisation for several steps, "
             "and the forcing that makes that spread degrades the mean; a policy that does not repeat the draw's "
             "forcing between draws (the row above), or a draw every step (the true G every step ends at "
             f"{test['true G every step']['err_mean'][-1]:.4f}; about 3 network evaluations per step with 2 sampler "
             "steps, 5x the cost), removes the error instead of covering it. The row above is as accurate as the "
             "physics closure alone and as under-dispersed. With the true closure's law known, the learned closure "
             "with measurements adds nothing measurable over it in this setting.")
    if "physics_between_cal" in test:
        L.append(_between_cal_finding(oc, test))
    return L


def _between_cal_finding(oc: dict[str, Any], test: dict[str, Any]) -> str:
    """The finding of the physics-between policy with its validation-fitted between-draw scale."""
    b, p = test["physics_between_cal"], test["physics"]
    cb = oc.get("calibration_between") or {}
    runs = {k: {r["case"]["traj"]: r for r in oc["test"][k]} for k in ("physics_between_cal", "physics_between")}
    common = sorted(runs["physics_between_cal"])
    d = torch.tensor([runs["physics_between_cal"][t]["err_mean"][-1] - runs["physics_between"][t]["err_mean"][-1]
                      for t in common])
    diff_se = float(d.std() / len(d) ** 0.5) if len(d) > 1 else float("nan")
    return (f"- With its between-draw forcing scaled by {cb.get('forcing_scale', float('nan')):g} (fitted on validation), "
            f"the same policy ends at {b['err_mean'][-1]:.4f} +- {b['err_mean_se'][-1]:.4f} with spread-skill "
            f"{b['ratio_pooled']:.2f} (mean over cases {b['ratio_mean']:.2f} +- {b['ratio_se']:.2f}) on {b['cases']} test "
            f"cases; the end error moved by {float(d.mean()):+.4f} +- {diff_se:.4f} against scale 1 on the same cases "
            f"(paired). The physics closure without any learning is as accurate: {p['err_mean'][-1]:.4f} +- "
            f"{p['err_mean_se'][-1]:.4f} at the end, CRPS {p['crps'][-1]:.2e} against {b['crps'][-1]:.2e}"
            + ". " + _physics_cal_note(oc, test))


def _physics_cal_note(oc: dict[str, Any], test: dict[str, Any]) -> str:
    """The simple baseline beside the fitted between-draw policy: the physics closure alone, inflated."""
    if "physics_cal" not in test:
        return "The same spread inflation fitted on validation for the physics closure alone (the simple baseline) was not run."
    q, cp = test["physics_cal"], oc.get("calibration_physics") or {}
    return (f"The simple baseline, the physics closure alone with its forcing scaled by {cp.get('forcing_scale', float('nan')):g} "
            f"(fitted the same way on the validation case, where scale 1 gave spread-skill "
            f"{cp.get('trial_ratio_pooled', float('nan')):.2f}), ends at {q['err_mean'][-1]:.4f} +- {q['err_mean_se'][-1]:.4f} "
            f"with spread-skill {q['ratio_pooled']:.2f} (mean over cases {q['ratio_mean']:.2f} +- {q['ratio_se']:.2f}) and "
            f"CRPS {q['crps'][-1]:.2e} at the end, with no network: the learned draws with measurements add nothing "
            "measurable over it in this setting.")


def online_cases_goal(oc: dict[str, Any]) -> list[str]:
    """The goal line of the G case with measurements, online (spread-skill and end error)."""
    test = {k: summarise_runs(v) for k, v in oc["test"].items()}
    if "calibrated" not in test:
        return []
    c = test["calibrated"]
    ok_ratio = 0.7 <= c["ratio_pooled"] <= 1.3
    ok_err = c["err_mean"][-1] <= 0.0036
    err_txt = "met" if ok_err else f"MISSED by {c['err_mean'][-1] - 0.0036:.4f}"
    held = test.get("held")
    horizon = oc["test"]["calibrated"][0]["times"][-1] - oc["test"]["calibrated"][0]["times"][0]
    side = (f"; the committed policy on the same cases ends at {held['err_mean'][-1]:.4f} +- {held['err_mean_se'][-1]:.4f} "
            f"with spread-skill {held['ratio_pooled']:.2f}") if held else ""
    L = [f"- Online G with measurements (shipped closure, {c['cases']} test cases): calibrated policy spread-skill "
            f"{c['ratio_pooled']:.2f} (mean over cases {c['ratio_mean']:.2f} +- {c['ratio_se']:.2f}; "
            f"{'met' if ok_ratio else 'MISSED'}, goal [0.7, 1.3]), ensemble-mean error after {horizon:g} time units "
            f"{c['err_mean'][-1]:.4f} +- {c['err_mean_se'][-1]:.4f} with {c['members']} members "
            f"({err_txt}, goal <= 0.0036; estimated for 16 members, E^2 = E0^2 + S^2/M: "
            f"{c['err_mean_16'][-1]:.4f}){side}."]
    if "physics_between_cal" in test:
        L.append(_between_cal_goal(test["physics_between_cal"], test.get("physics"), horizon))
    if "physics_cal" in test:
        q = test["physics_cal"]
        L.append(f"- The simple baseline for the same goal, the physics closure alone with its forcing scale fitted on "
                 f"validation (no network, no measurements, {q['cases']} test cases): spread-skill {q['ratio_pooled']:.2f} "
                 f"(mean over cases {q['ratio_mean']:.2f} +- {q['ratio_se']:.2f}), ensemble-mean error "
                 f"{q['err_mean'][-1]:.4f} +- {q['err_mean_se'][-1]:.4f}"
                 + ("; it meets both parts of the goal too" if 0.7 <= q["ratio_pooled"] <= 1.3 and
                    q["err_mean"][-1] <= 0.0036 else "")
                 + (f"; CRPS at the end {q['crps'][-1]:.2e} +- {q['crps_se'][-1]:.1e} against "
                    f"{test['physics_between_cal']['crps'][-1]:.2e} +- {test['physics_between_cal']['crps_se'][-1]:.1e} "
                    "for the learned policy above, which does not beat this baseline"
                    if "physics_between_cal" in test else "") + ".")
    return L


def _between_cal_goal(b: dict[str, Any], phys: dict[str, Any] | None, horizon: float) -> str:
    """The goal line of the physics-between policy with its validation-fitted between-draw scale."""
    r, e, se = b["ratio_pooled"], b["err_mean"][-1], b["err_mean_se"][-1]
    ratio_txt = "met" if 0.7 <= r <= 1.3 else f"MISSED by {min(abs(r - 0.7), abs(r - 1.3)):.2f}"
    err_txt = "met" if e <= 0.0036 else f"MISSED by {e - 0.0036:.4f}"
    physics = (f"; the physics closure nu Lap w + 2 sigma dW without learning is as accurate, {phys['err_mean'][-1]:.4f} "
               f"+- {phys['err_mean_se'][-1]:.4f}, spread-skill {phys['ratio_pooled']:.2f}") if phys else ""
    return (f"- Same goal, learned draw every 5 steps + physics closure between draws with the between-draw forcing "
            f"scale fitted on validation ({b['cases']} test cases, {b['members']} members, 0.6 NFE per step): "
            f"spread-skill {r:.2f} (mean over cases {b['ratio_mean']:.2f} +- {b['ratio_se']:.2f}; {ratio_txt}, goal "
            f"[0.7, 1.3]), ensemble-mean error after {horizon:g} time units {e:.4f} +- {se:.4f} ({err_txt}, goal <= "
            f"0.0036){physics}.")


def write_results(res: dict[str, Any], quick: bool) -> Path:
    out = ROOT / "benchmarks" / "results" / ("paper_ns2d_quick" if quick else "paper_ns2d")
    out.with_suffix(".json").write_text(json.dumps(res, indent=2))
    L = ["# Reduced-scale reference experiment (stochastic 2-D Navier–Stokes)", "",
         f"{'QUICK smoke run: tiny data and training, numbers are not meaningful. ' if quick else ''}"
         "Simulated at 64^2 (and 128^2 for the transfer test set), trained at 32^2, tested at 32^2/64^2/128^2 "
         "with the same 16x16 measurement points. Errors are relative Frobenius errors D_Fro of one sample "
         "(the paper's metric), of the mean of 16 samples, and the CRPS of the 16-sample ensemble.", ""]
    if res.get("offline"):
        L += [f"## Offline closure error{EARLIER if 'offline' in res.get('earlier', ()) else ''}", "",
              "| model | test set (grid) | D_Fro, one sample | D_Fro, mean of 16 | MSE | CRPS | paper (train res, 2x, 4x) |",
              "|---|---|---|---|---|---|---|"]
        for m, sets in res["offline"].items():
            for label, r in sets.items():
                paper = PAPER.get(m, "-")
                L.append(f"| {m} | {label} | {r['rel_fro_single']:.3f} | {r['rel_fro_mean']:.3f} | {r['mse_single']:.2e} | "
                         f"{r['crps']:.2e} | {paper} |")
        L.append("")
    if res.get("samplers"):
        L += [f"## Samplers on the G model (32^2, 8 conditions x 8 samples){EARLIER if 'samplers' in res.get('earlier', ()) else ''}", "",
              "| sampler | NFE | D_Fro, one sample | D_Fro, mean of 8 | CRPS | seconds |", "|---|---|---|---|---|---|"]
        for label, r in res["samplers"].items():
            L.append(f"| {label} | {r['nfe']} | {r['rel_fro_single']:.3f} | {r['rel_fro_mean']:.3f} | {r['crps']:.2e} | "
                     f"{r['seconds']:.1f} |")
        L.append("")
    if res.get("online_cases"):
        L += online_cases_lines(res["online_cases"])
    for key in [k for k in res if k.startswith("online") and k != "online_cases"]:
        o = res[key]
        model = key.partition("_")[2] or "G_sparse_interp"
        L += [f"## Online ensemble rollout, {model} (16 members, 32^2, fresh closure every 10 steps, 6 NFE each)"
              f"{EARLIER if key in res.get('earlier', ()) else ''}", "",
              "| time | ensemble mean | median member | no closure | CRPS |", "|---|---|---|---|---|"]
        for i, t in enumerate(o["times"]):
            L.append(f"| {t:.2f} | {o['rel_error_ensemble_mean'][i]:.4f} | {o['rel_error_members_median'][i]:.4f} | "
                     f"{o['rel_error_no_closure'][i]:.4f} | {o['crps'][i]:.2e} |")
        if key == "online" and res.get("oracle"):
            L += ["", "Error floor of the reduced model (the true G, no sampling), same truth run:", "",
                  "| time | " + " | ".join(res["oracle"]) + " |", "|---|" + "---|" * len(res["oracle"])]
            for i, t in enumerate(o["times"]):
                L.append(f"| {t:.2f} | " + " | ".join(f"{v[i]:.4f}" for v in res["oracle"].values()) + " |")
        s = o["seconds"]
        L += ["", f"Spread-skill ratio {o['spread_skill_ratio']:.2f}; rank histogram {o['rank_histogram']}.",
              f"Paper (one trajectory, 64^2, GPU): {PAPER_ONLINE}.",
              f"Wall time: closure ensemble {s['closure_ensemble']:.1f} s vs no-closure {s['no_closure']:.2f} s "
              f"for {s['steps']} steps ({s['closure_ensemble'] / max(s['no_closure'], 1e-9):.0f}x; "
              f"{s['members']} members in one batch).", ""]
    L += goals(res)
    out.with_suffix(".md").write_text("\n".join(L))
    return out.with_suffix(".md")


def goals(res: dict[str, Any]) -> list[str]:
    """The experiment's goals, each checked against the numbers above (met / missed, by how much)."""
    L = ["## Goals", ""]
    off = res.get("offline", {})
    for m in ("G_sparse_interp", "G_sparse_smooth"):
        if m not in off:
            continue
        r = off[m]
        train = r["32 (64^2 runs)"]["rel_fro_single"]
        seq = [r[f"{g} (128^2 runs)"]["rel_fro_single"] for g in (32, 64, 128)]
        paper = PAPER[m]
        L.append(f"- Offline {m} at the training resolution: D_Fro {train:.3f} "
                 f"({'met' if train <= 0.10 else 'MISSED'}: goal <= 0.10, paper {paper[0]}). Transfer 1x/2x/4x on "
                 f"the 128^2 runs: {seq[0]:.3f} -> {seq[1]:.3f} -> {seq[2]:.3f} (x{seq[1] / seq[0]:.2f}, "
                 f"x{seq[2] / seq[0]:.2f}) vs the paper's {paper[0]} -> {paper[1]} -> {paper[2]} "
                 f"(x{paper[1] / paper[0]:.2f}, x{paper[2] / paper[0]:.2f}): "
                 f"{'met' if seq[2] / seq[0] < paper[2] / paper[0] and seq[1] / seq[0] < paper[1] / paper[0] else 'MISSED'}.")
    sam = res.get("samplers", {})
    ref = next((v for k, v in sam.items() if k.startswith("Euler")), None)
    if ref:
        few = {k: v for k, v in sam.items() if v["nfe"] <= 10}
        best_k = min(few, key=lambda k: few[k]["rel_fro_single"])
        b = few[best_k]
        ok = b["rel_fro_single"] <= ref["rel_fro_single"] * 1.05
        L.append(f"- Few evaluations: {best_k} ({b['nfe']} NFE) D_Fro {b['rel_fro_single']:.4f}, CRPS {b['crps']:.2e} "
                 f"vs the 1000-step Euler-Maruyama {ref['rel_fro_single']:.4f}, {ref['crps']:.2e} "
                 f"({'met' if ok else 'MISSED'}; {ref['seconds'] / b['seconds']:.0f}x less time).")
    if res.get("online_cases"):
        L += online_cases_goal(res["online_cases"])
        committed = res.get("online", {}).get("rel_error_ensemble_mean", [None])[-1]
        L += online_cases_findings(res["online_cases"], committed) + [""]
    for key in [k for k in res if k.startswith("online") and k != "online_cases"]:
        o = res[key]
        model = key.partition("_")[2] or "G_sparse_interp"
        ratio = max(a / max(b, 1e-12) for a, b in zip(o["rel_error_ensemble_mean"][1:], o["rel_error_no_closure"][1:]))
        ss = o["spread_skill_ratio"]
        L.append(f"- Online {model}{' (earlier run, one case)' if key in res.get('earlier', ()) else ''}: ensemble-mean error at most {ratio:.3f}x the no-closure error at every reported "
                 f"time (end: {o['rel_error_ensemble_mean'][-1]:.4f} vs {o['rel_error_no_closure'][-1]:.3f}; met). "
                 f"Spread-skill {ss:.2f}: {'met' if 0.7 <= ss <= 1.3 else 'MISSED'} (goal [0.7, 1.3]). "
                 f"CRPS at the end {o['crps'][-1]:.2e}.")
    if "online" in res:
        L += ["", "Why the spread-skill goal is missed with measurements and met without (earlier run, one case, "
              "the draw held unchanged): G contains the "
              "stochastic forcing (2 sigma dW, docs/systems.md), and 256 point values of G on the 1024-point "
              "grid pin nearly all of it, so the 16 members draw almost the same closure (members agree to "
              "about spread-skill x error ~ 1e-4). The remaining online error is structural, not closure "
              "uncertainty, and it is measured above: the *true* G, held for the same 10 solver steps, ends "
              "with the same error as the learned closure"]
        if res.get("oracle"):
            o, orc = res["online"], res["oracle"]
            held = next(v for k, v in orc.items() if "held" in k)
            every = next(v for k, v in orc.items() if "every" in k)
            L[-1] += (f" ({held[-1]:.4f} vs {o['rel_error_ensemble_mean'][-1]:.4f}), while the true G fed every "
                      f"step ends at {every[-1]:.4f}")
        L[-1] += (". The ensemble cannot represent an error that every member shares, so it is overconfident "
                  "(rank histogram piled at both ends). Without measurements the closure is genuinely uncertain "
                  "and the ensemble is calibrated within the goal, with a skew of its rank histogram towards "
                  "low ranks (the truth falls below most members more often than above). Closing the gap with "
                  "measurements needs a fresh draw more often than every 10 steps (more network evaluations) or a "
                  "model-error term for the hold; see the rollout's resampling policies and "
                  "benchmarks/closure_vs_dns.py. Configurations were fixed before any test-set evaluation; "
                  "nothing was tuned on the test split.")
    return L


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny smoke run of every stage")
    p.add_argument("--work", default=None, help="work folder (default benchmarks/work[/quick])")
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--stages", default="generate,train,evaluate",
                   help="among generate, train, evaluate, and online (the policies of the G case with "
                        "measurements on several cases, with --pretrained)")
    p.add_argument("--pretrained", default=None,
                   help="shipped closure for the online stage (e.g. ns2d_G_sparse_32, the G_sparse_interp model)")
    p.add_argument("--online-runs", default="trial,held,references,calibrated,physics_between,confirm",
                   help="online-stage runs: trial (validation fit), held, references, calibrated, physics_between, "
                        "physics_between_cal (test), confirm, physics_between_val (validation, also the trial of the "
                        "between-draw fit), physics_between_cal_val (validation, fitted between-draw scale)")
    p.add_argument("--members", type=int, default=4, help="ensemble members of the online stage")
    p.add_argument("--val-count", type=int, default=1,
                   help="online stage: validation cases the forcing scale is fitted on (1 fits the measured budget)")
    p.add_argument("--val-cases", default=None, help="online stage: validation case indices of this process (e.g. 0)")
    p.add_argument("--test-cases", default=None, help="online stage: test case indices of this process (e.g. 0,1)")
    args = p.parse_args()
    torch.set_num_threads(1)
    work = Path(args.work) if args.work else ROOT / "benchmarks" / "work" / ("quick" if args.quick else "")
    work.mkdir(parents=True, exist_ok=True)
    stages, models = args.stages.split(","), args.models.split(",")
    exe = [sys.executable, "-m", "stochclosure"]
    data_cfg, test_cfg = CONFIGS / "ns2d_data.yaml", CONFIGS / "ns2d_test128.yaml"
    if args.quick:
        data_cfg = quick_data_config(data_cfg, work / "configs" / "ns2d_data.yaml", trajectories=8, batch_size=8,
                                     spinup_steps=500, records=12, record_every=20)
        test_cfg = quick_data_config(test_cfg, work / "configs" / "ns2d_test128.yaml", trajectories=1, batch_size=1,
                                     spinup_steps=200, records=6, record_every=20)
    if "generate" in stages:
        sh(*exe, "generate", "--system", "navier_stokes_2d", "--config", str(data_cfg), "--out",
           str(work / "ns2d_data.h5"), "--threads", "1")
        sh(*exe, "generate", "--system", "navier_stokes_2d", "--config", str(test_cfg), "--out",
           str(work / "ns2d_test128.h5"), "--threads", "1")
    if "train" in stages:
        for m in models:
            sh(*exe, "train", "--config", str(train_config(m, work, work / "ns2d_data.h5", args.quick)), "--resume")
    if "evaluate" in stages:
        cache = work / "evaluation.json"
        res: dict[str, Any] = json.loads(cache.read_text()) if cache.is_file() else {}
        res.setdefault("offline", {})
        for m in models:
            if m not in res["offline"] and (work / "runs" / m / "latest").is_file():
                res["offline"][m] = evaluate_offline(m, work, args.quick)
                cache.write_text(json.dumps(res, indent=2))
        if "samplers" not in res and (work / "runs" / "G_sparse_interp" / "latest").is_file():
            res["samplers"] = evaluate_samplers(work, args.quick)
            cache.write_text(json.dumps(res, indent=2))
        for m in [m for m in models if m.startswith("G_") and m != "G_sparse_smooth"]:
            key = "online" if m == "G_sparse_interp" else f"online_{m}"
            if key not in res and (work / "runs" / m / "latest").is_file():
                res[key] = evaluate_online(work, args.quick, model_name=m)
                cache.write_text(json.dumps(res, indent=2))
        if "oracle" not in res and "online" in res:
            res["oracle"] = evaluate_oracle(work, args.quick)
            cache.write_text(json.dumps(res, indent=2))
        print(f"wrote {write_results(res, args.quick)}")
    if "online" in stages:
        if not args.pretrained:
            p.error("the online stage needs --pretrained NAME (e.g. ns2d_G_sparse_32)")
        res = earlier_results(work, args.quick)
        res["online_cases"] = evaluate_online_cases(work, data_cfg, args.quick, args.pretrained,
                                                    args.online_runs.split(","), members=args.members, n_val=args.val_count,
                                                    only={k: [int(i) for i in v.split(",")] for k, v in
                                                          (("val", args.val_cases), ("test", args.test_cases)) if v})
        print(f"wrote {write_results(res, args.quick)}")


def earlier_results(work: Path, quick: bool) -> dict[str, Any]:
    """The evaluation cache of this work folder, or else the committed results (marked as earlier)."""
    cache = work / "evaluation.json"
    if cache.is_file():
        return json.loads(cache.read_text())
    committed = ROOT / "benchmarks" / "results" / ("paper_ns2d_quick.json" if quick else "paper_ns2d.json")
    res = json.loads(committed.read_text()) if committed.is_file() else {}
    res.pop("online_cases", None)
    res["earlier"] = sorted(set(res.get("earlier", ())) | {k for k in res if k != "earlier"})
    return res


if __name__ == "__main__":
    main()
