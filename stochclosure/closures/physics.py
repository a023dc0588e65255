"""Physics closures of the 2-D Navier–Stokes subgrid term: Dirac laws at a function of the coarse state.

The target (see :mod:`stochclosure.systems.subgrid`) is ``U = bar(N(w)) - N_c(bar(w))`` with
``N(w) = -(u . grad w) = -div(u w)``, ``bar`` the filter (Fourier multiplier ``G``: Gaussian
``exp(-|lambda|^2 Delta^2 / 24)`` or the sharp cut-off ``G = 1``) followed by the truncation ``P_n``
to the resolved modes ``|k_x|, |k_y| <= n / 2 - 1``, and ``N_c`` the coarse solver's own nonlinear
term (2/3-rule or exact). It splits exactly into::

    U = [bar(N(w)) - P_n N(bar(w))]  +  [P_n N(bar(w)) - N_c(bar(w))]
      =   -div(tau), tau = bar(u w) - bar(u) bar(w)  +  R(bar(w))

``R`` is the *resolved-interaction correction*: the triads between resolved modes that the coarse
solver leaves out (zero for ``coarse_nonlinear="exact"``), computable exactly from ``bar(w)``
(:class:`ResolvedCorrection`). Every law here models the subgrid flux ``tau`` and, with
``resolved_correction=True`` (the default), adds ``R``:

* ``smagorinsky``: ``tau = -nu_t grad bar(w)``, ``nu_t = (c_s Delta)^2 |S|`` (Smagorinsky 1963;
  Lilly 1967), ``|S| = sqrt(2 S_ij S_ij)`` of the resolved velocity.
* ``dynamic_smagorinsky``: ``c_s^2`` from the Germano identity (Germano et al. 1991) with Lilly's
  (1992) least squares, per batch member over the domain, clipped at 0.
* ``gradient``: the nonlinear-gradient (Clark) model ``tau_i = (Delta^2 / 12) d_k u_i d_k w``
  (Clark, Ferziger & Reynolds 1979), the leading term of the Taylor expansion of the Gaussian filter.
* ``bardina``: scale similarity ``tau = C_b (bar(bar(u) bar(w)) - bar(bar(u)) bar(bar(w)))``
  (Bardina, Ferziger & Reynolds 1980).
* ``adm``: approximate deconvolution (Stolz & Adams 1999): ``w* = sum_{k=0}^{p} (I - G)^k bar(w)``
  (van Cittert) on the resolved modes, ``U = G P_n N(w*) - N_c(bar(w))`` with ``N`` exact
  (zero-padded products).

All products of resolved fields are computed on a zero-padded grid of ``pad * n`` points
(``pad >= 3/2``), so they are the exact projections of the continuous products. Outputs keep the
resolved modes only (Nyquist modes zero), like the true ``U`` of the subgrid system.
"""

from __future__ import annotations

import abc
import math
from typing import Any, ClassVar

import torch
from torch import Tensor

from .._types import Conditioning
from ..config import Configurable
from ..errors import ConfigError, DTypeError, ShapeError, format_error
from ..systems.spectral import resize_hat, spectral_grid
from ..systems.subgrid import COARSE_NONLINEAR, FILTERS, SmagorinskyClosure
from .base import AbstractClosureLaw

__all__ = ["PhysicsClosure", "ResolvedCorrection", "Smagorinsky", "DynamicSmagorinsky", "GradientModel",
           "Bardina", "ADM", "filter_multiplier", "nonlinear_exact_hat", "germano_leonard"]


# -- spectral helpers --------------------------------------------------------------------------------------
def filter_multiplier(n: int, kind: str, width: float | None, dtype: torch.dtype,
                      device: torch.device | str = "cpu") -> Tensor:
    """Fourier multiplier ``G`` of the filter on the ``n x n`` ``rfft2`` grid, ``(n, n // 2 + 1)``.

    Args:
        n: Grid size.
        kind: ``"gaussian"`` (``exp(-|lambda|^2 width^2 / 24)``) or ``"spectral"`` (``G = 1``).
        width: Gaussian width (default ``2 / n``, as :func:`~stochclosure.systems.subgrid.filter_field`).
        dtype: Real dtype.
        device: Device.
    """
    g = spectral_grid(n, dtype, device)
    if kind == "spectral":
        return torch.ones_like(g.lam2)
    delta = 2.0 / n if width is None else float(width)
    return torch.exp(-g.lam2 * delta**2 / 24.0)


