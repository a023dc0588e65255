"""A-posteriori fine-tuning of the Gaussian residual closure law by the CRPS of short ensemble rollouts.

``python benchmarks/finetune_closures.py [--work DIR]`` (about 15 minutes on one core) writes
``benchmarks/results/finetune_closures.md`` and ``.json``. It reuses the closures study's stages
(``benchmarks/closures.py``: the DNS splits and the law "ADM + Gaussian residual (CRPS)" of the
Gaussian-filter setting, trained a-priori on snapshot pairs) from its work folder and caches its own
stages there under new names (``finetune-*``), so an interrupted run resumes.

Method: windows cut from the TRAINING trajectories (every start record with ``records`` records
after it; records every 0.02 = 20 coarse steps of ``dt = 1e-3``); each optimiser step rolls out
``members`` copies of ``windows_per_step`` windows through the differentiable coarse solver with
the closure drawn every coarse step, its latent an AR(1) with the study's ``rho`` per coarse step,
and minimises the fair CRPS against the filtered DNS (:func:`stochclosure.training.finetune.finetune`).
The state kept is the one with the best score on VALIDATION windows. Variants: every parameter,
or only the log-variance rows of the network's last layer; and every parameter on longer windows
(5 records, 100 coarse steps) with a larger learning rate (``all-r5``, added after the first two had
been scored on validation).

Scores: VALIDATION only (the test split is never touched here). The 4 validation trajectories from
their first record, 8 members, closure drawn every coarse step with the AR(1) latent: relative error
of the ensemble mean, fair CRPS and spread-skill at t = 0.24 and 0.3, for the base law, the base law
with the study's post-hoc inflation of the remainder (fitted on the same validation rollouts, so it
is calibrated there by construction) and the fine-tuned laws. The validation split is also the
split the fine-tuned state was selected on (at the shorter horizon of the fine-tuning windows), so
these numbers are not held-out: they show whether the fine-tuning fixes the dispersion, not how much
it generalises.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent))
from closures import (  # noqa: E402
    CONFIG,
    SETTINGS,
    WORK,
    atomic_write_text,
    cached,
    drawer,
    online_inflation,
    online_scores,
    residual_memory,
    run_ensemble,
    system_of,
    train_law,
)

RESULTS = Path(__file__).resolve().parent / "results"
LAW = "ADM + Gaussian residual (CRPS)"
FT = {"steps": 20, "members": 4, "windows_per_step": 2, "records": 3, "hold": 1, "score": "crps",
      "clip": 1.0, "val_every": 5, "seed": 0}
VARIANTS = {"all": {"params": "all", "lr": 3e-4}, "variance": {"params": "variance", "lr": 1e-2},
            "all-r5": {"params": "all", "lr": 5e-4, "records": 5}}
VAL_STARTS = [0, 6]
EVAL = {"times": [0.24, 0.3], "members": 8, "seed": 3}


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def stored_stage(work: Path, name: str) -> Any:
    """A stage the closures study has written (``python benchmarks/closures.py --work WORK`` makes it)."""
    path = work / f"{name}.pt"
    if not path.exists():
        raise FileNotFoundError(f"{path}: run benchmarks/closures.py with --work {work} first")
    return torch.load(path, weights_only=True)


def windows_of(w: Tensor, records: int, record_every: int, starts: list[int] | None = None) -> Any:
    """Windows ``(w[:, j], w[:, j + 1 : j + 1 + records])`` of trajectories ``w (T, K, 1, n, n)``."""
    from stochclosure.training.finetune import FinetuneWindows

    starts = list(range(w.shape[1] - records)) if starts is None else starts
    w0 = torch.cat([w[:, j] for j in starts])
    truth = torch.cat([w[:, j + 1: j + 1 + records] for j in starts])
    return FinetuneWindows(w0=w0, truth=truth, record_every=record_every)


def finetuned(name: str, system: Any, data: dict[str, Any], work: Path, rho: float, dt: float,
              record_every: int) -> tuple[Any, dict[str, Any]]:
    """The law fine-tuned with variant ``name`` (cached), and its history."""
    from stochclosure.training.finetune import FinetuneConfig, finetune

    law, _ = train_law("crps", system, CONFIG, data, work, "gaussian-two_thirds")
    cfg = FinetuneConfig(**{**FT, **VARIANTS[name]}, rho=rho)

    def run() -> dict[str, Any]:
        t0 = time.perf_counter()
        res = finetune(law, system, windows_of(data["train_traj"], cfg.records, record_every), cfg, dt=dt,
                       val=windows_of(data["val_traj"], cfg.records, record_every, VAL_STARTS), progress=False)
        return {"state": res.law.state_dict(), "history": res.history, "best_step": res.best_step,
                "seconds": time.perf_counter() - t0, "config": cfg.to_dict()}

    stored = cached(work, f"finetune-v1-{name}", run)
    law.load_state_dict(stored["state"])
    law.eval()
    return law, stored


def evaluate(system: Any, law: Any, wv: Tensor, rho: float, alpha: float, dt: float, interval: float) -> list[Any]:
    """Online validation scores at ``EVAL["times"]`` from the validation trajectories' first record."""
    steps = [round(t / dt) for t in EVAL["times"]]
    recs = [round(t / interval) for t in EVAL["times"]]
    ens = run_ensemble(system, drawer(law, rho, alpha), wv[:, 0], EVAL["members"], steps, dt, EVAL["seed"])
    truth = torch.stack([wv[:, r] for r in recs]).double()
    return online_scores(ens, truth, torch.arange(wv.shape[0]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    parser.add_argument("--work", type=Path, default=WORK / "full", help="the closures study's work folder")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS),
                        help="the variants to fine-tune (the report lists those computed)")
    parser.add_argument("--skip-inflated", action="store_true", help="leave out the inflated base law")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    t0 = time.time()
    work, key = args.work, "/".join(SETTINGS[0])
    raw = {s: stored_stage(work, f"dns-{s}") for s in ("train", "val")}
    system = system_of(CONFIG, SETTINGS[0])
    data = {s: (raw[s][f"{key}:w"].flatten(0, 1), raw[s][f"{key}:u"].flatten(0, 1)) for s in raw}
    data["train_traj"], data["val_traj"] = raw["train"][f"{key}:w"], raw["val"][f"{key}:w"]
    dt = CONFIG["coarse_every"] * system.dt
    interval = CONFIG["record_every"] * CONFIG["fine"]["dt"]
    record_every = round(interval / dt)
    mem = residual_memory(system, CONFIG, raw["train"][f"{key}:w"], raw["train"][f"{key}:u"])
    rho = math.exp(-dt / mem["tau"])
    _log(f"rho per coarse step {rho:.4f} (tau {mem['tau']:.3f})")
    base, _ = train_law("crps", system, CONFIG, data, work, "gaussian-two_thirds")
    extra = work / "online-extra-gaussian-two_thirds.pt"
    if extra.exists():  # the study's validation-fitted inflation of this law (its test scores are not read)
        alpha = float(torch.load(extra, weights_only=True)["alpha"])
    else:
        alpha = cached(work, "finetune-inflation", lambda: online_inflation(
            system, CONFIG, {"val": (raw["val"][f"{key}:w"], None)}, base, rho)[0])
    wv = raw["val"][f"{key}:w"]
    rows: dict[str, Any] = {}
    rows["base law"] = cached(work, "finetune-eval-base", lambda: evaluate(system, base, wv, rho, 1.0, dt, interval))
    if not args.skip_inflated:
        rows[f"base law, post-hoc inflation x{alpha:.2f}"] = cached(
            work, "finetune-eval-inflated", lambda: evaluate(system, base, wv, rho, alpha, dt, interval))
    runs = {}
    for name in args.variants:
        _log(f"fine-tuning ({name})")
        law, runs[name] = finetuned(name, system, data, work, rho, dt, record_every)
        rows[f"fine-tuned ({name}), best step {runs[name]['best_step']}"] = cached(
            work, f"finetune-v1-eval-{name}", lambda law=law: evaluate(system, law, wv, rho, 1.0, dt, interval))
        _log(f"{name}: {rows[list(rows)[-1]]}")
    write(args.out, rows, runs, rho, alpha, (time.time() - t0) / 60)
    return 0


