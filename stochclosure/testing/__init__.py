"""Contract suites every component must pass; third-party plugins can run them too.

Each ``check_*`` function takes an instance, exercises the interface, and raises
``AssertionError`` with an explanatory message on the first violation. In a plugin's tests::

    from stochclosure.testing import check_sampler
    def test_my_sampler_contract():
        check_sampler(MySampler())

or run every registered component of a kind with :func:`registered_examples`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor

from .._types import Conditioning
from ..fft import spectral_resample
from ..registry import get_registry
from ..samplers.base import CountingScore
from ..scores.analytic import GaussianScore
from ..sdes.ve import ExpVESDE

__all__ = [
    "assert_close",
    "check_sde",
    "check_score_operator",
    "check_encoder",
    "check_sampler",
    "check_system",
    "check_component",
    "registered_examples",
    "check_closure_law",
    "heteroscedastic_pairs",
]


def assert_close(actual: Tensor, expected: Tensor, *, rtol: float, what: str = "values") -> None:
    """Assert ``max|actual - expected| <= rtol * max(|actual|, |expected|)``, in float64.

    The tolerance is relative to the *magnitude of the values compared* (the largest absolute
    entry of either tensor), never an absolute number: batched and single calls, one or two
    threads, and the FFT / matmul kernels of different CPUs (Intel, AMD) round float32 results
    differently by a few units in the last place of the largest entries, so any absolute
    tolerance is wrong for outputs of some magnitude. Small entries next to large ones are
    compared at the large entries' precision (one rounding step of ``7.9e3`` in float32 is
    ``4.9e-4``). ``rtol=0`` asks for bitwise equality (NaN never compares equal). Complex tensors
    are compared as complex numbers (modulus of the difference, in complex128).

    Contract checks use, for float32 outputs, ``rtol = 1e-5`` (about 80 float32 rounding steps
    of the largest entry) for encoders, ``1e-4`` for score operators (deep networks accumulate
    more), where the same arithmetic may be grouped differently (a batch vs one member), and
    ``0`` where the very same call is repeated.

    Args:
        actual: Any shape.
        expected: Broadcastable against ``actual``.
        rtol: Allowed difference as a fraction of the values' magnitude.
        what: What is compared, for the message.

    Raises:
        AssertionError: naming ``what``, the difference, the magnitude and ``rtol``.

    Example:
        >>> import torch
        >>> assert_close(torch.tensor([7.9e3, 1.0]), torch.tensor([7.9e3 + 4.9e-4, 1.0]), rtol=1e-6)
    """
    wide = torch.complex128 if (actual.is_complex() or expected.is_complex()) else torch.float64
    a = actual.detach().to("cpu", wide)
    b = expected.detach().to("cpu", wide)
    if rtol == 0:
        if not torch.equal(torch.broadcast_to(a, torch.broadcast_shapes(a.shape, b.shape)),
                           torch.broadcast_to(b, torch.broadcast_shapes(a.shape, b.shape))):
            diff = (a - b).abs()
            err = float(diff.nan_to_num(float("inf")).max()) if diff.numel() else 0.0
            raise AssertionError(f"{what}: not bitwise equal (max abs difference {err:.3g}); the same call "
                                 "must give the same result")
        return
    if not (bool(torch.isfinite(a).all()) and bool(torch.isfinite(b).all())):
        raise AssertionError(f"{what}: non-finite values (NaN or inf) in the comparison")
    scale = max(float(a.abs().max()) if a.numel() else 0.0, float(b.abs().max()) if b.numel() else 0.0)
    err = float((a - b).abs().max()) if (a - b).numel() else 0.0
    if err > rtol * scale:
        raise AssertionError(f"{what}: max abs difference {err:.3g} is {err / scale:.3g} of the values' magnitude "
                             f"{scale:.3g}; allowed: rtol={rtol:g} of the magnitude")


def _close(a: Tensor, b: Tensor, rtol: float, what: str) -> None:
    assert_close(a, b, rtol=rtol, what=what)


def check_sde(sde: Any) -> None:
    """Contract of :class:`~stochclosure.sdes.AbstractSDE`.

    Checks shapes, positivity and monotonicity of ``sigma_t``, that drift, diffusion and marginal
    agree (``d alpha/dt = f alpha`` and ``d sigma^2/dt = 2 f sigma^2 + g^2`` by finite
    differences), the inverse of ``log_snr``, prior sampling and seeding, and the reverse drifts.
    """
    t = torch.linspace(max(sde.eps, 0.02 * sde.T), 0.98 * sde.T, 9, dtype=torch.float64)
    alpha, sigma = sde.marginal_coefficients(t)
    assert alpha.shape == (9,) and sigma.shape == (9,), "marginal_coefficients must return (batch,) tensors"
    assert bool((alpha > 0).all()) and bool((sigma > 0).all()), "alpha_t and sigma_t must be positive"
    assert bool((torch.diff(sigma / alpha) > 0).all()), "sigma_t / alpha_t must increase with t"
    h = 1e-5 * sde.T
    a_p, s_p = sde.marginal_coefficients(t + h)
    a_m, s_m = sde.marginal_coefficients(t - h)
    f = sde.drift_coefficient(t)
    g = sde.diffusion(t)
    _close((a_p - a_m) / (2 * h), f * alpha, 1e-4, "d alpha/dt vs f(t) alpha_t")
    _close((s_p**2 - s_m**2) / (2 * h), 2 * f * sigma**2 + g**2, 1e-4, "d sigma^2/dt vs 2 f sigma^2 + g^2")
    x = torch.randn(9, 2, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    _close(sde.drift(x, t), f[:, None, None] * x, 1e-10, "drift(x, t) vs drift_coefficient(t) * x")
    mean, std = sde.marginal(x, t)
    assert mean.shape == x.shape and std.shape == (9, 1, 1), "marginal must return (mean like x0, std (batch,1,..))"
    lam = sde.log_snr(t)
    _close(sde.t_from_log_snr(lam), t, 1e-6, "t_from_log_snr(log_snr(t))")
    g1 = torch.Generator().manual_seed(3)
    g2 = torch.Generator().manual_seed(3)
    p1 = sde.prior_sample((5, 1, 8), generator=g1)
    p2 = sde.prior_sample((5, 1, 8), generator=g2)
    assert p1.shape == (5, 1, 8) and p1.dtype == torch.float32, "prior_sample shape/dtype"
    assert torch.equal(p1, p2), "prior_sample must be reproducible with the same generator"
    s = torch.randn_like(x)
    _close(sde.reverse_drift(x, t, s), sde.drift(x, t) - (g**2)[:, None, None] * s, 1e-10, "reverse_drift")
    _close(sde.probability_flow_drift(x, t, s), sde.drift(x, t) - 0.5 * (g**2)[:, None, None] * s, 1e-10,
           "probability_flow_drift")


def check_score_operator(op: Any, batch: int = 3, rtol: float = 1e-4) -> None:
    """Contract of :class:`~stochclosure.scores.AbstractScoreOperator`.

    Needs ``op.example_inputs``. Checks output shape, dtype and finiteness, determinism, that
    each member of a batch (different ``t`` and condition per member) gets the output it would
    get alone, and, for ``resolution_invariant`` operators on fields, a second resolution.

    Args:
        op: The score operator instance.
        batch: Batch size of the example inputs.
        rtol: Allowed batched-vs-single difference, relative to the output's magnitude (see
            :func:`assert_close`).
    """
    gen = torch.Generator().manual_seed(0)
    x, t, cond = op.example_inputs(batch, gen)
    was_training = getattr(op, "training", False)
    if hasattr(op, "eval"):
        op.eval()
    try:
        with torch.no_grad():
            out = op(x, t, cond)
            assert isinstance(out, Tensor), f"forward must return a Tensor, got {type(out).__name__}"
            assert out.shape == x.shape, f"score shape {tuple(out.shape)} != x shape {tuple(x.shape)}"
            assert out.dtype == x.dtype, f"score dtype {out.dtype} != x dtype {x.dtype}"
            assert bool(torch.isfinite(out).all()), "score must be finite on valid inputs"
            _close(op(x, t, cond), out, 0, "two identical calls")
            for i in range(batch):
                ci = cond.index(slice(i, i + 1)) if cond is not None else None
                single = op(x[i:i + 1], t[i:i + 1], ci)
                _close(single, out[i:i + 1], rtol, f"member {i} alone vs in a batch (per-sample conditioning)")
            if getattr(op, "resolution_invariant", False) and x.dim() >= 3:
                grid = tuple(2 * s for s in x.shape[2:])
                x2 = spectral_resample(x, grid)
                c2 = None
                if cond is not None:
                    c2 = Conditioning(
                        fields=None if cond.fields is None else spectral_resample(cond.fields, grid),
                        history=None if cond.history is None else spectral_resample(
                            cond.history.flatten(1, 2), grid).reshape(*cond.history.shape[:3], *grid),
                        obs_values=cond.obs_values, obs_points=cond.obs_points, features=cond.features)
                out2 = op(x2, t, c2)
                assert out2.shape == x2.shape, "resolution-invariant operator must accept a finer grid"
                assert bool(torch.isfinite(out2).all()), "score must be finite on a finer grid"
    finally:
        if was_training:
            op.train()


def check_encoder(enc: Any, batch: int = 2) -> None:
    """Contract of :class:`~stochclosure.encoders.AbstractConditioningEncoder`.

    Output ``(batch, out_channels, *grid)`` at the condition's grid and at twice and half of it,
    finite, with per-sample independence.
    """
    gen = torch.Generator().manual_seed(0)
    cond = enc.example_condition(batch, gen)
    base = cond.spatial_shape or (16, 16)
    for grid in (tuple(base), tuple(2 * s for s in base), tuple(max(4, s // 2) for s in base)):
        with torch.no_grad():
            out = enc(cond, grid)
        want = (batch, enc.out_channels, *grid)
        assert tuple(out.shape) == want, f"encoder output {tuple(out.shape)} != {want} on grid {grid}"
        assert bool(torch.isfinite(out).all()), f"encoder output not finite on grid {grid}"
        with torch.no_grad():
            first = enc(cond.index(slice(0, 1)), grid)
        _close(first, out[:1], 1e-5, "member 0 alone vs in a batch")


def check_sampler(sampler: Any, steps: int | None = None) -> None:
    """Contract of :class:`~stochclosure.samplers.AbstractSampler`.

    On an exact Gaussian score (research VE SDE, ``N(0.05, 0.2^2)`` vectors): output shape and
    dtype, seeding, the callback, the declared ``nfe``, and a *sanity* bound on the sample
    moments (mean within 0.05, std within 25 %; accuracy is tested per sampler elsewhere). The
    moment bound is skipped for samplers with ``needs_distilled_score = True`` (consistency
    sampling), which draw the law only with a score distilled for them.
    """
    sde = ExpVESDE()
    op = GaussianScore(sde, mean=0.05, std=0.2)
    counter = CountingScore(lambda x, t: op(x, t, None))
    calls: list[Any] = []
    out = sampler.sample(counter, sde, (4000, 2), steps=steps, generator=torch.Generator().manual_seed(1),
                         callback=calls.append)
    assert tuple(out.shape) == (4000, 2), f"sample shape {tuple(out.shape)} != (4000, 2)"
    assert out.dtype == torch.float32, f"default dtype must be float32, got {out.dtype}"
    assert bool(torch.isfinite(out).all()), "samples must be finite"
    assert calls, "callback was never called"
    assert counter.nfe == sampler.nfe(steps), f"nfe() says {sampler.nfe(steps)} but {counter.nfe} evaluations ran"
    again = sampler.sample(lambda x, t: op(x, t, None), sde, (4000, 2), steps=steps,
                           generator=torch.Generator().manual_seed(1))
    _close(again, out, 0, "same generator seed, same samples")
    if getattr(sampler, "needs_distilled_score", False):
        return  # draws the law only with a distilled score, not with the exact one used here
    m, s = float(out.mean()), float(out.std())
    assert abs(m - 0.05) < 0.05, f"sample mean {m:.3f} far from 0.05"
    assert abs(s - 0.2) < 0.05, f"sample std {s:.3f} far from 0.2"


def check_system(system: Any, batch: int = 2) -> None:
    """Contract of :class:`~stochclosure.systems.AbstractSystem`.

    ``initial_state`` shape and seeding; ``step`` keeps the shape, accepts ``None`` (no closure)
    and a closure term, is deterministic, and stays finite.
    """
    g1 = torch.Generator().manual_seed(0)
    g2 = torch.Generator().manual_seed(0)
    v = system.initial_state(batch, generator=g1)
    assert torch.equal(v, system.initial_state(batch, generator=g2)), "initial_state must honour the generator"
    assert v.dim() == 2 + system.spatial_dims and v.shape[0] == batch, f"bad initial state shape {tuple(v.shape)}"
    v1 = system.step(v, None)
    assert v1.shape == v.shape and bool(torch.isfinite(v1).all()), "step(state, None) must keep shape, finite"
    u = 0.01 * torch.ones((batch, system.closure_channels, *v.shape[2:]), dtype=v.dtype)
    v2 = system.step(v, u)
    assert v2.shape == v.shape, "step(state, closure) must keep the shape"
    _close(system.step(v, u), v2, 0, "step must be deterministic")


_CHECKS = {
    "sde": check_sde,
    "score_operator": check_score_operator,
    "encoder": check_encoder,
    "sampler": check_sampler,
    "system": check_system,
    "closure": lambda law: check_closure_law(law, _closure_condition(law)),
}


def _closure_condition(law: Any) -> Conditioning:
    """The law's ``example_condition()``, else three random ``(1, 16, 16)`` float32 fields."""
    if hasattr(law, "example_condition"):
        return law.example_condition()
    return Conditioning(fields=torch.randn(3, 1, 16, 16, generator=torch.Generator().manual_seed(0)))


def check_component(kind: str, obj: Any) -> None:
    """Run the contract suite of ``kind`` on instance ``obj``."""
    _CHECKS[kind](obj)


def registered_examples(kind: str) -> Iterator[tuple[str, Any]]:
    """``(name, example instance)`` for every registered component of ``kind``.

    Classes provide a small instance through ``example()`` (default: the no-argument constructor).
    """
    reg = get_registry(kind)
    for name in reg.names():
        cls = reg.get(name)
        yield name, cls.example() if hasattr(cls, "example") else cls()


from .closures import check_closure_law, heteroscedastic_pairs  # noqa: E402  (uses assert_close above)
