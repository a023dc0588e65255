"""Export the subgrid study's fine-tuned Gaussian residual law as the shipped ``ns2d_subgrid_gaussian_32``.

``python benchmarks/export_subgrid_pretrained.py --work WORK`` reads the cached stages of
``benchmarks/closures.py`` in ``WORK`` (default ``benchmarks/work/closures``; the study must have
run there first, this script trains nothing and writes nothing there) and writes
``stochclosure/pretrained/ns2d_subgrid_gaussian_32/`` atomically:

* the law ``ADM + Gaussian residual (CRPS)``, fine-tuned a-posteriori (stage
  ``law-gaussian-two_thirds-crps-finetuned``), rebuilt with ``closures.learned_law("crps", ...)`` and
  written by :func:`stochclosure.checkpoint.save_model` (``config.json`` + ``model.safetensors``;
  :func:`stochclosure.checkpoint.load_model` rebuilds it from the registry);
* ``initial_state.safetensors``: the 128^2 DNS state of the first offline-test trajectory at the
  end of its spin-up;
* ``metadata.json``: provenance (the study's configuration, the training and fine-tuning settings
  and histories, the stages, the library versions, the git commit), the rollout policy of record
  (``policy``: a draw every 10 steps, the spread factor and AR(1) memory chosen on validation runs,
  with its pre-registered confirmation scores) and the earlier one (``policy_held5``), the online
  scores of the 40-case study read from its stage files, and the offline scores on the study's test
  split and on the small test set that :func:`stochclosure.pretrained.offline_test_set` regenerates
  (measured here, by that function).

Nothing in the metadata is typed by hand: every score is read from a stage file or measured.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import closures as study  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
NAME = "ns2d_subgrid_gaussian_32"
SETTING = ("gaussian", "two_thirds")
STEM = "-".join(SETTING)
BASE_STAGE = f"law-{STEM}-crps"
TUNED_STAGE = f"law-{STEM}-crps-finetuned"
#: The small offline test set of the shipped law: 4 fresh trajectories, seeded apart from the study's
#: train / validation / test (``1000 seed + 0..2``) and online (``+ 100``) seeds.
OFFLINE_TEST = {"seed_offset": 200, "trajectories": 4, "records": 4, "draws": 16, "sample_seed": 5}
HELD = "ADM + Gaussian residual (CRPS), fine-tuned, AR(1), held 5"
CALIBRATED = "ADM + Gaussian residual (CRPS), fine-tuned, calibrated on validation runs to t = 0.5, AR(1), held 10"
HELD10 = "ADM + Gaussian residual (CRPS), fine-tuned, AR(1), held 10"
EVERY = "ADM + Gaussian residual (CRPS), fine-tuned, AR(1)"
REFERENCES = ("ADM order 10", "ADM + coloured noise, AR(1)", "Smagorinsky, fitted c_s")


def _stage(work: Path, name: str) -> Any:
    path = work / f"{name}.pt"
    if not path.exists():
        raise SystemExit(f"missing stage {path}: run benchmarks/closures.py --work {work} first")
    return torch.load(path, weights_only=True)


def _online_stage(name: str) -> str:
    return f"online40-{STEM}-{study._slug(name)}"


def tuned_law(work: Path, cfg: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """The fine-tuned law rebuilt from its stage, and the stage's record (without the weights)."""
    system = study.system_of(cfg, SETTING)
    law = study.learned_law("crps", system, cfg)
    stored = _stage(work, TUNED_STAGE)
    law.load_state_dict(stored["state"])
    return law.eval(), {k: v for k, v in stored.items() if k != "state"}


