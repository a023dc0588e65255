"""D4 symmetry augmentation: group laws, equivariance of the Navier–Stokes closures, sparse points."""

from __future__ import annotations

import pytest
import torch

from stochclosure import Conditioning
from stochclosure.data.augment import (
    D4_ORDER,
    D4Augment,
    d4_apply,
    d4_compose,
    d4_det,
    d4_inverse,
    d4_points,
)
from stochclosure.errors import ConfigError, ShapeError
from stochclosure.systems.spectral import spectral_grid
from stochclosure.systems.subgrid import NavierStokes2DSubgrid
from stochclosure.testing import assert_close


def _field(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(2, 1, n, n, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def test_the_eight_elements_are_distinct_and_form_a_group():
    probe = torch.arange(36.0).reshape(6, 6)
    images = {tuple(d4_apply(probe, e).flatten().tolist()) for e in range(D4_ORDER)}
    assert len(images) == D4_ORDER
    for a in range(D4_ORDER):
        assert d4_compose(a, d4_inverse(a)) == 0
        for b in range(D4_ORDER):
            assert d4_det(d4_compose(a, b)) == d4_det(a) * d4_det(b)


def test_field_and_point_maps_agree():
    """Sampling the transformed field at Q p gives the parity-signed value of the field at p."""
    n = 8
    w = _field(n)[0, 0]
    idx = torch.tensor([[0, 0], [1, 3], [5, 2], [7, 7], [4, 6]])
    pts = idx.double() / n
    for e in range(D4_ORDER):
        moved = torch.round(d4_points(pts, e) * n).long() % n
        g = d4_apply(w, e, parity=1)
        assert torch.equal(g[moved[:, 0], moved[:, 1]], d4_det(e) * w[idx[:, 0], idx[:, 1]])


@pytest.mark.parametrize("n", [16, 24])
def test_navier_stokes_nonlinear_term_is_equivariant_to_round_off(n):
    grid = spectral_grid(n)
    w = _field(n)

    def nonlinear(x):
        return torch.fft.irfft2(grid.nonlinear_hat(torch.fft.rfft2(x)), s=(n, n))

    base = nonlinear(w)
    for e in range(D4_ORDER):
        assert_close(nonlinear(d4_apply(w, e, parity=1)), d4_apply(base, e, parity=1), rtol=1e-12,
                     what=f"N(e.w) vs e.N(w), element {e}")
    # the parity matters: the tendency is a pseudoscalar, a reflection without the sign is not a symmetry
    wrong = d4_apply(base, 4, parity=0)
    assert float((nonlinear(d4_apply(w, 4, parity=1)) - wrong).abs().max()) > 0.5 * float(base.abs().max())


@pytest.mark.parametrize("kind", ["gaussian", "spectral"])
def test_subgrid_closure_is_equivariant_to_round_off(kind):
    system = NavierStokes2DSubgrid(n=16, n_fine=32, nu=1e-3, dt=1e-3, sigma=0.0, filter=kind)
    w = _field(32, seed=1)
    u = system.closure_term(w)
    for e in range(D4_ORDER):
        assert_close(system.closure_term(d4_apply(w, e, parity=1)), d4_apply(u, e, parity=1), rtol=1e-12,
                     what=f"U(e.w) vs e.U(w), element {e} ({kind} filter)")


def test_augment_moves_sparse_values_with_the_field():
    n, m = 16, 4
    w = _field(n, seed=2).float()
    lattice = torch.stack(torch.meshgrid(torch.arange(m) / m, torch.arange(m) / m, indexing="ij"), -1).reshape(-1, 2)
    idx = torch.round(lattice * n).long()
    values = w[:, :, idx[:, 0], idx[:, 1]]
    cond = Conditioning(fields=w, obs_values=values, obs_points=lattice)
    aug = D4Augment(target_parity=1, field_parity=1)
    for seed in range(4):
        u, c = aug(w.clone(), cond, torch.Generator().manual_seed(seed))
        assert torch.equal(u, c.fields)  # same element for target and condition of an item
        assert torch.equal(c.obs_values, c.fields[:, :, idx[:, 0], idx[:, 1]])  # still the field at the points


def test_augment_is_seeded_and_uses_several_elements():
    w = _field(8).float()
    aug = D4Augment()
    a, _ = aug(w, Conditioning(fields=w), torch.Generator().manual_seed(3))
    b, _ = aug(w, Conditioning(fields=w), torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    seen = {tuple(aug(w[:1], Conditioning(fields=w[:1]), torch.Generator().manual_seed(s))[0].flatten()[:5].tolist())
            for s in range(40)}
    assert len(seen) == D4_ORDER


def test_bad_inputs_are_typed_errors():
    with pytest.raises(ConfigError, match="element"):
        d4_apply(torch.zeros(4, 4), 8)
    with pytest.raises(ConfigError, match="parity"):
        D4Augment(target_parity=2)
    with pytest.raises(ShapeError, match="x"):
        d4_apply(torch.zeros(4, 5), 1)
    irregular = torch.tensor([[0.1, 0.2], [0.3, 0.7]])
    w = torch.zeros(1, 1, 8, 8)
    cond = Conditioning(fields=w, obs_values=torch.zeros(1, 1, 2), obs_points=irregular)
    with pytest.raises(ShapeError, match="obs_points"):
        D4Augment(elements=[1])(w, cond)
