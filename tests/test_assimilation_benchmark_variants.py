"""The assimilation benchmark's rule for promoting a policy variant of the diffusion closure to the test twin, and
the offline calibration scores of its draws."""

from __future__ import annotations

import torch
from benchmark_scripts import load_benchmark

from stochclosure.testing import assert_close


def _bench():
    return load_benchmark("assimilation.py", "assimilation_bench_variants")


def _val(rmse: float, se: float, divergences: int = 0) -> dict:
    return {"rmse": rmse, "rmse_se": se, "divergences": divergences}


def test_variant_promoted_by_validation_rmse_without_inflation():
    promoted = _bench().variant_promoted
    base = {"inflation": 1.0999999999999999, "validation": {"1.0": 0.34, "1.1": 0.26}, "validation_se": {"1.0": 0.016, "1.1": 0.01}}
    assert promoted({1.0: _val(0.25, 0.01)}, base)                     # below the current policy's 0.26
    assert promoted({1.0: _val(0.27, 0.01)}, base)                     # within one combined SE (0.014), less inflation
    assert not promoted({1.0: _val(0.30, 0.01)}, base)                 # 0.04 above: more than the noise
    assert not promoted({1.0: _val(0.25, 0.01, divergences=1)}, base)  # a diverged run never goes on
    at_one = {"inflation": 1.0, "validation": {"1.0": 0.26}, "validation_se": {"1.0": 0.01}}
    assert not promoted({1.0: _val(0.265, 0.01)}, at_one)             # no inflation to save: strictly below only
    assert promoted({1.0: _val(0.255, 0.01)}, at_one)


def test_calibration_scores_of_a_calibrated_and_an_underdispersed_ensemble():
    """Draws from the truth's own law score spread/error ~1; draws shrunk by 0.3 score ~0.3 (seeded)."""
    scores = _bench()._calibration_scores
    gen = torch.Generator().manual_seed(0)
    m, t = 32, 2000
    u = torch.randn(t, 1, 8, generator=gen, dtype=torch.float64)
    d = torch.randn(m, t, 1, 8, generator=gen, dtype=torch.float64)
    good = scores(d, u)
    # 16000 points: the ratio's sampling error is ~1 %; 5 % leaves room for the ensemble-mean estimate
    assert_close(torch.tensor(good["spread_error"]), torch.tensor(1.0), rtol=0.05, what="spread/error of a calibrated ensemble")
    assert_close(torch.tensor(good["spread_error_cycle"]), torch.tensor(1.0), rtol=0.08, what="spread/error over 5 steps (3200 sums)")
    shrunk = scores(0.3 * d, u)
    assert_close(torch.tensor(shrunk["spread_error"]), torch.tensor(0.3), rtol=0.05, what="spread/error at 0.3x")
    # white draws and a white truth: no memory either way (lag-1 correlations ~1/sqrt(16000) ~ 0.008)
    assert abs(good["lag1_truth"]) < 0.05 and abs(good["lag1_draws"]) < 0.05
