"""CPU speed of the score network and the solver: each gain as a ratio measured side by side in one run.

``python benchmarks/cpu_speed.py [--quick]`` writes ``benchmarks/results/cpu_speed.md`` (+ JSON).

Measured (one thread, interleaved repeats, the fastest repeat of each variant):

1. glibc allocator tuning (:func:`stochclosure.perf.tune_allocator`): the same FNO passes in
   child processes with ``STOCHCLOSURE_MALLOC=0`` and with the tuning, alternated;
2. the FNO mode contraction: batched matmul (``contraction="bmm"``, the default) vs
   neuraloperator's einsum, forward and forward + backward;
3. ``torch.inference_mode`` vs ``torch.no_grad`` vs autograd recording for the sampler's forward;
4. float32 vs float64: FNO forward and the Navier-Stokes steps (coarse 32², DNS 256²);
5. where the time goes: the top operators of an FNO forward and of a solver step (torch.profiler).

Results are unchanged by 1 and 2 (``tests/test_perf.py``, the plugin's bmm test); 3 changes no
arithmetic; 4 is a precision choice (float32 is the default everywhere).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"

_CHILD = r"""
import json, sys, time, torch
from stochclosure.perf import tune_allocator
ok = tune_allocator()
torch.set_num_threads(1)
sys.path.insert(0, {root!r})
from cpu_speed import fno, timed
out = {{"tuned": ok}}
for b, n in {shapes!r}:
    m, x, t, c = fno(b, n)
    with torch.no_grad():
        out[f"fwd {{b}}x{{n}}"] = timed(lambda: m(x, t, c), {reps})
    def step():
        m.zero_grad(set_to_none=True)
        m(x, t, c).square().mean().backward()
    out[f"fwd+bwd {{b}}x{{n}}"] = timed(step, {reps})
print(json.dumps(out))
"""


def fno(batch: int, n: int, contraction: str = "bmm", dtype: torch.dtype = torch.float32) -> tuple[Any, ...]:
    """The closure benchmark's FNO score (width 16, |k| < 12, 4 layers) and inputs."""
    import stochclosure as sc

    torch.manual_seed(0)
    m = sc.resolve("score_operator", {"type": "fno", "sde": "vp", "channels": 1, "encoder": "field", "width": 16,
                                      "modes": 12, "layers": 4, "contraction": contraction})
    if dtype == torch.float64:
        for p in m.parameters():
            p.data = p.data.to(torch.complex128 if p.is_complex() else torch.float64)
        for _name, buf in m.named_buffers():
            if buf.is_floating_point():
                buf.data = buf.data.double()
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 1, n, n, generator=gen, dtype=dtype)
    t = torch.rand(batch, generator=gen, dtype=dtype)
    c = sc.Conditioning(fields=torch.randn(batch, 1, n, n, generator=gen, dtype=dtype))
    return m, x, t, c


def timed(fn: Any, reps: int) -> float:
    """Fastest of ``reps`` calls after one warm-up (seconds)."""
    fn()
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def allocator(shapes: list[tuple[int, int]], rounds: int, reps: int) -> dict[str, Any]:
    code = _CHILD.format(root=str(ROOT), shapes=shapes, reps=reps)
    runs: dict[str, list[dict[str, Any]]] = {"off": [], "on": []}
    for _ in range(rounds):
        for mode in ("off", "on"):
            env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
            env["OMP_NUM_THREADS"] = "1"
            env["STOCHCLOSURE_MALLOC"] = "0" if mode == "off" else "1"
            out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
            runs[mode].append(json.loads(out.stdout.strip().splitlines()[-1]))
    assert all(not r["tuned"] for r in runs["off"]) and all(r["tuned"] for r in runs["on"])
    keys = [k for k in runs["on"][0] if k != "tuned"]
    return {k: {"off": min(r[k] for r in runs["off"]), "on": min(r[k] for r in runs["on"])} for k in keys}


