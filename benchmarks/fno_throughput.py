"""Training throughput of the default FNO score operator vs a plain neuraloperator ``FNO``.

Both networks have the same width (20), Fourier modes (|k| < 8 per axis) and layers (4). The
score operator additionally embeds the noise level per sample (Gaussian-Fourier features, an MLP
and a FiLM scale/shift after every block), encodes the condition (one field channel), adds
periodic sin/cos coordinates and applies the EDM preconditioning; the plain FNO gets the noisy
sample and the condition as two input channels (plus its own two grid-coordinate channels) and
nothing else. The ratio plain/score of samples per second is the cost of the conditioning.

Timings of the two networks are interleaved (A, B, A, B, ...) and the median is reported, so
that load from other processes affects both alike.

Usage::

    python benchmarks/fno_throughput.py [--grids 32 64] [--batches 1 16 64] [--out FILE.md]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import torch
from neuralop.models import FNO

import stochclosure as sc


def build(width: int = 20, modes: int = 8, layers: int = 4) -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(0)
    score = sc.resolve("score_operator", {"type": "fno", "sde": "ve_exp", "encoder": {"type": "field"},
                                          "width": width, "modes": modes, "layers": layers})
    plain = FNO(n_modes=(2 * modes - 1, 2 * modes - 1), in_channels=2, out_channels=1, hidden_channels=width,
                n_layers=layers)
    return score, plain


def _time(fn, min_reps: int, min_seconds: float) -> list[float]:
    times = []
    start = time.perf_counter()
    while len(times) < min_reps or time.perf_counter() - start < min_seconds:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def measure(score, plain, n: int, batch: int, backward: bool, rounds: int = 5) -> tuple[float, float]:
    """Median samples/s of (score operator, plain FNO) for one grid, batch and mode."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 1, n, n, generator=g)
    y = torch.randn(batch, 1, n, n, generator=g)
    t = 0.01 + 0.9 * torch.rand(batch, generator=g)
    cond = sc.Conditioning(fields=y)
    xy = torch.cat([x, y], dim=1)

    def run_score():
        if backward:
            score.zero_grad(set_to_none=True)
            score(x, t, cond).square().mean().backward()
        else:
            with torch.no_grad():
                score(x, t, cond)

    def run_plain():
        if backward:
            plain.zero_grad(set_to_none=True)
            plain(xy).square().mean().backward()
        else:
            with torch.no_grad():
                plain(xy)

    for fn in (run_score, run_plain):  # warm-up
        fn()
    a, b = [], []
    for _ in range(rounds):
        a += _time(run_score, 1, 0.0)
        b += _time(run_plain, 1, 0.0)
    return batch / statistics.median(a), batch / statistics.median(b)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--grids", type=int, nargs="+", default=[32, 64])
    p.add_argument("--batches", type=int, nargs="+", default=[1, 16, 64])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "fno_throughput.md")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    score, plain = build()
    n_score = sum(q.numel() for q in score.parameters())
    n_plain = sum(q.numel() for q in plain.parameters())
    rows = []
    for n in args.grids:
        for batch in args.batches:
            fwd = measure(score, plain, n, batch, backward=False, rounds=args.rounds)
            trn = measure(score, plain, n, batch, backward=True, rounds=args.rounds)
            rows.append((n, batch, *fwd, *trn))
            print(f"{n:>4}² batch {batch:>3}: forward {fwd[0]:9.1f} vs {fwd[1]:9.1f} samples/s "
                  f"(x{fwd[1] / fwd[0]:.2f}); forward+backward {trn[0]:9.1f} vs {trn[1]:9.1f} (x{trn[1] / trn[0]:.2f})",
                  flush=True)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    lines = [
        "# FNO score operator throughput",
        "",
        "`python benchmarks/fno_throughput.py` — default score operator (`fno`: width 20, |k| < 8, 4 layers, "
        "per-sample FiLM noise conditioning, field encoder, sin/cos coordinates, EDM preconditioning; "
        f"{n_score:,} parameters) vs a plain `neuralop.models.FNO` of the same width/modes/layers with the "
        f"sample and the condition as input channels ({n_plain:,} parameters). Samples per second, median of "
        f"{args.rounds} interleaved rounds; cost ratio = plain / score (1.00 = conditioning is free).",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
        f"torch {torch.__version__}, load average {load:.1f} at the end of the run (other processes shared "
        "the CPUs; interleaving makes the ratios more reliable than the absolute numbers).",
        "",
        "| grid | batch | forward: score | forward: plain FNO | cost ratio | fwd+bwd: score | fwd+bwd: plain FNO "
        "| cost ratio |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for n, b, fs, fp, ts, tp in rows:
        lines.append(f"| {n}² | {b} | {fs:.1f} | {fp:.1f} | {fp / fs:.2f} | {ts:.1f} | {tp:.1f} | {tp / ts:.2f} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