def online_scores(work: Path, cfg: dict[str, Any]) -> dict[str, Any]:
    """The 40-case online scores of the shipped law's two policies and of the references (stage files)."""
    oc = cfg["online40"]
    runs = {}
    for name in (HELD, EVERY, *REFERENCES):
        run = _stage(work, _online_stage(name))
        runs[name] = {"stage": _online_stage(name), "members": run["members"], "hold": run["hold"],
                      "nfe_per_step": run["nfe_per_step"],
                      "scores": [{k: sc[k] for k in ("error", "crps", "spread_skill", "finite")}
                                 for sc in run["scores"]],
                      "spectrum_error_t_end": run["spectrum"]}
    i = oc["times"].index(0.5)
    noise = runs["ADM + coloured noise, AR(1)"]["scores"][i]["crps"][0]
    for name in (HELD, EVERY):
        runs[name]["crps_t05_over_adm_coloured_noise_ar1"] = runs[name]["scores"][i]["crps"][0] / noise
    return {"cases": oc["cases"], "times": oc["times"], "case_seed": cfg["seed"] * 1000 + oc["seed_offset"],
            "note": "scores [value, standard error over the cases]; error: relative error of the ensemble mean",
            "laws": runs}


def calibrated_policy(work: Path, cfg: dict[str, Any], rho: float, dt: float) -> dict[str, Any]:
    """The policy of record: the spread factor and memory chosen on validation runs, and its confirmation scores.

    Read from the study's ``calibrate<offset>-...`` stages (every candidate, the same rule as
    ``closures_horizon.calibrate``) and ``confirm<offset>-...`` stages (the pre-registered third confirmation).
    """
    import closures_horizon

    ch, cc = cfg["calibrate_horizon"], cfg["confirm_calibrated"]
    cands = []
    for alpha in ch["alphas"]:
        for mem in ch["memory"]:
            run = _stage(work, f"calibrate{ch['seed_offset']}-{STEM}-held{ch['hold']}-a{alpha:g}-m{mem:g}")
            cands.append({"spread": alpha, "memory_factor": mem,
                          "misfit": closures_horizon._misfit(run, ch["times"], ch["at"]),
                          "spread_skill": [sc["spread_skill"] for sc in run["scores"]],
                          "crps": [sc["crps"] for sc in run["scores"]]})
    best = min(cands, key=lambda c: (round(c["misfit"], 3), c["crps"][-1][0]))
    k, alpha, mem = ch["hold"], best["spread"], best["memory_factor"]
    runs = {}
    for name in (CALIBRATED, HELD10, *REFERENCES):
        stage = f"confirm{cc['seed_offset']}-{STEM}-{study._slug(name)}"
        run = _stage(work, stage)
        runs[name] = {"stage": stage, "members": run["members"], "hold": run["hold"], "nfe_per_step": run["nfe_per_step"],
                      "scores": [{k2: sc[k2] for k2 in ("error", "crps", "spread_skill", "finite")}
                                 for sc in run["scores"]],
                      "cheaper_than_dns": run["dns_seconds_per_member_time_unit"] / run["seconds_per_member_time_unit"]}
    i = cfg["online40"]["times"].index(0.5)
    noise = runs["ADM + coloured noise, AR(1)"]["scores"][i]["crps"][0]
    for name in (CALIBRATED, HELD10):
        runs[name]["crps_t05_over_adm_coloured_noise_ar1"] = runs[name]["scores"][i]["crps"][0] / noise
    rho_step = rho ** (1 / mem)
    return {
        "dt": dt, "rho_per_step": rho_step, "fitted_rho_per_step": rho, "memory_factor": mem, "spread": alpha,
        "residual_every": k, "rho_per_draw": rho_step**k, "physics_every_step": True,
        "recommended": f"scale the residual's spread by {alpha:g} (law.residual.set_spread), draw it every {k} coarse "
                       f"steps of dt = {dt:g} and hold it, its latent an AR(1) advanced by rho_per_draw between draws "
                       f"(the fitted memory x{mem:g}), with ADM evaluated at every step (0.1 network evaluations per "
                       "step)",
        "rollout_api": f"law.residual.set_spread(spread); ensemble(system, law, w0, n_steps, members, dt={dt:g}, "
                       f"resample_every={k}, between=NoiseAR1(rho=rho_per_draw, physics_every_step=True)), scored as "
                       f"'{CALIBRATED}'",
        "chosen_on": {"cases": cfg["online40"]["cases"], "case_seed": cfg["seed"] * 1000 + ch["seed_offset"],
                      "times": ch["times"], "rule": f"smallest max |log spread-skill| at t = {ch['at']}, ties to the "
                                                    "lower CRPS at the last time", "candidates": cands},
        "confirmation": {"cases": cfg["online40"]["cases"], "case_seed": cfg["seed"] * 1000 + cc["seed_offset"],
                         "times": cfg["online40"]["times"], "note": "runs fixed before the cases were generated; "
                         "scores [value, standard error over the cases]", "laws": runs},
    }