def contraction(shapes: list[tuple[int, int]], rounds: int, reps: int) -> dict[str, Any]:
    res: dict[str, dict[str, float]] = {}
    for b, n in shapes:
        mods = {c: fno(b, n, c) for c in ("einsum", "bmm")}
        mods["bmm"][0].load_state_dict(mods["einsum"][0].state_dict())
        with torch.no_grad():
            diff = float((mods["bmm"][0](*mods["bmm"][1:]) - mods["einsum"][0](*mods["einsum"][1:])).abs().max())
        for _ in range(rounds):
            for c, (m, x, t, cond) in mods.items():
                with torch.no_grad():
                    v = timed(lambda: m(x, t, cond), reps)  # noqa: B023
                res.setdefault(f"fwd {b}x{n}", {})[c] = min(res.get(f"fwd {b}x{n}", {}).get(c, 1e9), v)

                def step() -> None:
                    m.zero_grad(set_to_none=True)  # noqa: B023
                    m(x, t, cond).square().mean().backward()  # noqa: B023
                v = timed(step, reps)
                res.setdefault(f"fwd+bwd {b}x{n}", {})[c] = min(res.get(f"fwd+bwd {b}x{n}", {}).get(c, 1e9), v)
        res[f"fwd {b}x{n}"]["max_abs_diff"] = diff
    return res


def grad_modes(b: int, n: int, rounds: int, reps: int) -> dict[str, float]:
    m, x, t, c = fno(b, n)
    m.eval()
    out: dict[str, float] = {}
    for _ in range(rounds):
        for name, ctx in (("autograd", torch.enable_grad), ("no_grad", torch.no_grad),
                          ("inference_mode", torch.inference_mode)):
            with ctx():
                out[name] = min(out.get(name, 1e9), timed(lambda: m(x, t, c), reps))
    return out


def precision(b: int, n: int, rounds: int, reps: int) -> dict[str, dict[str, float]]:
    from stochclosure.systems.subgrid import NavierStokes2DSubgrid

    out: dict[str, dict[str, float]] = {}
    models = {dt: fno(b, n, dtype=dt) for dt in (torch.float32, torch.float64)}
    system = NavierStokes2DSubgrid(n=32, n_fine=256, nu=1e-4, dt=2e-4, sigma=0.0, filter="gaussian")
    coarse = {dt: system.initial_state(b, generator=torch.Generator().manual_seed(0), dtype=dt)
              for dt in models}
    fine = {dt: system.fine_initial_state(1, generator=torch.Generator().manual_seed(0), dtype=dt) for dt in models}
    for _ in range(rounds):
        for dt, (m, x, t, c) in models.items():
            key = str(dt).replace("torch.", "")
            with torch.no_grad():
                v = timed(lambda: m(x, t, c), reps)  # noqa: B023
                out.setdefault(f"FNO fwd {b}x{n}", {})[key] = min(out.get(f"FNO fwd {b}x{n}", {}).get(key, 1e9), v)
                v = timed(lambda: system.step(coarse[dt], None), reps * 10)  # noqa: B023
                out.setdefault(f"coarse step {b}x32", {})[key] = min(out.get(f"coarse step {b}x32", {}).get(key, 1e9),
                                                                     v)
                v = timed(lambda: system.full_step(fine[dt]), reps * 2)  # noqa: B023
                out.setdefault("DNS step 1x256", {})[key] = min(out.get("DNS step 1x256", {}).get(key, 1e9), v)
    return out


