"""A path-consistent noise source: one seeded Brownian path per ensemble member (torch only).

:class:`~stochclosure.samplers.GaussianNoise` draws a fresh normal per step, so a run with 20
steps and one with 40 steps see unrelated noise. :class:`BrownianNoise` instead answers every
``increment(t0, t1)`` from one Brownian path per member, stored implicitly as a dyadic Brownian
bridge tree (Lévy's construction): the value at the midpoint of a dyadic interval is the mean of
its end values plus ``sqrt(length / 4)`` times a standard normal drawn from a generator seeded by
``(member, node)`` alone. The path is therefore a function of the seed only, not of the query
points, so the increment over a coarse step equals the sum of the fine increments it contains
(query times are rounded to the tree's finest level, ``tol``). Step-count comparisons then differ
only by discretisation error, not by Monte Carlo noise.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from ..errors import ConfigError, ShapeError, format_error
from .base import NoiseSource

__all__ = ["BrownianNoise"]


_MASK64 = (1 << 64) - 1


def _mix64(x: int) -> int:
    """SplitMix64's finaliser: a well-mixed 64-bit integer from ``x`` (Steele et al. 2014)."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


class _BrownianTree:
    """One member's Brownian path on the dyadic points ``k / 2**depth`` of ``[0, 1]`` (in units of the range).

    ``value(k)`` descends from the root interval, drawing each midpoint it passes from its own
    seeded generator (memoised), so values never depend on which points were asked before.
    Values are float64 tensors of shape ``(1, *event)`` for a path of unit variance per unit range.
    """

    def __init__(self, entropy: int, depth: int, event: tuple[int, ...]) -> None:
        self.entropy, self.depth, self.event = int(entropy), int(depth), event
        self._nodes: dict[int, Tensor] = {0: torch.zeros((1, *event), dtype=torch.float64),
                                          1 << depth: self._normal(0, 0)}

    def _normal(self, level: int, index: int) -> Tensor:
        seed = _mix64(_mix64(_mix64(self.entropy) ^ level) ^ index) >> 1
        return torch.randn((1, *self.event), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)

    def value(self, k: int) -> Tensor:
        """``W`` at the dyadic point ``k / 2**depth``."""
        if k in self._nodes:
            return self._nodes[k]
        lo, hi = 0, 1 << self.depth
        for level in range(1, self.depth + 1):
            mid = (lo + hi) >> 1
            if mid not in self._nodes:
                half = (hi - lo) / (1 << self.depth) / 4  # variance of the bridge at the midpoint
                self._nodes[mid] = 0.5 * (self._nodes[lo] + self._nodes[hi]) + math.sqrt(half) * self._normal(level, mid)
            if k == mid:
                break
            lo, hi = (lo, mid) if k < mid else (mid, hi)
        return self._nodes[k]


