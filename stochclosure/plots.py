"""Figures of ensemble rollouts (matplotlib, Agg backend), saved as PNG.

Each function takes plain tensors (or a :class:`~stochclosure.rollouts.RolloutResult` for
:func:`rollout_report`), draws one figure, writes it to ``path`` when given and returns the
``matplotlib.figure.Figure``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg", force=False)
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torch import Tensor  # noqa: E402

from . import metrics  # noqa: E402
from .errors import ShapeError, format_error  # noqa: E402

__all__ = ["plot_fields", "plot_error_spread", "plot_spectra", "plot_rank_histogram", "rollout_report"]

PathLike = str | os.PathLike


def _save(fig: Any, path: PathLike | None) -> Any:
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(fig)
    return fig


def _np(x: Tensor) -> Any:
    return x.detach().double().cpu().numpy()


def plot_fields(truth: Tensor, members: Tensor, path: PathLike | None = None, n_members: int = 3,
                title: str | None = None) -> Any:
    """Truth, a few members, the ensemble mean and spread side by side.

    Args:
        truth: ``(H, W)`` reference field.
        members: ``(M, H, W)`` ensemble members.
        path: PNG file to write.
        n_members: Members shown.
        title: Figure title.
    """
    if truth.dim() != 2 or members.dim() != 3 or members.shape[1:] != truth.shape:
        raise ShapeError(format_error("members", f"(M, {truth.shape[0]}, {truth.shape[-1]}) with truth (H, W)",
                                      f"members {tuple(members.shape)}, truth {tuple(truth.shape)}"))
    shown = min(n_members, members.shape[0])
    panels = [("truth", truth)] + [(f"member {i}", members[i]) for i in range(shown)]
    panels += [("ensemble mean", members.mean(0))]
    vmax = float(torch.stack([p[1] for p in panels]).abs().max())
    fig, axes = plt.subplots(1, len(panels) + 1, figsize=(2.6 * (len(panels) + 1), 2.8))
    for ax, (name, f) in zip(axes, panels):
        im = ax.imshow(_np(f), cmap="RdBu_r", vmin=-vmax, vmax=vmax, origin="lower")
        ax.set_title(name, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(im, ax=axes[:-1].tolist(), shrink=0.8)
    sp = members.std(0, unbiased=True) if members.shape[0] > 1 else torch.zeros_like(truth)
    im2 = axes[-1].imshow(_np(sp), cmap="magma", origin="lower")
    axes[-1].set_title("ensemble spread", fontsize=9)
    axes[-1].set_xticks([])
    axes[-1].set_yticks([])
    fig.colorbar(im2, ax=axes[-1], shrink=0.8)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def plot_error_spread(times: Tensor, member_errors: Tensor, mean_error: Tensor, spread: Tensor,
                      path: PathLike | None = None, band: tuple[float, float] = (0.1, 0.9),
                      ylabel: str = "RMSE", title: str | None = None) -> Any:
    """Error of the ensemble mean and the spread against time, with a band over the members' errors.

    Args:
        times: ``(T,)`` physical times.
        member_errors: ``(T, M)`` error of every member.
        mean_error: ``(T,)`` error of the ensemble mean.
        spread: ``(T,)`` ensemble spread.
        path: PNG file to write.
        band: Lower and upper quantiles of the members' error band.
        ylabel: Label of the error axis.
        title: Figure title.
    """
    fig, ax = plt.subplots(figsize=(6, 3.6))
    t = _np(times)
    lo, hi = torch.quantile(member_errors.double(), torch.tensor(band, dtype=torch.float64), dim=1)
    ax.fill_between(t, _np(lo), _np(hi), alpha=0.25, color="C0",
                    label=f"members' error ({int(band[0] * 100)}-{int(band[1] * 100)} %)")
    ax.plot(t, _np(member_errors.double().median(1).values), color="C0", lw=1, ls=":", label="median member error")
    ax.plot(t, _np(mean_error), color="C0", lw=2, label="ensemble-mean error")
    ax.plot(t, _np(spread), color="C3", lw=2, ls="--", label="spread")
    ax.set_xlabel("time")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title)
    return _save(fig, path)


def plot_spectra(spectra: Mapping[str, Tensor], path: PathLike | None = None, ylabel: str = "E(k)",
                 band: Mapping[str, Tensor] | None = None, title: str | None = None) -> Any:
    """Isotropic spectra on log-log axes.

    Args:
        spectra: ``{label: (K,) spectrum}`` (shell ``K`` is the index; shell 0 is skipped).
        path: PNG file to write.
        ylabel: Label of the vertical axis.
        band: ``{label: (M, K)}`` member spectra drawn as a min-max band under the line.
        title: Figure title.
    """
    fig, ax = plt.subplots(figsize=(5, 3.8))
    for i, (label, s) in enumerate(spectra.items()):
        k = torch.arange(s.shape[-1])[1:]
        ax.loglog(_np(k), _np(s[1:]).clip(1e-300), lw=1.8, label=label, color=f"C{i}")
        if band is not None and label in band:
            b = band[label][:, 1:]
            ax.fill_between(_np(k), _np(b.min(0).values).clip(1e-300), _np(b.max(0).values), alpha=0.2,
                            color=f"C{i}")
    ax.set_xlabel("wavenumber |k|")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")
    if title:
        ax.set_title(title)
    return _save(fig, path)


def plot_rank_histogram(counts: Tensor, path: PathLike | None = None, title: str | None = None) -> Any:
    """Rank histogram (relative frequencies) with the flat reference and its chi-square p-value."""
    c = counts.double()
    freq = c / c.sum()
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.bar(range(len(c)), _np(freq), color="C0", width=0.9)
    ax.axhline(1.0 / len(c), color="k", ls="--", lw=1, label="flat")
    stat, p = metrics.rank_histogram_chi2(counts)
    ax.set_xlabel("rank of the truth among the members")
    ax.set_ylabel("frequency")
    ax.legend(title=f"chi2 = {stat:.1f}, p = {p:.2g}", fontsize=8, title_fontsize=8)
    if title:
        ax.set_title(title)
    return _save(fig, path)


def rollout_report(result: Any, truth: Tensor, out_dir: PathLike, prefix: str = "rollout",
                   channel: int = 0, vorticity: bool = True) -> dict[str, Path]:
    """Write the four standard figures of an ensemble rollout against a reference trajectory.

    Args:
        result: A :class:`~stochclosure.rollouts.RolloutResult` with an ensemble axis and 2-D fields.
        truth: ``(time, C, H, W)`` reference states at the result's record times.
        out_dir: Folder for the PNG files.
        prefix: File-name prefix.
        channel: Channel shown.
        vorticity: Label the spectra as kinetic-energy spectra of a vorticity field (else
            variance spectra ``Z(K)`` of a generic field).

    Returns:
        ``{"fields", "error_spread", "spectra", "rank_histogram"}`` -> file paths.
    """
    members = result.members[:, :, channel]  # (T, M, H, W)
    if members.dim() != 4:
        raise ShapeError(format_error("result", "an ensemble of 2-D fields (time, members, C, H, W) with no "
                                      "other batch axis", f"members of shape {tuple(result.members.shape)}"))
    tr = truth[:, channel]
    if tr.shape != members[:, 0].shape:
        raise ShapeError(format_error("truth", f"(time, C, H, W) matching {tuple(members[:, 0].shape)}",
                                      f"shape {tuple(truth.shape)}"))
    out = Path(out_dir)
    paths = {k: out / f"{prefix}_{k}.png" for k in ("fields", "error_spread", "spectra", "rank_histogram")}
    plot_fields(tr[-1], members[-1], paths["fields"], title=f"t = {float(result.times[-1]):.3g}")
    err = (members - tr[:, None]).pow(2).mean((-2, -1)).sqrt()
    mean_err = (members.mean(1) - tr).pow(2).mean((-2, -1)).sqrt()
    spread = members.var(1, unbiased=True).mean((-2, -1)).sqrt() if members.shape[1] > 1 else torch.zeros_like(mean_err)
    plot_error_spread(result.times, err, mean_err, spread, paths["error_spread"])
    spec_fn = metrics.energy_spectrum if vorticity else metrics.enstrophy_spectrum
    _, s_truth = spec_fn(tr[-1])
    _, s_members = spec_fn(members[-1])
    plot_spectra({"truth": s_truth, "ensemble (mean of spectra)": s_members.mean(0)}, paths["spectra"],
                 ylabel="E(k)" if vorticity else "Z(k)", band={"ensemble (mean of spectra)": s_members})
    counts = metrics.rank_histogram(members[1:].movedim(1, 0), tr[1:])
    plot_rank_histogram(counts, paths["rank_histogram"])
    return paths

