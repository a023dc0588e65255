"""Learned closures against the strongest classical closures of the 2-D subgrid term, with calibration.

``python benchmarks/closures.py`` (about 30 minutes on one core, most of it the DNS, the training and
the diffusion draws) writes ``benchmarks/results/closures.md`` and ``.json``; every stage is cached
in ``benchmarks/work/closures/`` (ignored by git) so an interrupted run resumes where it stopped
(``--fresh`` discards the cache). ``--quick`` is a smoke run on a tiny DNS (seconds) that writes
``closures_quick.*``.

Setting: the DNS of ``benchmarks/physics_closures.py`` (128², ``nu = 2e-4``, ``dt = 2.5e-4``, no
stochastic forcing), filtered to 32² in two ways: Gaussian filter of width ``2/n`` with the coarse
solver's 2/3-rule nonlinear term (the main setting, where the closure is almost a function of the
coarse field) and sharp spectral cut-off with the exact coarse nonlinear term (the genuinely
stochastic setting: the closure is the true subgrid term only). 32 independent trajectories,
split by trajectory: 20 train, 4 validation, 8 test; each spun up 0.25 time units, then recorded
every 0.02 (16 records for train / validation, 31 for test). The whole configuration (sizes, seeds,
steps, architectures) was fixed before any test score was computed; only the spread inflation is
tuned, on the validation split.

Closures, each fitted or trained on the training split and scored on the test split in one run: no
closure; Smagorinsky with ``c_s`` fitted by least squares; ADM of order 10; the gradient model;
ADM + white / coloured Gaussian noise with the amplitude (and spectrum) fitted on the training
residuals ``U - ADM``; the coloured one with a post-hoc spread inflation fitted on the validation
split (offline: the factor that makes the validation spread-skill 1; online: the same on
validation rollouts); a deterministic FNO (modes up to the grid's Nyquist, D4 augmentation, ADM
as an input channel, mean squared error); and the heteroscedastic Gaussian residual law
``U = ADM + r``, ``r ~ N(mu(y), sigma(y)^2)`` coloured in space, ADM as an input channel, trained
by the Gaussian CRPS (both settings) or the NLL (Gaussian filter) through ``ResidualLaw.loss``; and
a diffusion closure of the residual, ``U = mu(y) + r`` with ``r`` drawn by a ``ClosureModel`` (VP SDE,
the same FNO backbone conditioned on the field and ``mu``; ``mu`` is ADM with the Gaussian filter and the
study's trained deterministic FNO with the sharp one, where ADM is zero; trained by ``stochclosure.Trainer`` with
log-normal noise levels for its own, longer schedule fixed on the validation split) with
DPM-Solver++(2M) (plus the final denoising step), and its consistency-distilled student
(``stochclosure.training.distill``, 1-2 network evaluations per draw), scored offline (and online with
the sharp filter, ``closures_sharp.py``).

Offline scores on the test snapshots, with standard errors over the 8 test trajectories: R² of the
ensemble mean, fair CRPS, energy score, spread-skill, 80 % interval coverage (16 draws), the
spectrum error (mean over radial wavenumbers ``1..n/2`` of ``|log10(S_draws / S_true)|``) and
network evaluations per draw. Online (Gaussian filter): 8 held-out cases (the 8 test trajectories
from their first record), 8 members for the stochastic laws, the closure drawn
at every coarse step (``dt = 1e-3``, four DNS steps), compared with the filtered DNS at t = 0.1,
0.24 and 0.5: relative error of the ensemble mean, fair CRPS and spread-skill, with standard errors
over the 8 trajectories, and the share of finite runs. The noise laws are drawn every step either
afresh (white in time) or with an AR(1) in their latent whose memory is the fitted memory of
the training residual ``U - ADM``.

The online goals are scored on a fresh held-out set: 40 new trajectories of the same DNS (seed
``1000 seed + 100``, apart from the train / validation / test seeds), the same spin-up and
Gaussian filter with the 2/3 rule, recorded every 0.02 to t = 1 after their start. Its whole
configuration (cases, members, horizons, the hold, the closures and their names) was fixed before
any score on it was computed, and nothing is tuned on it. Every closure runs all 40 cases x 8
members in one batched solver call to t = 1 (a 1-member run for the deterministic closures),
scored at t = 0.1, 0.24, 0.5 and 1: relative error of the ensemble mean, fair CRPS and
spread-skill with standard errors over the 40 cases (paired per-case differences against ADM),
the rank histogram of the truth at a 4 x 4 lattice of grid points pooled over the cases, the
spectrum error of the members at t = 1 and the share of finite runs. The Gaussian residual law
is drawn every coarse step or every k = 5 steps and held in between (0.2 network evaluations
per step; its AR(1) latent advanced by ``rho^k`` between draws), with ADM evaluated every step
or held too, and with a spread inflation fitted on validation rollouts at t = 0.24 for the held
draws. Cost is seconds per member per simulated time unit of the batched ensemble on one thread,
with a batched DNS of the same number of trajectories timed just before it in the same run, both
as CPU time of the process (one thread), so that other jobs on the machine do not enter the cost.
Later stages (``closures_horizon.py``): three pre-registered confirmations on 40 more fresh
trajectories each (seed offsets 200, 300, 600), a fine-tune on longer windows, and the fine-tuned
law's spread factor and AR(1) memory chosen on 40 fresh validation trajectories (seed offset 500).
"""

from __future__ import annotations

import argparse
import io
import json
import math
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent))
import closures_horizon  # noqa: E402
import closures_sharp  # noqa: E402

# the report module defines the closure names; they and the table helpers are re-exported for the stage
# modules (closures_sharp, closures_horizon) and scripts that reach them as `study.<name>`
from closures_report import (  # noqa: E402, F401
    LATE,
    LEARNED,
    MEANS,
    SSR_CAPTION,
    _pm,
    goals_online40_of,
    online40_shape_table,
    online40_table,
    write_markdown,
)
from physics_closures import FINE, QUICK_FINE, atomic_write_text  # noqa: E402

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"
WORK = ROOT / "work" / "closures"

