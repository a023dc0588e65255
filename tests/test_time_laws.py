"""Laws of the training noise levels: uniform in t, log-normal in sigma_t / alpha_t (EDM)."""

from __future__ import annotations

import math

import pytest
import torch
from scipy import stats

import stochclosure as sc
from stochclosure.training.losses import check_time_law, dsm_loss, sample_times

LAW = {"type": "lognormal", "p_mean": -1.2, "p_std": 1.2}


@pytest.mark.parametrize("sde", ["vp", "ve", "subvp"])
def test_lognormal_law_gives_lognormal_noise_to_signal_ratios(sde):
    """KS test of ln(sigma/alpha) against the truncated normal it should follow (fixed seed, n = 4000)."""
    sde = sc.resolve("sde", sde)
    t = sample_times(sde, 4000, law=LAW, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert bool(((t >= sde.eps) & (t <= sde.T)).all())
    log_s = -sde.log_snr(t).numpy()
    a, b = (-sde.log_snr(torch.tensor([sde.eps, sde.T], dtype=torch.float64))).tolist()
    law = stats.truncnorm((a - LAW["p_mean"]) / LAW["p_std"], (b - LAW["p_mean"]) / LAW["p_std"],
                          loc=LAW["p_mean"], scale=LAW["p_std"])
    assert stats.kstest(log_s, law.cdf).pvalue > 1e-3


def test_the_lognormal_law_puts_far_less_training_at_large_noise_than_uniform_t_under_vp():
    """Under VP, uniform t spends ~43 % of training at sigma/alpha > 5; the EDM law ~9 %."""
    sde = sc.resolve("sde", "vp")
    g = torch.Generator().manual_seed(1)
    frac = {}
    for law in ("uniform", LAW):
        t = sample_times(sde, 20000, law=law, generator=g, dtype=torch.float64)
        frac[str(law)] = float((torch.exp(-sde.log_snr(t)) > 5).double().mean())
    assert frac["uniform"] > 0.35
    edm = 1 - stats.norm.cdf((math.log(5) - LAW["p_mean"]) / LAW["p_std"])
    assert abs(frac[str(LAW)] - edm) < 4 * math.sqrt(edm * (1 - edm) / 20000) + 0.01  # truncation shifts it slightly


def test_laws_consume_one_number_per_item_so_streams_do_not_depend_on_the_law():
    sde = sc.resolve("sde", "vp")
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    sample_times(sde, 7, law="uniform", generator=g1)
    sample_times(sde, 7, law=LAW, generator=g2)
    assert torch.equal(torch.rand(3, generator=g1), torch.rand(3, generator=g2))


def test_dsm_loss_takes_the_time_law():
    sde = sc.resolve("sde", "vp")
    score = sc.resolve("score_operator", {"type": "gaussian", "sde": "vp", "std": 1.0})
    x0 = torch.randn(64, 1, 4, generator=torch.Generator().manual_seed(2))
    loss = dsm_loss(score, sde, x0, time_law=LAW, generator=torch.Generator().manual_seed(3))
    assert math.isfinite(float(loss))


@pytest.mark.parametrize("bad, key", [("edm", "time_law"), ({"type": "lognormal", "p_std": 0}, "p_std"),
                                      ({"type": "lognormal", "p_mean": float("nan")}, "p_mean"),
                                      ({"type": "lognormal", "mean": 1}, "time_law.mean"),
                                      ({"type": "uniform", "p_std": 1}, "time_law")])
def test_bad_time_laws_are_config_errors(bad, key):
    with pytest.raises(sc.ConfigError, match=key):
        check_time_law(bad)
