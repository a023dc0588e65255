"""The exact (3/2-rule) coarse nonlinear term and the true subgrid closure of the sharp filter."""

from __future__ import annotations

import pytest
import torch

from stochclosure.errors import ConfigError
from stochclosure.systems.spectral import exact_nonlinear_hat, resize_hat, spectral_grid
from stochclosure.systems.subgrid import NavierStokes2DSubgrid, filter_field
from stochclosure.testing import assert_close


def _band_limited(n_fine: int, kmax: int, seed: int = 0) -> torch.Tensor:
    """A random fine field ``(2, 1, n_fine, n_fine)`` with modes ``|k_x|, |k_y| <= kmax`` only."""
    w = torch.randn(2, 1, n_fine, n_fine, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    return _lift(filter_field(w, 2 * kmax + 2), n_fine)


def _lift(w: torch.Tensor, n_fine: int) -> torch.Tensor:
    n = w.shape[-1]
    return torch.fft.irfft2(resize_hat(torch.fft.rfft2(w), n, n_fine), s=(n_fine, n_fine))


@pytest.mark.parametrize("n", [8, 16, 24])
def test_exact_nonlinear_term_equals_the_projection_computed_on_a_much_finer_grid(n):
    w = _band_limited(4 * n, n // 2 - 1)[..., ::4, ::4]  # exactly representable on n x n
    exact = torch.fft.irfft2(exact_nonlinear_hat(torch.fft.rfft2(w), n), s=(n, n))
    fine = _lift(w, 4 * n)  # 4n points: the full product is alias-free there
    nf = torch.fft.irfft2(spectral_grid(4 * n).nonlinear_hat(torch.fft.rfft2(fine)), s=(4 * n, 4 * n))
    assert_close(exact, filter_field(nf, n), rtol=1e-12, what="3/2-rule N vs the projected full product")
    two_thirds = torch.fft.irfft2(spectral_grid(n).nonlinear_hat(torch.fft.rfft2(w)), s=(n, n))
    assert float((two_thirds - exact).abs().max()) > 1e-3 * float(exact.abs().max())  # the 2/3 rule drops triads


def test_sharp_filter_exact_closure_vanishes_without_subgrid_modes_and_not_otherwise():
    sys_ = NavierStokes2DSubgrid(n=16, n_fine=64, nu=1e-3, dt=1e-3, sigma=0.0, filter="spectral",
                                 coarse_nonlinear="exact")
    resolved = _band_limited(64, 7, seed=1)  # only modes the 16^2 grid keeps
    assert float(sys_.closure_term(resolved).abs().max()) < 1e-12 * float(resolved.abs().max())
    full = _band_limited(64, 20, seed=2)
    assert float(sys_.closure_term(full).abs().max()) > 1e-3
    # the 2/3-rule coarse solver's closure also holds resolved interactions: nonzero for the same field
    default = NavierStokes2DSubgrid(n=16, n_fine=64, nu=1e-3, dt=1e-3, sigma=0.0, filter="spectral")
    assert float(default.closure_term(resolved).abs().max()) > 1e-3


@pytest.mark.parametrize("kind", ["spectral", "gaussian"])
def test_exact_coarse_step_fed_the_true_closure_reproduces_the_filtered_fine_step(kind):
    sys_ = NavierStokes2DSubgrid(n=16, n_fine=64, nu=1e-3, dt=1e-3, sigma=0.0, filter=kind, coarse_nonlinear="exact")
    w = _band_limited(64, 25, seed=3)
    coarse = sys_.step(sys_.filter(w), sys_.closure_term(w))
    assert_close(coarse, sys_.filter(sys_.full_step(w)), rtol=1e-10, what="coarse step + U vs filtered fine step")


def test_unknown_coarse_nonlinear_is_a_config_error():
    with pytest.raises(ConfigError, match="coarse_nonlinear"):
        NavierStokes2DSubgrid(n=16, n_fine=32, coarse_nonlinear="pad")
    assert NavierStokes2DSubgrid(n=16, n_fine=32, coarse_nonlinear="exact").spec()["coarse_nonlinear"] == "exact"
