"""The exact Kalman filter of a linear-Gaussian system: the reference the ensemble filters converge to.

Model ``x_{t+1} = F x_t + b + w_t``, ``w_t ~ N(0, Q)``; observations ``y_t = H x_t + v_t``,
``v_t ~ N(0, R)``. Everything runs in float64; covariances are updated in Joseph form and
symmetrised, so they stay symmetric positive semi-definite to round-off.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from .._types import check_tensor
from ..errors import ShapeError, format_error

__all__ = ["Gaussian", "kalman_forecast", "kalman_analysis", "KalmanFilter"]


class Gaussian(NamedTuple):
    """A Gaussian ``N(mean, cov)``: ``mean`` ``(n,)``, ``cov`` ``(n, n)``, float64."""

    mean: Tensor
    cov: Tensor


def _cov(name: str, c: Tensor, n: int) -> Tensor:
    c = torch.as_tensor(c, dtype=torch.float64)
    if c.dim() == 1:
        c = torch.diag(c)
    check_tensor(name, c, shape=(n, n))
    return c


def _sym(c: Tensor) -> Tensor:
    return 0.5 * (c + c.T)


def kalman_forecast(prior: Gaussian, F: Tensor, Q: Tensor | None = None, b: Tensor | None = None) -> Gaussian:
    """``N(F m + b, F P F^T + Q)``.

    Args:
        prior: ``N(m, P)`` with ``m`` ``(n,)``.
        F: Linear model ``(n, n)``.
        Q: Model-noise covariance ``(n, n)`` or its diagonal ``(n,)``; ``None`` for none.
        b: Constant forcing ``(n,)``.
    """
    m, p = prior.mean.double(), prior.cov.double()
    n = m.shape[0]
    f = check_tensor("F", torch.as_tensor(F, dtype=torch.float64), shape=(n, n))
    mean = f @ m + (0.0 if b is None else torch.as_tensor(b, dtype=torch.float64))
    cov = f @ p @ f.T + (0.0 if Q is None else _cov("Q", Q, n))
    return Gaussian(mean, _sym(cov))


def kalman_analysis(prior: Gaussian, obs_values: Tensor, H: Tensor, R: Tensor) -> Gaussian:
    """The Kalman analysis ``N(m + K d, (I - K H) P (I - K H)^T + K R K^T)``, ``K = P H^T (H P H^T + R)^{-1}``.

    Args:
        prior: ``N(m, P)``.
        obs_values: ``y`` ``(p,)``.
        H: Observation matrix ``(p, n)``.
        R: Observation-noise covariance ``(p, p)`` or its diagonal ``(p,)``.
    """
    m, p = prior.mean.double(), prior.cov.double()
    n = m.shape[0]
    h = torch.as_tensor(H, dtype=torch.float64)
    if h.dim() != 2 or h.shape[1] != n:
        raise ShapeError(format_error("H", f"a matrix (p, {n})", f"shape {tuple(h.shape)}"))
    y = torch.as_tensor(obs_values, dtype=torch.float64)
    check_tensor("obs_values", y, shape=(h.shape[0],))
    r = _cov("R", R, h.shape[0])
    s = _sym(h @ p @ h.T + r)
    k = torch.linalg.solve(s, h @ p).T                                            # P H^T S^{-1}, (n, p)
    mean = m + k @ (y - h @ m)
    ikh = torch.eye(n, dtype=torch.float64) - k @ h
    cov = ikh @ p @ ikh.T + k @ r @ k.T
    return Gaussian(mean, _sym(cov))


class KalmanFilter:
    """Kalman filter of ``x' = F x + b + N(0, Q)``, ``y = H x + N(0, R)``.

    Args:
        F: Linear model ``(n, n)``.
        H: Observation matrix ``(p, n)``.
        R: Observation-noise covariance ``(p, p)`` or diagonal ``(p,)``.
        Q: Model-noise covariance ``(n, n)`` or diagonal ``(n,)`` (``None``: none).
        b: Constant forcing ``(n,)``.
    """

    def __init__(self, F: Tensor, H: Tensor, R: Tensor, Q: Tensor | None = None, b: Tensor | None = None) -> None:
        self.F, self.H, self.R, self.Q, self.b = F, H, R, Q, b

    def forecast(self, prior: Gaussian) -> Gaussian:
        """One model step."""
        return kalman_forecast(prior, self.F, self.Q, self.b)

    def analyse(self, prior: Gaussian, obs_values: Tensor) -> Gaussian:
        """One analysis."""
        return kalman_analysis(prior, obs_values, self.H, self.R)

    def run(self, initial: Gaussian, observations: Sequence[Tensor], steps_per_cycle: int = 1) -> list[Gaussian]:
        """Cycle: ``steps_per_cycle`` forecasts, then an analysis of each observation vector.

        Returns:
            The analyses, one per observation.
        """
        out, g = [], initial
        for y in observations:
            for _ in range(steps_per_cycle):
                g = self.forecast(g)
            g = self.analyse(g, y)
            out.append(g)
        return out
