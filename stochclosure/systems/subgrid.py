"""Subgrid (LES) closure of 2-D Navier–Stokes: a filtered fine simulation and a coarse solver.

A fine simulation (e.g. ``nu = 1e-4`` at 256²) is filtered and coarse-grained to ``n x n``:
``bar(w) = T(Gf * w)`` where ``Gf`` is the filter's Fourier multiplier (``"spectral"``: a sharp
cut-off at the coarse grid, i.e. ``Gf = 1``; ``"gaussian"``: ``exp(-|lambda|^2 Delta^2 / 24)``
with width ``Delta``, default ``2 / n``) and ``T`` keeps the modes strictly below the coarse Nyquist
wavenumber. The subgrid closure is added to the right-hand side of the coarse model::

    U = bar(N(w)) - N_c(bar(w))        (N = -(u . grad omega), N_c: dealiased on the coarse grid)

so ``U = -div(bar(u w) - bar(u) bar(w))`` up to the coarse dealiasing. The coarse nonlinear term
``N_c`` is either the 2/3-rule one (``coarse_nonlinear="two_thirds"``, the default: triads with
modes above ``n / 3`` are dropped, so ``U`` also holds resolved interactions the coarse solver
misses) or the exact projection ``P_n N(bar(w))`` over every resolved triad
(``coarse_nonlinear="exact"``, the 3/2 rule: :func:`~stochclosure.systems.spectral.exact_nonlinear_hat`).
With the sharp spectral filter and ``"exact"``, ``U = P_n N(w) - P_n N(P_n w)`` is the true subgrid
term: interactions that involve unresolved modes only, zero for a fine field without them. Coarse step (``h`` as in
:mod:`.navier_stokes`, ``bar(F)`` and ``bar(S)`` the filtered forcing and noise)::

    W_{n+1} = [(1 - h) W_n + dt (N_c(W_n) + bar(F) + U_n + sigma bar(S_n))] / (1 + h)

Because the filter and the Crank–Nicolson factors are Fourier multipliers, the coarse step fed the
true ``U`` and the filtered noise reproduces the filtered fine step to round-off. The coarse
solver's own noise (``self.coarse.noise``, drawn with the same ``noise_alpha`` and ``noise_kappa``)
has the law of the filtered fine noise for the sharp spectral filter only; with the Gaussian filter
the filtered noise is damped by the filter's multiplier, so draw it as ``filter(fine.noise(...))``. The no-closure
baseline (``U = None``) is the coarse solver alone; :class:`SmagorinskyClosure` is the classic
eddy-viscosity baseline.

Time step: forward-Euler advection with Crank–Nicolson viscosity is stable for
``dt |u|^2 < 2 nu`` (independent of the wavenumber), so lower viscosities need smaller steps
(``nu = 1e-4`` and ``|u| <~ 1`` allow ``dt <~ 2e-4``).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor

from .._types import check_tensor
from ..errors import ConfigError, ShapeError, format_error
from .base import AbstractSystem
from .navier_stokes import NavierStokes2D
from .records import collect_records
from .spectral import exact_nonlinear_hat, spectral_grid

__all__ = ["NavierStokes2DSubgrid", "SmagorinskyClosure", "filter_field", "COARSE_NONLINEAR"]

FILTERS = ("spectral", "gaussian")
COARSE_NONLINEAR = ("two_thirds", "exact")


def filter_field(w: Tensor, n: int, kind: str = "spectral", width: float | None = None) -> Tensor:
    """Filter a periodic field ``(..., N, N)`` and coarse-grain it to ``(..., n, n)``.

    Args:
        w: Fine field, ``N`` even and ``>= n``.
        n: Coarse grid size (even).
        kind: ``"spectral"`` (sharp cut-off) or ``"gaussian"`` (multiplier ``exp(-|lambda|^2 width^2 / 24)``).
        width: Gaussian filter width (default ``2 / n``).

    Returns:
        The filtered, coarse-grained field, keeping modes ``|k_x|, |k_y| <= n / 2 - 1``.
    """
    big_n = w.shape[-1]
    if n > big_n or n % 2:
        raise ShapeError(format_error("n", f"an even coarse size <= {big_n}", repr(n)))
    wh = torch.fft.rfft2(w)
    if kind == "gaussian":
        g = spectral_grid(big_n, w.dtype, w.device)
        delta = 2.0 / n if width is None else float(width)
        wh = wh * torch.exp(-g.lam2 * delta**2 / 24.0)
    elif kind != "spectral":
        raise ConfigError(format_error("filter", f"one of {FILTERS}", repr(kind)))
    keep = n // 2 - 1
    out = torch.zeros((*wh.shape[:-2], n, n // 2 + 1), dtype=wh.dtype, device=wh.device)
    rows = torch.arange(-keep, keep + 1, device=w.device)
    out[..., rows % n, : keep + 1] = wh[..., rows % big_n, : keep + 1] * (n * n / (big_n * big_n))
    return torch.fft.irfft2(out, s=(n, n))


class NavierStokes2DSubgrid(AbstractSystem):
    """Coarse LES solver of 2-D Navier–Stokes with the subgrid closure ``U`` (see module docstring).

    The state of :meth:`step` is the filtered vorticity ``(batch, 1, n, n)``; :meth:`full_step`
    advances the fine vorticity ``(batch, 1, n_fine, n_fine)`` and can return the true closure.

    Args:
        n: Coarse grid size.
        n_fine: Fine (DNS) grid size, a multiple of ``n`` is not required.
        nu: Viscosity of the fine model.
        dt: Time step.
        sigma: Noise strength.
        noise_alpha: Spectral decay of the noise.
        noise_kappa: ``kappa`` of the noise.
        forcing_amplitude: ``A`` of the deterministic forcing.
        ic_alpha: Initial-condition spectrum exponent.
        ic_tau: Initial-condition spectrum offset.
        ic_scale: Initial-condition amplitude. These nine are as in
            :class:`~stochclosure.systems.navier_stokes.NavierStokes2D` (for the fine model).
        filter: ``"spectral"`` or ``"gaussian"``.
        filter_width: Gaussian width (default ``2 / n``); ignored by the spectral filter.
        coarse_nonlinear: ``"two_thirds"`` (2/3-rule dealiasing on the coarse grid) or ``"exact"``
            (every resolved triad, see the module docstring); the closure is defined against it.
    """

    spatial_dims: ClassVar[int] = 2
    stochastic: ClassVar[bool] = True
    closure_names: ClassVar[tuple[str, ...]] = ("U",)

    def __init__(self, n: int = 32, n_fine: int = 256, nu: float = 1e-4, dt: float = 5e-4, sigma: float = 5e-5,
                 noise_alpha: float = 0.005, noise_kappa: float = 10.0, forcing_amplitude: float = 0.1,
                 ic_alpha: float = 2.5, ic_tau: float = 7.0, ic_scale: float | None = None,
                 filter: str = "spectral", filter_width: float | None = None,
                 coarse_nonlinear: str = "two_thirds") -> None:
        if filter not in FILTERS:
            raise ConfigError(format_error("filter", f"one of {FILTERS}", repr(filter)))
        if coarse_nonlinear not in COARSE_NONLINEAR:
            raise ConfigError(format_error("coarse_nonlinear", f"one of {COARSE_NONLINEAR}", repr(coarse_nonlinear)))
        if not (isinstance(n, int) and isinstance(n_fine, int) and n % 2 == 0 and 4 <= n <= n_fine):
            raise ConfigError(format_error("n", f"an even integer in [4, n_fine={n_fine}]", repr(n)))
        self.fine = NavierStokes2D(n=n_fine, nu=nu, dt=dt, sigma=sigma, noise_alpha=noise_alpha,
                                   noise_kappa=noise_kappa, forcing_amplitude=forcing_amplitude, ic_alpha=ic_alpha,
                                   ic_tau=ic_tau, ic_scale=ic_scale)
        self.coarse = NavierStokes2D(n=n, nu=nu, dt=dt, sigma=sigma, noise_alpha=noise_alpha, noise_kappa=noise_kappa,
                                     forcing_amplitude=forcing_amplitude)
        self.n, self.n_fine, self.nu, self.dt, self.sigma = n, n_fine, float(nu), float(dt), float(sigma)
        self.filter_kind, self.filter_width = filter, filter_width
        self.coarse_nonlinear = coarse_nonlinear
        self._cache: dict[Any, Tensor] = {}

    def filter(self, w_fine: Tensor, n: int | None = None) -> Tensor:
        """Filter and coarse-grain a fine field to ``n`` (default ``self.n``); width ``2/n`` by default."""
        return filter_field(w_fine, self.n if n is None else n, self.filter_kind, self.filter_width)

    def coarse_nonlinear_hat(self, w_hat: Tensor, n: int | None = None) -> Tensor:
        """The coarse solver's ``N_c`` in spectral space on ``n x n`` (2/3 rule or exact, see the module)."""
        n = self.n if n is None else n
        if self.coarse_nonlinear == "exact":
            return exact_nonlinear_hat(w_hat, n)
        return spectral_grid(n, w_hat.real.dtype, w_hat.device).nonlinear_hat(w_hat)

    def closure_term(self, w_fine: Tensor, n: int | None = None) -> Tensor:
        """True subgrid closure ``U = bar(N(w)) - N_c(bar(w))`` at resolution ``n``, ``(batch, 1, n, n)``."""
        n = self.n if n is None else n
        nf = torch.fft.irfft2(self.fine.grid(w_fine.dtype, w_fine.device).nonlinear_hat(torch.fft.rfft2(w_fine)),
                              s=(self.n_fine, self.n_fine))
        wb = self.filter(w_fine, n)
        nc = self.coarse_nonlinear_hat(torch.fft.rfft2(wb), n)
        return self.filter(nf, n) - torch.fft.irfft2(nc, s=(n, n))

    def full_step(self, w_fine: Tensor, dt: float | None = None, *,
                  generator: torch.Generator | None = None) -> Tensor:
        """Advance the fine model one step.

        Args:
            w_fine: ``(batch, 1, n_fine, n_fine)``.
            dt: Time step (default ``self.dt``).
            generator: Noise source.

        Returns:
            The next fine vorticity ``(batch, 1, n_fine, n_fine)``.
        """
        return self.full_step_with_closures(w_fine, dt, generator=generator, closures=False)[0]

    def full_step_with_closures(self, w_fine: Tensor, dt: float | None = None, *,
                                generator: torch.Generator | None = None, closures: bool = True
                                ) -> tuple[Tensor, dict[str, Tensor]]:
        """:meth:`full_step` that also returns ``{"U": true closure, "noise": filtered dW}`` at ``n``.

        Args:
            w_fine: ``(batch, 1, n_fine, n_fine)``.
            dt: Time step (default ``self.dt``).
            generator: Noise source.
            closures: Compute the closures (``False``: an empty dict, the plain step).

        Returns:
            The next fine vorticity and the dict of ``(batch, 1, n, n)`` fields.
        """
        dt = self.dt if dt is None else dt
        noise = None
        if self.sigma > 0:
            noise = self.fine.noise(w_fine.shape[0], generator=generator, dt=dt, dtype=w_fine.dtype,
                                    device=w_fine.device)
        nxt = self.fine.full_step(w_fine, dt, noise=noise)
        out: dict[str, Tensor] = {}
        if closures:
            out["U"] = self.closure_term(w_fine)
            if noise is not None:
                out["noise"] = self.filter(noise)
        return nxt, out

    def _forcing_hat(self, dtype: torch.dtype, device: torch.device) -> Tensor:
        key = (dtype, device)
        if key not in self._cache:
            f = self.fine.forcing(dtype, device)[None, None]
            self._cache[key] = torch.fft.rfft2(self.filter(f))
        return self._cache[key]

    def step(self, state: Tensor, closure_term: Tensor | None, dt: float | None = None, *,
             noise: Tensor | None = None) -> Tensor:
        """Coarse LES step; ``noise`` is the filtered ``dW`` at ``n`` (``None``: no noise).

        Args:
            state: Filtered vorticity ``(batch, 1, n, n)``.
            closure_term: Subgrid closure ``U`` like ``state``, or ``None`` (no closure).
            dt: Time step (default ``self.dt``).
            noise: Filtered ``dW`` like ``state``. For online runs draw it with
                ``self.filter(self.fine.noise(...))``. ``self.coarse.noise`` (same ``noise_alpha``
                and ``noise_kappa``) is equal in law to it only with the sharp ``"spectral"``
                filter; the ``"gaussian"`` filter damps mode ``k`` of the filtered noise by
                ``exp(-|lambda_k|^2 Delta^2 / 24)``, which the coarse noise does not.

        Returns:
            ``(batch, 1, n, n)``.
        """
        dt = self.dt if dt is None else float(dt)
        self.coarse._check_state(state)
        g = self.coarse.grid(state.dtype, state.device)
        w = torch.fft.rfft2(state)
        rhs = self.coarse_nonlinear_hat(w) + self._forcing_hat(state.dtype, state.device)
        if closure_term is not None:
            check_tensor("closure_term", closure_term, shape=tuple(state.shape), finite=False)
            rhs = rhs + torch.fft.rfft2(closure_term.to(state.dtype))
        if noise is not None:
            check_tensor("noise", noise, shape=tuple(state.shape))
            rhs = rhs + self.sigma * torch.fft.rfft2(noise.to(state.dtype))
        a, b = self.coarse._cn(g, dt)
        return torch.fft.irfft2((a * w + dt * rhs) * b, s=(self.n, self.n))

    def fine_initial_state(self, batch: int, *, generator: torch.Generator | None = None,
                           dtype: torch.dtype = torch.float32) -> Tensor:
        """GRF fine vorticity ``(batch, 1, n_fine, n_fine)``."""
        return self.fine.initial_state(batch, generator=generator, dtype=dtype)

    def initial_state(self, batch: int, *, generator: torch.Generator | None = None,
                      dtype: torch.dtype = torch.float32) -> Tensor:
        """Filtered GRF vorticity ``(batch, 1, n, n)``."""
        return self.filter(self.fine_initial_state(batch, generator=generator, dtype=dtype))

    def iter_records(self, batch: int, *, generator: torch.Generator, spinup_steps: int, record_every: int,
                     n_records: int, resolutions: Sequence[int], closures: Sequence[str] = ("U",),
                     coarsen_method: str = "filter", dtype: torch.dtype = torch.float64,
                     device: str | torch.device = "cpu") -> Iterator[tuple[float, dict[int, dict[str, Tensor]]]]:
        """Run the fine model; yield, per coarse resolution, ``bar(w)`` and ``U`` (own filter each).

        ``coarsen_method`` is ignored: each resolution is made by this system's filter.
        """
        if list(closures) != ["U"]:
            raise ConfigError(format_error("closures", "['U'] (the subgrid closure)", repr(list(closures))))
        w = self.fine_initial_state(batch, generator=generator, dtype=dtype).to(device)
        w = self.fine.simulate(w, spinup_steps, generator=generator)
        for r in range(n_records):
            if r > 0:
                w = self.fine.simulate(w, record_every - 1, generator=generator)
            yield (self.dt * (spinup_steps + r * record_every),
                   {int(res): {"state": self.filter(w, res).cpu(), "U": self.closure_term(w, res).cpu()}
                    for res in resolutions})
            w = self.fine.full_step(w, generator=generator)

    def generate_records(self, batch: int, **kwargs: Any) -> dict[str, Any]:
        """:meth:`iter_records` stacked: ``{"time": (T,), "fields": {res: {"state", "U": (B, T, 1, res, res)}}}``."""
        return collect_records(self.iter_records(batch, **kwargs))

    @classmethod
    def example(cls) -> NavierStokes2DSubgrid:
        return cls(n=16, n_fine=32)


