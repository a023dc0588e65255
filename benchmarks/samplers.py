"""Samplers side by side: quality against network evaluations (NFE) and wall time.

(a) Analytic target: a Gaussian random field at 64x64 under the research VE SDE (``ve_exp``),
    batch 16, with the exact score. Quality is the shell-pooled relative error of the per-mode
    variance against the exact law: modes are grouped by integer ``|k|``, each shell's summed
    sample variance is divided by its exact sum, and the error is the RMS of ``ratio - 1`` over
    the shells whose modes carry more than 100 sigma(eps)^2 (finer ones are shrunk by the stop at
    ``eps`` for every sampler alike). Deterministic samplers are linear maps of their start
    for this target, so their output variance is read off exactly from one run (per-mode gain
    ``|fft(out) / fft(x_T)|^2`` times the prior variance); stochastic ones use ``--repeats``
    batches (Monte Carlo floor printed with the table). "Within 5 %" means an error at most the
    1000-step Euler–Maruyama reference's plus 0.05.
(b) Trained closure model: only with ``--checkpoint`` (a ``ClosureModel`` checkpoint) and
    ``--heldout`` (a ``torch.save``d dict with ``fields`` ``(B, c, *grid)`` and ``truth``
    ``(B, C, *grid)``): relative Frobenius error of the ensemble mean and CRPS per sampler.
(c) torchsde plugin vs core loop at equal steps with an FNO-sized score: the
    stochclosure-neuralop FNO (research width 20, 8 modes, 4 layers) if installed, else a
    stand-in convolutional network of similar cost.

Run: ``python benchmarks/samplers.py [--quick]``; writes ``benchmarks/results/samplers.md``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

import torch

import stochclosure as sc
from stochclosure.samplers import DPMSolverPP2M, EDMHeun, EulerMaruyama, ProbabilityFlowHeun, TruncatedKarrasEM
from stochclosure.scores import GaussianScore
from stochclosure.scores.analytic import wavenumbers

RESULTS = Path(__file__).parent / "results" / "samplers.md"
GRID, BATCH = 64, 16


def shell_error(var: torch.Tensor, exact: torch.Tensor, kmag: torch.Tensor, floor: float) -> float:
    """RMS over resolvable |k| shells of (summed variance / exact summed variance - 1).

    A shell is resolvable when its mean mode variance exceeds ``floor`` (100 sigma(eps)^2): below
    it, stopping at ``t = eps`` and denoising shrinks the variance for every sampler alike.
    """
    shells = torch.round(kmag).long()
    tot = torch.zeros(int(shells.max()) + 1, dtype=torch.float64).index_add_(0, shells.flatten(), exact.flatten())
    got = torch.zeros_like(tot).index_add_(0, shells.flatten(), var.flatten())
    count = torch.zeros_like(tot).index_add_(0, shells.flatten(), torch.ones_like(exact).flatten())
    keep = (count > 0) & (tot / count.clamp_min(1) > floor)
    return float(torch.sqrt(((got[keep] / tot[keep] - 1) ** 2).mean()))


def run_analytic(quick: bool) -> tuple[list[dict[str, Any]], float]:
    torch.manual_seed(0)
    sde = sc.resolve("sde", "ve_exp")
    op = GaussianScore(sde, mean=0.0, grf={"alpha": 2.0, "tau": 3.0, "scale": 10.0})
    shape = (BATCH, 1, GRID, GRID)
    cov = op.covariance(shape[1:])
    exact = cov.mode_variances()
    kmag = wavenumbers((GRID, GRID))
    score = lambda x, t: op(x, t)  # noqa: E731
    repeats = 8 if quick else 32
    prior_var = sde.prior_std(torch.tensor([sde.T], dtype=torch.float64)).item() ** 2
    floor = 100 * sde.marginal_coefficients(torch.tensor([sde.eps], dtype=torch.float64))[1].item() ** 2

    def fft(x):
        return torch.fft.rfftn(x, dim=(-2, -1), norm="ortho")

    def measure(sampler, steps, deterministic: bool) -> tuple[float, float]:
        t0 = time.perf_counter()
        z = torch.randn(shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        if deterministic:
            out = sampler.sample(score, sde, shape, steps=steps, x_init=z, dtype=torch.float64)
            wall = time.perf_counter() - t0
            var = ((fft(out) / fft(z)).abs() ** 2).mean(dim=(0, 1)) * prior_var
            return shell_error(var, exact, kmag, floor), wall
        outs, wall = [], 0.0
        for r in range(repeats):
            t0 = time.perf_counter()
            outs.append(sampler.sample(score, sde, shape, steps=steps, dtype=torch.float64,
                                       generator=torch.Generator().manual_seed(100 + r)))
            wall += time.perf_counter() - t0
        x = torch.cat(outs)
        var = (fft(x - x.mean(0, keepdim=True)).abs() ** 2).sum(dim=0)[0] / (x.shape[0] - 1)
        return shell_error(var, exact, kmag, floor), wall / repeats

    try:
        from stochclosure_torchsde import TorchSDESampler
    except ImportError:  # pragma: no cover - plugin not installed
        TorchSDESampler = None  # noqa: N806
    configs: list[tuple[str, Any, list[int], bool]] = [
        ("Euler–Maruyama (uniform t)", EulerMaruyama(), [100, 300, 1000] if quick else [30, 100, 300, 1000], False),
        ("research truncated-start Karras EM", TruncatedKarrasEM(), [10, 20], False),
        ("probability-flow Heun (karras_sigma)", ProbabilityFlowHeun(grid="karras_sigma"), [3, 5, 8, 12], True),
        ("EDM Heun (Karras rho=7)", EDMHeun(), [2, 3, 4, 5, 8, 12], True),
        ("EDM Heun + churn (S_churn=5)", EDMHeun(s_churn=5.0), [4, 8, 12], False),
        ("DPM-Solver++(2M), log-SNR grid", DPMSolverPP2M(), [3, 4, 5, 6, 8, 10, 15, 20], True),
        ("DPM-Solver++(2M), karras_sigma grid", DPMSolverPP2M(grid="karras_sigma"), [3, 4, 5, 6, 8, 10, 15], True),
    ]
    if TorchSDESampler is not None:
        configs += [("torchsde euler (plugin)", TorchSDESampler("euler"), [100, 300], False),
                    ("torchsde srk (plugin)", TorchSDESampler("srk"), [50, 150], False)]
    rows = []
    for name, sampler, steps_list, det in configs:
        for steps in steps_list:
            err, wall = measure(sampler, steps, det)
            rows.append(dict(sampler=name, steps=steps, nfe=sampler.nfe(steps), err=err, wall=wall,
                             exact=det))
            print(f"{name:40s} steps={steps:5d} nfe={sampler.nfe(steps):5d} err={err:.4f} wall={wall:.3f}s", flush=True)
    ref = next(r["err"] for r in rows if r["sampler"].startswith("Euler") and r["steps"] == 1000)
    return rows, ref


def _conv_standin(width: int = 64) -> torch.nn.Module:
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, width, 3, padding=1, padding_mode="circular"), torch.nn.GELU(),
        *[m for _ in range(3) for m in (torch.nn.Conv2d(width, width, 3, padding=1, padding_mode="circular"),
                                        torch.nn.GELU())],
        torch.nn.Conv2d(width, 1, 3, padding=1, padding_mode="circular"))


def run_ratio(steps: int, reps: int) -> dict[str, Any]:
    from stochclosure_torchsde import TorchSDESampler

    sde = sc.resolve("sde", "ve_exp")
    try:
        from stochclosure_neuralop import FNOScore

        net = FNOScore(sde, channels=1).eval()
        label = "stochclosure-neuralop FNOScore (width 20, 8 modes, 4 layers)"

        def score(x, t):
            return net(x, t, None)
    except ImportError:  # pragma: no cover - depends on the installed plugins
        net = _conv_standin().eval()
        label = "stand-in 5-layer circular conv net, width 64 (FNO plugin not installed)"

        def score(x, t):
            return net(x) / sde.marginal_coefficients(t)[1][:, None, None, None]
    shape = (BATCH, 1, GRID, GRID)
    with torch.no_grad():
        t_eval = []
        for _ in range(5):
            t0 = time.perf_counter()
            score(torch.randn(shape), torch.full((BATCH,), 0.5))
            t_eval.append(time.perf_counter() - t0)
        core, plug, plug_b = [], [], []
        for r in range(reps):  # interleaved so load drifts hit both alike
            g = torch.Generator().manual_seed(r)
            t0 = time.perf_counter()
            EulerMaruyama(steps=steps).sample(score, sde, shape, generator=g)
            core.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            TorchSDESampler("euler", steps=steps).sample(score, sde, shape, generator=torch.Generator().manual_seed(r))
            plug.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            TorchSDESampler("euler", steps=steps, per_member_noise=False).sample(
                score, sde, shape, generator=torch.Generator().manual_seed(r))
            plug_b.append(time.perf_counter() - t0)
    c, p, pb = statistics.median(core), statistics.median(plug), statistics.median(plug_b)
    return dict(label=label, steps=steps, eval_ms=1e3 * statistics.median(t_eval), core=c, plugin=p, plugin_batch=pb,
                ratio=p / c, ratio_batch=pb / c, overhead_ms=1e3 * (p - c) / steps, overhead_batch_ms=1e3 * (pb - c) / steps)


def run_checkpoint(checkpoint: str, heldout: str, members: int) -> list[dict[str, Any]]:
    """(b) Hook for a trained closure model: relative error of the ensemble mean and CRPS per sampler."""
    from stochclosure.model import ClosureModel

    model = ClosureModel.load(checkpoint)
    data = torch.load(heldout, weights_only=True)
    cond, truth = sc.Conditioning(fields=data["fields"]), data["truth"]
    out = []
    for name, sampler, steps in [("Euler–Maruyama", EulerMaruyama(), 1000), ("research truncated EM", TruncatedKarrasEM(), 10),
                                 ("EDM Heun", EDMHeun(), 3), ("DPM-Solver++(2M)", DPMSolverPP2M(), 5),
                                 ("DPM-Solver++(2M)", DPMSolverPP2M(), 8)]:
        t0 = time.perf_counter()
        ens = model.sample(cond, members, sampler=sampler, steps=steps, generator=torch.Generator().manual_seed(0))
        wall = time.perf_counter() - t0
        mean = ens.mean(0)
        rel = float(((mean - truth).flatten(1).norm(dim=1) / truth.flatten(1).norm(dim=1)).mean())
        crps = float((ens - truth).abs().mean(0).mean() - 0.5 * (ens[:, None] - ens[None]).abs().mean((0, 1)).mean())
        out.append(dict(sampler=name, steps=steps, nfe=sampler.nfe(steps), rel=rel, crps=crps, wall=wall))
    return out


def write(rows, ref, ratio, ckpt_rows, quick: bool) -> str:
    lines = ["# Samplers: quality against network evaluations", "",
             "Generated by `python benchmarks/samplers.py" + (" --quick" if quick else "") + "` on "
             f"{torch.get_num_threads()} CPU thread(s); wall times are noisy on a shared machine.", "",
             f"## (a) Analytic Gaussian random field, {GRID}x{GRID}, batch {BATCH}, research VE SDE (sigma = 26)", "",
             "Error: shell-pooled relative error of the per-mode variance against the exact law (see the module "
             "docstring). `exact` = computed without Monte Carlo noise (deterministic samplers); the others use "
             "Monte Carlo over repeated batches. Wall time: one batch of 16.", "",
             "| sampler | steps | NFE | error | exact? | wall (s) |", "|---|---:|---:|---:|:---:|---:|"]
    for r in rows:
        lines.append(f"| {r['sampler']} | {r['steps']} | {r['nfe']} | {r['err']:.4f} | {'yes' if r['exact'] else 'MC'} "
                     f"| {r['wall']:.3f} |")
    lines += ["", f"Reference (1000-step Euler–Maruyama) error: {ref:.4f}; target: error <= {ref + 0.05:.4f}.", "",
              "| sampler | fewest NFE within 5 % of the reference (among those run) |", "|---|---:|"]
    for name in dict.fromkeys(r["sampler"] for r in rows):
        ok = [r["nfe"] for r in rows if r["sampler"] == name and r["err"] <= ref + 0.05]
        lines.append(f"| {name} | {min(ok) if ok else 'not reached'} |")
    lines += ["", "## (b) Trained FNO closure model", ""]
    if ckpt_rows:
        lines += ["| sampler | steps | NFE | rel. error of ensemble mean | CRPS | wall (s) |", "|---|---:|---:|---:|---:|---:|"]
        lines += [f"| {r['sampler']} | {r['steps']} | {r['nfe']} | {r['rel']:.4f} | {r['crps']:.4f} | {r['wall']:.2f} |"
                  for r in ckpt_rows]
    else:
        lines.append("Not run: pass `--checkpoint PATH --heldout PATH` (a trained `ClosureModel` checkpoint and "
                     "held-out conditions/truth) to fill this section.")
    lines += ["", "## (c) torchsde plugin vs core loop, equal steps", "",
              f"Score: {ratio['label']}; one evaluation on ({BATCH}, 1, {GRID}, {GRID}) takes {ratio['eval_ms']:.1f} ms. "
              f"Euler–Maruyama, {ratio['steps']} steps, median of interleaved runs.", "",
              "| solver | wall (s) | ratio to core | overhead per step (ms) |", "|---|---:|---:|---:|",
              f"| core `EulerMaruyama` | {ratio['core']:.3f} | 1.00 | - |",
              f"| torchsde euler, one Brownian interval per member | {ratio['plugin']:.3f} | {ratio['ratio']:.2f} | "
              f"{ratio['overhead_ms']:.2f} |",
              f"| torchsde euler, one interval for the batch | {ratio['plugin_batch']:.3f} | {ratio['ratio_batch']:.2f} | "
              f"{ratio['overhead_batch_ms']:.2f} |", ""]
    text = "\n".join(lines)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(text)
    return text


def main() -> None:
    torch.set_num_threads(1)  # the machine is shared; one thread gives steadier timings
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer Monte Carlo repeats and sweep points")
    parser.add_argument("--checkpoint", default=None, help="(b) ClosureModel checkpoint")
    parser.add_argument("--heldout", default=None, help="(b) torch file with 'fields' and 'truth'")
    parser.add_argument("--members", type=int, default=16)
    parser.add_argument("--ratio-steps", type=int, default=50)
    parser.add_argument("--ratio-reps", type=int, default=3)
    args = parser.parse_args()
    rows, ref = run_analytic(args.quick)
    ratio = run_ratio(args.ratio_steps, args.ratio_reps)
    ckpt = run_checkpoint(args.checkpoint, args.heldout, args.members) if args.checkpoint and args.heldout else []
    print(write(rows, ref, ratio, ckpt, args.quick))


if __name__ == "__main__":
    main()
