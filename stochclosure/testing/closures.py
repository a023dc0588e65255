"""Contract of :class:`~stochclosure.closures.AbstractClosureLaw` that third-party closure laws can run."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .._types import Conditioning

__all__ = ["check_closure_law", "heteroscedastic_pairs"]


def heteroscedastic_pairs(n: int, seed: int, size: int = 16) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """A known conditional law to train and check closure laws on: ``U | y ~ N(2 y + 1, s(y)^2)``.

    ``y`` is a smooth, unit-variance random field (white noise with its Fourier modes damped by
    ``exp(-|k|^2 / 9)``) and ``s(y) = 0.2 + 0.5 |y|``, so a learned law must get both a mean and a
    spread that vary in space.

    Args:
        n: Number of pairs.
        seed: Seed of the generator (fields and noise).
        size: Grid size of the periodic square.

    Returns:
        ``(y, U, mean, std)``, each ``(n, 1, size, size)`` float32: the condition, one draw of the
        closure, and the law's exact mean and standard deviation.
    """
    g = torch.Generator().manual_seed(seed)
    y = torch.randn(n, 1, size, size, generator=g)
    k = torch.fft.fftfreq(size, d=1 / size)
    y = torch.fft.ifft2(torch.fft.fft2(y) * torch.exp(-(k[:, None] ** 2 + k[None, :] ** 2) / 9)).real
    y = y / y.std()
    s = 0.2 + 0.5 * y.abs()
    mean = 2 * y + 1.0
    return y, mean + s * torch.randn(y.shape, generator=g), mean, s


def _cond_grid(cond: Conditioning, grid: tuple[int, ...] | None) -> tuple[int, ...]:
    if grid is not None:
        return tuple(int(g) for g in grid)
    assert cond.spatial_shape is not None, "pass grid= for a condition without fields"
    return tuple(cond.spatial_shape)


def _latent(law: Any, cond: Conditioning, grid: tuple[int, ...], seed: int) -> Tensor | None:
    shape = tuple(law.latent_shape(cond, grid))
    assert all(isinstance(s, int) and s > 0 for s in shape), f"latent_shape must be positive ints, got {shape}"
    if not shape:
        return None
    b = cond.batch_size or 1
    return torch.randn((b, *shape), generator=torch.Generator().manual_seed(seed), dtype=torch.float32)


def _draw(law: Any, cond: Conditioning, latent: Tensor | None, grid: tuple[int, ...], seed: int) -> Tensor:
    return law.draw(cond, latent, grid=grid, generator=torch.Generator().manual_seed(seed))


def _check_members(law: Any, cond: Conditioning, latent: Tensor | None, out: Tensor, grid: tuple[int, ...],
                   rtol: float) -> None:
    from . import assert_close

    b = cond.batch_size or 1
    for i in range(b):
        member = cond.index(torch.tensor([i])) if cond.batch_size else cond
        lat = None if latent is None else latent[i:i + 1]
        alone = _draw(law, member, lat, grid, seed=11)
        assert alone.shape == (1, *out.shape[1:]), f"member {i} alone: shape {tuple(alone.shape)}"
        assert_close(alone[0], out[i], rtol=rtol, what=f"batch member {i} alone vs in the batch (same latent)")


def _check_spec(law: Any, cond: Conditioning, latent: Tensor | None, out: Tensor, grid: tuple[int, ...]) -> None:
    from ..registry import resolve
    from . import assert_close

    if not hasattr(law, "spec"):
        return
    from ..registry import name_of

    spec = law.spec()
    # An unregistered class (defined in a script) cannot be named in a file; its spec's arguments
    # must still rebuild it, so the class object itself stands in for the name.
    target = spec if name_of("closure", type(law)) else {**spec, "type": type(law)}
    try:
        rebuilt = resolve("closure", target)
    except Exception as exc:  # noqa: BLE001 - reported as the contract violation
        raise AssertionError(f"the registry cannot rebuild the law from its spec {spec}: {type(exc).__name__}: "
                             f"{exc}") from exc
    assert type(rebuilt) is type(law), f"spec {spec} rebuilt a {type(rebuilt).__name__}, not a {type(law).__name__}"
    assert rebuilt.spec() == spec, f"spec round trip changed the spec: {spec} -> {rebuilt.spec()}"
    rebuilt.load_state_dict(law.state_dict())
    rebuilt.eval()
    with torch.no_grad():
        again = _draw(rebuilt, cond, latent, grid, seed=11)
    assert_close(again, out, rtol=1e-6, what="draw of the law rebuilt from its spec (and state) vs the original")


def check_closure_law(law: Any, cond: Conditioning, grid: tuple[int, ...] | None = None, *, rtol: float = 1e-5,
                      n: int = 3) -> None:
    """Contract of a closure law ``p(U | y)`` (:class:`~stochclosure.closures.AbstractClosureLaw`).

    Checks, for the float32 condition ``cond`` (batch ``B >= 2`` recommended):

    * ``latent_shape`` is a tuple of positive ints, the same for the batch and for one member;
    * ``draw`` returns a finite float32 tensor ``(B, C, *grid)`` with ``C = law.channels``;
    * determinism: the same latent and same-seeded generator give bitwise equal draws;
    * batch-member independence: each member drawn alone (its slice of the latent) matches its
      row of the batched draw to ``rtol`` of the values' magnitude
      (:func:`~stochclosure.testing.assert_close`);
    * ``sample(cond, n)`` has shape ``(n, B, C, *grid)``, is finite and reproducible by seed;
    * ``nfe_per_draw >= 0``; a Dirac law (empty latent) has ``mean == draw``; where ``mean`` /
      ``log_prob`` exist they have shapes ``(B, C, *grid)`` / ``(n, B)``;
    * where the law has ``spec()`` (laws built on :class:`~stochclosure.config.Configurable` do), the
      registry rebuilds it from that spec (and its ``state_dict``) with the same draws; register the
      class or define it at module level so that the spec names an importable class.

    Args:
        law: The closure law instance.
        cond: A float32 condition.
        grid: Spatial shape (default: the condition's grid).
        rtol: Batched-vs-alone tolerance, relative to the draws' magnitude.
        n: Draws per condition for :meth:`sample`.

    Raises:
        AssertionError: on the first violation, saying which.
    """
    from ..closures.base import LikelihoodUnavailable
    from . import assert_close

    grid = _cond_grid(cond, grid)
    b = cond.batch_size or 1
    if hasattr(law, "eval"):
        law.eval()
    with torch.no_grad():
        latent = _latent(law, cond, grid, seed=5)
        if cond.batch_size:
            one = tuple(law.latent_shape(cond.index(torch.tensor([0])), grid))
            assert one == tuple(law.latent_shape(cond, grid)), "latent_shape must not depend on the batch size"
        out = _draw(law, cond, latent, grid, seed=11)
        assert isinstance(out, Tensor), f"draw must return a Tensor, got {type(out).__name__}"
        assert out.shape == (b, law.channels, *grid), f"draw shape {tuple(out.shape)} != {(b, law.channels, *grid)}"
        assert out.dtype == torch.float32, f"draw dtype {out.dtype} for a float32 condition"
        assert bool(torch.isfinite(out).all()), "draw must be finite"
        assert_close(_draw(law, cond, latent, grid, seed=11), out, rtol=0, what="repeated draw (same latent, seed)")
        _check_members(law, cond, latent, out, grid, rtol)
        s = law.sample(cond, n, generator=torch.Generator().manual_seed(3), grid=grid)
        assert s.shape == (n, b, law.channels, *grid), f"sample shape {tuple(s.shape)}"
        assert bool(torch.isfinite(s).all()), "sample must be finite"
        assert_close(law.sample(cond, n, generator=torch.Generator().manual_seed(3), grid=grid), s, rtol=0,
                     what="sample with the same seed")
        assert float(law.nfe_per_draw) >= 0, "nfe_per_draw must be >= 0"
        try:
            m = law.mean(cond, grid=grid)
            assert m.shape == out.shape, f"mean shape {tuple(m.shape)} != draw shape {tuple(out.shape)}"
            if latent is None:
                assert_close(out, m, rtol=0, what="a Dirac law's draw vs its mean")
        except LikelihoodUnavailable:
            pass
        try:
            lp = law.log_prob(s, cond)
            assert lp.shape == (n, b), f"log_prob shape {tuple(lp.shape)} != {(n, b)}"
        except LikelihoodUnavailable:
            pass
        _check_spec(law, cond, latent, out, grid)
