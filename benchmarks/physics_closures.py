"""Offline scores of the physics closures of the 2-D Navier–Stokes subgrid term.

``python benchmarks/physics_closures.py`` (about 5 minutes on one core) writes
``benchmarks/results/physics_closures.md`` and ``.json``; ``--quick`` is a smoke run (seconds).

Setting: one DNS at 128², ``nu = 2e-4``, ``dt = 2.5e-4`` (``dt |u|^2 < 2 nu`` holds with
``max |u| ~ 0.85``), energetic random initial vorticity, no stochastic forcing; 8 trajectories
spun up 0.25 time units, then 12 snapshots every 0.025. The same fine snapshots are filtered four
ways (Gaussian of width ``2/n`` or sharp cut-off, coarse nonlinear term by the 2/3 rule or exact)
to 32², each with its true closure ``U = bar(N(w)) - N_c(bar(w))``. Trajectories 0-3 are the
training split (fitted Smagorinsky constant, noise laws), 4-7 the test split on which every score
is computed. Nothing is tuned on the test split.

Scores: ``R^2`` of the closure (of the ensemble mean for noise laws) against ``U`` over the test
split; for the physics + noise laws, the fair CRPS, spread-skill ratio and 80 % interval coverage of
16 draws (``stochclosure.metrics.offline_scores``), and their energy score over each field (which,
unlike the pointwise CRPS, sees spatial correlation). The row "resolved correction R" is the ``R^2``
of the resolved-interaction correction alone: the share of ``U`` that is the coarse solver's own
missing resolved triads. The residual ``U - ADM`` of order 5 is fitted by an AR(1) in time
(training split): its memory time is what rollout policies that correlate draws need. Online, for
the Gaussian filter, coarse runs from the test trajectories' first snapshot use each closure at
every step and are compared with the filtered DNS at t = 0.1 and 0.275.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"

FINE = {"n_fine": 128, "nu": 2.0e-4, "dt": 2.5e-4, "sigma": 0.0, "ic_scale": 6.86e4}
RUN = {"batch": 8, "spinup_steps": 1000, "record_every": 100, "records": 12, "seed": 7}
QUICK_FINE = {"n_fine": 64, "nu": 1.0e-3, "dt": 1.0e-3, "sigma": 0.0, "ic_scale": 6.86e3}
QUICK_RUN = {"batch": 4, "spinup_steps": 20, "record_every": 10, "records": 3, "seed": 7}
ONLINE = ("Smagorinsky, fitted c_s (+ R)", "dynamic Smagorinsky (+ R)", "gradient (+ R)", "Bardina (+ R)",
          "ADM order 5", "ADM order 10", "resolved correction R")
ONLINE_RECORDS, ONLINE_RECORDS_QUICK = [4, 11], [1, 2]
SETTINGS = [("gaussian", "two_thirds"), ("gaussian", "exact"), ("spectral", "two_thirds"), ("spectral", "exact")]


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def fine_snapshots(quick: bool) -> torch.Tensor:
    """``(batch, records, 1, n_fine, n_fine)`` float64 fine vorticity snapshots."""
    from stochclosure.systems.subgrid import NavierStokes2DSubgrid

    fine, run = (QUICK_FINE, QUICK_RUN) if quick else (FINE, RUN)
    system = NavierStokes2DSubgrid(n=16 if quick else 32, **fine)
    gen = torch.Generator().manual_seed(run["seed"])
    w = system.fine_initial_state(run["batch"], generator=gen, dtype=torch.float64)
    w = system.fine.simulate(w, run["spinup_steps"], generator=gen)
    out = [w]
    for _ in range(run["records"] - 1):
        w = system.fine.simulate(w, run["record_every"], generator=gen)
        out.append(w)
    return torch.stack(out, 1)


def split(system: Any, snaps: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Filtered states and true closures ``(N, 1, n, n)`` of the train / test trajectories."""
    b = snaps.shape[0]
    flat = snaps.flatten(0, 1)
    w, u = system.filter(flat), system.closure_term(flat)
    per = flat.shape[0] // b
    half = (b // 2) * per
    return {"train": (w[:half], u[:half]), "test": (w[half:], u[half:])}


def fitted_smagorinsky(system: Any, w: torch.Tensor, u: torch.Tensor) -> Any:
    """Smagorinsky with ``c_s^2`` by least squares on ``U - R`` (training pairs), clipped at 0."""
    from stochclosure._types import Conditioning
    from stochclosure.closures import Smagorinsky

    return Smagorinsky.fit(Conditioning(fields=w), u, filter=system.filter_kind, filter_width=system.filter_width,
                           coarse_nonlinear=system.coarse_nonlinear)


def laws(system: Any, train: tuple[torch.Tensor, torch.Tensor]) -> dict[str, Any]:
    """Every physics closure of the comparison, built from the system (fitted ones on ``train``)."""
    from stochclosure.closures import (
        ADM,
        Bardina,
        DynamicSmagorinsky,
        GradientModel,
        ResolvedCorrection,
        Smagorinsky,
    )

    out: dict[str, Any] = {
        "resolved correction R": ResolvedCorrection.from_system(system),
        "Smagorinsky c_s = 0.17 (+ R)": Smagorinsky.from_system(system),
        "Smagorinsky, fitted c_s (+ R)": fitted_smagorinsky(system, *train),
        "dynamic Smagorinsky (+ R)": DynamicSmagorinsky.from_system(system),
        "gradient (+ R)": GradientModel.from_system(system),
        "gradient, no R": GradientModel.from_system(system, resolved_correction=False),
        "Bardina (+ R)": Bardina.from_system(system),
    }
    for p in (0, 1, 2, 5, 10):
        out[f"ADM order {p}"] = ADM.from_system(system, order=p)
    return out


def online_errors(system: Any, snaps: torch.Tensor, closures: dict[str, Any], records: list[int],
                  record_every: int) -> dict[str, list[float]]:
    """Coarse runs from the test trajectories' first snapshot with each closure evaluated every step.

    Returns the relative L2 error against the filtered DNS at the given record indices (the mean
    over trajectories of ``|w - w_dns| / |w_dns|``), ``inf`` once a run is no longer finite.
    """
    from stochclosure._types import Conditioning

    test = snaps[snaps.shape[0] // 2:]
    truth = system.filter(test.flatten(0, 1)).reshape(test.shape[0], test.shape[1], 1, system.n, system.n)
    out = {}
    for name, law in {"no closure": None, **closures}.items():
        w, errs = truth[:, 0], []
        for step in range(1, max(records) * record_every + 1):
            u = None if law is None else law.mean(Conditioning(fields=w))
            w = system.step(w, u)
            if step % record_every == 0 and step // record_every in records:
                ref = truth[:, step // record_every]
                e = ((w - ref).flatten(1).norm(dim=1) / ref.flatten(1).norm(dim=1)).mean()
                errs.append(float(e) if bool(torch.isfinite(w).all()) else float("inf"))
        out[name] = errs
    return out


def residual_memory(system: Any, data: dict[str, Any], records: int, interval: float) -> dict[str, float]:
    """AR(1) fit of the training residual ``U - ADM_5`` in time (records ``interval`` apart)."""
    from stochclosure._types import Conditioning
    from stochclosure.closures import ADM, fit_ar1

    w, u = data["train"]
    r = u - ADM.from_system(system, order=5).mean(Conditioning(fields=w))
    series = r.reshape(-1, records, *r.shape[1:]).transpose(0, 1)  # (T, trajectories, 1, n, n)
    fit = fit_ar1(series, dt=interval)
    return {"rho": fit.rho, "tau": fit.tau, "sigma": fit.sigma}


def noise_scores(system: Any, data: dict[str, Any], members: int) -> dict[str, dict[str, float]]:
    """ADM (order 5) + white / coloured noise fitted on training residuals, scored on the test split."""
    from stochclosure._types import Conditioning
    from stochclosure.closures import ADM, PhysicsPlusNoise
    from stochclosure.metrics import offline_scores

    (wtr, utr), (wte, ute) = data["train"], data["test"]
    out = {}
    for noise in ("white", "coloured"):
        law = PhysicsPlusNoise(ADM.from_system(system, order=5), noise).fit(Conditioning(fields=wtr), utr)
        draws = law.sample(Conditioning(fields=wte), members, generator=torch.Generator().manual_seed(0))
        out[f"ADM order 5 + {noise} noise"] = offline_scores(draws, ute)
    return out


def evaluate(snaps: torch.Tensor, quick: bool) -> dict[str, Any]:
    """Scores of every closure in every filter setting."""
    from stochclosure._types import Conditioning
    from stochclosure.metrics import r2_score
    from stochclosure.systems.subgrid import NavierStokes2DSubgrid

    fine = QUICK_FINE if quick else FINE
    results: dict[str, Any] = {}
    for filt, coarse in SETTINGS:
        system = NavierStokes2DSubgrid(n=16 if quick else 32, filter=filt, coarse_nonlinear=coarse, **fine)
        data = split(system, snaps)
        w, u = data["test"]
        row: dict[str, Any] = {"rms U": float(u.pow(2).mean().sqrt()), "r2": {}, "seconds": {}}
        built = laws(system, data["train"])
        row["fitted c_s"] = built["Smagorinsky, fitted c_s (+ R)"].cs
        for name, law in built.items():
            if filt == "spectral" and name.startswith("Bardina"):
                name += " (Gaussian similarity filter)"
            t0 = time.perf_counter()
            pred = law.mean(Conditioning(fields=w))
            row["seconds"][name] = (time.perf_counter() - t0) / w.shape[0]
            row["r2"][name] = float(r2_score(pred, u))
        row["noise"] = noise_scores(system, data, 4 if quick else 16)
        run = QUICK_RUN if quick else RUN
        online = {k: v for k, v in built.items() if k in ONLINE}
        row["online_records"] = [r * run["record_every"] * fine["dt"] for r in (ONLINE_RECORDS_QUICK if quick
                                                                                  else ONLINE_RECORDS)]
        if filt == "gaussian":
            row["online"] = online_errors(system, snaps, online, ONLINE_RECORDS_QUICK if quick else ONLINE_RECORDS,
                                          run["record_every"])
        row["memory"] = residual_memory(system, data, run["records"], run["record_every"] * fine["dt"])
        results[f"{filt} / {coarse}"] = row
        _log(f"{filt} / {coarse}: " + ", ".join(f"{k}: {v:.3f}" for k, v in row["r2"].items()))
    return results


def _paragraph(i: int) -> str:
    """Paragraph ``i`` of the module docstring on one line."""
    return (__doc__ or "").split("\n\n")[i].replace("\n", " ").replace("``", "`")


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (a temporary file renamed into place)."""
    from stochclosure.checkpoint import atomic_write_bytes

    atomic_write_bytes(path, text.encode())


def write_markdown(results: dict[str, Any], path: Path, meta: dict[str, Any]) -> None:
    """The results table, atomically."""
    settings = [f"{f} / {c}" for f, c in SETTINGS if f"{f} / {c}" in results]
    names = list(results[settings[0]]["r2"])  # the order of laws(), kept by the JSON (not key-sorted)
    lines = ["# Physics closures of the 2-D subgrid term: offline scores", "",
             f"`python benchmarks/physics_closures.py` ({meta['platform']}, torch {meta['torch']}, 1 thread, "
             f"{meta['minutes']:.1f} min).", "", _paragraph(2), "", _paragraph(3),
             "", "## R² of the closure against the true U (test split)", "",
             "| closure | " + " | ".join(settings) + " |", "|---|" + "---|" * len(settings)]
    for name in names:
        vals = []
        for s in settings:
            key = next((k for k in results[s]["r2"] if k.startswith(name)), name)
            vals.append(f"{results[s]['r2'][key]:.3f}")
        lines.append(f"| {name} | " + " | ".join(vals) + " |")
    lines.append("| rms U | " + " | ".join(f"{results[s]['rms U']:.3g}" for s in settings) + " |")
    lines.append("| fitted c_s | " + " | ".join(f"{results[s]['fitted c_s']:.3g}" for s in settings) + " |")
    lines += ["", "With the sharp filter, Bardina uses the Gaussian filter of width 2/n as its similarity filter "
              "(the sharp one is the identity on resolved modes), and the gradient model's length is 2/n.", "",
              "## Physics + noise (16 draws, test split)", "",
              "| law | setting | R² of mean | CRPS (fair) | energy score | spread-skill | 80 % coverage |",
              "|---|---|---|---|---|---|---|"]
    for s in settings:
        for name, sc in results[s]["noise"].items():
            lines.append(f"| {name} | {s} | {sc['r2']:.3f} | {sc['crps']:.3g} | {sc['energy']:.4g} | "
                         f"{sc['spread_skill']:.3f} | "
                         f"{sc['coverage']:.3f} |")
    online_rows = [(s, results[s]) for s in settings if "online" in results[s]]
    if online_rows:
        times = online_rows[0][1]["online_records"]
        lines += ["", "## Online: coarse runs with the closure every step (Gaussian filter, test trajectories)", "",
                  "Relative L2 error of the coarse vorticity against the filtered DNS, mean over the test "
                  "trajectories, from their first snapshot (inf: the run blew up).", "",
                  "| closure | setting | " + " | ".join(f"t = {t:.3g}" for t in times) + " |",
                  "|---|---|" + "---|" * len(times)]
        for s, row in online_rows:
            for name, errs in row["online"].items():
                lines.append(f"| {name} | {s} | " + " | ".join(f"{e:.3g}" for e in errs) + " |")
    lines += ["", "## Memory in time of the residual U - ADM(order 5) (training split)", "",
              "AR(1) fit (`stochclosure.closures.fit_ar1`) of the residual at consecutive snapshots, pooled over "
              "trajectories and grid points: lag-1 correlation rho per record interval and memory time "
              "-interval / log(rho).", "", "| setting | rho per record | memory time | rms residual |", "|---|---|---|---|"]
    for s in settings:
        m = results[s]["memory"]
        lines.append(f"| {s} | {m['rho']:.3f} | {m['tau']:.3g} | {m['sigma']:.3g} |")
    atomic_write_text(path, "\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run on a tiny DNS")
    parser.add_argument("--out", type=Path, default=None, help="results folder (default benchmarks/results)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    t0 = time.time()
    _log("DNS snapshots")
    snaps = fine_snapshots(args.quick)
    results = evaluate(snaps, args.quick)
    out = args.out or RESULTS
    out.mkdir(parents=True, exist_ok=True)
    stem = "physics_closures_quick" if args.quick else "physics_closures"
    meta = {"platform": f"{platform.machine()}, {platform.python_version()}", "torch": torch.__version__,
            "minutes": (time.time() - t0) / 60}
    atomic_write_text(out / f"{stem}.json", json.dumps({"meta": meta, "results": results}, indent=1))
    write_markdown(results, out / f"{stem}.md", meta)
    _log(f"wrote {out / stem}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
