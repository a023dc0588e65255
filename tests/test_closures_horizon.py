"""``benchmarks/closures_horizon.py``: the spread-scaled law and the calibration rule of the long-horizon study."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from benchmark_scripts import load_benchmark

import stochclosure as sc
from stochclosure.closures.learned import GaussianClosure
from stochclosure.testing import assert_close

pytest.importorskip("stochclosure_neuralop")

SMALL = {"type": "fno", "sde": "vp", "encoder": {"type": "field"}, "width": 8, "modes": 4, "layers": 2,
         "embed_dim": 16}


def _module():
    return load_benchmark("closures_horizon.py", "closures_horizon_under_test")


def test_latent_scaled_gaussian_law_scales_the_spread_and_keeps_the_mean():
    mod = _module()
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    gauss = GaussianClosure(SMALL, noise="coloured", spectrum_bins=8).eval()
    y = torch.randn(3, 1, 16, 16, generator=g)
    cond = sc.Conditioning(fields=y)
    with torch.no_grad():
        gauss.fit_spectrum(cond, torch.randn(3, 1, 16, 16, generator=g).cumsum(-1))  # a red spectrum: coloured draws
    law = SimpleNamespace(physics=object(), residual=gauss, nfe_per_draw=1.0)
    scaled = mod.LatentScaled(law, 1.7)
    assert scaled.physics is law.physics and scaled.nfe_per_draw == 1.0
    z = torch.randn(3, *scaled.residual.latent_shape(cond, (16, 16)), generator=g)
    with torch.no_grad():
        mean, base, got = gauss.mean(cond), gauss.draw(cond, z), scaled.residual.draw(cond, z, grid=(16, 16))
    assert_close(got - mean, 1.7 * (base - mean), rtol=1e-5, what="spread scaled by alpha")
    assert float((base - mean).abs().max()) > 1e-3  # the law is not a Dirac: the check can fail
    with torch.no_grad():  # the same law as the library's post-hoc spread factor
        assert_close(got, gauss.set_spread(1.7).draw(cond, z), rtol=1e-5, what="LatentScaled vs set_spread")


def test_misfit_is_the_worst_log_spread_skill_at_the_chosen_times():
    mod = _module()
    run = {"scores": [{"spread_skill": [v, 0.0]} for v in (0.5, 0.8, 1.25)]}
    times = [0.1, 0.24, 0.5]
    assert abs(mod._misfit(run, times, [0.24, 0.5]) - max(abs(torch.tensor(0.8).log()), torch.tensor(1.25).log())) < 1e-6
    assert abs(mod._misfit(run, times, [0.1]) - float(-torch.tensor(0.5).log())) < 1e-6
