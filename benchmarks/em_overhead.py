"""Overhead of the built-in Euler–Maruyama sampler over a plain hand-written loop.

Both run the same 1 000 reverse-SDE steps with the exact score of a Gaussian random field on a
(16, 1, 64, 64) batch, interleaved in one run; the reported ratio is median(built-in) /
median(plain). Writes ``benchmarks/results/em_overhead.md``.

Usage: python benchmarks/em_overhead.py [--steps 1000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from pathlib import Path

import torch

import stochclosure as sc
from stochclosure.samplers import EulerMaruyama
from stochclosure.scores import GaussianScore


def plain_loop(op: GaussianScore, sde: sc.sdes.VESDE, x: torch.Tensor, steps: int, gen: torch.Generator) -> torch.Tensor:
    """Reverse-SDE Euler–Maruyama for the geometric VE SDE, written out by hand."""
    ts = torch.linspace(sde.T, sde.eps, steps + 1, dtype=torch.float64).tolist()
    log_r = math.log(sde.sigma_max / sde.sigma_min)
    for i in range(steps):
        t, t_next = ts[i], ts[i + 1]
        g2 = (sde.sigma_min * math.exp(t * log_r)) ** 2 * 2 * log_r
        tb = torch.full((x.shape[0],), t)
        score = op(x, tb)
        x = x + g2 * score * (t - t_next) + math.sqrt(g2 * (t - t_next)) * torch.randn(x.shape, generator=gen)
    return x


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "em_overhead.md"))
    args = p.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    sde = sc.sdes.VESDE()
    op = GaussianScore(sde, grf={"alpha": 2.5, "tau": 7.0, "scale": 5.0e4})
    shape = (16, 1, 64, 64)
    em = EulerMaruyama(steps=args.steps, denoise=False)
    x0 = sde.prior_sample(shape, generator=torch.Generator().manual_seed(0))
    score_fn = sc.bind_score(op, None)
    t_ours, t_plain = [], []
    with torch.inference_mode():
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            em.sample(score_fn, sde, shape, x_init=x0, generator=torch.Generator().manual_seed(1))
            t_ours.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            plain_loop(op, sde, x0, args.steps, torch.Generator().manual_seed(1))
            t_plain.append(time.perf_counter() - t0)
    ratio = statistics.median(t_ours) / statistics.median(t_plain)
    lines = [
        "# Euler–Maruyama overhead: built-in sampler vs a plain loop",
        "",
        f"{args.steps} reverse-SDE steps, exact GRF score, batch {shape}, {torch.get_num_threads()} threads, "
        f"{args.repeats} interleaved repeats, torch {torch.__version__}.",
        "",
        "| | median s | min s |",
        "|---|---|---|",
        f"| built-in `EulerMaruyama` | {statistics.median(t_ours):.3f} | {min(t_ours):.3f} |",
        f"| plain loop | {statistics.median(t_plain):.3f} | {min(t_plain):.3f} |",
        "",
        f"**ratio built-in / plain = {ratio:.3f}** (target <= 1.10)",
        "",
    ]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
