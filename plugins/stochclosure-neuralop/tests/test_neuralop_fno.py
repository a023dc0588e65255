"""Tests of the FNO score operator: contract, per-sample conditioning, resolution, preconditioning."""

from __future__ import annotations

import pytest
import torch
from stochclosure_neuralop import FNOScore, periodic_coordinates

import stochclosure as sc
from stochclosure.fft import spectral_resample
from stochclosure.scores.analytic import GaussianScore
from stochclosure.testing import assert_close, check_score_operator


def _randomised(op: FNOScore, seed: int = 0) -> FNOScore:
    """Give the (zero-initialised) FiLM layer random weights so the noise level matters."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        op.film.weight.copy_(0.1 * torch.randn(op.film.weight.shape, generator=gen))
        op.film.bias.copy_(0.1 * torch.randn(op.film.bias.shape, generator=gen))
    return op.eval()


def _band_limited(b: int, n: int, gen: torch.Generator, kmax: int = 4) -> torch.Tensor:
    """Random 2-D fields with wavenumbers |k_i| <= kmax, sampled on an n x n grid."""
    return spectral_resample(torch.randn(b, 1, 2 * kmax + 1, 2 * kmax + 1, generator=gen), (n, n))


def test_registered_and_spec_round_trip():
    op = sc.resolve("score_operator", {"type": "fno", "encoder": {"type": "field", "channels": 1}})
    assert isinstance(op, FNOScore)
    assert (op.width, op.modes, op.layers) == (20, 8, 4)  # REFERENCE §3 sizes by default
    spec = op.spec()
    assert spec["type"] == "fno"
    again = sc.resolve("score_operator", spec)
    again.load_state_dict(op.state_dict())
    gen = torch.Generator().manual_seed(0)
    x, t, cond = op.example_inputs(2, gen)
    with torch.no_grad():
        assert torch.equal(op.eval()(x, t, cond), again.eval()(x, t, cond))


@pytest.mark.parametrize("kw", [{}, {"spatial_dims": 1}, {"preconditioning": "noise"}, {"coords": "none"}])
def test_contract_suite(kw):
    op = FNOScore(encoder={"type": "field", "channels": 1}, width=8, modes=4, layers=2, embed_dim=16, **kw)
    check_score_operator(_randomised(op))


def test_example_passes_the_contract_suite():
    check_score_operator(FNOScore.example())


def test_per_sample_conditioning_is_real():
    """Each member's output depends on its own t and condition, and only on them."""
    op = _randomised(FNOScore(encoder={"type": "field", "channels": 1}, width=12, modes=6, layers=3))
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(4, 1, 32, 32, generator=gen)
    y = torch.randn(4, 1, 32, 32, generator=gen)
    t = torch.tensor([0.002, 0.05, 0.3, 0.95])
    with torch.no_grad():
        batch = op(x, t, sc.Conditioning(fields=y))
        for i in range(4):
            alone = op(x[i:i + 1], t[i:i + 1], sc.Conditioning(fields=y[i:i + 1]))
            assert_close(alone, batch[i:i + 1], rtol=1e-4, what=f"member {i} alone vs in the batch")
        # changing member 0's time and condition changes member 0 only
        t2, y2 = t.clone(), y.clone()
        t2[0], y2[0] = 0.6, torch.randn(1, 32, 32, generator=gen)
        other = op(x, t2, sc.Conditioning(fields=y2))
    assert float((other[0] - batch[0]).abs().max()) > 1e-3 * float(batch.abs().max())
    assert_close(other[1:], batch[1:], rtol=1e-4, what="members 1-3 after changing member 0")


def test_noise_level_embedding_changes_the_output_per_sample():
    op = _randomised(FNOScore(encoder=None, width=8, modes=4, layers=2))
    x = torch.randn(1, 1, 16, 16, generator=torch.Generator().manual_seed(2)).repeat(2, 1, 1, 1)
    with torch.no_grad():
        f = op.network(x, torch.log(torch.tensor([0.05, 5.0])), None)
    assert float((f[0] - f[1]).abs().max()) > 1e-3 * float(f.abs().max())