SETTINGS = [("gaussian", "two_thirds"), ("spectral", "exact")]
CONFIG: dict[str, Any] = {
    "fine": FINE, "n": 32, "seed": 11, "spinup_steps": 1000, "record_every": 80,
    "trajectories": {"train": 20, "val": 4, "test": 8}, "records": {"train": 16, "val": 16, "test": 31},
    "coarse_every": 4, "adm_order": 10, "draws": 16,
    "backbone": {"type": "fno", "sde": "vp", "encoder": {"type": "field"}, "width": 16, "modes": 16, "layers": 4},
    "train": {"batch_size": 16, "max_steps": 400, "lr": 3e-3, "warmup_steps": 20, "ema_rel_std": 0.05,
              "augment": "d4", "val_every": 200, "seed": 0},
    "online": {"starts": [0], "members": 8, "times": [0.1, 0.24, 0.5], "val_time": 0.24, "seed": 3},
    "diffusion": {"tag": "s1500", "sampler": "dpm_solver_pp_2m", "steps": [8], "time_law": "lognormal",
                  "train": {"max_steps": 1500, "val_every": 500, "val_draws": 4},
                  # sharp filter: ADM is zero there, so the remainder is modelled around the deterministic FNO
                  # (fixed on validation: CRPS 0.07248 vs 0.1007 for the residual around ADM, 0.07251 Gaussian law)
                  "settings": {"spectral/exact": {"tag": "detmean-s3000", "mean": "deterministic",
                                                  "train": {"max_steps": 3000, "val_every": 1000, "val_draws": 4}}},
                  "distill": {"levels": [1.0, 0.3], "teacher_steps": 4, "max_steps": 200, "lr": 1e-3,
                              "warmup_steps": 10, "eval": 2}},
    "online40": {"cases": 40, "records": 51, "seed_offset": 100, "members": 8, "times": [0.1, 0.24, 0.5, 1.0],
                 "hold": 5, "rank_points": 4, "dns_cost_steps": 8, "cost_reps": 10, "seed": 13},
    "finetune": {"records": 5, "stride": 5, "steps": 40, "members": 4, "windows_per_step": 4, "hold": 5, "lr": 3e-4,
                 "val_every": 10},
    # the cost route to 20x: with the measured parts (coarse step 0.026, ADM 0.27, network draw 2.5 s per member
    # per time unit, DNS ~13) a draw every k steps needs k >= 7.1; k = 10 fine-tuned for that hold (fixed before
    # any score of it; the rest of the fine-tune as above)
    "finetune_long": {"hold": 10},
    # added after the first look at the held-10 run (over-dispersed): the fine-tunes above held ADM too between
    # draws, unlike the online runs, which evaluate ADM every step; these fine-tune in the online form
    "finetune_remainder": {"holds": [5, 10]},
    # a confirmation on 40 more fresh trajectories (seed offset 200, never scored before), fixed before any score
    # on them: the configuration the first 40 cases pointed to after their look (the fine-tuned law drawn every
    # 10 steps), the same law every 5 steps, and the baselines its goals are measured against
    "confirm": {"seed_offset": 200, "runs": ["ADM order 10", "Smagorinsky, fitted c_s", "ADM + coloured noise, AR(1)",
                                             "ADM + Gaussian residual (CRPS), fine-tuned, AR(1), held 5",
                                             "ADM + Gaussian residual (CRPS), fine-tuned, AR(1), held 10"]},
    # added after the confirmation (spread-skill 0.68 at t = 0.5 for the fine-tuned law drawn every 10 steps): that
    # law fine-tuned further on 0.3-time-unit windows in the online form (``closures_horizon.py``), and a second
    # pre-registered confirmation on 40 more fresh trajectories (seed offset 300), its runs fixed before the fine-tune
    "finetune_horizon": {"records": 15, "hold": 10, "steps": 40},
    "confirm_horizon": {"seed_offset": 300, "runs": [
        "ADM order 10", "Smagorinsky, fitted c_s", "ADM + coloured noise, AR(1)",
        "ADM + Gaussian residual (CRPS), fine-tuned, AR(1), held 10",
        "ADM + Gaussian residual (CRPS), fine-tuned on 15-record windows (ADM every step), AR(1), held 10"]},
    # added after the long-window fine-tune's validation (no gain in spread at t = 0.3): the first fine-tuned law drawn
    # every 10 steps, its spread factor and AR(1) memory chosen on 40 fresh validation trajectories to t = 0.5 (seed
    # offset 500; rule fixed before any run: smallest max |log spread-skill| at t = 0.24 and 0.5, ties to the lower
    # CRPS at 0.5), then a third pre-registered confirmation on 40 more fresh trajectories (seed offset 600) to t = 1
    "calibrate_horizon": {"seed_offset": 500, "records": 26, "times": [0.1, 0.24, 0.5], "at": [0.24, 0.5],
                          "alphas": [1.0, 1.15, 1.3], "memory": [1, 2, 4], "hold": 10},
    "confirm_calibrated": {"seed_offset": 600, "runs": [
        "ADM order 10", "Smagorinsky, fitted c_s", "ADM + coloured noise, AR(1)",
        "ADM + Gaussian residual (CRPS), fine-tuned, AR(1), held 10",
        "ADM + Gaussian residual (CRPS), fine-tuned, calibrated on validation runs to t = 0.5, AR(1), held 10"]},
    "online_sharp": {"members": 8, "times": [0.1, 0.24, 0.5], "hold": 5, "seed": 17, "student": True,
                     "extra": True},  # extra: inflated variants added after the first look at the test scores
    # a widened test set, added after the first look at the 8-case sharp online scores (the diffusion closure and the
    # Gaussian law within 1.2-2.3 SE on 8 cases): every closure of online_sharp (its extra runs included) with its
    # members, hold and seed, the validation-fitted inflations already cached, from the 40 fresh held-out cases of
    # online40 (the same DNS: seed, spin-up, records), sharp-filtered. Decided from the measured costs before any
    # score: the ten runs cost ~29 CPU min to t = 0.5 (the two diffusion-teacher runs 3.5-3.8 CPU s per member per
    # time unit x 320 members each, ~19 min of it) and ~57 to t = 1; the DNS ~12 CPU min for 26 records, ~20 for 51
    # (estimated from the Gaussian-filter stage's wall clock; measured afterwards, before any score: 3.1 for 26).
    # t = 1 does not fit the time available, so the horizons are those of the 8-case study, t = 0.5 (26 records).
    "online_sharp40": {"records": 26, "times": [0.1, 0.24, 0.5]},
}
QUICK: dict[str, Any] = {
    **CONFIG, "fine": QUICK_FINE, "n": 16, "spinup_steps": 20, "record_every": 10,
    "trajectories": {"train": 3, "val": 1, "test": 2}, "records": {"train": 3, "val": 3, "test": 6},
    "coarse_every": 2, "adm_order": 10, "draws": 4,
    "backbone": {"type": "fno", "sde": "vp", "encoder": {"type": "field"}, "width": 8, "modes": 4, "layers": 2},
    "train": {**CONFIG["train"], "batch_size": 4, "max_steps": 6, "warmup_steps": 0, "val_every": 6},
    "online": {"starts": [0], "members": 3, "times": [0.02, 0.04], "val_time": 0.02, "seed": 3},
    "diffusion": {"tag": "s1500", "sampler": "dpm_solver_pp_2m", "steps": [2], "time_law": "lognormal",
                  "train": {"max_steps": 6, "val_every": 6, "val_draws": 2},
                  "settings": {"spectral/exact": {"tag": "detmean", "mean": "deterministic"}},
                  "distill": {"levels": [1.0, 0.3], "teacher_steps": 2, "max_steps": 2, "lr": 1e-3,
                              "warmup_steps": 0, "eval": 2}},
    "online40": {"cases": 3, "records": 5, "seed_offset": 100, "members": 3, "times": [0.02, 0.04],
                 "hold": 2, "rank_points": 2, "dns_cost_steps": 2, "cost_reps": 1, "seed": 13},
    "finetune": {"records": 2, "stride": 1, "steps": 2, "members": 2, "windows_per_step": 2, "hold": 2, "lr": 3e-4,
                 "val_every": 1},
    "finetune_long": {"hold": 3},
    "finetune_remainder": {"holds": [2]},
    "confirm": {"seed_offset": 300, "runs": ["ADM order 10", "Smagorinsky, fitted c_s", "ADM + coloured noise, AR(1)",
                                             "ADM + Gaussian residual (CRPS), fine-tuned, AR(1), held 2",
                                             "ADM + Gaussian residual (CRPS), fine-tuned, AR(1), held 3"]},
    "finetune_horizon": {"records": 2, "hold": 2, "steps": 2},
    "confirm_horizon": {"seed_offset": 400, "runs": [
        "ADM order 10", "Smagorinsky, fitted c_s", "ADM + coloured noise, AR(1)",
        "ADM + Gaussian residual (CRPS), fine-tuned, AR(1), held 2",
        "ADM + Gaussian residual (CRPS), fine-tuned on 2-record windows (ADM every step), AR(1), held 2"]},
    "calibrate_horizon": {"seed_offset": 500, "records": 5, "times": [0.02, 0.04], "at": [0.02, 0.04],
                          "alphas": [1.0, 1.3], "memory": [1, 2], "hold": 2},
    "confirm_calibrated": {"seed_offset": 600, "runs": [
        "ADM order 10", "Smagorinsky, fitted c_s", "ADM + coloured noise, AR(1)",
        "ADM + Gaussian residual (CRPS), fine-tuned, AR(1), held 2",
        "ADM + Gaussian residual (CRPS), fine-tuned, calibrated on validation runs to t = 0.04, AR(1), held 2"]},
    "online_sharp": {"members": 3, "times": [0.02, 0.04], "hold": 2, "seed": 17, "student": True, "extra": True},
    "online_sharp40": {"records": 5, "times": [0.02, 0.04]},
}


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# -- the work folder ------------------------------------------------------------------------------------
def _save(path: Path, obj: Any) -> None:
    from stochclosure.checkpoint import atomic_write_bytes

    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


COMPUTED: list[str] = []
REPORT_PENDING = False  # --pending: report the fresh-case online runs computed so far, list the others


def cached(work: Path, name: str, make: Callable[[], Any]) -> Any:
    """``make()``, stored as ``work/name.pt`` and read back on the next run."""
    path = work / f"{name}.pt"
    if path.exists():
        return torch.load(path, weights_only=True)  # tensors, numbers, strings and containers only
    value = make()
    _save(path, value)
    COMPUTED.append(name)
    return value


def record_invocation(work: Path, minutes: float) -> list[dict[str, Any]]:
    """Append this invocation (minutes, stages computed) to ``work/runs.json``; returns every invocation."""
    path = work / "runs.json"
    runs = json.loads(path.read_text()) if path.exists() else []
    runs.append({"minutes": round(minutes, 2), "computed": list(COMPUTED)})
    atomic_write_text(path, json.dumps(runs, indent=1))
    return runs


# -- data --------------------------------------------------------------------------------------------------
def system_of(cfg: dict[str, Any], setting: tuple[str, str]) -> Any:
    from stochclosure.systems.subgrid import NavierStokes2DSubgrid

    return NavierStokes2DSubgrid(n=cfg["n"], filter=setting[0], coarse_nonlinear=setting[1], **cfg["fine"])


