"""Sparse, composite and normalised conditioning encoders: accuracy, resolution consistency, periodicity."""

from __future__ import annotations

import math

import pytest
import torch

import stochclosure as sc
from stochclosure.encoders import (
    CompositeEncoder,
    NormalizedEncoder,
    SparseInterpEncoder,
    SparseSmoothEncoder,
    grid_points,
    sparse_from_grid,
)
from stochclosure.testing import assert_close, check_encoder, registered_examples

LATTICE = grid_points((16, 16))  # the research setting: a 16 x 16 lattice of fixed points


def band_limited(p: torch.Tensor) -> torch.Tensor:
    """Smooth periodic field with wavenumbers |k_i| <= 3."""
    x, y = p[..., 0], p[..., 1]
    return torch.sin(2 * math.pi * x) + 0.5 * torch.cos(2 * math.pi * (3 * x - 2 * y))


def analytic(p: torch.Tensor) -> torch.Tensor:
    """Smooth periodic field with an infinite (exponentially decaying) spectrum."""
    x, y = p[..., 0], p[..., 1]
    return torch.exp(torch.sin(2 * math.pi * x)) * torch.cos(2 * math.pi * (x + 2 * y))


def observe(fn, points=LATTICE) -> sc.Conditioning:
    return sc.Conditioning(obs_values=fn(points)[None, None].float(), obs_points=points.float())


def truth(fn, n: int) -> torch.Tensor:
    return fn(grid_points((n, n))).reshape(n, n)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


@pytest.mark.parametrize("n", [32, 64, 128])
def test_interpolation_recovers_smooth_fields(n):
    """Trigonometric interpolation from 16x16 points: exact (to float32) for |k| <= 7, and for an
    analytic field only the spectral tail beyond k = 7 is lost (measured 1e-6; tolerance 1e-5)."""
    enc = SparseInterpEncoder()
    assert rel(enc(observe(band_limited), (n, n))[0, 0], truth(band_limited, n)) < 1e-6
    assert rel(enc(observe(analytic), (n, n))[0, 0], truth(analytic, n)) < 1e-5


@pytest.mark.parametrize("n", [32, 64, 128])
def test_smoothing_recovers_smooth_fields_to_its_bias(n):
    """Masked normalised Gaussian smoothing (std 0.4 lattice spacings): relative L2 error about
    9 % (the kernel's bias on wavenumbers up to 3); tolerance 12 %."""
    enc = SparseSmoothEncoder()
    for fn in (band_limited, analytic):
        err = rel(enc(observe(fn), (n, n))[0, 0], truth(fn, n))
        assert err < 0.12, f"{fn.__name__} at {n}^2: relative error {err:.3f}"


@pytest.mark.parametrize("enc", [SparseInterpEncoder(), SparseSmoothEncoder(density=True)])
def test_same_points_same_encoding_at_every_resolution(enc):
    """Both encoders sample one continuous function: finer grids agree at the shared points."""
    cond = observe(analytic)
    ref = enc(cond, (32, 32))
    for n in (64, 128):
        step = n // 32
        assert_close(enc(cond, (n, n))[..., ::step, ::step], ref, rtol=1e-5, what=f"{n}^2 vs 32^2 at shared points")


@pytest.mark.parametrize("enc", [SparseInterpEncoder(), SparseSmoothEncoder()])
def test_edges_are_periodic(enc):
    """Translating the field by a quarter period (wrapping points across the edge) translates
    the encoding: no special edge treatment, unlike bicubic or box-filter encodings."""
    shift = torch.tensor([0.25, 0.0], dtype=torch.float64)
    moved = torch.remainder(LATTICE + shift, 1.0)
    out = enc(observe(analytic), (64, 64))
    out_moved = enc(sc.Conditioning(obs_values=analytic(LATTICE)[None, None].float(), obs_points=moved.float()),
                    (64, 64))
    assert_close(out_moved, torch.roll(out, 16, dims=-2), rtol=1e-4, what="encoding of the translated points")
    # the jump across the edge is like any other neighbour difference
    jump = float((out[..., 0, :] - out[..., -1, :]).abs().max())
    inner = float((out[..., 1:, :] - out[..., :-1, :]).abs().max())
    assert jump <= inner * 1.01


