"""Training a residual law ``U = physics(y) + r`` by its remainder's loss of ``U - physics(y)``.

The learning test draws ``U = ADM(y) + 2 y + 1 + s(y) eps`` on smooth 16^2 fields: the residual
law must recover the remainder's mean ``2 y + 1`` (R^2 > 0.99) and its heteroscedastic std
``s(y) = 0.2 + 0.5 |y|`` (mean relative error < 0.25), the tolerances of the plain Gaussian law's
test (measured here: R^2 0.9996, std error 0.14).
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

import stochclosure as sc
from stochclosure.closures import ADM, GaussianClosure, ResidualLaw
from stochclosure.data import TensorClosureDataset
from stochclosure.testing import assert_close, heteroscedastic_pairs
from stochclosure.training import Trainer

pytest.importorskip("stochclosure_neuralop")

BACKBONE = {"type": "fno", "sde": "vp", "encoder": {"type": "field"}, "width": 16, "modes": 4, "layers": 2}


def make(n: int, seed: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(y, U, remainder mean, remainder std)``, each ``(n, 1, 16, 16)``: ``U = ADM(y) + r``, ``r`` the known law."""
    y, r, mean, s = heteroscedastic_pairs(n, seed)
    return y, ADM(order=2).mean(sc.Conditioning(fields=y)) + r, mean, s


def test_residual_loss_is_the_remainders_loss_of_the_residual():
    y, u, _, _ = make(4, seed=0)
    cond = sc.Conditioning(fields=y)
    torch.manual_seed(0)
    law = ResidualLaw(ADM(order=2), GaussianClosure(BACKBONE, loss="crps"))
    mean, std = law.fit_normalisation(cond, u)
    r = u - ADM(order=2).mean(cond)
    assert_close(mean, r.mean().reshape(1), rtol=1e-5, what="remainder normalisation mean")
    assert_close(std, r.std(unbiased=False).reshape(1), rtol=1e-5, what="remainder normalisation std")
    assert_close(law.loss(cond, u), law.residual.loss(cond, r), rtol=1e-6, what="residual law loss")
    assert law.noise == "white"


@pytest.mark.slow
def test_trainer_fits_a_residual_gaussian_law_and_its_coloured_spectrum():
    y, u, _, _ = make(512, seed=0)
    torch.manual_seed(0)
    law = ResidualLaw(ADM(order=2), GaussianClosure(BACKBONE, loss="crps", noise="coloured", spectrum_bins=12))
    law.fit_normalisation(sc.Conditioning(fields=y), u)
    Trainer(law, TensorClosureDataset(u, fields=y), batch_size=16, max_steps=300, lr=3e-3, warmup_steps=10,
            ema_rel_std=0.05, val_every=300, progress=False, normalise_targets=False).fit()
    assert not bool((law.residual.spectrum == 1).all()), "the Trainer fits the remainder's spectrum at the end"
    yt, ut, mt, st = make(64, seed=1)
    cond = sc.Conditioning(fields=yt)
    with torch.no_grad():
        mu = law.residual.mean(cond)
        sd = law.residual.std(cond)
        full = law.mean(cond)
    r2 = 1 - float(((mu - mt) ** 2).sum() / ((mt - mt.mean()) ** 2).sum())
    std_err = float(((sd - st).abs() / st).mean())
    print(f"R2 {r2:.4f}, std relative error {std_err:.3f}")
    assert r2 > 0.99, f"remainder mean R^2 {r2:.4f}"
    assert std_err < 0.25, f"remainder std: mean relative error {std_err:.3f}"
    assert_close(full, ADM(order=2).mean(cond) + mu, rtol=1e-5, what="the law's mean is physics + remainder mean")