def test_resolution_invariance_on_band_limited_inputs():
    """Band-limited inputs at 32^2, 64^2, 128^2: outputs agree at the shared grid points.

    Spectral convolutions keep |k| < modes with a forward-normalised FFT and every other layer is
    pointwise, so the values at the coarse points agree to float32 round-off (tolerance 1e-5
    relative; measured ~3e-7).
    """
    op = _randomised(FNOScore(encoder={"type": "field", "channels": 1}))
    gen = torch.Generator().manual_seed(3)
    x, y = _band_limited(3, 32, gen), _band_limited(3, 32, gen)
    t = torch.tensor([0.01, 0.2, 0.9])
    with torch.no_grad():
        ref = op(x, t, sc.Conditioning(fields=y))
        for n in (64, 128):
            out = op(spectral_resample(x, (n, n)), t, sc.Conditioning(fields=spectral_resample(y, (n, n))))
            step = n // 32
            rel = float((out[..., ::step, ::step] - ref).norm() / ref.norm())
            assert rel < 1e-5, f"{n}^2 vs 32^2 at shared points: relative difference {rel:.2e}"


def test_edm_preconditioning_with_zero_network_is_the_gaussian_score():
    """With F = 0 the EDM denoiser is c_skip x, i.e. the exact score of N(0, data_std^2 I)."""
    for sde in ("ve_exp", "vp"):
        op = FNOScore(sde=sde, encoder=None, data_std=0.7, width=8, modes=4, layers=2)
        with torch.no_grad():
            op.projection.fcs[-1].weight.zero_()
            op.projection.fcs[-1].bias.zero_()
        exact = GaussianScore(sde, std=0.7)
        gen = torch.Generator().manual_seed(4)
        x = torch.randn(5, 1, 16, 16, generator=gen, dtype=torch.float64).float()
        t = op.sde.eps + (op.sde.T - op.sde.eps) * torch.rand(5, generator=gen)
        with torch.no_grad():
            assert_close(op(x, t), exact(x, t), rtol=1e-5, what=f"{sde}: zero network vs Gaussian score")


def test_loss_weighting_makes_the_regression_unit_weighted():
    """For F = 0 on N(0, d^2) data the weighted DSM loss equals E||F_target||^2 = 1 (EDM) / 1 (noise)."""
    gen = torch.Generator().manual_seed(5)
    x0 = torch.randn(512, 1, 16, 16, generator=gen)
    for pre in ("edm", "noise"):
        op = FNOScore(encoder=None, preconditioning=pre, width=8, modes=4, layers=2)
        with torch.no_grad():
            op.projection.fcs[-1].weight.zero_()
            op.projection.fcs[-1].bias.zero_()
            loss = sc.dsm_loss(op, op.sde, x0, weighting=op.loss_weighting, generator=gen)
        # EDM: F_target = (x0 - c_skip x~) / c_out has unit variance for unit-variance data;
        # noise: F_target = z. Monte Carlo over 131k values: 3 % tolerance.
        assert abs(float(loss) - 1.0) < 0.03, f"{pre}: weighted loss {float(loss):.3f} != 1"


def test_periodic_coordinates_exclude_the_end_point():
    c = periodic_coordinates((8,), dtype=torch.float64)
    assert_close(c[0], torch.sin(2 * torch.pi * torch.arange(8, dtype=torch.float64) / 8), rtol=1e-12, what="sin x")
    assert float((c[:, 0] - c[:, -1]).abs().max()) > 0.1  # x = 1 (== x = 0) is not a grid point


def test_errors_name_the_argument():
    with pytest.raises(sc.ConfigError, match="preconditioning"):
        FNOScore(preconditioning="x0")
    with pytest.raises(sc.ConfigError, match="width"):
        FNOScore(width=0)
    op = FNOScore(encoder={"type": "field", "channels": 1}, width=8, modes=4, layers=2)
    x, t = torch.randn(2, 1, 16, 16), torch.full((2,), 0.5)
    with pytest.raises(sc.ShapeError, match="'cond'"):
        op(x, t, None)
    with pytest.raises(sc.ShapeError, match="channels"):
        op(torch.randn(2, 3, 16, 16), t, sc.Conditioning(fields=torch.randn(2, 1, 16, 16)))
    with pytest.warns(sc.errors.ResolutionWarning, match="'x'.*at least 7 points per axis.*holds only"):
        out = op(torch.randn(2, 1, 4, 4), t, sc.Conditioning(fields=torch.randn(2, 1, 4, 4)))
    assert out.shape == (2, 1, 4, 4) and bool(torch.isfinite(out).all())  # it runs on the modes the grid holds
    with pytest.raises(sc.ShapeError, match="'t'"):
        op(x, torch.full((3,), 0.5), sc.Conditioning(fields=torch.randn(2, 1, 16, 16)))


