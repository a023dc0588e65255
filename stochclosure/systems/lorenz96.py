"""Two-scale Lorenz-96 (REFERENCE §6) with its closure and the two classic baselines.

Full model (``k = 1..K`` slow, ``j = 1..J`` fast per slow variable, the fast variables forming one
ring of ``K J`` values, ``Y_{j, k}`` at flat index ``k J + j``)::

    dX_k/dt     = -X_{k-1} (X_{k-2} - X_{k+1}) - X_k + F + U_k,        U_k = -(h c / b) sum_j Y_{j,k}
    dY_{j,k}/dt = -c b Y_{j+1,k} (Y_{j+2,k} - Y_{j-1,k}) - c Y_{j,k} + (h c / b) X_k

integrated with classical RK4. The state of the reduced model is ``X`` as a 1-D ring field
``(batch, 1, K)``. Reduced step (the closure tendency enters as an explicit increment, the
convention of Arnold et al. 2013)::

    X_{n+1} = Phi_dt(X_n) + dt U_n          (Phi_dt: RK4 of the resolved dynamics, U = 0)

Two closure definitions are provided: ``"U"`` (REFERENCE §6: the instantaneous coupling
``-(h c / b) sum_j Y_{j,k}(t_n)``; the reduced model fed it reproduces the full ``X`` to first
order in ``dt``) and ``"U_step"`` (``(X_{n+1} - Phi_dt(X_n)) / dt``, the step-consistent
tendency; the reduced model fed it reproduces the full ``X`` to round-off).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor

from .._types import check_generator, check_tensor
from ..errors import ConfigError, ShapeError, format_error
from .base import AbstractSystem
from .records import collect_records

__all__ = ["Lorenz96", "PolynomialClosure", "PolynomialAR1Closure"]

L96_CLOSURES = ("U", "U_step")


def _l96(x: Tensor) -> Tensor:
    """``-x_{k-1}(x_{k-2} - x_{k+1}) - x_k`` on the last axis (a ring)."""
    return -torch.roll(x, 1, -1) * (torch.roll(x, 2, -1) - torch.roll(x, -1, -1)) - x


class Lorenz96(AbstractSystem):
    """Two-scale Lorenz-96; :meth:`step` is the reduced model of the slow variables ``X``.

    Args:
        K: Number of slow variables.
        J: Fast variables per slow variable.
        h: Coupling strength.
        b: Spatial-scale ratio.
        c: Time-scale ratio.
        F: Forcing.
        dt: Time step (RK4), for both the full and the reduced model.
    """

    spatial_dims: ClassVar[int] = 1
    stochastic: ClassVar[bool] = False
    closure_names: ClassVar[tuple[str, ...]] = L96_CLOSURES

    def __init__(self, K: int = 8, J: int = 32, h: float = 1.0, b: float = 10.0, c: float = 10.0, F: float = 20.0,
                 dt: float = 1e-3) -> None:
        for name, val in (("K", K), ("J", J)):
            if not (isinstance(val, int) and val >= 4):
                raise ConfigError(format_error(name, "an integer >= 4", repr(val)))
        if not dt > 0:
            raise ConfigError(format_error("dt", "a positive float", repr(dt)))
        self.K, self.J, self.h, self.b, self.c, self.F, self.dt = K, J, float(h), float(b), float(c), float(F), float(dt)

    def _check_x(self, state: Tensor, name: str = "state") -> None:
        check_tensor(name, state, rank=3, finite=False)
        if tuple(state.shape[1:]) != (1, self.K):
            raise ShapeError(format_error(name, f"(batch, 1, K={self.K})", f"shape {tuple(state.shape)}",
                                          "the slow variables X as a 1-D ring field"))

    # ------------------------------------------------------------------ full model
    def coupling(self, y: Tensor) -> Tensor:
        """Instantaneous closure ``U_k = -(h c / b) sum_j Y_{j,k}``: ``(batch, K, J) -> (batch, 1, K)``."""
        return (-(self.h * self.c / self.b) * y.sum(-1))[:, None, :]

    def full_rhs(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """Tendencies of the full model; ``x`` ``(batch, 1, K)``, ``y`` ``(batch, K, J)``."""
        dx = _l96(x) + self.F + self.coupling(y)
        yf = y.reshape(y.shape[0], -1)
        dyf = -self.c * self.b * torch.roll(yf, -1, -1) * (torch.roll(yf, -2, -1) - torch.roll(yf, 1, -1)) \
            - self.c * yf
        dy = dyf.view_as(y) + (self.h * self.c / self.b) * x[:, 0, :, None]
        return dx, dy

    def full_step(self, x: Tensor, y: Tensor, dt: float | None = None) -> tuple[Tensor, Tensor]:
        """One RK4 step of the full model; returns ``(x, y)`` like the inputs."""
        dt = self.dt if dt is None else float(dt)
        self._check_x(x, "x")
        if tuple(y.shape) != (x.shape[0], self.K, self.J):
            raise ShapeError(format_error("y", f"({x.shape[0]}, K={self.K}, J={self.J})", f"shape {tuple(y.shape)}"))
        k1 = self.full_rhs(x, y)
        k2 = self.full_rhs(x + 0.5 * dt * k1[0], y + 0.5 * dt * k1[1])
        k3 = self.full_rhs(x + 0.5 * dt * k2[0], y + 0.5 * dt * k2[1])
        k4 = self.full_rhs(x + dt * k3[0], y + dt * k3[1])
        return (x + dt / 6 * (k1[0] + 2 * k2[0] + 2 * k3[0] + k4[0]),
                y + dt / 6 * (k1[1] + 2 * k2[1] + 2 * k3[1] + k4[1]))

    def full_initial_state(self, batch: int, *, generator: torch.Generator | None = None,
                           dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
        """Random ``X ~ N(0, 1)`` and ``Y ~ N(0, 0.1^2)``; spin up (a few time units) before use."""
        x = self.initial_state(batch, generator=generator, dtype=dtype)
        y = 0.1 * torch.randn((batch, self.K, self.J), generator=generator, dtype=torch.float64).to(dtype)
        return x, y

    # ------------------------------------------------------------------ reduced model
    def resolved_step(self, state: Tensor, dt: float | None = None) -> Tensor:
        """``Phi_dt``: RK4 of ``dX/dt = -X_{k-1}(X_{k-2} - X_{k+1}) - X_k + F``, ``(batch, 1, K)``."""
        dt = self.dt if dt is None else float(dt)

        def f(x: Tensor) -> Tensor:
            return _l96(x) + self.F

        k1 = f(state)
        k2 = f(state + 0.5 * dt * k1)
        k3 = f(state + 0.5 * dt * k2)
        k4 = f(state + dt * k3)
        return state + dt / 6 * (k1 + 2 * k2 + 2 * k3 + k4)

    def step(self, state: Tensor, closure_term: Tensor | None, dt: float | None = None) -> Tensor:
        """Reduced step ``X_{n+1} = Phi_dt(X_n) + dt U_n``.

        Args:
            state: ``X`` ``(batch, 1, K)``.
            closure_term: ``U`` ``(batch, 1, K)`` or ``None`` (no closure).
            dt: Time step (default ``self.dt``).
        """
        dt = self.dt if dt is None else float(dt)
        self._check_x(state)
        out = self.resolved_step(state, dt)
        if closure_term is not None:
            check_tensor("closure_term", closure_term, shape=tuple(state.shape), finite=False)
            out = out + dt * closure_term.to(state.dtype)
        return out

    def step_closure(self, x: Tensor, x_next: Tensor, dt: float | None = None) -> Tensor:
        """Step-consistent closure ``(X_{n+1} - Phi_dt(X_n)) / dt``, ``(batch, 1, K)``."""
        dt = self.dt if dt is None else float(dt)
        return (x_next - self.resolved_step(x, dt)) / dt

    def initial_state(self, batch: int, *, generator: torch.Generator | None = None,
                      dtype: torch.dtype = torch.float32) -> Tensor:
        """Random slow state ``X ~ N(0, 1)``, ``(batch, 1, K)`` (drawn in float64, then cast)."""
        return torch.randn((batch, 1, self.K), generator=check_generator(generator), dtype=torch.float64).to(dtype)

    # ------------------------------------------------------------------ dataset generation
    def iter_records(self, batch: int, *, generator: torch.Generator, spinup_steps: int, record_every: int,
                     n_records: int, resolutions: Sequence[int] = (), closures: Sequence[str] = ("U", "U_step"),
                     coarsen_method: str = "none", dtype: torch.dtype = torch.float64,
                     device: str | torch.device = "cpu") -> Iterator[tuple[float, dict[int, dict[str, Tensor]]]]:
        """Run the full model; yield ``X`` and the closures at steps ``spinup + r * record_every``."""
        bad = [c for c in closures if c not in L96_CLOSURES]
        if bad:
            raise ConfigError(format_error("closures", f"names among {L96_CLOSURES}", repr(bad)))
        if list(resolutions) not in ([], [self.K]):
            raise ConfigError(format_error("resolutions", f"[{self.K}] (K; Lorenz-96 has one resolution)",
                                           repr(list(resolutions))))
        x, y = self.full_initial_state(batch, generator=generator, dtype=dtype)
        x, y = x.to(device), y.to(device)
        for _ in range(spinup_steps):
            x, y = self.full_step(x, y)
        for r in range(n_records):
            if r > 0:
                for _ in range(record_every - 1):
                    x, y = self.full_step(x, y)
            xn, yn = self.full_step(x, y)
            rec = {"state": x.cpu()}
            if "U" in closures:
                rec["U"] = self.coupling(y).cpu()
            if "U_step" in closures:
                rec["U_step"] = self.step_closure(x, xn).cpu()
            yield self.dt * (spinup_steps + r * record_every), {self.K: rec}
            x, y = xn, yn

    def generate_records(self, batch: int, **kwargs: Any) -> dict[str, Any]:
        """:meth:`iter_records` stacked: ``{"time": (T,), "fields": {K: {"state", "U", "U_step": (B, T, 1, K)}}}``."""
        return collect_records(self.iter_records(batch, **kwargs))

    @classmethod
    def example(cls) -> Lorenz96:
        return cls(K=8, J=8)


def _design(x: Tensor, degree: int) -> Tensor:
    return torch.stack([x**p for p in range(degree + 1)], dim=-1)


class PolynomialClosure:
    """Deterministic baseline ``U_k = sum_p a_p X_k^p`` (cubic by default), the same for every ``k``.

    Args:
        coefficients: ``(a_0, ..., a_degree)``.
    """

    def __init__(self, coefficients: Sequence[float]) -> None:
        self.coefficients = [float(a) for a in coefficients]

    @property
    def degree(self) -> int:
        """Polynomial degree."""
        return len(self.coefficients) - 1

    def __call__(self, state: Tensor) -> Tensor:
        """``U`` for ``X`` ``(batch, 1, K)``, same shape."""
        a = torch.tensor(self.coefficients, dtype=state.dtype, device=state.device)
        return _design(state, self.degree) @ a

    @classmethod
    def fit(cls, states: Tensor, closures: Tensor, degree: int = 3) -> PolynomialClosure:
        """Least-squares fit over all samples and positions.

        Args:
            states: ``X`` of any shape (e.g. ``(N, T, 1, K)``).
            closures: ``U`` of the same shape.
            degree: Polynomial degree.
        """
        if states.shape != closures.shape:
            raise ShapeError(format_error("closures", f"shape {tuple(states.shape)} like states",
                                          f"shape {tuple(closures.shape)}"))
        a = _design(states.reshape(-1).double(), degree)
        # gelsd (SVD): the CPU default gelsy differed in the last bit between identical calls
        sol = torch.linalg.lstsq(a, closures.reshape(-1, 1).double(), driver="gelsd").solution
        return cls(sol[:, 0].tolist())

    def residuals(self, states: Tensor, closures: Tensor) -> Tensor:
        """``U - poly(X)``, like the inputs."""
        return closures - self(states)


class PolynomialAR1Closure(PolynomialClosure):
    """Stochastic baseline: cubic polynomial plus AR(1) noise, ``U_n = poly(X_n) + e_n``.

    ``e_{n+1} = phi e_n + sigma sqrt(1 - phi^2) z_n`` per ``k``, ``z ~ N(0, 1)``, with ``phi`` the
    lag-one autocorrelation over the fitting interval ``dt`` (for another step ``dt'``,
    ``phi ** (dt' / dt)`` is used) and ``sigma`` the residual standard deviation.

    Args:
        coefficients: Polynomial coefficients.
        phi: Lag-one autocorrelation over ``dt``.
        sigma: Stationary standard deviation of ``e``.
        dt: Interval at which ``phi`` was fitted.
    """

    def __init__(self, coefficients: Sequence[float], phi: float, sigma: float, dt: float) -> None:
        super().__init__(coefficients)
        if not (-1 < phi < 1) or not sigma >= 0 or not dt > 0:
            raise ConfigError(format_error("phi, sigma, dt", "|phi| < 1, sigma >= 0, dt > 0",
                                           f"phi={phi}, sigma={sigma}, dt={dt}"))
        self.phi, self.sigma, self.dt = float(phi), float(sigma), float(dt)

    @classmethod
    def fit(cls, states: Tensor, closures: Tensor, degree: int = 3, dt: float = 1.0) -> PolynomialAR1Closure:
        """Fit the polynomial, then AR(1) on its residuals along the time axis.

        Args:
            states: ``X`` ``(N, T, 1, K)`` (trajectories, records, ...).
            closures: ``U`` like ``states``.
            degree: Polynomial degree.
            dt: Time between consecutive records.
        """
        check_tensor("states", states, rank=4)
        poly = PolynomialClosure.fit(states, closures, degree)
        e = poly.residuals(states.double(), closures.double())
        phi = float((e[:, 1:] * e[:, :-1]).sum() / (e[:, :-1] ** 2).sum())
        return cls(poly.coefficients, phi=phi, sigma=float(e.std()), dt=dt)

    def sample(self, state: Tensor, noise_state: Tensor | None = None, dt: float | None = None, *,
               generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Draw ``U`` for ``X`` ``(batch, 1, K)``; returns ``(U, e)``; pass ``e`` back on the next call.

        ``noise_state=None`` starts ``e`` from its stationary law.
        """
        dt = self.dt if dt is None else dt
        z = torch.randn(state.shape, generator=check_generator(generator), dtype=torch.float64).to(state)
        if noise_state is None:
            e = self.sigma * z
        else:
            phi = self.phi ** (dt / self.dt) if self.phi > 0 else self.phi
            e = phi * noise_state + self.sigma * math.sqrt(max(1 - phi**2, 0.0)) * z
        return self(state) + e, e
