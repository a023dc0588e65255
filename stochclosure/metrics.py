"""Deterministic and probabilistic scores of closures and rollouts.

Conventions: an *ensemble* tensor has its members on ``member_dim`` (default 0) and otherwise the
shape of ``truth``. Fields are ``(..., H, W)`` on the unit torus ``[0, 1)^2`` with grid point
``i`` at ``i / N``.

Spectra (one definition, used everywhere): with the Fourier-series coefficients
``w_k = N^-2 sum_x w(x) exp(-2 pi i k.x)`` of a vorticity field ``w`` and integer wavenumbers
``k``, the isotropic enstrophy spectrum is ``Z(K) = 1/2 sum_{round(|k|) = K} |w_k|^2`` and the
energy spectrum ``E(K) = 1/2 sum_{round(|k|) = K, k != 0} |w_k|^2 / (4 pi^2 |k|^2)`` (velocity
``u = grad-perp psi``, ``-Lap psi = w``). Shells go up to ``max |k|``, so Parseval holds
exactly: ``sum_K Z(K) = enstrophy(w) = mean(w^2) / 2`` and ``sum_K E(K) = energy(w) =
mean(|u|^2) / 2``; shells beyond ``N / 2`` are only partly resolved (the grid's corners).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from pyro.ops.stats import crps_empirical, energy_score_empirical
from torch import Tensor

from ._types import check_generator
from .errors import ShapeError, format_error

__all__ = [
    "relative_frobenius_error",
    "mse",
    "crps_ensemble",
    "energy_score",
    "spread_skill",
    "spread_skill_ratio",
    "rank_histogram",
    "rank_histogram_chi2",
    "r2_score",
    "interval_coverage",
    "offline_scores",
    "isotropic_spectrum",
    "enstrophy_spectrum",
    "energy_spectrum",
    "enstrophy",
    "energy",
]


def _dims(x: Tensor, dims: int | Sequence[int] | None) -> tuple[int, ...]:
    if dims is None:
        return tuple(range(x.dim()))
    return (dims,) if isinstance(dims, int) else tuple(dims)


def _check_like(name: str, x: Tensor, truth: Tensor) -> None:
    if x.shape != truth.shape:
        raise ShapeError(format_error(name, f"shape {tuple(truth.shape)} like truth", f"shape {tuple(x.shape)}"))


def _check_ensemble(ensemble: Tensor, truth: Tensor, member_dim: int) -> Tensor:
    ens = ensemble.movedim(member_dim, 0)
    if tuple(ens.shape[1:]) != tuple(truth.shape):
        raise ShapeError(format_error("ensemble", f"truth's shape {tuple(truth.shape)} plus a member axis at "
                                      f"dim {member_dim}", f"shape {tuple(ensemble.shape)}",
                                      "pass member_dim= where the members are"))
    if ens.shape[0] < 1:
        raise ShapeError(format_error("ensemble", "at least one member", "0 members"))
    return ens


# -- deterministic scores ---------------------------------------------------------------------------
def relative_frobenius_error(pred: Tensor, truth: Tensor, dims: int | Sequence[int] = (-2, -1)) -> Tensor:
    """``||truth - pred||_F / ||truth||_F`` over ``dims`` (the research code's D_Fro before averaging).

    Args:
        pred: Prediction, same shape as ``truth``.
        truth: Reference.
        dims: Dims of one field (default the two spatial dims).

    Returns:
        ``truth`` without ``dims``; average it for D_Fro.
    """
    _check_like("pred", pred, truth)
    d = _dims(truth, dims)
    return torch.linalg.vector_norm(truth - pred, dim=d) / torch.linalg.vector_norm(truth, dim=d)


def mse(pred: Tensor, truth: Tensor, dims: int | Sequence[int] | None = None) -> Tensor:
    """Mean squared error over ``dims`` (default: all)."""
    _check_like("pred", pred, truth)
    return (pred - truth).pow(2).mean(_dims(truth, dims))


def r2_score(pred: Tensor, truth: Tensor) -> Tensor:
    """Coefficient of determination ``1 - sum (truth - pred)^2 / sum (truth - mean(truth))^2`` over all entries.

    The mean is taken over everything (one number for a whole test set); 1 is perfect, 0 is the
    constant mean, negative is worse than that.
    """
    _check_like("pred", pred, truth)
    t = truth.double()
    return 1 - (t - pred.double()).pow(2).sum() / (t - t.mean()).pow(2).sum()


# -- probabilistic scores -------------------------------------------------------------------------------
def crps_ensemble(ensemble: Tensor, truth: Tensor, member_dim: int = 0, fair: bool = False) -> Tensor:
    """Continuous ranked probability score of an ensemble, pointwise.

    ``CRPS = E|X - y| - 1/2 E|X - X'|`` with the empirical law of the ``M`` members
    (:func:`pyro.ops.stats.crps_empirical`); ``fair=True`` uses the unbiased ``1 / (M (M - 1))``
    weight for the pair term (Ferro 2014), whose expectation does not depend on ``M``.

    Args:
        ensemble: ``truth.shape`` with a member axis at ``member_dim``.
        truth: Verifying values.
        member_dim: Position of the member axis in ``ensemble``.
        fair: Fair (ensemble-size-unbiased) CRPS.

    Returns:
        Pointwise scores, ``truth.shape``.
    """
    ens = _check_ensemble(ensemble, truth, member_dim)
    crps = crps_empirical(ens, truth)
    if not fair:
        return crps
    m = ens.shape[0]
    if m < 2:
        raise ShapeError(format_error("ensemble", "at least 2 members for the fair CRPS", "1 member"))
    absdev = (ens - truth).abs().mean(0)
    return crps - (absdev - crps) / (m - 1)


def energy_score(ensemble: Tensor, truth: Tensor, member_dim: int = 0, event_dims: int = 1) -> Tensor:
    """Energy score ``E||X - y|| - 1/2 E||X - X'||`` of multivariate ensembles.

    Uses :func:`pyro.ops.stats.energy_score_empirical` with exact (non-matmul) distances.

    Args:
        ensemble: ``truth.shape`` with a member axis at ``member_dim``.
        truth: ``(..., *event)``; the last ``event_dims`` dims form one vector.
        member_dim: Position of the member axis.
        event_dims: Trailing dims of one multivariate outcome (e.g. 3 for ``(C, H, W)``).

    Returns:
        ``truth.shape[:-event_dims]``.
    """
    ens = _check_ensemble(ensemble, truth, member_dim)
    lead = tuple(truth.shape[:truth.dim() - event_dims])
    d = math.prod(truth.shape[truth.dim() - event_dims:])
    pred = ens.reshape(ens.shape[0], *lead, d).movedim(0, -2)

    def cdist(a: Tensor, b: Tensor) -> Tensor:
        return torch.cdist(a, b, compute_mode="donot_use_mm_for_euclid_dist")

    return energy_score_empirical(pred, truth.reshape(*lead, d), cdist=cdist)


def spread_skill(ensemble: Tensor, truth: Tensor, member_dim: int = 0,
                 dims: int | Sequence[int] | None = None) -> tuple[Tensor, Tensor]:
    """Ensemble spread and skill averaged over ``dims`` (of ``truth``; default all).

    Returns:
        ``(spread, rmse)``: ``sqrt(mean(var))`` with the unbiased member variance, and the RMSE of
        the ensemble mean, each ``truth`` without ``dims``.
    """
    ens = _check_ensemble(ensemble, truth, member_dim)
    if ens.shape[0] < 2:
        raise ShapeError(format_error("ensemble", "at least 2 members for a spread", "1 member"))
    d = _dims(truth, dims)
    spread = ens.var(0, unbiased=True).mean(d).sqrt()
    rmse = (ens.mean(0) - truth).pow(2).mean(d).sqrt()
    return spread, rmse


def spread_skill_ratio(ensemble: Tensor, truth: Tensor, member_dim: int = 0,
                       dims: int | Sequence[int] | None = None) -> Tensor:
    """``sqrt((M + 1) / M) * spread / rmse`` (Fortin et al. 2014): 1 for a calibrated ensemble.

    The factor corrects for the finite ensemble: the error of an ``M``-member mean has
    variance ``(1 + 1/M) sigma^2`` when truth and members are exchangeable.
    """
    spread, rmse = spread_skill(ensemble, truth, member_dim, dims)
    m = ensemble.shape[member_dim]
    return math.sqrt((m + 1) / m) * spread / rmse


def interval_coverage(ensemble: Tensor, truth: Tensor, level: float = 0.8, member_dim: int = 0) -> Tensor:
    """Fraction of ``truth`` entries inside the ensemble's central ``level`` interval.

    The interval runs between the empirical ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles
    of the members (linear interpolation). With ``M`` members exchangeable with the truth (a
    calibrated ensemble) the expected coverage is ``level (M - 1) / (M + 1)``: the truth's rank is
    uniform on ``M + 1`` places, of which the interval spans ``level (M - 1)``.

    Returns:
        A scalar tensor in ``[0, 1]``.
    """
    if not 0 < level < 1:
        raise ShapeError(format_error("level", "a probability in (0, 1)", repr(level)))
    ens = _check_ensemble(ensemble, truth, member_dim).double()
    q = torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64)
    lo, hi = torch.quantile(ens.reshape(ens.shape[0], -1), q, dim=0)
    t = truth.double().reshape(-1)
    return ((t >= lo) & (t <= hi)).double().mean()


def offline_scores(ensemble: Tensor, truth: Tensor, member_dim: int = 0, level: float = 0.8) -> dict[str, float]:
    """The offline scorecard of closure draws: R^2 of the ensemble mean, fair CRPS, energy score,
    spread-skill ratio and interval coverage, each averaged over the test set.

    Args:
        ensemble: ``(M, N, C, *grid)`` draws (members at ``member_dim``).
        truth: ``(N, C, *grid)`` true closures.
        member_dim: Position of the member axis.
        level: Central interval for the coverage.

    Returns:
        ``{"r2", "crps", "energy", "spread_skill", "coverage"}`` (``crps`` and ``energy`` in the
        closure's units, per entry and per field).
    """
    ens = _check_ensemble(ensemble, truth, member_dim)
    event = truth.dim() - 1
    return {"r2": float(r2_score(ens.mean(0), truth)),
            "crps": float(crps_ensemble(ens, truth, fair=ens.shape[0] > 1).mean()),
            "energy": float(energy_score(ens, truth, event_dims=event).mean()),
            "spread_skill": float(spread_skill_ratio(ens, truth)) if ens.shape[0] > 1 else float("nan"),
            "coverage": float(interval_coverage(ens, truth, level))}


def rank_histogram(ensemble: Tensor, truth: Tensor, member_dim: int = 0,
                   generator: torch.Generator | None = None) -> Tensor:
    """Counts of the truth's rank among the members (Talagrand diagram), ``(M + 1,)``.

    Rank ``r`` is the number of members below the truth; ties are broken uniformly at random.
    """
    check_generator(generator)
    ens = _check_ensemble(ensemble, truth, member_dim)
    m = ens.shape[0]
    below = (ens < truth).sum(0)
    ties = (ens == truth).sum(0)
    if bool((ties > 0).any()):
        u = torch.rand(ties.shape, generator=generator, dtype=torch.float64)
        below = below + torch.floor(u * (ties + 1).double()).long()
    return torch.bincount(below.reshape(-1), minlength=m + 1)


def rank_histogram_chi2(counts: Tensor) -> tuple[float, float]:
    """Chi-square statistic and p-value of a rank histogram against the flat one.

    Args:
        counts: ``(M + 1,)`` counts.

    Returns:
        ``(statistic, p_value)`` with ``M`` degrees of freedom (independent ranks assumed).
    """
    c = counts.double()
    expected = c.sum() / c.numel()
    stat = float(((c - expected) ** 2 / expected).sum())
    df = c.numel() - 1
    p = float(torch.special.gammaincc(torch.tensor(df / 2.0, dtype=torch.float64),
                                      torch.tensor(stat / 2.0, dtype=torch.float64)))
    return stat, p


# -- spectra on the unit torus ------------------------------------------------------------------------------
def _fourier(w: Tensor) -> tuple[Tensor, Tensor]:
    if w.dim() < 2:
        raise ShapeError(format_error("w", "a field (..., H, W)", f"shape {tuple(w.shape)}"))
    h, wd = w.shape[-2:]
    what = torch.fft.fft2(w.double(), norm="forward")
    ky = torch.fft.fftfreq(h, 1.0 / h, dtype=torch.float64)
    kx = torch.fft.fftfreq(wd, 1.0 / wd, dtype=torch.float64)
    kk = torch.sqrt(ky[:, None] ** 2 + kx[None, :] ** 2)
    return what, kk


def isotropic_spectrum(density: Tensor, kk: Tensor) -> tuple[Tensor, Tensor]:
    """Sum a spectral density ``(..., H, W)`` over shells ``round(|k|) = K``.

    Returns:
        ``(K, spectrum)``: ``(n_shells,)`` integer shells and ``(..., n_shells)`` sums.
    """
    shells = torch.round(kk).long().reshape(-1)
    n = int(shells.max()) + 1
    lead = density.shape[:-2]
    flat = density.reshape(-1, kk.numel())
    out = torch.zeros(flat.shape[0], n, dtype=density.dtype)
    out.index_add_(1, shells, flat)
    return torch.arange(n), out.reshape(*lead, n)


def enstrophy_spectrum(w: Tensor) -> tuple[Tensor, Tensor]:
    """Isotropic enstrophy spectrum ``Z(K)`` of vorticity fields ``(..., H, W)`` (module docstring)."""
    what, kk = _fourier(w)
    return isotropic_spectrum(0.5 * what.abs() ** 2, kk)


def energy_spectrum(w: Tensor) -> tuple[Tensor, Tensor]:
    """Isotropic kinetic-energy spectrum ``E(K)`` of vorticity fields ``(..., H, W)`` (module docstring)."""
    what, kk = _fourier(w)
    k2 = (2 * math.pi * kk) ** 2
    dens = torch.where(kk > 0, 0.5 * what.abs() ** 2 / torch.where(kk > 0, k2, 1.0), 0.0)
    return isotropic_spectrum(dens, kk)


def enstrophy(w: Tensor) -> Tensor:
    """Domain-averaged enstrophy ``mean(w^2) / 2`` of fields ``(..., H, W)``."""
    return 0.5 * w.double().pow(2).mean((-2, -1))


def energy(w: Tensor) -> Tensor:
    """Domain-averaged kinetic energy ``mean(|u|^2) / 2`` of the flow with vorticity ``w`` ``(..., H, W)``."""
    return energy_spectrum(w)[1].sum(-1)