def test_reference_grid_denoises_at_the_equivalent_noise_level():
    """On a 32² grid, modes held by the 16² reference grid carry noise variance sigma^2 / 1024 per
    (forward) Fourier coefficient, i.e. that of a 16² field at sigma / 2: the score must be the 16²
    denoiser at sigma / 2, resampled, minus the input, over sigma^2."""
    op = _randomised(FNOScore(sde="vp", encoder={"type": "field", "channels": 1}, width=8, modes=4, layers=2,
                              reference_grid=(16, 16)))
    gen = torch.Generator().manual_seed(6)
    x, y = _band_limited(2, 32, gen, kmax=3), _band_limited(2, 32, gen, kmax=3)
    t = torch.tensor([0.05, 0.4])
    alpha, sigma = op.sde.marginal_coefficients(t)
    s = sigma / alpha
    s_half = s / 2
    t_half = op.sde.t_from_log_snr(-torch.log(s_half))  # time at which sigma/alpha = s / 2
    a16, _ = op.sde.marginal_coefficients(t_half)
    x16, y16 = spectral_resample(x, (16, 16)), spectral_resample(y, (16, 16))
    with torch.no_grad():
        score32 = op(x, t, sc.Conditioning(fields=y))
        xs16 = x16 / alpha[:, None, None, None]  # the same scaled input, seen at 16^2
        score16 = op(xs16 * a16[:, None, None, None], t_half, sc.Conditioning(fields=y16))
    den16 = xs16 + (s_half**2 * a16)[:, None, None, None] * score16
    want = (spectral_resample(den16, (32, 32)) - x / alpha[:, None, None, None]) / (alpha * s**2)[:, None, None, None]
    assert_close(score32, want, rtol=1e-3, what="32^2 score vs resampled 16^2 denoiser")
    with pytest.raises(sc.ConfigError, match="reference_grid"):
        FNOScore(reference_grid=(8, 8))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_bmm_contraction_matches_neuraloperator_einsum(dtype):
    """The batched-matmul mode contraction gives neuraloperator's einsum result, values and gradients."""
    from neuralop.layers.spectral_convolution import _contract_dense
    from stochclosure_neuralop import contract_dense_bmm

    gen = torch.Generator().manual_seed(0)
    cdt = torch.complex64 if dtype == torch.float32 else torch.complex128
    x = torch.randn(3, 5, 7, 4, dtype=cdt, generator=gen)
    w = torch.randn(5, 6, 7, 4, dtype=cdt, generator=gen)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    assert_close(torch.view_as_real(contract_dense_bmm(x, w)), torch.view_as_real(_contract_dense(x, w)), rtol=tol,
                 what="bmm vs einsum contraction")

    ops = []
    for contraction in ("einsum", "bmm"):
        torch.manual_seed(1)
        ops.append(_randomised(FNOScore("vp", encoder={"type": "field", "channels": 1}, width=8, modes=4, layers=2,
                                        contraction=contraction)))
    ops[1].load_state_dict(ops[0].state_dict())
    assert ops[1].spec()["contraction"] == "bmm" and ops[0].spec()["contraction"] == "einsum"
    xs, t, cond = ops[0].example_inputs(4, torch.Generator().manual_seed(2))
    tol = 1e-5  # the modules run in float32
    outs, grads = [], []
    for op in ops:
        out = op(xs, t, cond)
        (g,) = torch.autograd.grad(out.square().sum(), op.blocks.convs[0].weight.tensor)
        outs.append(out.detach())
        grads.append(g)
    assert_close(outs[1], outs[0], rtol=tol, what="bmm vs einsum FNO output")
    assert_close(torch.view_as_real(grads[1]), torch.view_as_real(grads[0]), rtol=10 * tol, what="weight gradient")


def test_contraction_option_validated():
    with pytest.raises(sc.ConfigError, match="contraction"):
        FNOScore("vp", contraction="fast")
