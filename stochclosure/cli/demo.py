"""``stochclosure demo``: an ensemble forecast with the shipped pretrained closure, end to end.

1. Load the pretrained closure ``G`` (32^2, sparse measurements) and the steady fine state
   shipped with it.
2. Simulate the *truth* with the full stochastic Navier–Stokes model on the fine grid, recording
   the coarse vorticity and the sparse measurements of the true closure at every step.
3. Run a ``members``-member ensemble of the reduced 32^2 solver with closures drawn from the
   model (streamed measurements, a fresh draw every ``resample_every`` steps), and the
   no-closure baseline, from the same coarse initial state.
4. Score both against the truth (relative error of the ensemble mean and of members, spread,
   spread-skill ratio, CRPS, rank histogram, spectra) and write a report folder: PNG figures,
   ``metrics.json`` and ``report.md``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from .. import metrics
from .._io import preflight_output
from .._memory import check_ensemble_memory
from ..config import ENSEMBLE_SEED_LIMIT, check_number, check_seed, derive_seed
from ..errors import ConfigError, format_error
from ..pretrained import DEFAULT, initial_state, load_pretrained, pretrained_info
from ..rollouts import StreamedObservations, ensemble, rollout
from ..rollouts.policies import ClosureAR1, Hold, isotropic_spectrum
from ..systems.navier_stokes import NavierStokes2D, coarsen

__all__ = ["run_demo", "check_demo_options", "forcing_policy", "run", "add_arguments", "FORCING_SCALE"]

#: Size of the fresh forcing added to the held closure at every solver step, in units of the
#: system's own forcing ``2 sigma dW`` (see :func:`forcing_policy`). Fitted so that the demo's
#: spread-skill ratio is about 1 with its default draw interval (5 steps; the hold error, and so
#: the fitted size, grows with the interval) on the validation seeds 1, 2 and 3, never on the
#: demo's seed 0;
#: the numbers are in :data:`VALIDATION` and every report.
FORCING_SCALE = 2.5

#: The validation runs behind :data:`FORCING_SCALE`: the demo's defaults (16 members, horizon 2,
#: a fresh draw every 5 steps with 2 sampler steps) on seeds other than 0; ``err_end`` is the
#: ensemble-mean relative error at the horizon, ``err_end_hold`` that of the previous default
#: (a draw every 10 steps with 5 sampler steps, the same network evaluations, held unchanged).
VALIDATION: tuple[dict[str, float], ...] = (
    {"seed": 1, "scale": 2.5, "ratio": 1.197, "err_end": 0.00175, "err_end_hold": 0.00222},
    {"seed": 2, "scale": 2.5, "ratio": 0.966, "err_end": 0.00217, "err_end_hold": 0.00329},
    {"seed": 3, "scale": 2.5, "ratio": 1.034, "err_end": 0.00236, "err_end_hold": 0.00305},
)


def check_demo_options(members: Any, horizon: Any, resample_every: Any, sampler_steps: Any, record_every: Any,
                       seed: Any, prefix: str = "", forcing_scale: Any = 0.0) -> None:
    """Check the demo's options before any work (``prefix="--"`` names the command-line flags).

    Raises:
        ConfigError: ``members`` below 2 (spread and rank statistics need two members), a
            non-positive or non-finite ``horizon``, non-positive ``resample_every``,
            ``sampler_steps`` or ``record_every``, a negative or non-finite ``forcing_scale``, or a
            seed outside ``[0, 2**32)`` (it seeds the ensemble, see
            :data:`stochclosure.config.ENSEMBLE_SEED_LIMIT`).
    """
    def name(key: str) -> str:
        return prefix + key.replace("_", "-") if prefix else key

    check_number(members, name("members"), integer=True, minimum=2,
                 fix="an ensemble needs at least two members for its spread")
    check_number(horizon, name("horizon"), minimum=0, open_min=True, fix="a forecast length in time units, e.g. 2.0")
    for key, value in (("resample_every", resample_every), ("sampler_steps", sampler_steps),
                       ("record_every", record_every)):
        check_number(value, name(key), integer=True, minimum=1)
    check_number(forcing_scale, name("forcing_scale"), minimum=0,
                 fix="0 holds each draw unchanged; about 3 is calibrated for the shipped closure")
    check_seed(seed, name("seed"), limit=ENSEMBLE_SEED_LIMIT)  # it seeds the ensemble


def forcing_policy(coarse: NavierStokes2D, scale: float) -> ClosureAR1 | Hold:
    """Fresh forcing of the system's noise law on the held closure draw at every solver step.

    The closure ``G = nu Lap w + 2 sigma dW`` contains white-in-time forcing; a draw held for
    ``k`` steps repeats one forcing realisation ``k`` times, an error every member shares. This
    policy adds ``scale * 2 sigma dW_s`` with a fresh ``dW_s`` of the system's law (spatial
    spectrum ``kappa exp(-alpha |lambda|^2) / dt``, pointwise std measured on ``coarse``'s grid)
    at every step, which gives the ensemble a spread of the size of that error.

    Args:
        coarse: The reduced solver (its ``sigma``, noise law, grid and ``dt``).
        scale: Forcing size in units of ``2 sigma dW`` (``0``: hold each draw unchanged).

    Returns:
        ``ClosureAR1.white_forcing(scale * 2 sigma std(dW), spectrum of dW)``, or :class:`Hold`
        for ``scale == 0``.
    """
    if scale == 0:
        return Hold()
    gen = torch.Generator().manual_seed(0)
    dw = coarse.noise(256, generator=gen, dtype=torch.float64)  # (256, 1, n, n)
    std = float(dw.std())
    spectrum = tuple(isotropic_spectrum(dw[:, 0], 2).tolist())
    return ClosureAR1.white_forcing(scale * 2.0 * coarse.sigma * std, spectrum)


def _truth_run(fine: Any, w0: torch.Tensor, n_steps: int, n_coarse: int, closure: str, obs_grid: int,
               record_every: int, seed: int, progress: bool) -> dict[str, torch.Tensor]:
    """The fine-grid truth: recorded coarse states, the measurements ``(S, 1, P)`` and the coarse
    true closure ``(S, 1, 1, n, n)`` of every step."""
    gen = torch.Generator().manual_seed(seed)
    stride = fine.n // obs_grid
    states, obs, closures = [coarsen(w0, n_coarse, "stride")], [], []
    w = w0
    for step in tqdm(range(n_steps), desc="truth (fine grid)", disable=not progress, leave=False):
        w_next, clos = fine.full_step_with_closures(w, generator=gen)
        obs.append(clos[closure][..., ::stride, ::stride].reshape(1, 1, -1))
        closures.append(coarsen(clos[closure], n_coarse, "stride"))
        w = w_next
        if (step + 1) % record_every == 0:
            states.append(coarsen(w, n_coarse, "stride"))
    return {"states": torch.cat(states).float(), "obs": torch.stack(obs).float(),
            "closures": torch.stack(closures)}


def _true_closure_run(coarse: NavierStokes2D, v0: torch.Tensor, closures: torch.Tensor, hold: int,
                      record_every: int) -> torch.Tensor:
    """The reduced model fed the *true* closure, refreshed every ``hold`` steps: ``(T, 1, n, n)``.

    ``hold = 1`` is the reduced model's own error floor; ``hold = resample_every`` is the error
    that holding a draw causes even for a perfect closure model.
    """
    w = v0[None].double()
    states = [w[0]]
    for step in range(closures.shape[0]):
        if step % hold == 0:
            held = closures[step].double()
        w = coarse.step(w, held)
        if (step + 1) % record_every == 0:
            states.append(w[0])
    return torch.stack(states).float()


def _physics_ensemble(coarse: NavierStokes2D, v0: torch.Tensor, n_steps: int, members: int, record_every: int,
                      seed: int) -> torch.Tensor:
    """The physics closure ``nu Lap w + 2 sigma dW`` on the coarse grid (no measurements, no
    network): the coarse full model, ``members`` noise realisations, ``(T, M, 1, n, n)``."""
    gen = torch.Generator().manual_seed(seed)
    w = v0[None].double().expand(members, -1, -1, -1).contiguous()
    states = [w]
    for step in range(n_steps):
        w = coarse.full_step(w, generator=gen)
        if (step + 1) % record_every == 0:
            states.append(w)
    return torch.stack(states).float()


def run_demo(out_dir: str | Path = "demo_output", members: int = 16, horizon: float = 2.0,
             resample_every: int = 5, sampler_steps: int = 2, record_every: int = 100, seed: int = 0,
             progress: bool = True, forcing_scale: float = FORCING_SCALE, references: bool = True) -> dict[str, Any]:
    """Run the demo and write the report.

    Args:
        out_dir: Report folder (created).
        members: Ensemble size.
        horizon: Forecast length in physical time units.
        resample_every: Solver steps between fresh closure draws (held in between).
        sampler_steps: DPM-Solver++(2M) steps per draw (``steps + 1`` network evaluations).
        record_every: Solver steps between recorded states.
        seed: Seeds the truth's noise and the ensemble.
        progress: Show progress bars.
        forcing_scale: Fresh forcing added to the held draw at every step, in units of the
            system's ``2 sigma dW`` (:func:`forcing_policy`; ``0``: the draw is held unchanged).
        references: Also run the classical references (the physics closure ensemble and the
            true closure held ``resample_every`` steps / refreshed every step).

    Returns:
        The metrics written to ``metrics.json``.
    """
    check_demo_options(members, horizon, resample_every, sampler_steps, record_every, seed,
                       forcing_scale=forcing_scale)
    from .. import plots  # matplotlib, only when a report is drawn

    out = preflight_output(out_dir, "out_dir", is_dir=True)
    t_start = time.perf_counter()
    info = pretrained_info(DEFAULT)
    model = load_pretrained(DEFAULT)
    w0, state_info = initial_state(DEFAULT)
    n_coarse, closure = int(info["resolution"]), info["closure"]
    fine = NavierStokes2D(**state_info["system"])
    coarse = NavierStokes2D(**{**state_info["system"], "n": n_coarse, "closure": closure})
    n_steps = int(round(horizon / fine.dt))
    if n_steps < 1:
        raise ConfigError(format_error("horizon", f"at least one solver step (dt = {fine.dt:g})", repr(horizon),
                                       f"a horizon of {fine.dt:g} or more"))
    record_every = min(record_every, n_steps)
    obs_grid = int(info["obs_grid"])
    check_ensemble_memory(members, n_steps, record_every, (1, n_coarse, n_coarse))

    t0 = time.perf_counter()
    truth = _truth_run(fine, w0, n_steps, n_coarse, closure, obs_grid, record_every, derive_seed(seed, 1),
                       progress)
    t_truth = time.perf_counter() - t0
    axes = torch.arange(obs_grid, dtype=torch.float32) / obs_grid
    points = torch.stack(torch.meshgrid(axes, axes, indexing="ij"), -1).reshape(-1, 2)
    observations = StreamedObservations(truth["obs"][:, 0], points)
    v0 = coarsen(w0, n_coarse, "stride")[0].float()

    t0 = time.perf_counter()
    with torch.inference_mode():
        ens = ensemble(coarse, model, v0, n_steps, members, seed=seed, resample_every=resample_every,
                       between=forcing_policy(coarse, forcing_scale), observations=observations, sampler={"type": "dpm_solver_pp_2m", "steps": sampler_steps},
                       record_every=record_every, progress=progress, t0=float(state_info["time"]))
    t_closure = time.perf_counter() - t0
    t0 = time.perf_counter()
    base = rollout(coarse, None, v0, n_steps, record_every=record_every, t0=float(state_info["time"]))
    t_base = time.perf_counter() - t0

    tr = truth["states"]                      # (T, 1, n, n)
    scores = _score_forecast(ens.members.float(), tr, base.states.float())
    t0 = time.perf_counter()
    refs = _references(coarse, v0, truth, tr, n_steps, members, resample_every, record_every,
                       derive_seed(seed, 2)) if references else {}
    t_refs = time.perf_counter() - t0
    figs = plots.rollout_report(ens, tr, out, prefix="closure", vorticity=True)
    err_path = out / "error_vs_baseline.png"
    _plot_error_vs_baseline(ens.times, scores["err_mean"], scores["err_members"], scores["err_base"], err_path)
    result = {"pretrained": DEFAULT, "members": members, "horizon": horizon, "resample_every": resample_every,
              "network_evaluations_per_draw": sampler_steps + 1, "forcing_scale": float(forcing_scale),
              "seed": seed, "times": [float(t) for t in ens.times], **_score_summary(scores),
              "references": refs,
              "seconds": {"truth_fine": t_truth, "closure_ensemble": t_closure, "no_closure": t_base,
                          "references": t_refs, "total": time.perf_counter() - t_start}}
    (out / "metrics.json").write_text(json.dumps(result, indent=2))
    _write_report(out, result, info, figs, err_path)
    return result


def _references(coarse: NavierStokes2D, v0: torch.Tensor, truth: dict[str, torch.Tensor], tr: torch.Tensor,
                n_steps: int, members: int, resample_every: int, record_every: int, seed: int) -> dict[str, Any]:
    """Scores of the classical references against the truth ``tr`` ``(T, 1, n, n)``."""
    phys = _physics_ensemble(coarse, v0, n_steps, members, record_every, seed)
    out: dict[str, Any] = {"physics_ensemble": {
        "rel_error_ensemble_mean": [float(v) for v in metrics.relative_frobenius_error(phys.mean(1), tr)[:, 0]],
        "crps": [float(v) for v in metrics.crps_ensemble(phys, tr, member_dim=1).mean(dim=(-1, -2, -3))],
        "spread_skill_ratio": float(metrics.spread_skill_ratio(phys[1:], tr[1:], member_dim=1))}}
    for name, hold in (("true_closure_held", resample_every), ("true_closure_every_step", 1)):
        states = _true_closure_run(coarse, v0, truth["closures"], hold, record_every)
        out[name] = {"rel_error": [float(v) for v in metrics.relative_frobenius_error(states, tr)[:, 0]]}
    return out


def _score_forecast(mem: torch.Tensor, tr: torch.Tensor, base: torch.Tensor) -> dict[str, Any]:
    """Scores of the ensemble ``mem`` ``(T, M, 1, n, n)`` and the baseline ``base`` against the truth ``tr``."""
    counts = metrics.rank_histogram(mem[1:].movedim(1, 0), tr[1:])
    chi2, p_value = metrics.rank_histogram_chi2(counts)
    return {
        "err_mean": metrics.relative_frobenius_error(mem.mean(1), tr)[:, 0],
        "err_members": metrics.relative_frobenius_error(mem, tr[:, None].expand_as(mem))[..., 0],  # (T, M)
        "err_base": metrics.relative_frobenius_error(base, tr)[:, 0],
        "crps": metrics.crps_ensemble(mem, tr, member_dim=1).mean(dim=(-1, -2, -3)),
        "ratio": metrics.spread_skill_ratio(mem[1:], tr[1:], member_dim=1),
        "counts": counts, "chi2": chi2, "p_value": p_value,
    }


def _score_summary(s: dict[str, Any]) -> dict[str, Any]:
    """The JSON entries of ``metrics.json`` from :func:`_score_forecast`'s tensors."""
    return {
        "rel_error_ensemble_mean": [float(v) for v in s["err_mean"]],
        "rel_error_members_median": [float(v) for v in s["err_members"].median(dim=1).values],
        "rel_error_no_closure": [float(v) for v in s["err_base"]],
        "crps": [float(v) for v in s["crps"]],
        "spread_skill_ratio": float(s["ratio"]),
        "rank_histogram": [int(c) for c in s["counts"]],
        "rank_histogram_chi2": float(s["chi2"]),
        "rank_histogram_p": float(s["p_value"]),
    }