def _resolved(x_hat: Tensor, n: int) -> Tensor:
    """Zero the Nyquist row and column (keep ``|k_x|, |k_y| <= n / 2 - 1``)."""
    return resize_hat(x_hat, n, n)


def _padded_size(n: int, pad: float) -> int:
    m = math.ceil(pad * n - 1e-9)
    return m + (m % 2)


def _products_hat(pairs: list[tuple[Tensor, Tensor]], n: int, pad: float) -> list[Tensor]:
    """Exact projections ``P_n (a b)`` of products of resolved fields given by their ``rfft2`` (padding)."""
    m = _padded_size(n, pad)
    fields = torch.fft.irfft2(resize_hat(torch.stack([x for p in pairs for x in p], -3), n, m), s=(m, m))
    prods = fields[..., 0::2, :, :] * fields[..., 1::2, :, :]
    out = resize_hat(torch.fft.rfft2(prods), m, n)
    return list(out.unbind(-3))


def _velocity_hat(w_hat: Tensor, n: int) -> tuple[Tensor, Tensor]:
    g = spectral_grid(n, w_hat.real.dtype, w_hat.device)
    psi = w_hat * g.inv_lam2
    return g.ily * psi, -g.ilx * psi


def nonlinear_exact_hat(w_hat: Tensor, n: int, pad: float = 1.5) -> Tensor:
    """``P_n N(w)`` with ``N(w) = -(u . grad w)`` over every resolved triad (zero-padded to ``pad * n``).

    Args:
        w_hat: ``rfft2`` of the vorticity, ``(..., n, n // 2 + 1)``.
        n: Grid size.
        pad: Padding factor, ``>= 1.5`` (the 3/2 rule; larger is equally exact).

    Returns:
        ``(..., n, n // 2 + 1)``.
    """
    g = spectral_grid(n, w_hat.real.dtype, w_hat.device)
    u, v = _velocity_hat(w_hat, n)
    uw, vw = _products_hat([(u, g.ilx * w_hat), (v, g.ily * w_hat)], n, pad)
    return -(uw + vw)


def _divergence_hat(fx: Tensor, fy: Tensor, n: int) -> Tensor:
    g = spectral_grid(n, fx.real.dtype, fx.device)
    return g.ilx * fx + g.ily * fy


def germano_leonard(w: Tensor, test: Tensor, pad: float = 1.5) -> tuple[Tensor, Tensor]:
    """Resolved vorticity-flux stress ``L = hat(bar(u) bar(w)) - hat(bar(u)) hat(bar(w))``.

    Args:
        w: Resolved vorticity ``(B, 1, n, n)``.
        test: Test-filter multiplier ``(n, n // 2 + 1)``.
        pad: Padding factor of the products.

    Returns:
        ``(L_x, L_y)``, each ``(B, 1, n, n)``.
    """
    n = w.shape[-1]
    wh = _resolved(torch.fft.rfft2(w), n)
    u, v = _velocity_hat(wh, n)
    uw, vw = _products_hat([(u, wh), (v, wh)], n, pad)
    huw, hvw = _products_hat([(test * u, test * wh), (test * v, test * wh)], n, pad)
    return (torch.fft.irfft2(test * uw - huw, s=(n, n)), torch.fft.irfft2(test * vw - hvw, s=(n, n)))