def dns_split(cfg: dict[str, Any], split: str) -> dict[str, Tensor]:
    """Filtered fields and closures of one split, ``(trajectories, records, 1, n, n)`` float32, per setting."""
    systems = [system_of(cfg, s) for s in SETTINGS]
    fine = systems[0]
    t0 = time.perf_counter()
    gen = torch.Generator().manual_seed(cfg["seed"] * 1000 + ["train", "val", "test"].index(split))
    w = fine.fine_initial_state(cfg["trajectories"][split], generator=gen, dtype=torch.float64)
    w = fine.fine.simulate(w, cfg["spinup_steps"], generator=gen)
    out: dict[str, list[Tensor]] = {}
    for r in range(cfg["records"][split]):
        if r:
            w = fine.fine.simulate(w, cfg["record_every"], generator=gen)
        for s, sysm in zip(SETTINGS, systems):
            key = "/".join(s)
            out.setdefault(f"{key}:w", []).append(sysm.filter(w).float())
            out.setdefault(f"{key}:u", []).append(sysm.closure_term(w).float())
    steps = cfg["spinup_steps"] + (cfg["records"][split] - 1) * cfg["record_every"]
    cost = (time.perf_counter() - t0) / (cfg["trajectories"][split] * steps * cfg["fine"]["dt"])
    return {**{k: torch.stack(v, 1) for k, v in out.items()}, "dns_seconds_per_time_unit": torch.tensor(cost)}


def flat(x: Tensor) -> Tensor:
    """``(T, R, 1, n, n) -> (T * R, 1, n, n)``."""
    return x.flatten(0, 1)


# -- closures ------------------------------------------------------------------------------------------------
class Inflated:
    """``physics.mean + alpha * remainder draw`` of a physics + remainder law (post-hoc spread inflation)."""

    def __init__(self, law: Any, alpha: float) -> None:
        self.law, self.alpha = law, float(alpha)
        self.physics, self.residual = law.physics, law.residual
        self.nfe_per_draw = law.nfe_per_draw

    def sample(self, cond: Any, n: int, *, generator: torch.Generator | None = None) -> Tensor:
        m = self.physics.mean(cond)
        return m + self.alpha * (self.law.sample(cond, n, generator=generator) - m)


class SpreadScaled:
    """``mean + alpha * (draw - mean)`` of a law with a ``mean``: its spread scaled, its mean kept.

    Unlike :class:`Inflated`, which scales the whole remainder (its mean included, harmless for a zero-mean
    noise), this is the post-hoc calibration of a learned law whose remainder has a mean of its own.
    """

    def __init__(self, law: Any, alpha: float) -> None:
        self.law, self.alpha = law, float(alpha)
        self.nfe_per_draw = law.nfe_per_draw

    def sample(self, cond: Any, n: int, *, generator: torch.Generator | None = None) -> Tensor:
        m = self.law.mean(cond)
        return m + self.alpha * (self.law.sample(cond, n, generator=generator) - m)


def physics_laws(system: Any, cfg: dict[str, Any], train: tuple[Tensor, Tensor]) -> dict[str, Any]:
    from stochclosure._types import Conditioning
    from stochclosure.closures import ADM, GradientModel, PhysicsPlusNoise, Smagorinsky

    w, u = train
    adm = ADM.from_system(system, order=cfg["adm_order"])
    smag = Smagorinsky.fit(Conditioning(fields=w), u, filter=system.filter_kind, filter_width=system.filter_width,
                           coarse_nonlinear=system.coarse_nonlinear)
    out = {"Smagorinsky, fitted c_s": smag, f"ADM order {cfg['adm_order']}": adm,
           "gradient": GradientModel.from_system(system)}
    for noise in ("white", "coloured"):
        law = PhysicsPlusNoise(ADM.from_system(system, order=cfg["adm_order"]), noise)
        out[f"ADM + {noise} noise"] = law.fit(Conditioning(fields=w), u)
    return out


def learned_law(kind: str, system: Any, cfg: dict[str, Any]) -> Any:
    from stochclosure.closures import ADM, DeterministicClosure, GaussianClosure, ResidualLaw

    backbone = {**cfg["backbone"], "encoder": {"type": "field", "channels": 2}}
    inputs = [ADM.from_system(system, order=cfg["adm_order"])]
    if kind == "deterministic":
        return DeterministicClosure(backbone, inputs=inputs)
    remainder = GaussianClosure(backbone, loss=kind, noise="coloured", spectrum_bins=cfg["n"], inputs=inputs)
    return ResidualLaw(ADM.from_system(system, order=cfg["adm_order"]), remainder)


def train_law(kind: str, system: Any, cfg: dict[str, Any], data: dict[str, tuple[Tensor, Tensor]],
              work: Path, key: str) -> tuple[Any, dict[str, Any]]:
    """Train (or load) the learned law ``kind`` on the training split; returns it and its history."""
    from stochclosure._types import Conditioning
    from stochclosure.data import TensorClosureDataset
    from stochclosure.training import Trainer

    torch.manual_seed(cfg["train"]["seed"])
    law = learned_law(kind, system, cfg)
    (w, u), (wv, uv) = data["train"], data["val"]
    if kind != "deterministic":
        law.fit_normalisation(Conditioning(fields=w), u)

    def fit() -> dict[str, Any]:
        t0 = time.perf_counter()
        opts = {k: v for k, v in cfg["train"].items() if k != "seed"}
        trainer = Trainer(law, TensorClosureDataset(u, fields=w), TensorClosureDataset(uv, fields=wv),
                          seed=cfg["train"]["seed"], val_draws=0 if kind == "deterministic" else 4,
                          progress=False, normalise_targets=kind == "deterministic", **opts)
        result = trainer.fit()
        return {"state": law.state_dict(), "seconds": time.perf_counter() - t0,
                "history": [dict(h) for h in getattr(result, "history", [])][-2:]}

    stored = cached(work, f"law-{key}-{kind}", fit)
    law.load_state_dict(stored["state"])
    law.eval()
    return law, {"seconds": stored["seconds"], "history": stored["history"]}


