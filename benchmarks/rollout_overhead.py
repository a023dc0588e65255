"""Overhead of the pyro machinery in ``rollout`` and the cost of vectorised ensembles.

1. The same ensemble rollout (LinearRelaxation at 32^2, exact analytic closure, probability-flow
   Heun sampler with 10 steps, a fresh closure every step) three ways:

   * a plain loop making the same calls: ``model.sample(Conditioning(fields=state))`` then
     ``system.step``;
   * ``stochclosure.ensemble`` (``rollout`` with a ``members`` plate, one pass; ``keyed=False``
     uses one random stream like the plain loop, ``keyed=True`` per-member streams);
   * ``pyro.infer.Predictive(rollout, num_samples=M, parallel=True)``: pyro runs the model twice
     more (with one member) to find the plate nesting and the site shapes before the vectorised
     pass.

2. Ensemble scaling: wall time of ``ensemble`` for 1, 4, 16, 64 members relative to 1 member.

Timings are the median of ``--repeats`` interleaved runs with one intra-op thread (the 2-core
machines this runs on are shared; a second thread only adds synchronisation cost for these
small FFTs). Usage::

    python benchmarks/rollout_overhead.py [--steps 30] [--members 16] [--repeats 5] [--out FILE]
"""

from __future__ import annotations

import argparse
import math
import platform
import statistics
import time
from pathlib import Path

import pyro
import torch
from pyro.infer import Predictive

import stochclosure as sc
from stochclosure.rollouts import ensemble, rollout
from stochclosure.scores.analytic import GaussianScore
from stochclosure.systems import LinearRelaxation


def exact_closure(system: LinearRelaxation, steps: int) -> sc.ClosureModel:
    """The system's exact closure law, normalised per channel, with a probability-flow sampler."""
    law = system.closure_law()
    grf = dict(law["grf"])
    std = math.sqrt(float(system.noise_cov.variance().mean()) / system.dt)
    grf["scale"] = grf["scale"] / std**2
    return sc.ClosureModel("vp", GaussianScore("vp", grf=grf), {"type": "probability_flow_heun", "steps": steps},
                           target_mean=torch.tensor([float(law["mean"])]), target_std=torch.tensor([std]))


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        tic = time.perf_counter()
        fn()
        times.append(time.perf_counter() - tic)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--members", type=int, default=16)
    ap.add_argument("--sampler-steps", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "rollout_overhead.md")
    args = ap.parse_args()
    torch.set_num_threads(1)
    system = LinearRelaxation(n=args.n)
    model = exact_closure(system, args.sampler_steps)
    v0 = system.initial_state(1, generator=torch.Generator().manual_seed(0))[0]
    m, n = args.members, args.steps

    def plain() -> torch.Tensor:
        g = torch.Generator().manual_seed(0)
        s = v0.expand(m, *v0.shape)
        for _ in range(n):
            u = model.sample(sc.Conditioning(fields=s), generator=g)[0]
            s = system.step(s, u)
        return s

    def ens(keyed: bool):
        return lambda: ensemble(system, model, v0, n, members=m, seed=0, keyed=keyed)

    def predictive():
        pyro.set_rng_seed(0)
        return Predictive(rollout, num_samples=m, parallel=True, return_sites=[f"state/{n}"])(
            system, model, v0, n, keyed=False)

    variants = {"plain loop": plain, "ensemble(keyed=False)": ens(False), "ensemble(keyed=True)": ens(True),
                "Predictive(parallel=True)": predictive}
    for fn in variants.values():  # warm-up (FFT plans, imports)
        fn()
    samples: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(args.repeats):  # interleaved, so load changes hit every variant alike
        for k, fn in variants.items():
            samples[k].append(median_time(fn, 1))
    t = {k: statistics.median(v) for k, v in samples.items()}

    scaling = {}
    for keyed in (False, True):
        base = None
        for mm in (1, 4, 16, 64):
            secs = median_time(lambda mm=mm, keyed=keyed: ensemble(system, model, v0, n, members=mm, seed=0,
                                                                       keyed=keyed), args.repeats)
            base = secs if base is None else base
            scaling[(keyed, mm)] = (secs, secs / base)

    lines = [
        "# Rollout overhead and ensemble scaling",
        "",
        f"`python benchmarks/rollout_overhead.py --n {args.n} --steps {n} --members {m} "
        f"--sampler-steps {args.sampler_steps} --repeats {args.repeats}`",
        "",
        f"LinearRelaxation {args.n}x{args.n}, exact analytic closure, probability-flow Heun with "
        f"{args.sampler_steps} steps ({model.sampler.nfe(args.sampler_steps)} score evaluations per draw), a fresh "
        f"closure every solver step, {n} solver steps. torch {torch.__version__}, pyro {pyro.__version__}, "
        f"1 intra-op thread, {platform.processor() or platform.machine()}; median of {args.repeats} interleaved runs.",
        "",
        f"## 1. Overhead, {m} members",
        "",
        "| variant | seconds | ratio to plain loop |",
        "|---|---|---|",
    ]
    for k, secs in t.items():
        lines.append(f"| {k} | {secs:.3f} | {secs / t['plain loop']:.3f} |")
    lines += [
        "",
        "`Predictive` runs the model three times (pyro guesses the plate nesting and traces the site",
        "shapes with one member before the vectorised pass), so its ratio includes two 1-member",
        "rollouts; `ensemble` (a `members` plate inside `rollout`) is the one-pass path.",
        "",
        "## 2. Ensemble scaling (`ensemble`, vectorised)",
        "",
        "| members | seconds (keyed=False) | relative to 1 | seconds (keyed=True) | relative to 1 |",
        "|---|---|---|---|---|",
    ]
    for mm in (1, 4, 16, 64):
        a, ra = scaling[(False, mm)]
        b, rb = scaling[(True, mm)]
        lines.append(f"| {mm} | {a:.3f} | {ra:.2f} | {b:.3f} | {rb:.2f} |")
    text = "\n".join(lines) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