# -- the laws -----------------------------------------------------------------------------------------------
class PhysicsClosure(Configurable, AbstractClosureLaw):
    """Base of the physics closures: a Dirac law at ``model(bar(w)) (+ R(bar(w)))``.

    The condition's ``fields`` hold the filtered vorticity ``(B, 1, n, n)`` (``n`` even); the
    latent is empty and :meth:`mean` is the value. Subclasses implement :meth:`subgrid_hat`.

    Args:
        filter: The system's filter, ``"gaussian"`` or ``"spectral"``.
        filter_width: Gaussian width (default ``2 / n``); also the model length ``Delta``.
        coarse_nonlinear: The coarse solver's nonlinear term, ``"two_thirds"`` or ``"exact"``.
        resolved_correction: Add the resolved-interaction correction ``R`` (module docstring).
        pad: Padding factor of the exact products (``>= 1.5``).
    """

    component_kind: ClassVar[str] = "closure"
    reparameterised: ClassVar[bool] = True

    def __init__(self, filter: str = "gaussian", filter_width: float | None = None,
                 coarse_nonlinear: str = "two_thirds", resolved_correction: bool = True, pad: float = 1.5) -> None:
        super().__init__()
        if filter not in FILTERS:
            raise ConfigError(format_error("filter", f"one of {FILTERS}", repr(filter)))
        if filter_width is not None and not (isinstance(filter_width, (int, float)) and filter_width > 0):
            raise ConfigError(format_error("filter_width", "a positive number (or None for 2 / n)",
                                           repr(filter_width)))
        if coarse_nonlinear not in COARSE_NONLINEAR:
            raise ConfigError(format_error("coarse_nonlinear", f"one of {COARSE_NONLINEAR}", repr(coarse_nonlinear)))
        if not (isinstance(pad, (int, float)) and pad >= 1.5):
            raise ConfigError(format_error("pad", "a padding factor >= 1.5 (the 3/2 rule)", repr(pad),
                                           "smaller grids alias the products into the resolved modes"))
        self.filter_kind, self.filter_width = filter, filter_width
        self.coarse_nonlinear, self.resolved_correction, self.pad = coarse_nonlinear, bool(resolved_correction), pad

    @classmethod
    def from_system(cls, system: Any, **options: Any) -> PhysicsClosure:
        """Build with the filter and coarse nonlinear term of a
        :class:`~stochclosure.systems.subgrid.NavierStokes2DSubgrid` (``options`` override)."""
        kw = {"filter": system.filter_kind, "filter_width": system.filter_width,
              "coarse_nonlinear": system.coarse_nonlinear}
        kw.update(options)
        return cls(**kw)

    # -- the model ---------------------------------------------------------------------------------------
    def delta(self, n: int) -> float:
        """Model length ``Delta``: the filter width, ``2 / n`` by default."""
        return 2.0 / n if self.filter_width is None else float(self.filter_width)

    def multiplier(self, n: int, dtype: torch.dtype, device: torch.device) -> Tensor:
        """The filter's Fourier multiplier ``G`` on ``n x n``."""
        return filter_multiplier(n, self.filter_kind, self.filter_width, dtype, device)

    @abc.abstractmethod
    def subgrid_hat(self, w_hat: Tensor, n: int) -> Tensor:
        """``rfft2`` of the modelled ``-div(tau)`` for resolved vorticity ``w_hat`` ``(B, 1, n, n//2+1)``."""

    def correction_hat(self, w_hat: Tensor, n: int) -> Tensor:
        """``rfft2`` of ``R = P_n N(w) - N_c(w)`` (zero for the exact coarse nonlinear term)."""
        if self.coarse_nonlinear == "exact":
            return torch.zeros_like(w_hat)
        g = spectral_grid(n, w_hat.real.dtype, w_hat.device)
        return nonlinear_exact_hat(w_hat, n, self.pad) - g.nonlinear_hat(w_hat)

    def closure(self, w: Tensor) -> Tensor:
        """The closure ``U`` ``(B, 1, n, n)`` of the filtered vorticity ``w`` ``(B, 1, n, n)``."""
        n = _check_vorticity(w)
        w_hat = _resolved(torch.fft.rfft2(w), n)
        out = self.subgrid_hat(w_hat, n)
        if self.resolved_correction:
            out = out + self.correction_hat(w_hat, n)
        return torch.fft.irfft2(_resolved(out, n), s=(n, n))

    # -- the closure-law interface ------------------------------------------------------------------------
    def latent_shape(self, cond: Conditioning, grid: tuple[int, ...]) -> tuple[int, ...]:
        """``()``: a Dirac law has no latent."""
        return ()

    def draw(self, cond: Conditioning, latent: Tensor | None, *, grid: tuple[int, ...] | None = None,
             generator: torch.Generator | None = None) -> Tensor:
        """The closure of ``cond.fields`` ``(B, 1, n, n)`` (``latent`` must be ``None`` or empty)."""
        if latent is not None and latent.numel() != 0:
            raise ShapeError(format_error("latent", "None (a physics closure has no latent)",
                                          f"shape {tuple(latent.shape)}"))
        return self.mean(cond, grid=grid)

    def mean(self, cond: Conditioning, *, grid: tuple[int, ...] | None = None) -> Tensor:
        """The closure value ``(B, 1, n, n)``."""
        w = _fields(cond, grid)
        return self.closure(w)

    def sample(self, cond: Conditioning, n: int = 1, *, generator: torch.Generator | None = None,
               grid: tuple[int, ...] | None = None) -> Tensor:
        """``n`` copies of the value, ``(n, B, 1, n_grid, n_grid)`` (computed once)."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ShapeError(format_error("n", "a positive integer (draws per condition)", repr(n)))
        u = self.mean(cond, grid=grid)
        return u.unsqueeze(0).expand(n, *u.shape).clone()


def _check_vorticity(w: Tensor) -> int:
    if not isinstance(w, Tensor) or w.dim() != 4 or w.shape[1] != 1 or w.shape[-1] != w.shape[-2]:
        raise ShapeError(format_error("cond.fields", "the filtered vorticity (B, 1, n, n)",
                                      f"shape {tuple(getattr(w, 'shape', ()))}"))
    n = int(w.shape[-1])
    if n < 4 or n % 2:
        raise ShapeError(format_error("cond.fields", "an even grid size n >= 4", f"n = {n}"))
    if w.dtype not in (torch.float32, torch.float64):
        raise DTypeError(format_error("cond.fields", "float32 or float64", str(w.dtype)))
    return n


def _fields(cond: Conditioning, grid: tuple[int, ...] | None) -> Tensor:
    if not isinstance(cond, Conditioning) or cond.fields is None:
        raise ShapeError(format_error("cond.fields", "the filtered vorticity (B, 1, n, n)", "no fields",
                                      "pass Conditioning(fields=w_bar)"))
    cond.validate()
    w = cond.fields
    _check_vorticity(w)
    if grid is not None and tuple(grid) != tuple(w.shape[-2:]):
        raise ShapeError(format_error("grid", f"the condition's grid {tuple(w.shape[-2:])}", repr(tuple(grid)),
                                      "a physics closure lives on the grid of its condition"))
    return w


class ResolvedCorrection(PhysicsClosure):
    """Only the resolved-interaction correction ``U = P_n N(bar(w)) - N_c(bar(w))``.

    The triads among resolved modes that the 2/3-rule coarse solver drops, computed exactly from
    ``bar(w)`` (zero for ``coarse_nonlinear="exact"``). Same arguments as :class:`PhysicsClosure`
    (``resolved_correction`` is always on).
    """

    def __init__(self, filter: str = "gaussian", filter_width: float | None = None,
                 coarse_nonlinear: str = "two_thirds", resolved_correction: bool = True, pad: float = 1.5) -> None:
        super().__init__(filter, filter_width, coarse_nonlinear, True, pad)

    def subgrid_hat(self, w_hat: Tensor, n: int) -> Tensor:
        """Zero: no subgrid-flux model."""
        return torch.zeros_like(w_hat)


class Smagorinsky(PhysicsClosure):
    """Smagorinsky eddy viscosity: ``-div(tau) = div(nu_t grad bar(w))``, ``nu_t = (c_s Delta_s)^2 |S|``.

    ``|S| = sqrt(2 S_ij S_ij) = 2 sqrt(S_11^2 + S_12^2)`` of the resolved velocity, evaluated on the
    coarse grid (Smagorinsky 1963; Lilly 1967). Plus ``R`` when ``resolved_correction``.

    The other arguments are those of :class:`PhysicsClosure`.

    Args:
        cs: Smagorinsky constant (``>= 0``).
        delta: Model length ``Delta_s`` (default ``1 / n``, the grid spacing, Lilly's convention).
    """

    def __init__(self, cs: float = 0.17, delta: float | None = None, filter: str = "gaussian",
                 filter_width: float | None = None, coarse_nonlinear: str = "two_thirds",
                 resolved_correction: bool = True, pad: float = 1.5) -> None:
        super().__init__(filter, filter_width, coarse_nonlinear, resolved_correction, pad)
        if not (isinstance(cs, (int, float)) and cs >= 0):
            raise ConfigError(format_error("cs", "a non-negative number", repr(cs)))
        if delta is not None and not (isinstance(delta, (int, float)) and delta > 0):
            raise ConfigError(format_error("delta", "a positive model length (or None for 1 / n)", repr(delta)))
        self.cs, self.smag_delta = float(cs), delta

    @classmethod
    def fit(cls, cond: Conditioning, u: Tensor, **options: Any) -> Smagorinsky:
        """Least-squares ``c_s^2`` (clipped at 0) of ``U`` (minus ``R`` when it is added) on training pairs.

        Args:
            cond: Training conditions, ``fields`` ``(B, 1, n, n)``.
            u: True closures like ``cond.fields``.
            **options: The other constructor arguments (``delta``, ``filter``, ...), not ``cs``.

        Returns:
            The fitted closure.
        """
        unit = cls(**{**options, "cs": 1.0, "resolved_correction": False})
        m = unit.mean(cond)
        if not isinstance(u, Tensor) or u.shape != m.shape:
            raise ShapeError(format_error("u", f"shape {tuple(m.shape)} (the closures of cond)",
                                          f"shape {tuple(getattr(u, 'shape', ()))}"))
        law = cls(**{**options, "cs": 1.0})
        target = u.to(m.dtype)
        if law.resolved_correction:
            target = target - ResolvedCorrection(law.filter_kind, law.filter_width, law.coarse_nonlinear,
                                                 True, law.pad).mean(cond)
        c2 = float((m * target).sum() / (m * m).sum().clamp_min(torch.finfo(m.dtype).tiny))
        return cls(**{**options, "cs": math.sqrt(max(c2, 0.0))})

    def subgrid_hat(self, w_hat: Tensor, n: int) -> Tensor:
        """``div(nu_t grad w)`` in spectral space."""
        w = torch.fft.irfft2(w_hat, s=(n, n))
        return torch.fft.rfft2(SmagorinskyClosure(self.cs, self.smag_delta)(w))


def _eddy_flux(w_hat: Tensor, n: int, delta: float) -> tuple[Tensor, Tensor]:
    """``m = Delta^2 |S| grad w`` on the grid, ``(B, 1, n, n)`` each (Smagorinsky flux for ``c_s = 1``)."""
    g = spectral_grid(n, w_hat.real.dtype, w_hat.device)
    psi = w_hat * g.inv_lam2
    s11, s12 = -g.lx * g.ly * psi, 0.5 * (g.lx**2 - g.ly**2) * psi
    s11p, s12p, wx, wy = torch.fft.irfft2(torch.stack((s11, s12, g.ilx * w_hat, g.ily * w_hat), -3),
                                          s=(n, n)).unbind(-3)
    nu = delta**2 * 2.0 * torch.sqrt(s11p**2 + s12p**2)
    return nu * wx, nu * wy


class DynamicSmagorinsky(PhysicsClosure):
    """Dynamic Smagorinsky: ``c_s^2`` from the Germano identity, least squares over the domain.

    With ``m(w, D) = D^2 |S(w)| grad w`` and the model ``tau = -C m(bar(w), Delta)``, the identity
    ``L = hat(bar(u) bar(w)) - hat(bar(u)) hat(bar(w)) = C M``, ``M = hat(m(bar(w), Delta)) - m(hat(bar(w)), a Delta)``
    gives ``C = <L . M> / <M . M>`` (Germano et al. 1991; Lilly 1992), averaged over the domain per
    batch member and clipped at 0. The test filter is Gaussian of width ``sqrt(a^2 - 1) Delta``, so
    grid and test filter together have width ``a Delta``; ``Delta`` is the filter width (``2 / n``).
    ``U = C div(m(bar(w), Delta))`` plus ``R`` when ``resolved_correction``.

    The other arguments are those of :class:`PhysicsClosure`.

    Args:
        test_ratio: ``a > 1``, test-to-grid filter width ratio (default 2).
    """

    def __init__(self, test_ratio: float = 2.0, filter: str = "gaussian", filter_width: float | None = None,
                 coarse_nonlinear: str = "two_thirds", resolved_correction: bool = True, pad: float = 1.5) -> None:
        super().__init__(filter, filter_width, coarse_nonlinear, resolved_correction, pad)
        if not (isinstance(test_ratio, (int, float)) and test_ratio > 1):
            raise ConfigError(format_error("test_ratio", "a number > 1 (test / grid filter width)", repr(test_ratio)))
        self.test_ratio = float(test_ratio)

    def coefficient(self, w: Tensor) -> Tensor:
        """``C = c_s^2`` per batch member, ``(B,)``, clipped at 0."""
        n = _check_vorticity(w)
        delta, a = self.delta(n), self.test_ratio
        test = filter_multiplier(n, "gaussian", math.sqrt(a * a - 1) * delta, w.dtype, w.device)
        w_hat = _resolved(torch.fft.rfft2(w), n)
        lx, ly = germano_leonard(w, test, self.pad)
        mx, my = _eddy_flux(w_hat, n, delta)
        tx, ty = _eddy_flux(test * w_hat, n, a * delta)
        hmx, hmy = torch.fft.irfft2(test * torch.fft.rfft2(torch.stack((mx, my))), s=(n, n)).unbind(0)
        big_mx, big_my = hmx - tx, hmy - ty
        num = (lx * big_mx + ly * big_my).flatten(1).mean(1)
        den = (big_mx**2 + big_my**2).flatten(1).mean(1)
        return (num / den.clamp_min(torch.finfo(w.dtype).tiny)).clamp_min(0.0)

    def subgrid_hat(self, w_hat: Tensor, n: int) -> Tensor:
        """``C div(m(w, Delta))`` in spectral space."""
        c = self.coefficient(torch.fft.irfft2(w_hat, s=(n, n)))
        mx, my = _eddy_flux(w_hat, n, self.delta(n))
        return c.view(-1, *([1] * (w_hat.dim() - 1))) * _divergence_hat(torch.fft.rfft2(mx), torch.fft.rfft2(my), n)


class GradientModel(PhysicsClosure):
    """Nonlinear-gradient (Clark) model: ``tau_i = (Delta^2 / 12) d_k bar(u)_i d_k bar(w)``.

    The leading term of ``bar(fg) - bar(f) bar(g)`` for the Gaussian filter
    ``G = exp(-|lambda|^2 Delta^2 / 24) = 1 + (Delta^2 / 24) Lap + ...`` (Clark, Ferziger & Reynolds
    1979; Leonard 1974): ``U = -(Delta^2 / 12) d_i(d_k u_i d_k w)`` plus ``R``; products exact (padded).
    For two modes ``w = a_1 cos(k_1.x) + a_2 cos(k_2.x)`` it is
    ``(Delta^2/12) a_1 a_2 (k_1.k_2)(k_1 x k_2)(1/|k_1|^2 - 1/|k_2|^2) cos(k_1.x) cos(k_2.x)``.

    The arguments are those of :class:`PhysicsClosure` (``Delta`` = ``filter_width``, default ``2 / n``).
    """

    def subgrid_hat(self, w_hat: Tensor, n: int) -> Tensor:
        """``-(Delta^2/12) div(grad u_i . grad w)`` in spectral space."""
        g = spectral_grid(n, w_hat.real.dtype, w_hat.device)
        u, v = _velocity_hat(w_hat, n)
        wx, wy = g.ilx * w_hat, g.ily * w_hat
        p = _products_hat([(g.ilx * u, wx), (g.ily * u, wy), (g.ilx * v, wx), (g.ily * v, wy)], n, self.pad)
        c = self.delta(n) ** 2 / 12.0
        return -c * _divergence_hat(p[0] + p[1], p[2] + p[3], n)


class Bardina(PhysicsClosure):
    """Scale-similarity (Bardina) model: ``-div(tau) = C_b (bar(N(bar(w))) - N(bar(bar(w))))``.

    ``tau = C_b (bar(bar(u) bar(w)) - bar(bar(u)) bar(bar(w)))`` (Bardina, Ferziger & Reynolds 1980),
    the filter applied once more to the resolved field; ``N`` exact (padded). The sharp spectral
    filter is the identity on resolved modes, so this model needs the Gaussian one (a spectral
    ``filter`` is refused; :meth:`from_system` then uses the Gaussian of width ``2 / n``).

    The other arguments are those of :class:`PhysicsClosure`.

    Args:
        cb: Similarity coefficient ``C_b`` (1 in the original model).
    """

    def __init__(self, cb: float = 1.0, filter: str = "gaussian", filter_width: float | None = None,
                 coarse_nonlinear: str = "two_thirds", resolved_correction: bool = True, pad: float = 1.5) -> None:
        super().__init__(filter, filter_width, coarse_nonlinear, resolved_correction, pad)
        if filter == "spectral":
            raise ConfigError(format_error("filter", "'gaussian' (the sharp filter is the identity on resolved modes)",
                                           "'spectral'", "use filter='gaussian' as the similarity filter"))
        if not (isinstance(cb, (int, float)) and math.isfinite(cb)):
            raise ConfigError(format_error("cb", "a finite number", repr(cb)))
        self.cb = float(cb)

    @classmethod
    def from_system(cls, system: Any, **options: Any) -> PhysicsClosure:
        """As :meth:`PhysicsClosure.from_system`; a sharp system filter gives the Gaussian of width ``2 / n``."""
        if system.filter_kind == "spectral":
            options = {"filter": "gaussian", "filter_width": None, **options}
        return super().from_system(system, **options)

    def subgrid_hat(self, w_hat: Tensor, n: int) -> Tensor:
        """``C_b (G N(w) - N(G w))`` in spectral space."""
        gm = self.multiplier(n, w_hat.real.dtype, w_hat.device)
        return self.cb * (gm * nonlinear_exact_hat(w_hat, n, self.pad) - nonlinear_exact_hat(gm * w_hat, n, self.pad))


class ADM(PhysicsClosure):
    """Approximate deconvolution: ``U = G P_n N(w*) - N_c(bar(w))``, ``w* = sum_{k=0}^{p} (I - G)^k bar(w)``.

    The van Cittert series (Stolz & Adams 1999) of order ``p`` inverts the filter on the resolved
    modes up to the remainder ``(1 - G)^{p+1}``: ``w* = (1 - (1 - G)^{p+1}) / G  bar(w)``; the
    nonlinear term of ``w*`` is computed exactly (padded), filtered back and the coarse solver's
    own term subtracted. With ``resolved_correction=False`` the exact ``P_n N(bar(w))`` is
    subtracted instead. For the sharp filter (``G = 1``) ``w* = bar(w)`` and ADM is ``R``.

    The other arguments are those of :class:`PhysicsClosure`.

    Args:
        order: ``p >= 0``.
    """

    def __init__(self, order: int = 5, filter: str = "gaussian", filter_width: float | None = None,
                 coarse_nonlinear: str = "two_thirds", resolved_correction: bool = True, pad: float = 1.5) -> None:
        super().__init__(filter, filter_width, coarse_nonlinear, resolved_correction, pad)
        if isinstance(order, bool) or not isinstance(order, int) or order < 0:
            raise ConfigError(format_error("order", "an integer >= 0 (van Cittert order)", repr(order)))
        self.order = order

    def deconvolve_hat(self, w_hat: Tensor, n: int) -> Tensor:
        """``rfft2`` of ``w* = sum_{k=0}^{p} (1 - G)^k bar(w)``."""
        r = 1.0 - self.multiplier(n, w_hat.real.dtype, w_hat.device)
        series = torch.zeros_like(r)
        term = torch.ones_like(r)
        for _ in range(self.order + 1):
            series = series + term
            term = term * r
        return series * w_hat

    def subgrid_hat(self, w_hat: Tensor, n: int) -> Tensor:
        """``G P_n N(w*) - P_n N(w)`` in spectral space."""
        gm = self.multiplier(n, w_hat.real.dtype, w_hat.device)
        return gm * nonlinear_exact_hat(self.deconvolve_hat(w_hat, n), n, self.pad) - nonlinear_exact_hat(
            w_hat, n, self.pad)