def profile(b: int, n: int) -> dict[str, list[tuple[str, float]]]:
    from stochclosure.systems.subgrid import NavierStokes2DSubgrid

    m, x, t, c = fno(b, n)
    system = NavierStokes2DSubgrid(n=32, n_fine=256, nu=1e-4, dt=2e-4, sigma=0.0, filter="gaussian")
    w = system.fine_initial_state(1, generator=torch.Generator().manual_seed(0))
    out = {}
    for name, fn in ((f"FNO forward {b}x{n}", lambda: m(x, t, c)), ("DNS step 1x256", lambda: system.full_step(w))):
        with torch.no_grad():
            fn()
            with torch.profiler.profile() as prof:
                for _ in range(3):
                    fn()
        rows = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
        total = sum(e.self_cpu_time_total for e in rows)
        out[name] = [(e.key, e.self_cpu_time_total / total) for e in rows[:6]]
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small sizes, few repeats")
    p.add_argument("--out", type=Path, default=RESULTS / "cpu_speed.md")
    args = p.parse_args(argv)
    from stochclosure.perf import tune_allocator

    tuned = tune_allocator()
    torch.set_num_threads(1)
    rounds, reps = (1, 2) if args.quick else (3, 5)
    shapes = [(8, 32)] if args.quick else [(32, 32), (64, 64)]
    t0 = time.perf_counter()
    res = {"allocator": allocator(shapes, rounds, reps), "contraction": contraction(shapes, rounds, reps),
           "grad_modes": grad_modes(*shapes[0], rounds, reps), "precision": precision(*shapes[0], rounds, reps),
           "profile": profile(*shapes[0])}
    res["info"] = {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "torch": torch.__version__,
                   "allocator_tuned_in_parent": tuned, "seconds": time.perf_counter() - t0,
                   "load_average": os.getloadavg()[0], "rounds": rounds, "reps": reps}
    lines = ["# CPU speed: score network and solver", "",
             f"`python benchmarks/cpu_speed.py{' --quick' if args.quick else ''}` ({res['info']['machine']}, torch "
             f"{res['info']['torch']}, 1 thread; load average {res['info']['load_average']:.1f} at the end: the 2 "
             f"cores were shared with other jobs, so absolute times are pessimistic; every ratio compares variants "
             f"measured alternately in the same run, fastest of {rounds} x {reps} repeats). FNO = the closure "
             "benchmark's score network (width 16, |k| < 12, 4 layers, field encoder); shapes are batch x grid.", "",
             "## 1. glibc allocator (`stochclosure.perf.tune_allocator`, applied by the `stochclosure` command)", "",
             "| pass | default malloc (ms) | tuned (ms) | speed-up |", "|---|---|---|---|"]
    for k, v in res["allocator"].items():
        lines.append(f"| {k} | {1e3 * v['off']:.1f} | {1e3 * v['on']:.1f} | {v['off'] / v['on']:.2f}x |")
    lines += ["", "## 2. Mode contraction: batched matmul (default) vs neuraloperator's einsum", "",
              "| pass | einsum (ms) | bmm (ms) | speed-up |", "|---|---|---|---|"]
    for k, v in res["contraction"].items():
        lines.append(f"| {k} | {1e3 * v['einsum']:.1f} | {1e3 * v['bmm']:.1f} | {v['einsum'] / v['bmm']:.2f}x |")
    diffs = [v["max_abs_diff"] for v in res["contraction"].values() if "max_abs_diff" in v]
    lines += ["", f"Largest output difference bmm vs einsum: {max(diffs):.1e} (float32 round-off).", "",
              f"## 3. Autograd modes, FNO forward {shapes[0][0]}x{shapes[0][1]}", "",
              "| mode | ms | vs no_grad |", "|---|---|---|"]
    g = res["grad_modes"]
    for k, v in g.items():
        lines.append(f"| {k} | {1e3 * v:.1f} | {g['no_grad'] / v:.2f}x |")
    lines += ["", "## 4. float32 vs float64", "", "| computation | float32 (ms) | float64 (ms) | float64 / float32 |",
              "|---|---|---|---|"]
    for k, v in res["precision"].items():
        lines.append(f"| {k} | {1e3 * v['float32']:.3f} | {1e3 * v['float64']:.3f} | "
                     f"{v['float64'] / v['float32']:.2f}x |")
    lines += ["", "## 5. Where the time goes (share of self CPU time, top operators)", ""]
    for k, rows in res["profile"].items():
        lines.append(f"* {k}: " + ", ".join(f"{name} {100 * s:.0f} %" for name, s in rows))
    lines.append("")
    args.out.write_text("\n".join(lines) + "\n")
    args.out.with_suffix(".json").write_text(json.dumps(res, indent=1) + "\n")
    print("\n".join(lines))
    return res


if __name__ == "__main__":
    main(sys.argv[1:])