def test_scattered_points():
    """Random (non-lattice) points: smoothing error grows with the gaps (measured 17 %, bound 20 %);
    the least-squares
    trigonometric fit with fewer modes (|k| <= 4) recovers a |k| <= 3 field to < 1 %."""
    pts = torch.rand(400, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    cond = observe(band_limited, pts)
    assert rel(SparseSmoothEncoder()(cond, (64, 64))[0, 0], truth(band_limited, 64)) < 0.20
    assert rel(SparseInterpEncoder(modes=4)(cond, (64, 64))[0, 0], truth(band_limited, 64)) < 0.01


def test_one_dimensional_rings():
    pts = (torch.arange(16, dtype=torch.float64) / 16)[:, None]
    fn = lambda p: torch.sin(2 * math.pi * p[..., 0]) + 0.3 * torch.cos(6 * math.pi * p[..., 0])  # noqa: E731
    cond = sc.Conditioning(obs_values=fn(pts)[None, None].float(), obs_points=pts.float())
    x = (torch.arange(100, dtype=torch.float64) / 100)[:, None]
    assert rel(SparseInterpEncoder()(cond, (100,))[0, 0], fn(x)) < 1e-6
    assert rel(SparseSmoothEncoder()(cond, (100,))[0, 0], fn(x)) < 0.12


def test_sparse_from_grid_mask_round_trip():
    field = truth(analytic, 64)[None, None].float()
    mask = torch.zeros(64, 64, dtype=torch.bool)
    mask[::4, ::4] = True  # 6.25 % of the points, as in the research setting
    values, points = sparse_from_grid(field, mask)
    assert values.shape == (1, 1, 256) and points.shape == (256, 2)
    out = SparseInterpEncoder()(sc.Conditioning(obs_values=values, obs_points=points), (64, 64))
    assert_close(out[..., ::4, ::4], field[..., ::4, ::4], rtol=1e-4, what="interpolant at the observed points")
    with pytest.raises(sc.ShapeError, match="mask"):
        sparse_from_grid(field, mask[:32])


def test_composite_stacks_in_order_and_normalized_standardises():
    y = torch.randn(3, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    cond = sc.Conditioning(fields=y, obs_values=analytic(LATTICE)[None, None].float().expand(3, 1, -1),
                           obs_points=LATTICE.float())
    enc = sc.resolve("encoder", {"type": "composite", "encoders": ["field", "sparse_interp",
                                                                   {"type": "sparse_smooth", "density": True}]})
    out = enc(cond, (32, 32))
    assert enc.out_channels == 4 and out.shape == (3, 4, 32, 32)
    assert_close(out[:, :1], y, rtol=1e-6, what="field channel")
    assert_close(out[:, 1:2], SparseInterpEncoder()(cond, (32, 32)), rtol=1e-6, what="sparse_interp channel")
    norm = NormalizedEncoder.fit(enc, [cond], (32, 32))
    z = norm(cond, (32, 32)).double()
    assert float(z.mean(dim=(0, 2, 3)).abs().max()) <= 3e-6 * float(z.abs().max())  # |z| <= ~3.9: as 1e-5
    std = z.std(dim=(0, 2, 3), unbiased=False)
    assert_close(std, torch.ones(4, dtype=torch.float64), rtol=1e-4, what="standardised std")
    rebuilt = sc.resolve("encoder", norm.spec())
    assert_close(rebuilt(cond, (32, 32)), norm(cond, (32, 32)), rtol=1e-6, what="encoder rebuilt from its spec")


def test_registered_encoders_pass_the_contract_suite():
    names = []
    for name, enc in registered_examples("encoder"):
        check_encoder(enc)
        names.append(name)
    assert {"field", "sparse_interp", "sparse_smooth", "composite", "normalized"} <= set(names)


def test_errors_name_the_argument():
    y = sc.Conditioning(fields=torch.zeros(1, 1, 8, 8))
    with pytest.raises(sc.ShapeError, match="cond.obs_values"):
        SparseInterpEncoder()(y, (8, 8))
    with pytest.raises(sc.ShapeError, match="channels"):
        SparseSmoothEncoder(channels=2)(observe(analytic), (8, 8))
    with pytest.raises(sc.ShapeError, match="'grid'"):
        SparseSmoothEncoder()(observe(analytic), (8,))
    with pytest.raises(sc.ConfigError, match="length"):
        SparseSmoothEncoder(length=0.5)
    with pytest.raises(sc.ConfigError, match="encoders"):
        CompositeEncoder([])
    with pytest.raises(sc.ShapeError, match="mean/std"):
        NormalizedEncoder("field", mean=[0.0, 1.0])


def test_history_window_with_sparse_measurements():
    """Coarse state + its last k = 2 states + sparse values, stacked on a finer grid."""
    g = torch.Generator().manual_seed(2)
    y = torch.randn(2, 1, 16, 16, generator=g)
    hist = torch.randn(2, 3, 1, 16, 16, generator=g)
    cond = sc.Conditioning(fields=y, history=hist, obs_values=analytic(LATTICE)[None, None].float().expand(2, 1, -1),
                           obs_points=LATTICE.float())
    enc = CompositeEncoder([{"type": "field", "history": 2}, "sparse_interp"])
    out = enc(cond, (32, 32))
    assert out.shape == (2, 4, 32, 32)
    # channel order: current state, the last two history states (oldest first), the sparse field
    assert_close(out[:, :1], sc.fft.spectral_resample(y, (32, 32)), rtol=1e-6, what="current state")
    assert_close(out[:, 1:3], sc.fft.spectral_resample(hist[:, 1:, 0], (32, 32)), rtol=1e-6, what="history")
    assert_close(out[:, 3:], SparseInterpEncoder()(cond, (32, 32)), rtol=1e-6, what="sparse field")