# -- offline scores -------------------------------------------------------------------------------------------
def spectrum_error(draws: Tensor, truth: Tensor) -> float:
    """Mean over radial wavenumbers ``1..n/2`` of ``|log10(S_draws / S_true)|`` (``draws (M, N, 1, n, n)``)."""
    from stochclosure.closures.learned import isotropic_spectrum

    n = truth.shape[-1]
    sd = isotropic_spectrum(draws.flatten(0, 1), n // 2 + 1)[0, 1:].double()
    st = isotropic_spectrum(truth, n // 2 + 1)[0, 1:].double()
    if not bool((sd > 0).all()):
        return float("inf")  # a closure that is zero at some wavenumber (no closure)
    return float((sd.clamp_min(1e-300) / st.clamp_min(1e-300)).log10().abs().mean())


def scorecard(draws: Tensor, truth: Tensor) -> dict[str, float]:
    """Offline scores of draws ``(M, N, 1, n, n)`` against ``truth (N, 1, n, n)``."""
    from stochclosure.metrics import offline_scores

    out = offline_scores(draws, truth) if draws.shape[0] > 1 else {
        **offline_scores(draws.repeat(2, 1, 1, 1, 1), truth), "spread_skill": 0.0}
    out["spectrum"] = spectrum_error(draws, truth)
    return out


def with_errors(per_group: list[dict[str, float]], pooled: dict[str, float]) -> dict[str, Any]:
    """Pooled values with standard errors over groups (trajectories): ``{name: [value, se]}``."""
    out = {}
    for k, v in pooled.items():
        vals = torch.tensor([g[k] for g in per_group], dtype=torch.float64)
        se = float(vals.std() / math.sqrt(len(vals))) if len(vals) > 1 else float("nan")
        out[k] = [float(v), se]
    return out


def offline(law: Any, w: Tensor, u: Tensor, draws: int, seed: int) -> dict[str, Any]:
    """Scores of ``law`` on test snapshots ``w, u`` ``(T, R, 1, n, n)``, pooled and per trajectory."""
    from stochclosure._types import Conditioning

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        if law is None:
            d = torch.zeros(1, *flat(u).shape)
        elif _is_dirac(law):
            d = law.mean(Conditioning(fields=flat(w))).unsqueeze(0)
        else:
            d = law.sample(Conditioning(fields=flat(w)), draws, generator=gen)
    d = d.reshape(d.shape[0], *u.shape)
    per = [scorecard(d[:, i], u[i]) for i in range(u.shape[0])]
    out = with_errors(per, scorecard(d.flatten(1, 2), flat(u)))
    out["nfe_per_draw"] = float(getattr(law, "nfe_per_draw", 0.0)) if law is not None else 0.0
    return out


def _is_dirac(law: Any) -> bool:
    from stochclosure.closures import DeterministicClosure, PhysicsClosure

    return isinstance(law, (PhysicsClosure, DeterministicClosure))


def inflation_offline(law: Any, wv: Tensor, uv: Tensor, draws: int) -> float:
    """The factor that makes the validation spread-skill of ``law``'s remainder 1."""
    from stochclosure._types import Conditioning
    from stochclosure.metrics import spread_skill_ratio

    cond = Conditioning(fields=flat(wv))
    with torch.no_grad():
        ssr = float(spread_skill_ratio(law.sample(cond, draws, generator=torch.Generator().manual_seed(1)), flat(uv)))
    return 1.0 / ssr


# -- online -----------------------------------------------------------------------------------------------------
def drawer(law: Any, rho: float, alpha: float = 1.0, hold: int = 1, hold_physics: bool = False
           ) -> Callable[[Tensor, torch.Generator, dict[str, Any]], Tensor]:
    """A closure callable ``(state, generator, memory) -> U``.

    Dirac laws give their mean; physics + remainder laws give ``physics.mean + alpha * remainder.draw(z)``
    with the latent ``z`` an AR(1) in time, ``z <- rho z + sqrt(1 - rho^2) xi`` (``rho = 0``: a
    fresh draw every step), kept in ``memory``. With ``hold = k`` the remainder is drawn every ``k``
    calls and held in between (``k`` times fewer network evaluations), the latent advanced by
    ``rho^k`` between draws; the physics closure is still evaluated at every call unless
    ``hold_physics``, which holds the whole closure ``U``.
    """
    from stochclosure._types import Conditioning

    if isinstance(hold, bool) or not isinstance(hold, int) or hold < 1:
        from stochclosure.errors import ConfigError, format_error

        raise ConfigError(format_error("hold", "an integer >= 1 (coarse steps per draw)", repr(hold)))
    rk = rho**hold

    def remainder(cond: Any, w: Tensor, gen: torch.Generator, memory: dict[str, Any]) -> Tensor:
        shape = (w.shape[0], *law.residual.latent_shape(cond, tuple(w.shape[2:])))
        xi = torch.randn(shape, generator=gen)
        z = memory.get("z")
        z = xi if z is None else rk * z + math.sqrt(1 - rk**2) * xi
        memory["z"] = z
        return alpha * law.residual.draw(cond, z, grid=tuple(w.shape[2:]))

    def call(w: Tensor, gen: torch.Generator, memory: dict[str, Any]) -> Tensor:
        cond = Conditioning(fields=w)
        step = memory.get("step", 0)
        memory["step"] = step + 1
        fresh = step % hold == 0
        if law is None:
            return torch.zeros_like(w)
        if hold_physics and not fresh:
            return memory["u"]
        if _is_dirac(law):
            u = law.mean(cond)
        else:
            if fresh:
                memory["r"] = remainder(cond, w, gen, memory)
            u = law.physics.mean(cond) + memory["r"]
        if hold_physics:
            memory["u"] = u
        return u
    return call


def run_ensemble(system: Any, call: Callable[..., Tensor], w0: Tensor, members: int, steps: list[int], dt: float,
                 seed: int) -> Tensor:
    """Coarse ensemble from ``w0 (cases, 1, n, n)``; states at ``steps``, ``(len(steps), members, cases, 1, n, n)``.

    A member whose state becomes non-finite or exceeds ten times the initial maximum of ``|w|`` (the
    maximum of 2-D vorticity does not grow in the continuous equations, so that is a numerical
    blow-up) stays at ``inf`` (scored as not finite); the closure and the solver see zeros in its
    place, so that one member's blow-up cannot stop the others.
    """
    gen = torch.Generator().manual_seed(seed)
    w = w0.repeat(members, 1, 1, 1)
    memory: dict[str, Any] = {}
    out = []
    dead = torch.zeros(w.shape[0], dtype=torch.bool)      # members whose state has blown up (kept at inf)
    bound = 10 * float(w0.abs().max())                    # 2-D vorticity's maximum does not grow: 10x is a blow-up
    with torch.no_grad():
        for s in range(1, max(steps) + 1):
            live = w if not bool(dead.any()) else torch.where(dead.view(-1, 1, 1, 1), torch.zeros_like(w), w)
            w = system.step(live, call(live, gen, memory), dt=dt)
            dead |= ~(torch.isfinite(w) & (w.abs() <= bound)).flatten(1).all(1)
            if bool(dead.any()):
                w = torch.where(dead.view(-1, 1, 1, 1), torch.full_like(w, float("inf")), w)
            if s in steps:
                out.append(w.reshape(members, *w0.shape))
    return torch.stack(out)


def online_scores(states: Tensor, truth: Tensor, groups: Tensor) -> list[dict[str, Any]]:
    """Per time: ensemble-mean relative error, fair CRPS, spread-skill (pooled, SE over ``groups``), finite share."""
    from stochclosure.metrics import crps_ensemble, spread_skill_ratio

    out = []
    for ens, ref in zip(states, truth):  # (M, cases, 1, n, n), (cases, 1, n, n)
        finite = torch.isfinite(ens).flatten(2).all(-1).all(0).all(-1)
        ens = torch.where(torch.isfinite(ens), ens, torch.zeros_like(ens).fill_(1e6)).double()
        ref = ref.double()
        err = (ens.mean(0) - ref).flatten(1).norm(dim=1) / ref.flatten(1).norm(dim=1)
        m = ens.shape[0]
        crps = crps_ensemble(ens, ref, fair=m > 1).flatten(1).mean(1) if m > 1 else (ens[0] - ref).abs().flatten(1).mean(1)
        per = []
        for g in groups.unique():
            sel = groups == g
            ssr = float(spread_skill_ratio(ens[:, sel], ref[sel])) if m > 1 else 0.0
            per.append({"error": float(err[sel].mean()), "crps": float(crps[sel].mean()), "spread_skill": ssr})
        pooled = {"error": float(err.mean()), "crps": float(crps.mean()),
                  "spread_skill": float(spread_skill_ratio(ens, ref)) if m > 1 else 0.0}
        row = with_errors(per, pooled)
        row["finite"] = float(finite.double().mean())
        out.append(row)
    return out


# -- a diffusion closure of the residual (offline) --------------------------------------------------------------


class DiffusionResidual:
    """``U = mu(y) + r``, ``r`` drawn by a :class:`~stochclosure.ClosureModel` conditioned on ``(y, mu(y))``.

    ``mu`` is ADM or an already-trained learned mean (``mean_nfe`` network evaluations per draw, counted in
    ``nfe_per_draw``). ``sampler=None`` uses the model's own sampler (a distilled student's consistency sampler).
    """

    def __init__(self, model: Any, adm: Any, sampler: Any, steps: int | None, mean_nfe: float = 0.0) -> None:
        from stochclosure.registry import resolve

        self.model, self.adm, self.sampler, self.steps = model, adm, sampler, steps
        self.nfe_per_draw = float((model.sampler if sampler is None else resolve("sampler", sampler)).nfe(steps))
        self.nfe_per_draw += float(mean_nfe)

    def sample(self, cond: Any, n: int, *, generator: torch.Generator | None = None) -> Tensor:
        from stochclosure._types import Conditioning

        m = self.adm.mean(cond)
        c = Conditioning(fields=torch.cat([cond.fields, m], 1))
        r = torch.cat([self.model.sample(c.index(torch.arange(i, min(i + 64, c.batch_size))), n,
                                         sampler=self.sampler, steps=self.steps, generator=generator)
                       for i in range(0, c.batch_size, 64)], 1)
        return m + r


def diffusion_config(cfg: dict[str, Any], key: str) -> dict[str, Any]:
    """The diffusion options of one filter setting: ``cfg["diffusion"]`` with its per-setting overrides."""
    dc = cfg["diffusion"]
    return {**{k: v for k, v in dc.items() if k != "settings"}, **dc.get("settings", {}).get(key, {})}


def diffusion_mean(system: Any, cfg: dict[str, Any], data: dict[str, Any], work: Path, key: str) -> Any:
    """The mean ``mu`` the diffusion model works around: ADM, or the study's trained deterministic / Gaussian law."""
    from stochclosure.closures import ADM

    kind = diffusion_config(cfg, key).get("mean", "adm")
    if kind == "adm":
        return ADM.from_system(system, order=cfg["adm_order"])
    split = {s: (flat(data[s][0]), flat(data[s][1])) for s in ("train", "val")}
    return train_law(kind, system, cfg, split, work, key.replace("/", "-"))[0]  # cached stage: loaded, not retrained


def diffusion_pairs(mean: Any, data: dict[str, Any], split: str) -> tuple[Tensor, Tensor]:
    """The remainder ``U - mu`` and the conditioning fields ``(y, mu(y))`` of a split, ``(N, C, n, n)``."""
    from stochclosure._types import Conditioning

    w, u = flat(data[split][0]), flat(data[split][1])
    with torch.no_grad():
        m = mean.mean(Conditioning(fields=w)).to(u.dtype)
    return u - m, torch.cat([w, m], 1)


def diffusion_teacher(mean: Any, cfg: dict[str, Any], data: dict[str, Any], work: Path, key: str
                      ) -> tuple[Any, dict[str, Any]]:
    """Train (or load) the diffusion model of ``U - mu`` (VP, EDM-preconditioned FNO, log-normal noise levels)."""
    import stochclosure as sc
    from stochclosure.data import TensorClosureDataset
    from stochclosure.training import Trainer

    dc = diffusion_config(cfg, key)
    torch.manual_seed(cfg["train"]["seed"])
    backbone = {**cfg["backbone"], "encoder": {"type": "field", "channels": 2}}
    model = sc.ClosureModel("vp", backbone, {"type": dc["sampler"], "steps": max(dc["steps"])}, channels=1)

    def fit() -> dict[str, Any]:
        t0 = time.perf_counter()
        opts = {**{k: v for k, v in cfg["train"].items() if k != "seed"}, **dc.get("train", {})}
        (r, f), (rv, fv) = diffusion_pairs(mean, data, "train"), diffusion_pairs(mean, data, "val")
        result = Trainer(model, TensorClosureDataset(r, fields=f), TensorClosureDataset(rv, fields=fv),
                         seed=cfg["train"]["seed"], time_law=dc["time_law"], progress=False, **opts).fit()
        return {"state": model.state_dict(), "seconds": time.perf_counter() - t0,
                "history": [dict(h) for h in result.history]}

    stored = cached(work, f"law-{key.replace('/', '-')}-diffusion-{dc['tag']}", fit)
    model.load_state_dict(stored["state"])
    model.eval()
    return model, {"seconds": stored["seconds"], "history": stored["history"]}


def diffusion_student(teacher: Any, mean: Any, cfg: dict[str, Any], data: dict[str, Any], work: Path,
                      key: str) -> tuple[Any, dict[str, Any]]:
    """Consistency-distil (or load) the teacher into a 1-2 evaluation student (``stochclosure.training.distill``)."""
    from stochclosure.data import TensorClosureDataset
    from stochclosure.training.distill import Distiller, make_student

    dc = diffusion_config(cfg, key)
    dd = dc["distill"]
    teacher_sampler = {"type": dc["sampler"], "steps": dd["teacher_steps"]}
    student = make_student(teacher, dd["levels"], teacher_sampler, steps=dd["eval"])

    def fit() -> dict[str, Any]:
        t0 = time.perf_counter()
        r, f = diffusion_pairs(mean, data, "train")
        opts = {k: dd[k] for k in ("max_steps", "lr", "warmup_steps")}
        Distiller(student, teacher, TensorClosureDataset(r, fields=f), None, levels=dd["levels"],
                  teacher_sampler=teacher_sampler, batch_size=cfg["train"]["batch_size"],
                  ema_rel_std=cfg["train"]["ema_rel_std"], augment=cfg["train"]["augment"],
                  seed=cfg["train"]["seed"], progress=False, **opts).fit()
        return {"state": student.state_dict(), "seconds": time.perf_counter() - t0}

    stored = cached(work, f"law-{key.replace('/', '-')}-diffusion-{dc['tag']}-distilled", fit)
    student.load_state_dict(stored["state"])
    student.eval()
    return student, {"seconds": stored["seconds"]}


def diffusion_laws(system: Any, cfg: dict[str, Any], data: dict[str, Any], work: Path, key: str
                   ) -> tuple[dict[str, Any], dict[str, Any]]:
    """The diffusion remainder around ``mu`` with the teacher's sampler at each step count and the distilled student."""
    dc = diffusion_config(cfg, key)
    kind = dc.get("mean", "adm")
    mean = diffusion_mean(system, cfg, data, work, key)
    extra = 0.0 if kind == "adm" else 1.0  # the learned mean: one more network evaluation per draw
    teacher, info = diffusion_teacher(mean, cfg, data, work, key)
    info["config"] = dc
    label = "ADM + diffusion residual" if kind == "adm" else f"{MEANS[kind]} + diffusion remainder"
    laws = {f"{label} ({s} steps)": DiffusionResidual(teacher, mean, dc["sampler"], s, extra) for s in dc["steps"]}
    if dc.get("distill"):
        student, info["distilled"] = diffusion_student(teacher, mean, cfg, data, work, key)
        laws[f"{label}, distilled ({dc['distill']['eval']} NFE)"] = DiffusionResidual(student, mean, None, None, extra)
    return laws, info


def diffusion_residual(system: Any, cfg: dict[str, Any], data: dict[str, Any], work: Path, key: str
                       ) -> tuple[dict[str, Any], dict[str, Any]]:
    """Train a diffusion closure of ``U - mu`` (conditioned on the field and ``mu``) and score its draws offline."""
    laws, info = diffusion_laws(system, cfg, data, work, key)
    scores = {name: offline(law, *data["test"], cfg["draws"], seed=5) for name, law in laws.items()}
    return scores, info


# -- the study --------------------------------------------------------------------------------------------------
ONLINE_DIRAC = ("no closure", "Smagorinsky, fitted c_s", "ADM order 10", "gradient", "deterministic FNO (ADM input)")


def residual_memory(system: Any, cfg: dict[str, Any], w: Tensor, u: Tensor) -> dict[str, float]:
    """AR(1) fit of the training residual ``U - ADM`` in time and the count of decorrelated snapshots."""
    from stochclosure._types import Conditioning
    from stochclosure.closures import ADM, fit_ar1

    interval = cfg["record_every"] * cfg["fine"]["dt"]
    with torch.no_grad():
        r = flat(u) - ADM.from_system(system, order=cfg["adm_order"]).mean(Conditioning(fields=flat(w)))
    fit = fit_ar1(r.reshape(u.shape).transpose(0, 1).double(), dt=interval)
    rho, t, k = float(fit.rho), u.shape[0], u.shape[1]
    return {"rho": rho, "tau": float(fit.tau), "sigma": float(fit.sigma), "interval": interval,
            "snapshots": t * k, "decorrelated": t * k * (1 - rho) / (1 + rho)}


def all_laws(system: Any, cfg: dict[str, Any], data: dict[str, Any], work: Path, key: str,
             info: dict[str, Any]) -> dict[str, Any]:
    """Every closure of the comparison, fitted / trained on the training split."""
    train = (flat(data["train"][0]), flat(data["train"][1]))
    laws: dict[str, Any] = {"no closure": None, **physics_laws(system, cfg, train)}
    split = {s: (flat(data[s][0]), flat(data[s][1])) for s in ("train", "val")}
    kinds = [("deterministic", "deterministic FNO (ADM input)"), ("crps", "ADM + Gaussian residual (CRPS)")]
    if key == "/".join(SETTINGS[0]):
        kinds.append(("nll", "ADM + Gaussian residual (NLL)"))
    for kind, name in kinds:
        _log(f"{key}: training {name}")
        laws[name], info[name] = train_law(kind, system, cfg, split, work, key.replace("/", "-"))
    alpha = inflation_offline(laws["ADM + coloured noise"], *data["val"], cfg["draws"])
    info["offline inflation"] = alpha
    laws["ADM + coloured noise, inflated (val)"] = Inflated(laws["ADM + coloured noise"], alpha)
    return laws


def online_inflation(system: Any, cfg: dict[str, Any], data: dict[str, Any], law: Any, rho: float,
                     hold: int = 1) -> tuple[float, list[dict[str, float]]]:
    """Post-hoc inflation of ``law``'s AR(1) remainder: two fixed-point steps on validation rollouts."""
    oc = cfg["online"]
    dt = cfg["coarse_every"] * system.dt
    interval = cfg["record_every"] * cfg["fine"]["dt"]
    wv = data["val"][0]
    vrec, vstep = round(oc["val_time"] / interval), round(oc["val_time"] / dt)
    alphas, alpha = [], 1.0
    for _ in range(2):
        ens = run_ensemble(system, drawer(law, rho, alpha, hold), wv[:, 0], oc["members"], [vstep], dt,
                           oc["seed"] + 7)
        ssr = online_scores(ens, wv[:, vrec].double()[None], torch.arange(wv.shape[0]))[0]["spread_skill"][0]
        alphas.append({"alpha": alpha, "val_spread_skill": ssr})
        alpha = alpha / max(ssr, 1e-3)
    return alpha, alphas


def online_runs(system: Any, cfg: dict[str, Any], data: dict[str, Any],
                runs: dict[str, tuple[Any, float, float, int]]) -> dict[str, Any]:
    """Scores of the online ensembles ``{name: (law, rho, alpha, members)}`` from the held-out cases."""
    oc = cfg["online"]
    dt = cfg["coarse_every"] * system.dt
    interval = cfg["record_every"] * cfg["fine"]["dt"]
    recs = [round(t / interval) for t in oc["times"]]
    steps = [round(t / dt) for t in oc["times"]]
    wt = data["test"][0]
    w0 = torch.cat([wt[:, s] for s in oc["starts"]])
    truth = torch.stack([torch.cat([wt[:, s + r] for s in oc["starts"]]) for r in recs]).double()
    groups = torch.arange(wt.shape[0]).repeat(len(oc["starts"]))
    out = {}
    for name, (law, r, a, members) in runs.items():
        t0 = time.perf_counter()
        ens = run_ensemble(system, drawer(law, r, a), w0, members, steps, dt, oc["seed"])
        sec = time.perf_counter() - t0
        nfe = float(getattr(law, "nfe_per_draw", 0.0)) if law is not None else 0.0
        out[name] = {"members": members, "scores": online_scores(ens, truth, groups), "nfe_per_step": nfe,
                     "seconds_per_member_time_unit": sec / (members * w0.shape[0] * max(oc["times"]))}
        _log(f"online {name}: error {[round(v['error'][0], 4) for v in out[name]['scores']]}")
    return out


def online_study(system: Any, cfg: dict[str, Any], data: dict[str, Any], laws: dict[str, Any],
                 rho: float) -> dict[str, Any]:
    """Online ensembles of every closure from the held-out cases, plus the validation-fitted inflation."""
    oc = cfg["online"]
    coloured = laws["ADM + coloured noise"]
    alpha, alphas = online_inflation(system, cfg, data, coloured, rho)
    runs: dict[str, tuple[Any, float, float, int]] = {n: (laws[n], 0.0, 1.0, 1) for n in ONLINE_DIRAC}
    m = oc["members"]
    runs.update({
        "ADM + coloured noise, white in time": (coloured, 0.0, 1.0, m),
        "ADM + coloured noise, AR(1)": (coloured, rho, 1.0, m),
        "ADM + coloured noise, AR(1), inflated (val)": (coloured, rho, alpha, m),
        "ADM + Gaussian residual (CRPS), AR(1)": (laws["ADM + Gaussian residual (CRPS)"], rho, 1.0, m),
    })
    return {"times": oc["times"], "dt": cfg["coarse_every"] * system.dt,
            "cases": data["test"][0].shape[0] * len(oc["starts"]), "rho_per_step": rho, "inflation": alphas,
            "alpha": alpha, "laws": online_runs(system, cfg, data, runs)}


def online_extra(system: Any, cfg: dict[str, Any], data: dict[str, Any], laws: dict[str, Any],
                 rho: float) -> dict[str, Any]:
    """Added after the first look at the test scores: the Gaussian residual law with the same validation inflation."""
    law = laws["ADM + Gaussian residual (CRPS)"]
    alpha, alphas = online_inflation(system, cfg, data, law, rho)
    runs = {"ADM + Gaussian residual (CRPS), AR(1), inflated (val)": (law, rho, alpha, cfg["online"]["members"])}
    return {"inflation": alphas, "alpha": alpha, "laws": online_runs(system, cfg, data, runs)}


# -- the online study on fresh held-out cases ----------------------------------------------------------------
def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-").replace("--", "-")


def dns_cases(cfg: dict[str, Any], setting: tuple[str, str] = SETTINGS[0], records: int | None = None,
              also: tuple[tuple[str, str], ...] = ()) -> dict[str, Tensor]:
    """Fresh held-out cases of the online studies: filtered coarse vorticity ``(cases, records, 1, n, n)``.

    ``cases`` new trajectories in one batched DNS, seeded apart from the train / validation / test
    splits (seed ``1000 seed + seed_offset``), the same spin-up, then recorded every ``record_every``
    DNS steps from the end of the spin-up (record 0 is the cases' start). The DNS has no stochastic
    forcing, so the trajectories do not depend on the filter or on how many records are kept.

    Args:
        cfg: the study's configuration (``cfg["online40"]``: ``cases``, ``records``, ``seed_offset``).
        setting: ``(filter, coarse_nonlinear)`` of ``"w"`` (default the Gaussian filter: the content of
            the ``dns-online40-cases`` stage).
        records: records kept (default ``cfg["online40"]["records"]``).
        also: further settings of the same DNS, stored under ``"w:<filter>/<coarse_nonlinear>"``.

    Returns:
        ``{"w": (cases, records, 1, n, n) float32, "seed", "dns_seconds_per_time_unit"}`` and one
        ``"w:<setting>"`` per entry of ``also``.
    """
    oc = cfg["online40"]
    records = oc["records"] if records is None else records
    if isinstance(records, bool) or not isinstance(records, int) or records < 1:
        from stochclosure.errors import ConfigError, format_error

        raise ConfigError(format_error("records", "an integer >= 1 (records kept from the start)", repr(records),
                                       "pass None for cfg['online40']['records']"))
    fine = system_of(cfg, SETTINGS[0])  # the DNS (the fine solver is the same in every setting)
    filters = [system_of(cfg, s) for s in (setting, *also)]
    seed = cfg["seed"] * 1000 + oc["seed_offset"]
    gen = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    with torch.no_grad():
        w = fine.fine_initial_state(oc["cases"], generator=gen, dtype=torch.float64)
        w = fine.fine.simulate(w, cfg["spinup_steps"], generator=gen)
        rec = [[f.filter(w).float() for f in filters]]
        for _ in range(1, records):
            w = fine.fine.simulate(w, cfg["record_every"], generator=gen)
            rec.append([f.filter(w).float() for f in filters])
    steps = cfg["spinup_steps"] + (records - 1) * cfg["record_every"]
    cost = (time.perf_counter() - t0) / (oc["cases"] * steps * cfg["fine"]["dt"])
    out = {"w": torch.stack([r[0] for r in rec], 1)}
    out.update({f"w:{'/'.join(s)}": torch.stack([r[i + 1] for r in rec], 1) for i, s in enumerate(also)})
    return {**out, "seed": torch.tensor(seed), "dns_seconds_per_time_unit": torch.tensor(cost)}


def dns_cost(cfg: dict[str, Any], batch: int, steps: int) -> float:
    """CPU seconds per trajectory per simulated time unit of a batched DNS of ``batch`` trajectories (``steps`` steps).

    Process CPU time (one thread), not wall clock, so that other jobs on the machine do not enter the cost.
    """
    sysm = system_of(cfg, SETTINGS[0])
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        w = sysm.fine.simulate(sysm.fine_initial_state(batch, generator=gen, dtype=torch.float64), 1, generator=gen)
        t0 = time.process_time()
        sysm.fine.simulate(w, steps, generator=gen)
    return (time.process_time() - t0) / (batch * steps * cfg["fine"]["dt"])


def rank_counts(ens: Tensor, ref: Tensor, points: int) -> list[int]:
    """Rank histogram of the truth among the members at a ``points x points`` lattice of grid points, all cases pooled."""
    from stochclosure.metrics import rank_histogram

    n = ref.shape[-1]
    idx = torch.arange(points) * (n // points)
    sel = (slice(None), slice(None), idx[:, None], idx[None, :])
    return rank_histogram(ens[(slice(None), *sel)], ref[sel], generator=torch.Generator().manual_seed(0)).tolist()


def online40_run(system: Any, cfg: dict[str, Any], cases: Tensor, law: Any, rho: float, alpha: float,
                 members: int, hold: int = 1, hold_physics: bool = False) -> dict[str, Any]:
    """One closure's ensemble from every case, all cases x members in one batched call, with its cost and the DNS's."""
    oc = cfg["online40"]
    dt = cfg["coarse_every"] * system.dt
    interval = cfg["record_every"] * cfg["fine"]["dt"]
    recs, steps = [round(t / interval) for t in oc["times"]], [round(t / dt) for t in oc["times"]]
    truth = torch.stack([cases[:, r] for r in recs]).double()
    dns = dns_cost(cfg, members * cases.shape[0], oc["dns_cost_steps"])
    t0 = time.process_time()
    ens = run_ensemble(system, drawer(law, rho, alpha, hold, hold_physics), cases[:, 0], members, steps, dt, oc["seed"])
    sec = time.process_time() - t0
    scores = online_scores(ens, truth, torch.arange(cases.shape[0]))
    for sc, e, ref in zip(scores, ens, truth):
        e = e.double()
        sc["per_case_error"] = ((e.mean(0) - ref).flatten(1).norm(dim=1) / ref.flatten(1).norm(dim=1)).tolist()
        sc["rank_histogram"] = rank_counts(e, ref, oc["rank_points"]) if members > 1 else []
    last, ref = ens[-1].double(), truth[-1]
    finite = bool(torch.isfinite(last).all())
    per = [{"spectrum": spectrum_error(last[:, i:i + 1], ref[i:i + 1]) if finite else math.inf}
           for i in range(ref.shape[0])]
    nfe = float(getattr(law, "nfe_per_draw", 0.0)) if law is not None else 0.0
    return {"members": members, "hold": hold, "hold_physics": hold_physics, "alpha": alpha, "scores": scores,
            "spectrum": with_errors(per, {"spectrum": spectrum_error(last, ref) if finite else math.inf})["spectrum"],
            "nfe_per_step": nfe / hold, "seconds_per_member_time_unit": sec / (members * cases.shape[0] * max(oc["times"])),
            "dns_seconds_per_member_time_unit": dns}


def online40_cost_parts(system: Any, cfg: dict[str, Any], cases: Tensor, laws: dict[str, Any]) -> dict[str, float]:
    """Seconds per member per simulated time unit of each part of a coarse step, at the ensemble's batch size."""
    from stochclosure._types import Conditioning

    oc = cfg["online40"]
    dt = cfg["coarse_every"] * system.dt
    w = cases[:, 0].repeat(oc["members"], 1, 1, 1)
    cond = Conditioning(fields=w)
    law = laws[LEARNED]
    z = torch.randn(w.shape[0], *law.residual.latent_shape(cond, tuple(w.shape[2:])), generator=torch.Generator().manual_seed(0))
    parts = {"coarse step (no closure)": lambda: system.step(w, torch.zeros_like(w), dt=dt),
             f"ADM order {cfg['adm_order']}": lambda: laws[f"ADM order {cfg['adm_order']}"].mean(cond),
             "Gaussian residual network draw (incl. its ADM input)": lambda: law.residual.draw(cond, z, grid=tuple(w.shape[2:])),
             "deterministic FNO (incl. its ADM input)": lambda: laws["deterministic FNO (ADM input)"].mean(cond)}
    out = {}
    with torch.no_grad():
        for name, f in parts.items():
            f()
            t0 = time.process_time()
            for _ in range(oc["cost_reps"]):
                f()
            out[name] = (time.process_time() - t0) / (oc["cost_reps"] * w.shape[0] * dt)
    out["DNS"] = dns_cost(cfg, w.shape[0], oc["dns_cost_steps"])
    return out


def finetune_windows(system: Any, cfg: dict[str, Any], w: Tensor) -> Any:
    """Windows ``(w0, the next records)`` cut every ``stride`` records from trajectories ``w (T, R, 1, n, n)``."""
    from stochclosure.training.finetune import FinetuneWindows

    fc = cfg["finetune"]
    per = round(cfg["record_every"] * cfg["fine"]["dt"] / (cfg["coarse_every"] * system.dt))
    starts = range(0, w.shape[1] - fc["records"], fc["stride"])
    return FinetuneWindows(w0=torch.cat([w[:, s] for s in starts]),
                           truth=torch.cat([w[:, s + 1:s + 1 + fc["records"]] for s in starts]), record_every=per)


def finetuned_law(system: Any, cfg: dict[str, Any], data: dict[str, Any], law: Any, rho: float, work: Path,
                  stem: str, hold: int | None = None, hold_physics: bool = True) -> tuple[Any, dict[str, Any]] | None:
    """The Gaussian residual law fine-tuned a-posteriori (fair CRPS of held-draw ensemble rollouts) on windows
    of the training trajectories, the validation-best state kept; ``None`` while pending (``--pending``).

    ``hold`` overrides the fine-tune's hold (a separate cached stage, ``...-finetuned-h{hold}``);
    ``hold_physics=False`` fine-tunes with ADM evaluated at every step and only the remainder held, the form
    the online runs use (``...-finetuned-remainder[-h{hold}]``; the first fine-tunes held ADM too).
    """
    from stochclosure.training.finetune import FinetuneConfig, finetune

    fc = cfg["finetune"] if hold is None else {**cfg["finetune"], "hold": hold}
    name = (f"law-{stem}-crps-finetuned" + ("" if hold_physics else "-remainder")
            + ("" if hold is None else f"-h{hold}"))
    if REPORT_PENDING and not (work / f"{name}.pt").exists():
        return None
    tuned = learned_law("crps", system, cfg)
    tuned.load_state_dict(law.state_dict())

    def fit() -> dict[str, Any]:
        t0 = time.perf_counter()
        opts = FinetuneConfig(steps=fc["steps"], members=fc["members"], windows_per_step=fc["windows_per_step"],
                              records=fc["records"], hold=fc["hold"], hold_physics=hold_physics,
                              rho=rho ** fc["hold"], lr=fc["lr"], score="crps",
                              params="all", val_every=fc["val_every"], seed=0)
        res = finetune(tuned, system, finetune_windows(system, cfg, data["train"][0]), opts,
                       dt=cfg["coarse_every"] * system.dt, val=finetune_windows(system, cfg, data["val"][0]),
                       progress=False)
        return {"state": res.law.state_dict(), "seconds": time.perf_counter() - t0, "best_step": res.best_step,
                "history": [dict(h) for h in res.history]}

    stored = cached(work, name, fit)
    tuned.load_state_dict(stored["state"])
    tuned.eval()
    return tuned, {k: v for k, v in stored.items() if k != "state"}


def online40_runs(cfg: dict[str, Any], laws: dict[str, Any], info: dict[str, Any], alpha5: float,
                  tuned: Any = None, tuned_long: Any = None, remainder: dict[int, Any] | None = None
                  ) -> dict[str, tuple[Any, float, int, int, bool]]:
    """``{name: (law, alpha, members, hold, hold_physics)}`` of the 40-case study (fixed before its first score)."""
    m, k = cfg["online40"]["members"], cfg["online40"]["hold"]
    g = laws[LEARNED]
    runs: dict[str, tuple[Any, float, int, int, bool]] = {n: (laws[n], 1.0, 1, 1, False) for n in ONLINE_DIRAC}
    runs.update({
        "ADM + coloured noise, AR(1)": (laws["ADM + coloured noise"], 1.0, m, 1, False),
        "ADM + coloured noise, AR(1), inflated (val)": (laws["ADM + coloured noise"], info["online"]["alpha"], m, 1, False),
        f"{LEARNED}, AR(1)": (g, 1.0, m, 1, False),
        f"{LEARNED}, AR(1), held {k}": (g, 1.0, m, k, False),
        f"{LEARNED}, AR(1), held {k}, inflated (val)": (g, alpha5, m, k, False),
        f"{LEARNED}, AR(1), held {k}, ADM held too": (g, 1.0, m, k, True),
    })
    if tuned is not None:
        runs.update({f"{LEARNED}, fine-tuned, AR(1)": (tuned, 1.0, m, 1, False),
                     f"{LEARNED}, fine-tuned, AR(1), held {k}": (tuned, 1.0, m, k, False)})
    if tuned_long is not None:
        kl = cfg["finetune_long"]["hold"]
        runs[f"{LEARNED}, fine-tuned for held {kl}, AR(1), held {kl}"] = (tuned_long, 1.0, m, kl, False)
    if tuned is not None and tuned_long is not None:
        # added after the first look: the first fine-tuned law (held 5) drawn every 10 steps, since the hold barely
        # changed the scores of the laws fine-tuned in the online form (0.676 vs 0.671 at t = 0.24)
        runs[f"{LEARNED}, fine-tuned, AR(1), held {kl}{LATE}"] = (tuned, 1.0, m, kl, False)
    for kr, law in (remainder or {}).items():
        runs[f"{LEARNED}, fine-tuned for held {kr} (ADM every step), AR(1), held {kr}{LATE}"] = (law, 1.0, m, kr, False)
    return runs


def online40_study(system: Any, cfg: dict[str, Any], data: dict[str, Any], laws: dict[str, Any], rho: float,
                   info: dict[str, Any], work: Path, stem: str) -> dict[str, Any]:
    """Online ensembles of every closure from the fresh held-out cases to t = 1, each run a cached stage."""
    oc = cfg["online40"]
    cases = cached(work, "dns-online40-cases", lambda: dns_cases(cfg))
    k = oc["hold"]
    alpha5, alphas5 = cached(work, f"online40-inflation-{stem}-held{k}",
                             lambda: online_inflation(system, cfg, data, laws[LEARNED], rho, hold=k))
    tuned = finetuned_law(system, cfg, data, laws[LEARNED], rho, work, stem) if cfg.get("finetune") else None
    long = cfg.get("finetune_long") if cfg.get("finetune") else None
    tuned_long = finetuned_law(system, cfg, data, laws[LEARNED], rho, work, stem, long["hold"]) if long else None
    out: dict[str, Any] = {}
    pending = [] if tuned is not None or not cfg.get("finetune") else ["fine-tuned law (training)"]
    if long and tuned_long is None:
        pending.append(f"fine-tuned law for held {long['hold']} (training)")
    remainder, remainder_info = {}, {}
    for kr in (cfg.get("finetune_remainder") or {}).get("holds", []) if cfg.get("finetune") else []:
        got = finetuned_law(system, cfg, data, laws[LEARNED], rho, work, stem, kr, hold_physics=False)
        if got is None:
            pending.append(f"fine-tuned law for held {kr}, ADM every step (training)")
        else:
            remainder[kr], remainder_info[kr] = got
    runs = online40_runs(cfg, laws, info, alpha5, tuned[0] if tuned is not None else None,
                         tuned_long[0] if tuned_long is not None else None, remainder)
    for name, (law, alpha, members, hold, hp) in runs.items():
        r = 0.0 if members == 1 else rho
        if REPORT_PENDING and not (work / f"online40-{stem}-{_slug(name)}.pt").exists():
            pending.append(name)
            continue
        out[name] = cached(work, f"online40-{stem}-{_slug(name)}", lambda law=law, r=r, alpha=alpha, members=members,
                           hold=hold, hp=hp: online40_run(system, cfg, cases["w"], law, r, alpha, members, hold, hp))
        _log(f"online40 {name}: error {[round(v['error'][0], 5) for v in out[name]['scores']]}, "
             f"{out[name]['seconds_per_member_time_unit']:.3g} s / member / time unit")
    parts = cached(work, f"online40-cost-parts-{stem}", lambda: online40_cost_parts(system, cfg, cases["w"], laws))
    return {"times": oc["times"], "cases": int(cases["w"].shape[0]), "seed": int(cases["seed"]), "hold": k,
            "dt": cfg["coarse_every"] * system.dt, "rho_per_step": rho, "inflation": alphas5, "alpha": alpha5,
            "cases_dns_seconds_per_time_unit": float(cases["dns_seconds_per_time_unit"]), "cost_parts": parts,
            "rank_points": oc["rank_points"], "val_time": cfg["online"]["val_time"], "pending": pending,
            "finetune": tuned[1] if tuned is not None else None,
            "finetune_long": ({**tuned_long[1], "hold": long["hold"]} if tuned_long is not None and long else None),
            "finetune_remainder": remainder_info,
            "laws": out}


def offline_calibrated(system: Any, cfg: dict[str, Any], data: dict[str, Any], laws: dict[str, Any], rho: float,
                       work: Path, stem: str) -> dict[str, Any]:
    """Offline scores of the learned law calibrated on validation, and of its fine-tuned version.

    Added after the first look at the offline test scores (the law's offline spread-skill 0.73 and coverage 0.62
    missed their goals): the law with its spread scaled so that the validation spread-skill is 1 (its mean
    kept), the law fine-tuned a-posteriori on rollouts (fixed before, by validation rollouts), and that one
    scaled the same way. The scale is fitted on the validation snapshots only.
    """
    law = laws[LEARNED]
    tuned = finetuned_law(system, cfg, data, law, rho, work, stem) if cfg.get("finetune") else None
    cands = {f"{LEARNED}, scaled (val)": law}
    if tuned is not None:
        cands.update({f"{LEARNED}, fine-tuned": None, f"{LEARNED}, fine-tuned, scaled (val)": tuned[0]})
    out: dict[str, Any] = {}
    for name, base in cands.items():
        if base is None:
            out[name] = offline(tuned[0], *data["test"], cfg["draws"], seed=5)
            continue
        alpha = inflation_offline(base, *data["val"], cfg["draws"])
        out[name] = {**offline(SpreadScaled(base, alpha), *data["test"], cfg["draws"], seed=5), "alpha": alpha}
    return out


def confirm_study(system: Any, cfg: dict[str, Any], laws: dict[str, Any], rho: float, work: Path, stem: str,
                  tuned: Any) -> dict[str, Any]:
    """The online runs named in ``cfg["confirm"]`` on 40 more fresh cases (another DNS seed), fixed in advance.

    The runs are those of the 40-case study with the same names (law, members, hold), scored the same way;
    ``... held k`` of the fine-tuned law is that law drawn every ``k`` steps (``closures_horizon.confirm``).
    """
    cc, m = cfg["confirm"], cfg["online40"]["members"]
    prefix = f"{LEARNED}, fine-tuned, AR(1), held "
    learned = {n: (tuned, rho, m, int(n.rsplit(" ", 1)[1])) for n in cc["runs"] if n.startswith(prefix)}
    return closures_horizon.confirm(sys.modules[__name__], system, cfg, cc, laws, learned, rho, work, stem)


def evaluate(cfg: dict[str, Any], work: Path) -> dict[str, Any]:
    """The whole study: data, laws, offline and online scores, per setting."""
    t0 = time.perf_counter()
    raw = {s: cached(work, f"dns-{s}", lambda s=s: dns_split(cfg, s)) for s in ("train", "val", "test")}
    _log(f"DNS ready ({time.perf_counter() - t0:.0f} s)")
    return {f"{setting[0]} / {setting[1]}": evaluate_setting(cfg, work, raw, setting) for setting in SETTINGS}


def evaluate_setting(cfg: dict[str, Any], work: Path, raw: dict[str, Any], setting: tuple[str, str]) -> dict[str, Any]:
    """Laws, offline and (Gaussian filter) online scores of one filter setting."""
    key = "/".join(setting)
    stem = key.replace("/", "-")
    system = system_of(cfg, setting)
    data = {s: (raw[s][f"{key}:w"], raw[s][f"{key}:u"]) for s in raw}
    info: dict[str, Any] = {"memory": residual_memory(system, cfg, *data["train"]),
                            "dns_seconds_per_time_unit": float(raw["test"]["dns_seconds_per_time_unit"])}
    laws = all_laws(system, cfg, data, work, key, info)
    info["fitted c_s"] = float(laws["Smagorinsky, fitted c_s"].cs)
    info["rms U"] = float(data["test"][1].pow(2).mean().sqrt())
    info["offline"] = cached(work, f"offline-{stem}", lambda: {
        name: offline(law, *data["test"], cfg["draws"], seed=5) for name, law in laws.items()})
    _log(f"{key}: offline R2 " + ", ".join(f"{k}: {v['r2'][0]:.3f}" for k, v in info["offline"].items()))
    if setting[0] == "gaussian":
        rho = math.exp(-cfg["coarse_every"] * system.dt / info["memory"]["tau"])
        info["online"] = cached(work, f"online-{stem}", lambda: online_study(system, cfg, data, laws, rho))
        info["online extra"] = cached(work, f"online-extra-{stem}", lambda: online_extra(system, cfg, data, laws, rho))
        if cfg.get("online40"):
            info["online40"] = online40_study(system, cfg, data, laws, rho, info, work, stem)
        if not (REPORT_PENDING and not (work / f"offline-calibrated-{stem}.pt").exists()):
            info["offline calibrated"] = cached(work, f"offline-calibrated-{stem}", lambda: offline_calibrated(
                system, cfg, data, laws, rho, work, stem))
        if cfg.get("confirm") and cfg.get("finetune"):
            tuned = finetuned_law(system, cfg, data, laws[LEARNED], rho, work, stem)
            if tuned is not None:
                info["confirm"] = confirm_study(system, cfg, laws, rho, work, stem, tuned[0])
                if cfg.get("finetune_horizon") and cfg.get("confirm_horizon"):
                    info["horizon"] = closures_horizon.horizon_study(sys.modules[__name__], system, cfg, data, laws,
                                                                     tuned[0], rho, work, stem)
                if cfg.get("calibrate_horizon") and cfg.get("confirm_calibrated") and not REPORT_PENDING:
                    info["calibrated"] = closures_horizon.calibrated_study(sys.modules[__name__], system, cfg, laws,
                                                                           tuned[0], rho, work, stem)
    if cfg.get("diffusion"):
        _log(f"{key}: diffusion residual")
        info["diffusion"], info["diffusion training"] = cached(
            work, f"diffusion-{stem}-{diffusion_config(cfg, key)['tag']}",
            lambda: diffusion_residual(system, cfg, data, work, key))
    if setting[0] == "spectral" and cfg.get("online_sharp") and cfg.get("diffusion"):
        info["online sharp"] = closures_sharp.online_sharp_study(sys.modules[__name__], system, cfg, data, laws, info,
                                                                 work, stem, key)
        if cfg.get("online_sharp40") and cfg.get("online40"):
            info["online sharp40"] = closures_sharp.online_sharp40_study(sys.modules[__name__], system, cfg, data,
                                                                         laws, info, work, stem, key, setting)
    return info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run on a tiny DNS")
    parser.add_argument("--out", type=Path, default=None, help="results folder (default benchmarks/results)")
    parser.add_argument("--work", type=Path, default=None, help="work folder (default benchmarks/work/closures)")
    parser.add_argument("--fresh", action="store_true", help="discard the cached stages in the work folder")
    parser.add_argument("--pending", action="store_true",
                        help="report the fresh-case online runs already cached and list the others as pending")
    args = parser.parse_args(argv)
    global REPORT_PENDING
    REPORT_PENDING = args.pending
    torch.set_num_threads(1)
    cfg = QUICK if args.quick else CONFIG
    work = args.work or (WORK / ("quick" if args.quick else "full"))
    work.mkdir(parents=True, exist_ok=True)
    if args.fresh:
        for f in [*work.glob("*.pt"), *work.glob("runs.json")]:
            f.unlink()
    t0 = time.time()
    results = evaluate(cfg, work)
    out = args.out or RESULTS
    out.mkdir(parents=True, exist_ok=True)
    stem = "closures_quick" if args.quick else "closures"
    runs = record_invocation(work, (time.time() - t0) / 60)
    meta = {"platform": f"{platform.machine()}, {platform.python_version()}", "torch": torch.__version__,
            "minutes": sum(r["minutes"] for r in runs), "invocations": runs}
    atomic_write_text(out / f"{stem}.json", json.dumps({"meta": meta, "config": cfg, "results": results}, indent=1))
    write_markdown(results, out / f"{stem}.md", meta, cfg, __doc__ or "")
    _log(f"wrote {out / stem}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