def write(out: Path, rows: dict[str, Any], runs: dict[str, Any], rho: float, alpha: float, minutes: float) -> None:
    out.mkdir(parents=True, exist_ok=True)
    meta = {"platform": f"{platform.machine()}, {platform.python_version()}", "torch": torch.__version__,
            "minutes": minutes}
    atomic_write_text(out / "finetune_closures.json", json.dumps(
        {"meta": meta, "finetune": FT, "variants": VARIANTS, "rho": rho, "alpha": alpha, "eval": EVAL,
         "scores": rows, "runs": {k: {kk: vv for kk, vv in v.items() if kk != "state"} for k, v in runs.items()}},
        indent=1))
    times = EVAL["times"]
    lines = ["# A-posteriori fine-tuning of the Gaussian residual law (validation split)", "",
             f"`python benchmarks/finetune_closures.py` ({meta['platform']}, torch {meta['torch']}, 1 thread, "
             f"{minutes:.1f} min in the last invocation, which reads the stages cached by earlier ones; the fine-tuning "
             "times below are wall times on a shared, loaded machine).", "", (__doc__ or "").split("\n\n", 2)[2].strip(), "",
             f"Fine-tuning: `{json.dumps(FT)}`, AR(1) rho per coarse step {rho:.4f}; variants "
             f"`{json.dumps(VARIANTS)}`. Post-hoc inflation alpha = {alpha:.3f} (fitted on validation rollouts "
             f"at t = 0.24).", "",
             "| closure | " + " | ".join(f"{m} t = {t:g}" for m in ("error", "CRPS", "spread-skill") for t in times)
             + " |", "|---" * (1 + 3 * len(times)) + "|"]
    for name, sc in rows.items():
        cells = [f"{sc[i][m][0]:.4g} ± {sc[i][m][1]:.2g}" for m in ("error", "crps", "spread_skill")
                 for i in range(len(times))]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "Fine-tuning histories (validation score: normalised fair CRPS over the window records; "
              "spread-skill at the last record):", ""]
    for name, run in runs.items():
        lines.append(f"- {name} ({run['seconds']:.0f} s): " + "; ".join(
            f"step {h['step']}: {h['val_crps']:.4g} / {h['val_spread_skill']:.3f}" for h in run["history"]))
    atomic_write_text(out / "finetune_closures.md", "\n".join(lines) + "\n")
    _log(f"wrote {out / 'finetune_closures.md'}")


if __name__ == "__main__":
    sys.exit(main())