class BrownianNoise(NoiseSource):
    """Brownian increments from one seeded dyadic Brownian tree per member, consistent across grids.

    Member ``i``'s path depends only on ``(seed, i)``: the same seed gives the same ensemble
    whatever the batch size and dtype, and distinct members are independent. Each new query
    point costs a descent of the dyadic tree (about ``log2(range / tol)`` levels, each level drawn
    once and memoised), so this source is for step-count studies and reproducible ensembles rather
    than thousand-step runs on large batches.

    Args:
        seed: Integer seed of the whole ensemble. Exactly one of ``seed`` and ``generator``
            may be given; with neither, a seed is drawn from torch's global generator.
        generator: Torch generator from which the seed is drawn (one ``randint`` call).
        t_min: Start of the time range the path covers (diffusion time).
        t_max: End of that range (``sde.T``).
        tol: Time resolution of the path; query times are rounded to it.

    Example:
        >>> noise = BrownianNoise(seed=0)
        >>> like = torch.zeros(2, 3)
        >>> a = noise.increment(1.0, 0.5, like) + noise.increment(0.5, 0.0, like)
        >>> b = BrownianNoise(seed=0).increment(1.0, 0.0, like)
        >>> float((a - b).abs().max()) <= 1e-5 * float(b.abs().max())
        True
    """

    def __init__(self, seed: int | None = None, *, generator: torch.Generator | None = None, t_min: float = 0.0,
                 t_max: float = 1.0, tol: float = 1e-9) -> None:
        if seed is not None and generator is not None:
            raise ConfigError(format_error("seed", "either seed or generator", "both",
                                           "pass seed=... for a fixed ensemble, or generator=..."))
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
            raise ConfigError(format_error("seed", "a non-negative int", repr(seed)))
        if not (math.isfinite(t_min) and math.isfinite(t_max) and t_min < t_max):
            raise ConfigError(format_error("t_min/t_max", "finite t_min < t_max", f"{t_min}, {t_max}"))
        if not 0 < tol < 1e-3 * (t_max - t_min):
            raise ConfigError(format_error("tol", f"a float in (0, {1e-3 * (t_max - t_min):g})", repr(tol)))
        if seed is None:
            seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        self.seed, self.t_min, self.t_max, self.tol = int(seed), float(t_min), float(t_max), float(tol)
        self._depth = max(1, math.ceil(math.log2((self.t_max - self.t_min) / self.tol)))
        self._paths: list[_BrownianTree] = []
        self._event: tuple[int, ...] | None = None
        self._dtype: torch.dtype | None = None
        self._normal_gen = torch.Generator().manual_seed(int(np.random.SeedSequence(self.seed).generate_state(1)[0]))

    def member_entropy(self, i: int) -> int:
        """The entropy of member ``i``'s Brownian tree (a function of ``seed`` and ``i`` only)."""
        return int(np.random.SeedSequence(self.seed, spawn_key=(i,)).generate_state(1, dtype=np.uint64)[0] >> 1)

    def _ensure(self, like: Tensor) -> None:
        event = tuple(like.shape[1:])
        if self._event is not None and (event != self._event or like.dtype != self._dtype):
            raise ShapeError(format_error("like", f"events of shape {self._event} and dtype {self._dtype} (the "
                                          "shape this noise source was first used with)",
                                          f"shape {event}, dtype {like.dtype}",
                                          "use one BrownianNoise per ensemble shape"))
        self._event, self._dtype = event, like.dtype
        while len(self._paths) < like.shape[0]:
            i = len(self._paths)
            self._paths.append(_BrownianTree(self.member_entropy(i), self._depth, event))

    def _index(self, t: float) -> int:
        """The dyadic point nearest to time ``t``."""
        return round((t - self.t_min) / (self.t_max - self.t_min) * (1 << self._depth))

    def increment(self, t0: float, t1: float, like: Tensor) -> Tensor:
        """``W(t1) - W(t0)`` of each member's path, shaped like ``like`` ``(batch, *event)``."""
        lo, hi = (float(t0), float(t1)) if t1 >= t0 else (float(t1), float(t0))
        slack = 10 * self.tol
        if lo < self.t_min - slack or hi > self.t_max + slack:
            raise ConfigError(format_error("t0/t1", f"times inside [t_min={self.t_min}, t_max={self.t_max}]",
                                           f"[{lo}, {hi}]", "build BrownianNoise(t_min=..., t_max=sde.T)"))
        lo, hi = max(lo, self.t_min), min(hi, self.t_max)
        self._ensure(like)
        if hi - lo <= self.tol:
            return torch.zeros_like(like)
        a, b = self._index(lo), self._index(hi)
        scale = math.sqrt(self.t_max - self.t_min)
        w = torch.cat([self._paths[i].value(b) - self._paths[i].value(a) for i in range(like.shape[0])], dim=0)
        w = (scale * w).to(dtype=like.dtype, device=like.device)
        return w if t1 >= t0 else -w

    def normal(self, like: Tensor) -> Tensor:
        """A standard normal draw from the source's own seeded stream (not part of the path)."""
        z = torch.randn(like.shape, generator=self._normal_gen, dtype=like.dtype)
        return z.to(like.device)