def _offline(law: Any, w: torch.Tensor, u: torch.Tensor, groups: torch.Tensor, draws: int, seed: int
             ) -> dict[str, Any]:
    """Offline scores of ``law`` on snapshots ``w, u (N, 1, n, n)``, pooled, SE over ``groups``."""
    from stochclosure._types import Conditioning

    with torch.no_grad():
        d = law.sample(Conditioning(fields=w), draws, generator=torch.Generator().manual_seed(seed))
    per = [study.scorecard(d[:, groups == g], u[groups == g]) for g in groups.unique()]
    return study.with_errors(per, study.scorecard(d, u))


def offline_scores(law: Any, work: Path, cfg: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
    """Offline scores on the study's test split and on the regenerated small test set."""
    from stochclosure.pretrained import subgrid_test_set

    test = _stage(work, "dns-test")
    key = "/".join(SETTING)
    w, u = test[f"{key}:w"], test[f"{key}:u"]  # (T, R, 1, n, n)
    groups = torch.arange(w.shape[0]).repeat_interleave(w.shape[1])
    split = _offline(law, study.flat(w), study.flat(u), groups, cfg["draws"], seed=5)
    small = subgrid_test_set(study.system_of(cfg, SETTING), spec)
    regen = _offline(law, small["state"], small["target"], small["trajectory"], spec["draws"], spec["sample_seed"])
    return {"study_test_split": {"trajectories": int(w.shape[0]), "records": int(w.shape[1]),
                                 "draws": cfg["draws"], "sample_seed": 5, "scores": split},
            "regenerated": regen, "fine_start": small["fine_start"]}


def _git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def metadata(work: Path, cfg: dict[str, Any], record: dict[str, Any], law: Any) -> tuple[dict[str, Any], Any]:
    """``metadata.json`` of the export and the initial state to ship with it."""
    from stochclosure.checkpoint import component_providers, library_versions

    system = study.system_of(cfg, SETTING)
    dt = cfg["coarse_every"] * system.dt
    online = _stage(work, f"online-{STEM}")
    rho = float(online["rho_per_step"])
    hold = cfg["online40"]["hold"]
    spec = {"seed": cfg["seed"] * 1000 + OFFLINE_TEST["seed_offset"], "trajectories": OFFLINE_TEST["trajectories"],
            "spinup_steps": cfg["spinup_steps"], "records": OFFLINE_TEST["records"],
            "record_every": cfg["record_every"], "draws": OFFLINE_TEST["draws"],
            "sample_seed": OFFLINE_TEST["sample_seed"]}
    off = offline_scores(law, work, cfg, spec)
    base = _stage(work, BASE_STAGE)
    sysm = {"type": "navier_stokes_2d_subgrid", "n": cfg["n"], "filter": SETTING[0], "coarse_nonlinear": SETTING[1],
            **cfg["fine"]}
    info = {
        "name": NAME, "kind": "subgrid_law", "closure": "U", "resolution": cfg["n"],
        "description": "subgrid term U of 2-D Navier-Stokes (Gaussian filter of width 2/n, 2/3-rule coarse solver) "
                       "at 32x32 from a 128x128 DNS: ADM (van Cittert order 10) + a heteroscedastic Gaussian "
                       "residual coloured in space (FNO, ADM as an input channel), trained by the Gaussian CRPS "
                       "and fine-tuned a-posteriori by the fair CRPS of held-draw ensemble rollouts",
        "system": sysm,
        "policy": calibrated_policy(work, cfg, rho, dt),
        "policy_held5": {
            "dt": dt, "rho_per_step": rho, "residual_every": hold, "rho_per_draw": rho**hold,
            "physics_every_step": True,
            "recommended": f"the earlier policy: draw the Gaussian residual every {hold} coarse steps of dt = {dt:g} and hold it, "
                           f"its latent an AR(1) advanced by rho_per_step**{hold} between draws, with ADM "
                           "evaluated at every step (0.2 network evaluations per step); holding ADM too "
                           "blows up before t = 1",
            "rollout_api": f"ensemble(system, law, w0, n_steps, members, dt={dt:g}, resample_every={hold}, "
                           f"between=NoiseAR1(rho=rho_per_draw, physics_every_step=True)): "
                           f"scored as '{HELD}'; resample_every=1 with NoiseAR1(rho=rho_per_step) draws every step "
                           f"(1 network evaluation per step), scored as '{EVERY}'",
        },
        "online40": online_scores(work, cfg),
        "offline": {"study_test_split": off["study_test_split"]},
        "offline_test": {**spec, "scores": off["regenerated"],
                         "note": "scores [value, standard error over the trajectories] of draws of the law "
                                 "(ensemble mean for r2) against the true subgrid term"},
        "initial_state": {"time": cfg["spinup_steps"] * cfg["fine"]["dt"], "grid": cfg["fine"]["n_fine"],
                          "system": {k: v for k, v in sysm.items() if k != "type"},
                          "source": "offline_test trajectory 0 at the end of its spin-up"},
        "how_made": {
            "study": "benchmarks/closures.py", "export": "python benchmarks/export_subgrid_pretrained.py --work WORK",
            "stages": {"base": BASE_STAGE, "finetuned": TUNED_STAGE, "rho_per_step": f"online-{STEM}",
                       "online": [_online_stage(n) for n in (HELD, EVERY, *REFERENCES)]},
            "config": {k: cfg[k] for k in ("fine", "n", "seed", "spinup_steps", "record_every", "trajectories",
                                           "records", "coarse_every", "adm_order", "backbone", "train", "finetune",
                                           "calibrate_horizon", "confirm_calibrated")},
            "law": "closures.learned_law('crps', system, CONFIG): ResidualLaw(ADM(order), GaussianClosure(backbone "
                   "with 2 input channels, loss='crps', noise='coloured', inputs=[ADM]))",
            "training": {"seconds": base["seconds"], "history_tail": base["history"]},
            "finetune": {"rho_per_draw": rho ** cfg["finetune"]["hold"], "dt": dt,
                         "rollouts": "stochclosure.training.finetune.ensemble_rollout on windows of the training "
                                     "trajectories: the whole draw (ADM included) held for finetune.hold coarse "
                                     "steps, windows of finetune.records records of record_every DNS steps",
                         **record},
            "git_commit": _git_commit(),
            "versions": library_versions(component_providers(law)),
        },
    }
    return json.loads(json.dumps(info, default=float)), off["fine_start"][:1].clone()


def export(work: Path, out: Path, cfg: dict[str, Any] | None = None) -> Path:
    """Write the pretrained folder ``out`` (atomically: built beside it, then renamed)."""
    from stochclosure.checkpoint import atomic_write_bytes, save_model, save_tensors

    cfg = study.CONFIG if cfg is None else cfg
    law, record = tuned_law(work, cfg)
    info, state = metadata(work, cfg, record, law)
    stage = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    save_model(law, stage)
    save_tensors(stage / "initial_state.safetensors", {"state": state.double()})
    atomic_write_bytes(stage / "metadata.json", (json.dumps(info, indent=2) + "\n").encode())
    old = out.with_name(f".{out.name}.{os.getpid()}.old")
    if out.exists():
        os.replace(out, old)
    os.replace(stage, out)
    shutil.rmtree(old, ignore_errors=True)
    size = sum(p.stat().st_size for p in out.iterdir())
    print(f"wrote {out} ({size / 1e6:.2f} MB); offline r2 (regenerated) "
          f"{info['offline_test']['scores']['r2'][0]:.5f} +- {info['offline_test']['scores']['r2'][1]:.2g}, "
          f"(study test split) {info['offline']['study_test_split']['scores']['r2'][0]:.5f}")
    if not math.isfinite(size) or size > 5e6:
        raise SystemExit(f"{out} is {size / 1e6:.2f} MB, over the 5 MB limit of a shipped closure")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, default=study.WORK, help="the closures study's work folder (read only)")
    p.add_argument("--out", type=Path, default=REPO / "stochclosure" / "pretrained" / NAME)
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    export(a.work, a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
