"""Later stages of ``benchmarks/closures.py``: a long-window fine-tune, a calibration on long validation
runs, and the pre-registered confirmations on fresh cases that score them.

Why: on the first confirmation cases the fine-tuned Gaussian residual law drawn every 10 steps was
calibrated at t = 0.24 (spread-skill 0.80) but under-dispersed at t = 0.5 (0.68): every fine-tune so
far scored windows of 0.1 time units, so nothing trained how the spread grows after that. This stage
fine-tunes that law further on windows of ``records`` records (15 in the full study: 0.3 time units,
150 coarse steps, the whole training trajectories) in the form it is run in (ADM at every coarse step, only the residual's
draw held ``hold`` steps, its latent an AR(1) across draws), by the fair CRPS of 4-member ensemble
rollouts against the filtered truth, the validation-best state kept.

Protocol, fixed before the fine-tune ran: its law drawn every 10 steps is scored (i) on the first 40
fresh cases of the online study, which were looked at before this stage was designed (so that row is
marked with a dagger), and (ii) on 40 more fresh cases of a new DNS seed (``seed_offset``), never
generated before, with the runs listed in ``cfg["confirm_horizon"]["runs"]`` (the new law, the first
fine-tuned law drawn every 10 steps as a replication, and the baselines of the goals), whatever the
validation says. Nothing else is chosen on these cases.

Calibration (``calibrate``, after the long-window fine-tune's validation showed no gain in spread):
the first fine-tuned law's spread factor and AR(1) memory chosen on 40 fresh validation trajectories
to t = 0.5 by a rule fixed before any run, then scored with the law as it was on 40 more fresh cases
(``cfg["confirm_calibrated"]``). ``confirm`` is the one confirmation loop of the study (the first
confirmation of ``closures.py`` runs through it too).

Functions take the study module (``benchmarks/closures.py``) as their first argument ``study`` for
its helpers (``cached``, ``online40_run``, ``finetune_windows``, ``goals_online40_of``, ...).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

GAUSSIAN = "ADM + Gaussian residual (CRPS)"
BASELINES = ("ADM order 10", "Smagorinsky, fitted c_s", "ADM + coloured noise, AR(1)")


def law_name(cfg: dict[str, Any]) -> str:
    """The run name of the long-window fine-tuned law drawn every ``hold`` steps."""
    fh = cfg["finetune_horizon"]
    return f"{GAUSSIAN}, fine-tuned on {fh['records']}-record windows (ADM every step), AR(1), held {fh['hold']}"


def horizon_law(study: Any, system: Any, cfg: dict[str, Any], data: dict[str, Any], start: Any, rho: float,
                work: Path, stem: str) -> tuple[Any, dict[str, Any]] | None:
    """``start`` (the first fine-tuned law) fine-tuned on long windows; ``None`` while pending (``--pending``).

    Returns:
        The fine-tuned law (eval mode) and its record ``{"seconds", "best_step", "history"}``.
    """
    from stochclosure.training.finetune import FinetuneConfig, finetune

    fh = cfg["finetune_horizon"]
    fc = {**cfg["finetune"], "records": fh["records"], "hold": fh["hold"], "steps": fh["steps"]}
    name = f"law-{stem}-crps-finetuned-horizon-r{fh['records']}-h{fh['hold']}"
    if study.REPORT_PENDING and not (work / f"{name}.pt").exists():
        return None
    tuned = study.learned_law("crps", system, cfg)
    tuned.load_state_dict(start.state_dict())
    wcfg = {**cfg, "finetune": fc}

    def fit() -> dict[str, Any]:
        t0 = time.perf_counter()
        opts = FinetuneConfig(steps=fc["steps"], members=fc["members"], windows_per_step=fc["windows_per_step"],
                              records=fc["records"], hold=fc["hold"], hold_physics=False, rho=rho ** fc["hold"],
                              lr=fc["lr"], score="crps", params="all", val_every=fc["val_every"], seed=0)
        res = finetune(tuned, system, study.finetune_windows(system, wcfg, data["train"][0]), opts,
                       dt=cfg["coarse_every"] * system.dt, val=study.finetune_windows(system, wcfg, data["val"][0]),
                       progress=False)
        return {"state": res.law.state_dict(), "seconds": time.perf_counter() - t0, "best_step": res.best_step,
                "history": [dict(h) for h in res.history]}

    stored = study.cached(work, name, fit)
    tuned.load_state_dict(stored["state"])
    tuned.eval()
    return tuned, {k: v for k, v in stored.items() if k != "state"}


def horizon_study(study: Any, system: Any, cfg: dict[str, Any], data: dict[str, Any], laws: dict[str, Any],
                  start: Any, rho: float, work: Path, stem: str) -> dict[str, Any] | None:
    """The long-window fine-tune, its run on the first 40 fresh cases and the confirmation on 40 new ones.

    Returns:
        ``{"finetune", "first40": {name: run}, "confirm": {"times", "cases", "seed", "laws"}}`` (runs as
        ``study.online40_run`` returns them), or ``None`` while the fine-tune is pending.
    """
    got = horizon_law(study, system, cfg, data, start, rho, work, stem)
    if got is None:
        return None
    law, record = got
    hold, m = cfg["finetune_horizon"]["hold"], cfg["online40"]["members"]
    name = law_name(cfg)
    first = study.cached(work, "dns-online40-cases", lambda: study.dns_cases(cfg))
    stage = f"online40-{stem}-{study._slug(name)}"
    first40 = {}
    if not (study.REPORT_PENDING and not (work / f"{stage}.pt").exists()):
        first40[name] = study.cached(work, stage, lambda: study.online40_run(system, cfg, first["w"], law, rho, 1.0,
                                                                             m, hold))
    runs: dict[str, tuple[Any, float, int, int]] = {
        f"{GAUSSIAN}, fine-tuned, AR(1), held {hold}": (start, rho, m, hold), name: (law, rho, m, hold)}
    conf = confirm(study, system, cfg, cfg["confirm_horizon"], laws, runs, rho, work, stem)
    return {"finetune": record, "hold": hold, "first40": first40, "confirm": conf}


def confirm(study: Any, system: Any, cfg: dict[str, Any], cc: dict[str, Any], laws: dict[str, Any],
            learned: dict[str, tuple[Any, float, int, int]], rho: float, work: Path, stem: str) -> dict[str, Any]:
    """The baselines of the goals and the ``learned`` runs on 40 fresh cases of seed offset ``cc["seed_offset"]``.

    ``learned``: ``{name: (law, rho, members, hold)}``; with the baselines, the names must be exactly
    ``cc["runs"]`` (the runs fixed in advance). Every run is a cached stage ``confirm<offset>-<stem>-<name>``.
    """
    m = cfg["online40"]["members"]
    ccfg = {**cfg, "online40": {**cfg["online40"], "seed_offset": cc["seed_offset"]}}
    cases = study.cached(work, f"dns-confirm-cases-{cc['seed_offset']}", lambda: study.dns_cases(ccfg))
    runs: dict[str, tuple[Any, float, int, int]] = {n: (laws[n], 0.0, 1, 1) for n in BASELINES[:2]}
    runs[BASELINES[2]] = (laws["ADM + coloured noise"], rho, m, 1)
    runs.update(learned)
    if sorted(runs) != sorted(cc["runs"]):
        from stochclosure.errors import ConfigError, format_error

        raise ConfigError(format_error("runs", f"the runs {sorted(runs)}", repr(cc["runs"]),
                                       "list exactly the pre-registered runs"))
    out: dict[str, Any] = {}
    for run, (lw, r, members, k) in runs.items():
        st = f"confirm{cc['seed_offset']}-{stem}-{study._slug(run)}"
        if study.REPORT_PENDING and not (work / f"{st}.pt").exists():
            continue
        out[run] = study.cached(work, st, lambda lw=lw, r=r, members=members, k=k: study.online40_run(
            system, ccfg, cases["w"], lw, r, 1.0, members, k))
        study._log(f"confirm{cc['seed_offset']} {run}: error {[round(v['error'][0], 5) for v in out[run]['scores']]}, "
                   f"spread-skill {[round(v['spread_skill'][0], 3) for v in out[run]['scores']]}")
    return {"times": cfg["online40"]["times"], "cases": int(cases["w"].shape[0]), "seed": int(cases["seed"]),
            "laws": out}


class LatentScaled:
    """A physics + remainder law whose remainder's latent is multiplied by ``alpha``.

    For a remainder linear in its latent (the Gaussian laws: ``mu + sigma * colour(z)``) this scales the
    spread by ``alpha`` and keeps the mean, at one network evaluation per draw.
    """

    def __init__(self, law: Any, alpha: float) -> None:
        self.physics, self.base, self.alpha = law.physics, law.residual, float(alpha)
        self.residual = self
        self.nfe_per_draw = float(getattr(law, "nfe_per_draw", 1.0))

    def latent_shape(self, cond: Any, grid: tuple[int, ...]) -> tuple[int, ...]:
        return self.base.latent_shape(cond, grid)

    def draw(self, cond: Any, latent: Tensor, *, grid: tuple[int, ...] | None = None) -> Tensor:
        return self.base.draw(cond, self.alpha * latent, grid=grid)


def calibrated_name(cfg: dict[str, Any]) -> str:
    """The run name of the fine-tuned law calibrated on the long validation runs."""
    ch = cfg["calibrate_horizon"]
    return (f"{GAUSSIAN}, fine-tuned, calibrated on validation runs to t = {ch['times'][-1]:g}, AR(1), "
            f"held {ch['hold']}")


def _misfit(run: dict[str, Any], times: list[float], at: list[float]) -> float:
    """``max |log spread-skill|`` over the times ``at`` (0: calibrated at every one of them)."""
    idx = [[round(t, 6) for t in times].index(round(a, 6)) for a in at]
    return max(abs(math.log(max(run["scores"][i]["spread_skill"][0], 1e-12))) for i in idx)


def calibrate(study: Any, system: Any, cfg: dict[str, Any], law: Any, rho: float, work: Path, stem: str
              ) -> dict[str, Any]:
    """Spread factor and memory of ``law`` (drawn every ``hold`` steps) chosen on 40 fresh validation cases.

    Every candidate ``(alpha, memory)`` (the latent scaled by ``alpha``, the AR(1) memory multiplied by
    ``memory``: ``rho ** (1 / memory)`` per step) runs from the validation cases (a DNS seed of their own,
    never used for a score) to ``times``; the rule, fixed before any run: the smallest
    ``max |log spread-skill|`` over ``at``, ties to the lower CRPS at the last time.

    Returns:
        ``{"candidates": [{"alpha", "memory", "misfit", "spread_skill", "crps"}], "alpha", "memory", "cases",
        "seed"}``.
    """
    ch = cfg["calibrate_horizon"]
    vcfg = {**cfg, "online40": {**cfg["online40"], "seed_offset": ch["seed_offset"], "times": ch["times"],
                                "records": ch["records"]}}
    cases = study.cached(work, f"dns-calibration-cases-{ch['seed_offset']}-r{ch['records']}",
                         lambda: study.dns_cases(vcfg))
    m = cfg["online40"]["members"]
    cands = []
    for alpha in ch["alphas"]:
        for mem in ch["memory"]:
            st = f"calibrate{ch['seed_offset']}-{stem}-held{ch['hold']}-a{alpha:g}-m{mem:g}"
            run = study.cached(work, st, lambda alpha=alpha, mem=mem: study.online40_run(
                system, vcfg, cases["w"], LatentScaled(law, alpha), rho ** (1 / mem), 1.0, m, ch["hold"]))
            cands.append({"alpha": alpha, "memory": mem, "misfit": _misfit(run, ch["times"], ch["at"]),
                          "spread_skill": [sc["spread_skill"] for sc in run["scores"]],
                          "crps": [sc["crps"] for sc in run["scores"]]})
            study._log(f"calibrate alpha {alpha:g}, memory x{mem:g}: spread-skill "
                       f"{[round(v[0], 3) for v in cands[-1]['spread_skill']]}, CRPS {cands[-1]['crps'][-1][0]:.4g}")
    best = min(cands, key=lambda c: (round(c["misfit"], 3), c["crps"][-1][0]))
    return {"candidates": cands, "alpha": best["alpha"], "memory": best["memory"], "times": ch["times"],
            "cases": int(cases["w"].shape[0]), "seed": int(cases["seed"])}


def calibrated_study(study: Any, system: Any, cfg: dict[str, Any], laws: dict[str, Any], start: Any, rho: float,
                     work: Path, stem: str) -> dict[str, Any]:
    """The calibration of the fine-tuned law on validation runs and its pre-registered confirmation."""
    cal = calibrate(study, system, cfg, start, rho, work, stem)
    hold, m = cfg["calibrate_horizon"]["hold"], cfg["online40"]["members"]
    learned = {f"{GAUSSIAN}, fine-tuned, AR(1), held {hold}": (start, rho, m, hold),
               calibrated_name(cfg): (LatentScaled(start, cal["alpha"]), rho ** (1 / cal["memory"]), m, hold)}
    conf = confirm(study, system, cfg, cfg["confirm_calibrated"], laws, learned, rho, work, stem)
    return {"calibration": cal, "hold": hold, "confirm": conf}


# -- the report ---------------------------------------------------------------------------------------------
def goals(study: Any, info: dict[str, Any], key: str = "horizon") -> list[str]:
    """Goal rows of the learned laws on the confirmation cases of ``info[key]`` (the 40-case rules); [] until all ran."""
    conf = (info.get(key) or {}).get("confirm")
    if not conf or not all(n in conf["laws"] for n in BASELINES):
        return []
    view = {"online40": conf}
    return [r for n in conf["laws"] if n.startswith(GAUSSIAN) for r in study.goals_online40_of(view, n)]


def goals_first40(study: Any, info: dict[str, Any]) -> list[str]:
    """Goal rows of the long-window law on the first 40 cases (looked at before it was designed: a dagger)."""
    h = info.get("horizon") or {}
    if not h.get("first40"):
        return []
    view = {"online40": {**info["online40"], "laws": {**info["online40"]["laws"],
                                                       **{n + study.LATE: v for n, v in h["first40"].items()}}}}
    return [r for n in h["first40"] for r in study.goals_online40_of(view, n + study.LATE)]


def section(study: Any, info: dict[str, Any], cfg: dict[str, Any]) -> list[str]:
    """The report section: the fine-tune's record, then the confirmation cases' tables."""
    h = info.get("horizon")
    if not h:
        return []
    fh, ft = cfg["finetune_horizon"], h["finetune"]
    conf = h["confirm"]
    hist = "; ".join(f"step {r['step']}: CRPS {r['val_crps']:.3g}, spread-skill {r['val_spread_skill']:.3f}"
                     for r in ft["history"])
    view = {"online40": conf}
    span = fh["records"] * cfg["record_every"] * cfg["fine"]["dt"]
    lines = [f"### Long-window fine-tune and its confirmation ({conf['cases']} more fresh cases, DNS seed "
             f"{conf['seed']})", "", (__doc__ or "").split("\n\n")[1].replace("\n", " ").replace("``", "`"), "",
             (__doc__ or "").split("\n\n")[2].replace("\n", " ").replace("``", "`"), "",
             f"Fine-tune: {fh['records']} records per window, a draw every {fh['hold']} steps, {fh['steps']} steps, "
             f"validation-best step {ft['best_step']}, {ft['seconds']:.0f} s. Validation windows ({span:.3g} time units): "
             f"{hist}.", ""]
    if len(conf["laws"]) == len(cfg["confirm_horizon"]["runs"]):
        lines += ["Relative error of the ensemble mean (± standard error over cases):", "",
                  *study.online40_table(view, "error"), "", "Fair CRPS:", "", *study.online40_table(view, "crps"), "",
                  study.SSR_CAPTION, "", *study.online40_table(view, "spread_skill"), "",
                  "Rank histogram and spectrum error at the last time:", "", *study.online40_shape_table(view), ""]
    else:
        lines += [f"Not yet computed (listed, not scored): "
                  f"{', '.join(n for n in cfg['confirm_horizon']['runs'] if n not in conf['laws'])}.", ""]
    return lines


def calibrated_section(study: Any, info: dict[str, Any], cfg: dict[str, Any]) -> list[str]:
    """The report section of the calibration on validation runs and its confirmation."""
    c = info.get("calibrated")
    if not c:
        return []
    cal, conf, ch = c["calibration"], c["confirm"], cfg["calibrate_horizon"]
    at = " and ".join(f"{t:g}" for t in ch["at"])
    rows = ["| spread factor | memory | " + " | ".join(f"spread-skill t = {t:g}" for t in cal["times"])
            + f" | CRPS t = {cal['times'][-1]:g} | max abs log spread-skill at {at} |",
            "|---|---|" + "---|" * (len(cal["times"]) + 2)]
    for cand in cal["candidates"]:
        mark = " (chosen)" if (cand["alpha"], cand["memory"]) == (cal["alpha"], cal["memory"]) else ""
        rows.append(f"| {cand['alpha']:g}{mark} | x{cand['memory']:g} | "
                    + " | ".join(study._pm(v) for v in cand["spread_skill"])
                    + f" | {study._pm(cand['crps'][-1])} | {cand['misfit']:.3f} |")
    view = {"online40": conf}
    lines = [f"### Calibrated on long validation runs, and a third confirmation ({conf['cases']} more fresh cases, DNS "
             f"seed {conf['seed']})", "",
             "Added after the long-window fine-tune's validation showed no gain in spread. The first fine-tuned law "
             f"drawn every {c['hold']} steps, its latent scaled by a spread factor (for a Gaussian remainder: the "
             "spread scaled, the mean kept) and its AR(1) memory multiplied, chosen on "
             f"{cal['cases']} fresh validation trajectories (DNS seed {cal['seed']}, used for nothing else) to "
             f"t = {cal['times'][-1]:g} by a rule fixed before any run: the smallest max |log spread-skill| at "
             f"t = {at}, ties to the lower CRPS. Then scored, with the runs fixed before the cases were generated, "
             f"on {conf['cases']} more fresh cases to t = {conf['times'][-1]:g}.", "",
             "Validation candidates (± standard errors over the validation cases):", "", *rows, ""]
    if len(conf["laws"]) == len(cfg["confirm_calibrated"]["runs"]):
        lines += ["Relative error of the ensemble mean (± standard error over cases):", "",
                  *study.online40_table(view, "error"), "", "Fair CRPS:", "", *study.online40_table(view, "crps"), "",
                  study.SSR_CAPTION, "", *study.online40_table(view, "spread_skill"), "",
                  "Rank histogram and spectrum error at the last time:", "", *study.online40_shape_table(view), ""]
    return lines


def _case_sets(study: Any, main: dict[str, Any], hold: int) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """``(label, run of the fine-tuned law drawn every hold steps, its study's laws)`` on every fresh case set."""
    name = f"{GAUSSIAN}, fine-tuned, AR(1), held {hold}"
    out = []
    first = main.get("online40", {}).get("laws", {})
    if name + study.LATE in first:
        out.append((f"first {main['online40']['cases']} cases (seed {main['online40']['seed']}) {study.LATE.strip()}",
                    first[name + study.LATE], first))
    for label, conf in (("first confirmation", (main.get("confirm") or {})),
                        ("second confirmation", (main.get("horizon") or {}).get("confirm") or {}),
                        ("third confirmation", (main.get("calibrated") or {}).get("confirm") or {})):
        if name in conf.get("laws", {}) and BASELINES[2] in conf["laws"]:
            out.append((f"{label} (seed {conf['seed']})", conf["laws"][name], conf["laws"]))
    return out


def findings(study: Any, main: dict[str, Any]) -> list[str]:
    """The fine-tuned law drawn every 10 steps across all fresh case sets, and what the later attempts changed."""
    hold = (main.get("calibrated") or main.get("horizon") or {}).get("hold")
    sets = _case_sets(study, main, hold) if hold else []
    if len(sets) < 2:
        return []
    times = [round(t, 6) for t in main["online40"]["times"]]
    at = [t for t in (0.24, 0.5) if t in times] if 0.5 in times else times[-2:]  # the goal times (quick: the last two)
    i24, i5 = times.index(at[0]), times.index(at[-1])
    when = f"t = {at[0]:g}" + (f" / {at[-1]:g}" if len(at) > 1 else "")

    def row(label: str, run: dict[str, Any], laws: dict[str, Any]) -> str:
        ratio = run["scores"][i5]["crps"][0] / laws[BASELINES[2]]["scores"][i5]["crps"][0]
        return (f"{label}: spread-skill {run['scores'][i24]['spread_skill'][0]:.3f} / "
                f"{run['scores'][i5]['spread_skill'][0]:.3f}, CRPS {ratio:.3f}x ADM + AR(1) noise")

    conf = [(lb, r) for lb, r, _ in sets if "confirmation" in lb]
    v5 = torch.tensor([r["scores"][i5]["spread_skill"][0] for _, r in conf], dtype=torch.float64)
    v24 = torch.tensor([r["scores"][i24]["spread_skill"][0] for _, r in conf], dtype=torch.float64)
    k = len(conf)
    pooled = (f" Over the {k} pre-registered confirmation sets, mean ± standard error between sets: "
              f"{float(v24.mean()):.3f} ± {float(v24.std() / math.sqrt(k)):.3f} at t = {at[0]:g} and "
              f"{float(v5.mean()):.3f} ± {float(v5.std() / math.sqrt(k)):.3f} at t = {at[-1]:g}." if k > 1 else "")
    within = sum(r["scores"][i5]["spread_skill"][1] for _, r in conf) / max(k, 1)
    wide = (f" The sets differ by more than the standard errors within a set suggest (between-set SD "
            f"{float(v5.std()):.3f} vs a mean within-set SE of {within:.3f} at t = {at[-1]:g}): those are over per-case "
            "ratios, while the ratio reported is pooled over cases and dominated by the cases with the largest "
            "errors; the between-set figure is the honest uncertainty." if k > 1 and float(v5.std()) > 2 * within else "")
    lines = [f"- The fine-tuned Gaussian residual law drawn every {hold} steps on every fresh case set (spread-skill at "
             f"{when}): " + "; ".join(row(*x) for x in sets) + "." + pooled + wide]
    h = main.get("horizon")
    if h and h.get("confirm", {}).get("laws"):
        name = next((n for n in h["confirm"]["laws"] if "windows" in n), None)
        if name:
            hist = h["finetune"]["history"]
            before = hist[0]["val_spread_skill"]
            kept = next(r["val_spread_skill"] for r in hist if r["step"] == h["finetune"]["best_step"])
            lines.append(f"- Fine-tuned further on long windows: "
                         f"{row('second confirmation', h['confirm']['laws'][name], h['confirm']['laws'])}; validation "
                         f"spread-skill at the window's end {before:.3f} before, {kept:.3f} at the kept step"
                         + (": the longer windows did not add spread." if kept <= before else "."))
    c = main.get("calibrated")
    if c and calibrated_name_of(c) in c["confirm"]["laws"]:
        cal = c["calibration"]
        lines.append(f"- Calibrated on long validation runs (spread factor {cal['alpha']:g}, memory x{cal['memory']:g}): "
                     + row("third confirmation", c["confirm"]["laws"][calibrated_name_of(c)], c["confirm"]["laws"]) + ".")
    return lines


def calibrated_name_of(c: dict[str, Any]) -> str:
    """The calibrated run's name in ``info["calibrated"]["confirm"]["laws"]``."""
    return next((n for n in c["confirm"]["laws"] if "calibrated on validation runs" in n), "")
