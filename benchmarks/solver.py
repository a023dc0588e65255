"""Navier–Stokes solver cost: time per step vs the FFTs alone, and dataset-generation throughput.

The pseudo-spectral floor of one full step is the transforms it needs: ``rfft2`` of the state,
one ``irfft2`` of the four fields ``(u, v, d_x w, d_y w)``, ``rfft2`` of the advection term and
``irfft2`` of the new state (7 single-channel real FFTs). ``ratio = step / FFTs`` (goal <= 3).

Usage::

    python benchmarks/solver.py [--threads 1] [--device cpu] [--out benchmarks/results/solver.md]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from stochclosure.data.generate import generate
from stochclosure.systems.navier_stokes import NavierStokes2D


def _time_pair(fa, fb, device: str, min_time: float = 0.05, repeats: int = 9) -> tuple[float, float]:
    """Seconds per call of ``fa`` and ``fb``: the fastest of ``repeats`` interleaved timings.

    Interleaving exposes both to the same background load; the minimum is the least disturbed.
    """
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

    def calls(f):
        for _ in range(3):
            f()
        sync()
        n = 1
        while True:
            t0 = time.perf_counter()
            for _ in range(n):
                f()
            sync()
            if time.perf_counter() - t0 > min_time:
                return n
            n *= 2

    na, nb = calls(fa), calls(fb)
    ta, tb = [], []
    for _ in range(repeats):
        for f, n, out in ((fa, na, ta), (fb, nb, tb)):
            t0 = time.perf_counter()
            for _ in range(n):
                f()
            sync()
            out.append((time.perf_counter() - t0) / n)
    return min(ta), min(tb)


def bench_step(n: int, batch: int, dtype: torch.dtype, device: str) -> dict[str, float]:
    s = NavierStokes2D(n=n)
    gen = torch.Generator(device="cpu").manual_seed(0)
    w = s.initial_state(batch, generator=gen, dtype=dtype).to(device)
    state = {"w": w}

    def step():
        state["w"] = s.full_step(state["w"], generator=gen)

    x = torch.randn(batch, 1, n, n, dtype=dtype, device=device)
    xh = torch.fft.rfft2(x)
    xh4 = torch.fft.rfft2(torch.randn(batch, 4, n, n, dtype=dtype, device=device))

    def ffts():
        torch.fft.rfft2(x)
        torch.fft.irfft2(xh4, s=(n, n))
        torch.fft.rfft2(x)
        torch.fft.irfft2(xh, s=(n, n))

    t_step, t_fft = _time_pair(step, ffts, device)
    return {"n": n, "batch": batch, "step_ms": 1e3 * t_step, "fft_ms": 1e3 * t_fft, "ratio": t_step / t_fft}


def bench_generate(threads: int) -> dict[str, float]:
    cfg = {"system": {"n": 64}, "trajectories": 8, "batch_size": 8, "spinup_steps": 200, "record_every": 10,
           "records": 20, "resolutions": [64, 32], "closures": ["G", "H"]}
    steps = cfg["trajectories"] * (cfg["spinup_steps"] + cfg["record_every"] * (cfg["records"] - 1) + 1)
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        generate("navier_stokes_2d", cfg, Path(d) / "b.h5", progress=False)
        dt = time.perf_counter() - t0
        size = (Path(d) / "b.h5").stat().st_size
    return {"seconds": dt, "trajectories_per_s": cfg["trajectories"] / dt, "member_steps_per_s": steps / dt,
            "records_per_s": cfg["trajectories"] * cfg["records"] / dt, "file_mb": size / 1e6}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--sizes", type=int, nargs="+", default=[32, 64, 128, 256])
    p.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    p.add_argument("--out", default="benchmarks/results/solver.md")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    rows = [bench_step(n, b, dtype, args.device) for b in args.batches for n in args.sizes]
    gen = bench_generate(args.threads)
    lines = [
        "# Navier–Stokes solver benchmark",
        "",
        f"`python benchmarks/solver.py --threads {args.threads} --device {args.device} --dtype {args.dtype}`",
        f"({platform.processor() or platform.machine()}, torch {torch.__version__}, {args.threads} thread(s);",
        f"load average {os.getloadavg()[0]:.1f} at start). Times: fastest of 9 interleaved repeats.",
        "",
        "One full stochastic step (dealiased advection, Crank–Nicolson viscosity, forcing, LPS noise)",
        "vs the 7 single-channel real FFTs it needs (the pseudo-spectral floor); goal ratio <= 3.",
        "",
        "| grid | batch | step (ms) | FFTs alone (ms) | ratio |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['n']}² | {r['batch']} | {r['step_ms']:.3f} | {r['fft_ms']:.3f} | {r['ratio']:.2f} |")
    lines += [
        "",
        "## Dataset generation throughput",
        "",
        "`stochclosure generate` of 8 trajectories at 64² (float64, batch 8, 200 spin-up steps + 20 records",
        "every 10 steps, closures G and H, stored at 64² and 32² with 16×16 obs, gzip level 4):",
        "",
        f"- {gen['trajectories_per_s']:.2f} trajectories/s, {gen['member_steps_per_s']:.0f} member-steps/s, "
        f"{gen['records_per_s']:.1f} records/s ({gen['seconds']:.2f} s total, file {gen['file_mb']:.2f} MB)",
        "",
    ]
    text = "\n".join(lines)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
