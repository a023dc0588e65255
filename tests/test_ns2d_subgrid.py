"""The subgrid (LES) closure of 2-D Navier–Stokes and the Smagorinsky baseline."""

from __future__ import annotations

import math

import pytest
import torch

from stochclosure.errors import ConfigError
from stochclosure.systems.subgrid import NavierStokes2DSubgrid, SmagorinskyClosure, filter_field
from stochclosure.testing import assert_close


def _fine_state(les: NavierStokes2DSubgrid, rms: float = 2.0) -> torch.Tensor:
    w = les.fine_initial_state(2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return w * (rms / w.pow(2).mean().sqrt())


@pytest.mark.parametrize("kind", ["spectral", "gaussian"])
def test_coarse_step_with_true_subgrid_closure_reproduces_the_filtered_fine_step(kind):
    # Filter and Crank-Nicolson factors are Fourier multipliers, so filter(fine step) equals the
    # coarse step fed U = filter(N(w)) - N_c(filter(w)) and the filtered noise, to round-off.
    les = NavierStokes2DSubgrid(n=16, n_fine=64, filter=kind)
    w = _fine_state(les)
    gen = torch.Generator().manual_seed(1)
    errs, errs_none = [], []
    for _ in range(20):
        nxt, clo = les.full_step_with_closures(w, generator=gen)
        target = les.filter(nxt)
        wb = les.filter(w)
        scale = float(target.abs().max())  # ~5.5: errors below are fractions of it
        errs.append(float((les.step(wb, clo["U"], noise=clo["noise"]) - target).abs().max()) / scale)
        errs_none.append(float((les.step(wb, None, noise=clo["noise"]) - target).abs().max()) / scale)
        w = nxt
    assert max(errs) < 2e-14, max(errs)
    assert min(errs_none) > 2e-9, min(errs_none)


def test_gaussian_filter_matches_its_multiplier():
    # exp(-|lambda|^2 Delta^2 / 24) on one Fourier mode, coarse-grained exactly.
    n, big = 16, 64
    x = torch.arange(big, dtype=torch.float64) / big
    w = torch.sin(2 * torch.pi * 3 * x)[:, None].expand(big, big)[None, None]
    out = filter_field(w, n, "gaussian", width=0.1)
    lam2 = (2 * torch.pi * 3) ** 2
    expect = math.exp(-lam2 * 0.01 / 24) * w[..., ::4, ::4]
    assert_close(out, expect, rtol=1e-13, what="Gaussian filter of one mode")


def test_smagorinsky_is_dissipative_and_fits_the_subgrid_closure():
    # The eddy viscosity removes enstrophy (<w, U_smag> < 0); the least-squares constant c_s is
    # positive and the fitted closure has a smaller error than no closure at all.
    les = NavierStokes2DSubgrid(n=16, n_fine=64)
    w = _fine_state(les, rms=3.0)
    for _ in range(50):
        w = les.full_step(w, generator=torch.Generator().manual_seed(2))
    wb, u = les.filter(w), les.closure_term(w)
    smag = SmagorinskyClosure(cs=0.17)
    assert float((wb * smag(wb)).sum()) < 0
    fitted = SmagorinskyClosure.fit(wb, u)
    assert fitted.cs > 0
    assert float((fitted(wb) - u).pow(2).mean()) < float(u.pow(2).mean())
    with pytest.raises(ConfigError, match="cs"):
        SmagorinskyClosure(cs=-1.0)


def test_subgrid_errors():
    with pytest.raises(ConfigError, match="filter"):
        NavierStokes2DSubgrid(filter="box")
    with pytest.raises(ConfigError, match="'n'"):
        NavierStokes2DSubgrid(n=512, n_fine=256)
