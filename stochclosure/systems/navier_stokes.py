"""Stochastic 2-D Navier–Stokes in vorticity form on the periodic unit square (REFERENCE §1, §2).

Full model::

    d omega/dt + u . grad omega = nu Lap omega + f + sigma dW/dt,   u = (d psi/dy, -d psi/dx),  -Lap psi = omega

with ``f = A (sin 2 pi (x + y) + cos 2 pi (x + y))``. One time step (pseudo-spectral, ``rfft2``):
explicit (forward-Euler) advection with the 2/3 dealiasing rule, Crank–Nicolson viscosity,
explicit forcing and noise. With ``W = rfft2(omega)``, ``h = dt nu |lambda|^2 / 2``::

    W_{n+1} = [(1 - h) W_n + dt (N_n + F + sigma S_n)] / (1 + h)                              (full)

where ``N = -(u . grad omega)`` (dealiased) and ``S = rfft2(dW)`` is the Lord–Powell–Shardlow noise:
``dW = Re(sum_k b_k xi_k exp(2 pi i k.x))``, ``b_k = exp(-alpha |lambda_k|^2 / 2) / sqrt(dt)``,
``xi_k`` complex with both parts the sum of ``kappa`` i.i.d. ``N(0, 1)`` (drawn as
``sqrt(kappa) N(0, 1)``, identical in law). This is REFERENCE §1's ``Re(ifft2(b xi))`` with
``b = exp(-alpha|lambda|^2/2) N^2 / sqrt(dt)``; its per-mode spectrum is
``E|dW_k|^2 = kappa exp(-alpha |lambda_k|^2) / dt`` (forward-normalised coefficients). Only the
square ``|k_x|, |k_y| <= K`` is drawn, ``K`` the largest wavenumber whose amplitude is at least
``1e-17`` of mode 0 (``K = 19`` for ``alpha = 0.005``; beyond it the noise is below double-precision
round-off), and of it the modes strictly below the grid's Nyquist wavenumber are used. So one
generator gives the *same* noise realisation at every resolution ``n >= 2K + 2`` (40).

Closure terms (REFERENCE §2) and the reduced models they define:

* **G** ("stochastic viscous diffusion") ``= nu Lap omega_n + 2 sigma dW_n``. The Crank–Nicolson
  step injects the explicit half of viscosity and the noise as ``dt/2 * G``, hence the factor 2.
  Reduced model: ``W_{n+1} = [W_n + dt (N_n + F) + dt/2 G_n] / (1 + h)``; it *keeps* the implicit
  half of the viscosity, so the no-closure baseline (``G = None``) is advection + forcing + half
  (implicit) viscosity, without noise.
* **H** ("stochastic convection") ``= -(u . grad omega_n)_dealiased + sigma dW_n``. Reduced model:
  ``W_{n+1} = [(1 - h) W_n + dt F + dt H_n] / (1 + h)``; the no-closure baseline (``H = None``) is
  forced Crank–Nicolson diffusion without advection and without noise.

With the true closure computed from the same state and the same noise draw, either reduced step
reproduces :meth:`NavierStokes2D.full_step` to round-off.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor

from .._types import check_generator, check_tensor
from ..errors import ConfigError, ShapeError, format_error
from ..fft import spectral_resample
from .base import AbstractSystem
from .records import collect_records
from .spectral import SpectralGrid, add_block_, hermitian_half, noise_block_size, place_block, spectral_grid

__all__ = ["NavierStokes2D", "coarsen", "grf_vorticity"]

CLOSURES = ("G", "H")


def _gen_device(generator: torch.Generator | None) -> torch.device:
    return generator.device if check_generator(generator) is not None else torch.device("cpu")


def grf_vorticity(n: int, batch: int, *, alpha: float = 2.5, tau: float = 7.0, scale: float | None = None,
                  generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32,
                  device: str | torch.device = "cpu") -> Tensor:
    """Zero-mean Gaussian random field with spectrum ``scale (4 pi^2 |k|^2 + tau^2)^(-alpha)``.

    ``E|w_k|^2`` of the forward-normalised coefficients equals the spectrum. Drawn in float64 on the
    generator's device, then cast, so a seed gives the same field in float32 and float64.

    Args:
        n: Even grid size.
        batch: Number of fields.
        alpha: Spectral exponent (REFERENCE §1: 2.5).
        tau: Spectral offset (REFERENCE §1: 7).
        scale: Amplitude (default ``2 tau^(2 alpha - 2)``).
        generator: Random source.
        dtype: Dtype of the result.
        device: Device of the result.

    Returns:
        ``(batch, 1, n, n)``.
    """
    scale = 2.0 * tau ** (2 * alpha - 2) if scale is None else scale
    big_k = n // 2 - 1
    k = torch.arange(-big_k, big_k + 1, dtype=torch.float64)
    k2 = k[:, None] ** 2 + k[None, :] ** 2
    amp = torch.sqrt(scale * (4 * math.pi**2 * k2 + tau**2) ** (-alpha))
    amp[big_k, big_k] = 0.0
    z = torch.randn((batch, 1, 2 * big_k + 1, 2 * big_k + 1, 2), generator=generator, dtype=torch.float64,
                    device=_gen_device(generator))
    xi = torch.view_as_complex(z) * amp.to(z.device)
    w = torch.fft.irfft2(place_block(hermitian_half(xi), n) * (n * n), s=(n, n))
    return w.to(device=device, dtype=dtype)


def coarsen(x: Tensor, n: int, method: str = "stride") -> Tensor:
    """Coarse-grain a periodic field ``(..., N, N)`` to ``n x n``.

    * ``"stride"``: point values ``x[..., ::N/n, ::N/n]`` (exact samples of the fine field at the
      coarse grid points; scales finer than the coarse grid alias). What the research code does.
    * ``"spectral"``: Fourier truncation to the modes strictly below the coarse Nyquist
      wavenumber (band-limited projection; no aliasing, point values change slightly).

    Args:
        x: ``(batch, channels, N, N)``.
        n: Target size, dividing ``N`` for ``"stride"``.
        method: ``"stride"`` or ``"spectral"``.
    """
    big_n = x.shape[-1]
    if n == big_n:
        return x
    if method == "stride":
        if big_n % n:
            raise ShapeError(format_error("resolution", f"a divisor of the simulation grid {big_n}", repr(n),
                                          "use coarsen='spectral' or a dividing resolution"))
        s = big_n // n
        return x[..., ::s, ::s].contiguous()
    if method == "spectral":
        return spectral_resample(x, (n, n))
    raise ConfigError(format_error("coarsen", "'stride' or 'spectral'", repr(method)))


class NavierStokes2D(AbstractSystem):
    """Reduced (closure-driven) solver of the stochastic 2-D Navier–Stokes equations.

    :meth:`full_step` advances the full model; :meth:`step` advances the reduced model of the
    chosen closure (``"G"`` or ``"H"``, see the module docstring for the exact conventions);
    :meth:`closure_terms` gives the true closures. All methods are batched, float32 or float64,
    and run on the device of their input.

    Args:
        n: Even grid size.
        nu: Viscosity.
        dt: Time step.
        sigma: Noise strength.
        noise_alpha: Spectral decay ``alpha`` of the noise.
        noise_kappa: ``kappa`` (number of summed normals per noise coefficient part).
        forcing_amplitude: ``A`` of the deterministic forcing.
        ic_alpha: ``alpha`` of the Gaussian-random-field initial condition (see :func:`grf_vorticity`).
        ic_tau: ``tau`` of the initial condition.
        ic_scale: ``scale`` of the initial condition (default: see :func:`grf_vorticity`).
        closure: Which closure the reduced :meth:`step` expects, ``"G"`` or ``"H"``.
    """

    spatial_dims: ClassVar[int] = 2
    stochastic: ClassVar[bool] = True
    closure_names: ClassVar[tuple[str, ...]] = CLOSURES

    def __init__(self, n: int = 64, nu: float = 1e-3, dt: float = 1e-3, sigma: float = 5e-5,
                 noise_alpha: float = 0.005, noise_kappa: float = 10.0, forcing_amplitude: float = 0.1,
                 ic_alpha: float = 2.5, ic_tau: float = 7.0, ic_scale: float | None = None,
                 closure: str = "H") -> None:
        if not (isinstance(n, int) and n >= 4 and n % 2 == 0):
            raise ConfigError(format_error("n", "an even integer >= 4", repr(n), "use e.g. 32, 64 or 256"))
        for name, val in (("nu", nu), ("sigma", sigma), ("noise_kappa", noise_kappa)):
            if not val >= 0:
                raise ConfigError(format_error(name, "a non-negative float", repr(val)))
        if not dt > 0:
            raise ConfigError(format_error("dt", "a positive float", repr(dt)))
        if closure not in CLOSURES:
            raise ConfigError(format_error("closure", f"one of {CLOSURES}", repr(closure),
                                           "G = nu Lap(omega) + 2 sigma dW, H = -(u.grad omega) + sigma dW"))
        self.n, self.nu, self.dt, self.sigma = n, float(nu), float(dt), float(sigma)
        self.noise_alpha, self.noise_kappa = float(noise_alpha), float(noise_kappa)
        self.forcing_amplitude = float(forcing_amplitude)
        self.ic_alpha, self.ic_tau, self.ic_scale = float(ic_alpha), float(ic_tau), ic_scale
        self.closure = closure
        self.noise_k = noise_block_size(self.noise_alpha)
        self._cache: dict[Any, Tensor] = {}

    # ------------------------------------------------------------------ operators
    def grid(self, dtype: torch.dtype = torch.float64, device: str | torch.device = "cpu") -> SpectralGrid:
        """The cached :class:`SpectralGrid` of this system."""
        return spectral_grid(self.n, dtype, torch.device(device))

    def forcing(self, dtype: torch.dtype = torch.float64, device: str | torch.device = "cpu") -> Tensor:
        """Deterministic forcing ``f`` on the grid, ``(n, n)``."""
        x = torch.arange(self.n, dtype=torch.float64) / self.n
        s = 2 * math.pi * (x[:, None] + x[None, :])
        return (self.forcing_amplitude * (torch.sin(s) + torch.cos(s))).to(device=device, dtype=dtype)

    def _forcing_hat(self, g: SpectralGrid, dtype: torch.dtype, device: torch.device) -> Tensor:
        key = ("F", dtype, device)
        if key not in self._cache:
            self._cache[key] = torch.fft.rfft2(self.forcing(dtype, device))
        return self._cache[key]

    def _cn(self, g: SpectralGrid, dt: float) -> tuple[Tensor, Tensor]:
        key = ("cn", dt, g.lam2.dtype, g.lam2.device)
        if key not in self._cache:
            h = 0.5 * dt * self.nu * g.lam2
            self._cache[key] = torch.stack((1 - h, 1 / (1 + h), (1 - h) / (1 + h), dt / (1 + h)))
        a, b = self._cache[key][:2]
        return a, b

    def _cn_fused(self, g: SpectralGrid, dt: float) -> tuple[Tensor, Tensor]:
        """``((1 - h) / (1 + h), dt / (1 + h))``: the full step is ``W * first + rhs * second``."""
        self._cn(g, dt)
        c = self._cache[("cn", dt, g.lam2.dtype, g.lam2.device)]
        return c[2], c[3]

    def _check_state(self, state: Tensor, name: str = "state") -> None:
        check_tensor(name, state, rank=4, finite=False)
        if tuple(state.shape[1:]) != (1, self.n, self.n):
            raise ShapeError(format_error(name, f"(batch, 1, {self.n}, {self.n})", f"shape {tuple(state.shape)}",
                                          f"coarsen the field to {self.n}x{self.n} or build the system with n="
                                          f"{state.shape[-1]}"))

    # ------------------------------------------------------------------ noise
    def _noise_block(self, batch: int, *, generator: torch.Generator | None = None, dt: float | None = None,
                     dtype: torch.dtype = torch.float64, device: str | torch.device = "cpu") -> Tensor:
        """Half-plane block ``(batch, 1, 2K+1, K+1)`` of ``rfft2(dW)`` (see :func:`~.spectral.place_block`)."""
        dt = self.dt if dt is None else dt
        big_k = self.noise_k
        gdev = _gen_device(generator)
        # Only the half plane k_y >= 0 is drawn (the real field's coefficients on k_y > 0 are
        # independent; the k_y = 0 column is folded onto itself), which has exactly the law of
        # Re(sum_k b_k xi_k e^{2 pi i k.x}) over the full plane. float32 normals are ~4x cheaper to
        # draw than float64 ones; the amplitudes are float64.
        z = torch.randn((batch, 1, 2 * big_k + 1, big_k + 1, 2), generator=generator, dtype=torch.float32,
                        device=gdev)
        key = ("noise", dt, gdev)
        if key not in self._cache:
            k = 2 * math.pi * torch.arange(-big_k, big_k + 1, dtype=torch.float64, device=gdev)
            amp = torch.exp(-0.5 * self.noise_alpha * (k[:, None] ** 2 + k[None, big_k:] ** 2)) * math.sqrt(
                self.noise_kappa / dt) * self.n**2
            # (xi_k + conj(xi_-k)) / 2 with xi_k, xi_-k independent has the law of xi_k / sqrt(2)
            amp[:, 1:] /= math.sqrt(2.0)
            amp[:, 0] /= 2.0
            self._cache[key] = amp.to(torch.complex128)
        xi = torch.view_as_complex(z.double()) * self._cache[key]
        col = xi[..., 0]
        xi[..., 0] = col + torch.flip(col, dims=(-1,)).conj()
        return xi.to(device=device, dtype=torch.complex64 if dtype == torch.float32 else torch.complex128)

    def noise_hat(self, batch: int, *, generator: torch.Generator | None = None, dt: float | None = None,
                  dtype: torch.dtype = torch.float64, device: str | torch.device = "cpu") -> Tensor:
        """``rfft2`` of one draw of ``dW``, ``(batch, 1, n, n // 2 + 1)``.

        The normals are drawn in float32 on the generator's device (so float32 and float64 runs
        with one seed see the same noise), scaled in float64, then cast to ``dtype``'s complex type.
        """
        block = self._noise_block(batch, generator=generator, dt=dt, dtype=dtype, device=device)
        return place_block(block, self.n)

    def noise(self, batch: int, *, generator: torch.Generator | None = None, dt: float | None = None,
              dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> Tensor:
        """One draw of the Lord–Powell–Shardlow noise ``dW`` on the grid, ``(batch, 1, n, n)``.

        Its forward-normalised Fourier coefficients have ``E|dW_k|^2 = kappa exp(-alpha|lambda_k|^2) / dt``.
        """
        nh = self.noise_hat(batch, generator=generator, dt=dt, dtype=dtype, device=device)
        return torch.fft.irfft2(nh, s=(self.n, self.n))

    def noise_spectrum(self, dt: float | None = None) -> Tensor:
        """Analytic ``E|dW_k|^2`` on the ``rfft2`` half-plane, ``(n, n // 2 + 1)`` float64."""
        dt = self.dt if dt is None else dt
        g = self.grid()
        s = self.noise_kappa * torch.exp(-self.noise_alpha * g.lam2) / dt
        inside = (g.kx.abs() <= min(self.noise_k, self.n // 2 - 1)) & (g.ky <= min(self.noise_k, self.n // 2 - 1))
        return torch.where(inside, s, torch.zeros_like(s))

    # ------------------------------------------------------------------ full model
    def _noise_arg(self, w: Tensor, noise: Tensor | None, generator: torch.Generator | None,
                   dt: float) -> Tensor | None:
        if self.sigma == 0.0 and noise is None:
            return None
        if noise is None:
            return self.noise_hat(w.shape[0], generator=generator, dt=dt, dtype=w.dtype, device=w.device)
        self._check_state(noise, "noise")
        return torch.fft.rfft2(noise.to(w.dtype))

    def full_step(self, state: Tensor, dt: float | None = None, *, generator: torch.Generator | None = None,
                  noise: Tensor | None = None) -> Tensor:
        """Advance the full stochastic model one step.

        Args:
            state: Vorticity ``(batch, 1, n, n)``.
            dt: Time step (default ``self.dt``).
            generator: Random source of the noise draw (ignored when ``noise`` is given).
            noise: A given ``dW`` ``(batch, 1, n, n)`` (e.g. from :meth:`noise`) instead of a fresh draw.

        Returns:
            The next vorticity ``(batch, 1, n, n)``.
        """
        return self._full_step(state, dt, generator, noise, closures=False)[0]

    def full_step_with_closures(self, state: Tensor, dt: float | None = None, *,
                                generator: torch.Generator | None = None, noise: Tensor | None = None
                                ) -> tuple[Tensor, dict[str, Tensor]]:
        """:meth:`full_step` that also returns the true closures ``{"G", "H"}`` of this step.

        Args:
            state: Vorticity ``(batch, 1, n, n)``.
            dt: Time step (default ``self.dt``).
            generator: Random source of the noise draw (ignored when ``noise`` is given).
            noise: A given ``dW`` ``(batch, 1, n, n)`` instead of a fresh draw.

        Returns:
            The next vorticity and the closure fields ``(batch, 1, n, n)`` computed from ``state``
            and the same noise draw.
        """
        out, clo = self._full_step(state, dt, generator, noise, closures=True)
        assert clo is not None
        return out, clo

    def _full_step(self, state: Tensor, dt: float | None, generator: torch.Generator | None,
                   noise: Tensor | None, closures: bool) -> tuple[Tensor, dict[str, Tensor] | None]:
        dt = self.dt if dt is None else float(dt)
        self._check_state(state)
        g = self.grid(state.dtype, state.device)
        w = torch.fft.rfft2(state)
        nl = g.nonlinear_hat(w)
        decay, gain = self._cn_fused(g, dt)
        rhs = nl + self._forcing_hat(g, state.dtype, state.device)
        s = None
        if noise is None and self.sigma > 0 and not closures:
            # fast path: add the low-mode noise block in place (O(K^2) instead of O(n^2))
            block = self._noise_block(state.shape[0], generator=generator, dt=dt, dtype=state.dtype,
                                      device=state.device)
            add_block_(rhs, block, self.sigma)
        else:
            s = self._noise_arg(state, noise, generator, dt)
            if s is not None:
                rhs = rhs + self.sigma * s
        out = torch.fft.irfft2(w * decay + rhs * gain, s=(self.n, self.n))
        return out, (self._closures_from(w, nl, s, g) if closures else None)

    def _closures_from(self, w: Tensor, nl: Tensor, s: Tensor | None, g: SpectralGrid) -> dict[str, Tensor]:
        gh = -self.nu * g.lam2 * w
        hh = nl
        if s is not None:
            gh = gh + 2 * self.sigma * s
            hh = hh + self.sigma * s
        both = torch.fft.irfft2(torch.cat((gh, hh), dim=1), s=(self.n, self.n))
        return {"G": both[:, :1], "H": both[:, 1:]}

    def closure_terms(self, state: Tensor, noise: Tensor | None = None) -> dict[str, Tensor]:
        """True closures ``G = nu Lap w + 2 sigma dW`` and ``H = -(u.grad w)_dealiased + sigma dW``.

        Args:
            state: ``(batch, 1, n, n)``.
            noise: The step's ``dW`` ``(batch, 1, n, n)``; ``None`` gives the noise-free parts.

        Returns:
            ``{"G": (batch, 1, n, n), "H": (batch, 1, n, n)}``.
        """
        self._check_state(state)
        g = self.grid(state.dtype, state.device)
        w = torch.fft.rfft2(state)
        s = None if noise is None else torch.fft.rfft2(noise.to(state.dtype))
        return self._closures_from(w, g.nonlinear_hat(w), s, g)

    # ------------------------------------------------------------------ reduced model
    def step(self, state: Tensor, closure_term: Tensor | None, dt: float | None = None) -> Tensor:
        """Advance the reduced model of ``self.closure`` one step (see the module docstring).

        Args:
            state: ``(batch, 1, n, n)``.
            closure_term: The closure ``(batch, 1, n, n)`` (G or H), or ``None`` for the baseline.
            dt: Time step (default ``self.dt``).

        Returns:
            ``(batch, 1, n, n)``.
        """
        dt = self.dt if dt is None else float(dt)
        self._check_state(state)
        g = self.grid(state.dtype, state.device)
        w = torch.fft.rfft2(state)
        a, b = self._cn(g, dt)
        f = self._forcing_hat(g, state.dtype, state.device)
        u = None
        if closure_term is not None:
            check_tensor("closure_term", closure_term, shape=tuple(state.shape), finite=False)
            u = torch.fft.rfft2(closure_term.to(state.dtype))
        if self.closure == "G":
            rhs = dt * (g.nonlinear_hat(w) + f)
            if u is not None:
                rhs = rhs + 0.5 * dt * u
            nxt = (w + rhs) * b
        else:
            rhs = dt * f if u is None else dt * (f + u)
            nxt = (a * w + rhs) * b
        return torch.fft.irfft2(nxt, s=(self.n, self.n))

    def initial_state(self, batch: int, *, generator: torch.Generator | None = None,
                      dtype: torch.dtype = torch.float32) -> Tensor:
        """Gaussian-random-field vorticity ``(batch, 1, n, n)`` (REFERENCE §1); spin up before use."""
        return grf_vorticity(self.n, batch, alpha=self.ic_alpha, tau=self.ic_tau, scale=self.ic_scale,
                             generator=generator, dtype=dtype)

    def simulate(self, state: Tensor, n_steps: int, *, generator: torch.Generator | None = None,
                 dt: float | None = None, callback: Callable[[int, Tensor], None] | None = None) -> Tensor:
        """Run the full model ``n_steps`` steps; ``callback(i, state)`` after each step."""
        for i in range(n_steps):
            state = self.full_step(state, dt, generator=generator)
            if callback is not None:
                callback(i, state)
        return state

    # ------------------------------------------------------------------ dataset generation
    def iter_records(self, batch: int, *, generator: torch.Generator, spinup_steps: int, record_every: int,
                     n_records: int, resolutions: Sequence[int], closures: Sequence[str],
                     coarsen_method: str = "stride", dtype: torch.dtype = torch.float64,
                     device: str | torch.device = "cpu") -> Iterator[tuple[float, dict[int, dict[str, Tensor]]]]:
        """Simulate ``batch`` trajectories and yield records (see :mod:`.records`).

        Record ``r`` is taken at step ``spinup_steps + r * record_every``: the state there and the
        closures of the step that starts from it, coarse-grained to each resolution.
        """
        for c in closures:
            if c not in CLOSURES:
                raise ConfigError(format_error("closures", f"names among {CLOSURES}", repr(c)))
        w = self.initial_state(batch, generator=generator, dtype=dtype).to(device)
        w = self.simulate(w, spinup_steps, generator=generator)
        for r in range(n_records):
            if r > 0:
                w = self.simulate(w, record_every - 1, generator=generator)
            nxt, clo = self.full_step_with_closures(w, generator=generator)
            fields = {"state": w, **{c: clo[c] for c in closures}}
            yield (self.dt * (spinup_steps + r * record_every),
                   {int(res): {k: coarsen(v, int(res), coarsen_method).cpu() for k, v in fields.items()}
                    for res in resolutions})
            w = nxt

    def generate_records(self, batch: int, **kwargs: Any) -> dict[str, Any]:
        """:meth:`iter_records` stacked: ``{"time": (T,), "fields": {res: {name: (B, T, 1, res, res)}}}``."""
        return collect_records(self.iter_records(batch, **kwargs))

    @classmethod
    def example(cls) -> NavierStokes2D:
        return cls(n=16)