def _plot_error_vs_baseline(times: torch.Tensor, err_mean: torch.Tensor, err_members: torch.Tensor,
                            err_base: torch.Tensor, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    t = times.numpy()
    lo, hi = err_members.min(dim=1).values.numpy(), err_members.max(dim=1).values.numpy()
    ax.fill_between(t, lo, hi, alpha=0.25, label="ensemble members (min-max)")
    ax.plot(t, err_mean.numpy(), label="ensemble mean, learned closure")
    ax.plot(t, err_base.numpy(), "--", label="no closure")
    ax.set_xlabel("time")
    ax.set_ylabel("relative error ||w - w_true|| / ||w_true||")
    ax.set_yscale("log")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _write_report(out: Path, r: dict[str, Any], info: dict[str, Any], figs: dict[str, Path], err_path: Path) -> None:
    lines = [
        "# stochclosure demo: learned stochastic closure vs no closure",
        "",
        f"Closure `{r['pretrained']}`: {info.get('description', '')}",
        "",
        f"{r['members']}-member ensemble over {r['horizon']} time units, a fresh closure every "
        f"{r['resample_every']} solver steps ({r['network_evaluations_per_draw']} network evaluations each), "
        "sparse measurements streamed from the truth run.",
        "",
        *_perturbation_lines(r),
        "",
        "| time | error, ensemble mean | error, median member | error, no closure | CRPS |",
        "|---|---|---|---|---|",
    ]
    for i, t in enumerate(r["times"]):
        lines.append(f"| {t:.2f} | {r['rel_error_ensemble_mean'][i]:.4f} | {r['rel_error_members_median'][i]:.4f} | "
                     f"{r['rel_error_no_closure'][i]:.4f} | {r['crps'][i]:.2e} |")
    lines += [
        "",
        f"Spread-skill ratio {r['spread_skill_ratio']:.2f} (1 is calibrated); rank histogram chi-square "
        f"{r['rank_histogram_chi2']:.1f} (p = {r['rank_histogram_p']:.3g}).",
        "",
        *_reference_lines(r),
        "",
        f"Wall time: truth {r['seconds']['truth_fine']:.1f} s, closure ensemble {r['seconds']['closure_ensemble']:.1f} s, "
        f"no-closure run {r['seconds']['no_closure']:.2f} s.",
        "",
        f"![error vs time]({err_path.name})",
        "",
    ]
    lines += [f"![{k}]({p.name})\n" for k, p in figs.items()]
    (out / "report.md").write_text("\n".join(lines))


def _perturbation_lines(r: dict[str, Any]) -> list[str]:
    """What the spread perturbation is and where its size comes from (``report.md``)."""
    if r["forcing_scale"] == 0:
        return ["Each draw is held unchanged between draws (no spread perturbation)."]
    lines = [
        f"Spread perturbation: the closure G = nu Lap w + 2 sigma dW contains white-in-time forcing, and a draw "
        f"held for {r['resample_every']} steps repeats one forcing realisation, an error all members share. "
        f"Every solver step adds fresh forcing {r['forcing_scale']:g} x 2 sigma dW of the system's noise law "
        "(same spatial spectrum) to the held draw.",
    ]
    if r["forcing_scale"] == FORCING_SCALE:
        seeds = [int(v["seed"]) for v in VALIDATION]
        shown = (f"this seed, {r['seed']}, is one of them" if r["seed"] in seeds
                 else f"never on the seed shown here, {r['seed']}")
        lines[0] += (f" Its size {FORCING_SCALE:g} was fitted for spread-skill ratio 1 on the validation seeds "
                     f"{', '.join(map(str, seeds))} ({shown}), with the default options (16 members, horizon 2, "
                     "a draw every 5 steps with 2 sampler steps); other options change the hold error it "
                     "matches. Measured on the validation seeds:")
        lines += ["", "| validation seed | scale | spread-skill | ensemble-mean error after 2 time units | same, a draw every "
                      "10 steps (5 sampler steps), held |", "|---|---|---|---|---|"]
        lines += [f"| {v['seed']} | {v['scale']:g} | {v['ratio']:.2f} | {v['err_end']:.4f} | {v['err_end_hold']:.4f} |"
                  for v in VALIDATION]
    return lines


def _reference_lines(r: dict[str, Any]) -> list[str]:
    """The comparison with the classical references at the final time (printed and in ``report.md``)."""
    refs = r.get("references") or {}
    if not refs:
        return []
    t = r["times"][-1]
    phys = refs["physics_ensemble"]
    return [
        f"At t = {t:.2f}, relative error of the ensemble mean: learned closure {r['rel_error_ensemble_mean'][-1]:.4f} "
        f"(CRPS {r['crps'][-1]:.2e}, spread-skill {r['spread_skill_ratio']:.2f}); physics closure "
        f"nu Lap w + 2 sigma dW on the coarse grid, {r['members']} noise realisations, no measurements "
        f"{phys['rel_error_ensemble_mean'][-1]:.4f} (CRPS {phys['crps'][-1]:.2e}, spread-skill "
        f"{phys['spread_skill_ratio']:.2f}); no closure {r['rel_error_no_closure'][-1]:.4f}.",
        f"The true closure held {r['resample_every']} steps (a perfect closure model under the same hold) ends at "
        f"{refs['true_closure_held']['rel_error'][-1]:.4f}; refreshed every step (the reduced model's floor) at "
        f"{refs['true_closure_every_step']['rel_error'][-1]:.4f}.",
    ]


def run(args: argparse.Namespace) -> int:
    """Run ``stochclosure demo`` with the parsed arguments."""
    check_demo_options(args.members, args.horizon, args.resample_every, args.sampler_steps, 100, args.seed,
                       prefix="--", forcing_scale=args.forcing_scale)
    check_number(args.threads, "--threads", integer=True, minimum=0, fix="0 keeps torch's default")
    if args.threads:
        torch.set_num_threads(args.threads)
    r = run_demo(args.out, members=args.members, horizon=args.horizon, resample_every=args.resample_every,
                 sampler_steps=args.sampler_steps, seed=args.seed, progress=not args.no_progress,
                 forcing_scale=args.forcing_scale, references=not args.no_references)
    print(f"\n{r['members']}-member ensemble with the pretrained closure {r['pretrained']} "
          f"vs the no-closure baseline (relative vorticity error against the truth):\n")
    print(f"{'time':>6} {'ens. mean':>10} {'median member':>14} {'no closure':>11} {'CRPS':>10}")
    for i, t in enumerate(r["times"]):
        print(f"{t:>6.2f} {r['rel_error_ensemble_mean'][i]:>10.4f} {r['rel_error_members_median'][i]:>14.4f} "
              f"{r['rel_error_no_closure'][i]:>11.4f} {r['crps'][i]:>10.2e}")
    print(f"\nspread-skill ratio {r['spread_skill_ratio']:.2f} (1 is calibrated; fresh forcing "
          f"{r['forcing_scale']:g} x 2 sigma dW per step on the held draw); rank histogram p = "
          f"{r['rank_histogram_p']:.3g}; total {r['seconds']['total']:.0f} s")
    for line in _reference_lines(r):
        print(line)
    print(f"report: {Path(args.out) / 'report.md'}")
    return 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of ``stochclosure demo``."""
    p.add_argument("--out", default="demo_output", help="report folder")
    p.add_argument("--members", type=int, default=16)
    p.add_argument("--horizon", type=float, default=2.0, help="forecast length in time units")
    p.add_argument("--resample-every", type=int, default=5, help="solver steps between closure draws")
    p.add_argument("--sampler-steps", type=int, default=2, help="DPM-Solver++(2M) steps per draw")
    p.add_argument("--forcing-scale", type=float, default=FORCING_SCALE,
                   help="fresh forcing per step on the held draw, in units of 2 sigma dW (0: hold the draw)")
    p.add_argument("--no-references", action="store_true",
                   help="skip the physics-closure and true-closure reference runs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default)")
    p.add_argument("--no-progress", action="store_true")

