"""BrownianNoise's torch-only dyadic Brownian tree: the law of its increments and what the path depends on."""

from __future__ import annotations

import math

import torch

from stochclosure.samplers import BrownianNoise
from stochclosure.testing import assert_close


def test_increments_have_the_brownian_variance_and_are_independent():
    """Var[W(t) - W(s)] = t - s for disjoint intervals, and the two increments are uncorrelated.

    4000 members x 8 values = 32000 draws per interval: the sample variance's relative standard
    error is sqrt(2 / 32000) = 0.8%, so 5% is over six standard errors; the correlation of two
    independent increments has standard error 1 / sqrt(32000) = 0.0056, and 0.03 is over five.
    """
    noise = BrownianNoise(seed=11, t_max=1.0)
    like = torch.zeros(4000, 8, dtype=torch.float64)
    a = noise.increment(0.9, 0.3, like)     # reverse-time step: -(W(0.3) - W(0.9)) has variance 0.6
    b = noise.increment(0.3, 0.05, like)
    assert_close(a.var(), torch.tensor(0.6, dtype=torch.float64), rtol=0.05, what="Var of a 0.6-long increment")
    assert_close(b.var(), torch.tensor(0.25, dtype=torch.float64), rtol=0.05, what="Var of a 0.25-long increment")
    r = torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1]
    assert abs(float(r)) < 0.03, float(r)


def test_the_path_does_not_depend_on_dtype_or_query_order():
    like64 = torch.zeros(3, 4, dtype=torch.float64)
    forward = BrownianNoise(seed=5)
    w_fwd = [forward.increment(0.0, t, like64) for t in (0.125, 0.5, 0.75)]
    backward = BrownianNoise(seed=5)
    w_bwd = [backward.increment(0.0, t, like64) for t in (0.75, 0.5, 0.125)][::-1]
    for x, y in zip(w_fwd, w_bwd):
        assert torch.equal(x, y)
    w32 = BrownianNoise(seed=5).increment(0.0, 0.5, torch.zeros(3, 4, dtype=torch.float32))
    assert w32.dtype == torch.float32
    assert_close(w32, w_fwd[1], rtol=1e-6, what="the float32 path against the float64 one")


def test_times_are_rounded_to_tol():
    noise = BrownianNoise(seed=2, tol=1e-6)
    like = torch.zeros(2, 3)
    tiny = noise.increment(0.5, 0.5 + 1e-8, like)
    assert torch.equal(tiny, torch.zeros_like(like))
    depth = math.ceil(math.log2(1.0 / 1e-6))
    step = 2.0 ** -depth
    at_half = noise.increment(0.0, 0.5, like)
    assert torch.equal(noise.increment(0.0, 0.5 + 0.3 * step, like), at_half)  # the same dyadic point
    assert not torch.equal(noise.increment(0.0, 0.5 + 1.0 * step, like), at_half)  # the next one