class SmagorinskyClosure:
    """Smagorinsky eddy-viscosity closure ``U = div(nu_t grad bar(w))``, ``nu_t = (c_s Delta)^2 |S|``.

    ``|S| = sqrt(2 S_ij S_ij)`` of the resolved velocity; ``Delta`` defaults to the grid spacing
    ``1 / n``. Works at any even resolution.

    Args:
        cs: Smagorinsky constant.
        delta: Filter length (default ``1 / n`` of the field it is applied to).
    """

    def __init__(self, cs: float = 0.17, delta: float | None = None) -> None:
        if not cs >= 0:
            raise ConfigError(format_error("cs", "a non-negative float", repr(cs)))
        self.cs, self.delta = float(cs), delta

    def unit(self, state: Tensor) -> Tensor:
        """``div(Delta^2 |S| grad w)``: the closure for ``c_s = 1``, ``(batch, 1, n, n)``."""
        check_tensor("state", state, rank=4)
        n = state.shape[-1]
        g = spectral_grid(n, state.dtype, state.device)
        w = torch.fft.rfft2(state)
        psi = w * g.inv_lam2
        s11 = -g.lx * g.ly * psi
        s12 = 0.5 * (g.lx**2 - g.ly**2) * psi
        wx, wy = 1j * g.lx * w, 1j * g.ly * w
        s11p, s12p, wxp, wyp = torch.fft.irfft2(torch.stack((s11, s12, wx, wy), -3), s=(n, n)).unbind(-3)
        delta = 1.0 / n if self.delta is None else self.delta
        nut = delta**2 * 2.0 * torch.sqrt(s11p**2 + s12p**2)
        flux = torch.fft.rfft2(torch.stack((nut * wxp, nut * wyp), -3))
        return torch.fft.irfft2(1j * g.lx * flux[..., 0, :, :] + 1j * g.ly * flux[..., 1, :, :], s=(n, n))

    def __call__(self, state: Tensor) -> Tensor:
        """The closure ``(batch, 1, n, n)`` for a filtered vorticity ``state``."""
        return self.cs**2 * self.unit(state)

    @classmethod
    def fit(cls, states: Tensor, targets: Tensor, delta: float | None = None) -> SmagorinskyClosure:
        """Least-squares ``c_s^2`` (clipped at 0) matching ``targets`` ``U`` given ``states``.

        Args:
            states: ``(batch, 1, n, n)`` filtered vorticity.
            targets: True closures like ``states``.
            delta: Filter length.
        """
        if states.shape != targets.shape:
            raise ShapeError(format_error("targets", f"shape {tuple(states.shape)} like states",
                                          f"shape {tuple(targets.shape)}"))
        m = cls(1.0, delta).unit(states)
        c2 = float((m * targets).sum() / (m * m).sum().clamp_min(1e-300))
        return cls(math.sqrt(max(c2, 0.0)), delta)
