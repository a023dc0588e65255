"""The reverse-time SDE of a stochclosure model as a torchsde module.

torchsde integrates ``dy = f(s, y) ds + g(s, y) dW`` forward in ``s`` on 2-D states
``(batch, state)``. A stochclosure SDE runs forward in diffusion time ``t`` on fields
``(batch, *event)``; sampling integrates its reverse ``dx = [f(x, t) - g(t)^2 score] dt + g(t) dW``
from ``t_start`` down to ``t_end``. With reversed time ``s = t_start - t`` this becomes

    ``dy = [g(t)^2 score(y, t) - f(y, t)] ds + g(t) dW_s``,  ``y = flatten(x)``,

whose noise depends on time only: torchsde's ``"additive"`` noise type, for which Itô and
Stratonovich calculus agree (no correction term), Euler is strong order 1 and SRK needs three
drift evaluations per step. The probability-flow ODE ``dy/ds = g^2 score / 2 - f`` is the same
module with zero noise.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from stochclosure import Conditioning
from stochclosure.errors import ConfigError, ShapeError, format_error
from stochclosure.registry import resolve
from stochclosure.scores.base import AbstractScoreOperator
from stochclosure.sdes.base import AbstractSDE

__all__ = ["ReverseTimeSDE", "DiagonalReverseTimeSDE"]

_SDE_TYPES = ("ito", "stratonovich")


class _ScoreFnModule(nn.Module):
    """Holds a plain ``score_fn(x, t)`` callable (and its parameters if it is a module)."""

    def __init__(self, fn: Callable[[Tensor, Tensor], Tensor]) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        return self.fn(x, t)


class ReverseTimeSDE(nn.Module):
    """A torchsde-compatible reverse-time SDE (or probability-flow ODE) built from any SDE and score.

    Hand it to ``torchsde.sdeint`` / ``sdeint_adjoint`` directly: states are flattened fields
    ``(batch, prod(event_shape))``, times are reversed times ``s`` in ``[0, t_start - t_end]``,
    and the Brownian motion has one channel per state entry (pass ``bm`` of shape
    ``(batch, prod(event_shape))``; the noise is additive, so the module provides ``f``,
    ``g_prod`` and ``f_and_g_prod`` and never forms the ``(state, state)`` diffusion matrix).

    The score is evaluated once per ``(s, y)`` pair: repeated drift requests for the same state
    object at the same time (torchsde's SRK asks twice per step; ``check_contract`` asks once
    before the first step) are served from a small cache. ``nfe`` counts real evaluations.

    Args:
        sde: The forward SDE (registered name, spec dict or instance).
        score: An :class:`~stochclosure.scores.AbstractScoreOperator` (called as
            ``score(x, t, cond)``) or a plain ``score_fn(x, t)``.
        event_shape: ``(channels, *spatial)`` (or ``(dim,)``) of one sample.
        cond: The condition bound to an operator (ignored for plain score functions).
        t_start: Diffusion time at ``s = 0`` (default ``sde.T``).
        ode: Integrate the probability-flow ODE (zero noise) instead of the reverse SDE.
        sde_type: ``"ito"`` (euler, milstein, srk) or ``"stratonovich"`` (heun, midpoint,
            reversible_heun); identical dynamics here since the noise is additive.

    Example:
        >>> import torchsde
        >>> from stochclosure.scores import GaussianScore
        >>> rsde = ReverseTimeSDE("vp", GaussianScore("vp"), event_shape=(2,))
        >>> y0 = torch.randn(4, 2)
        >>> bm = torchsde.BrownianInterval(t0=0.0, t1=0.999, size=(4, 2), entropy=0)
        >>> ys = torchsde.sdeint(rsde, y0, torch.tensor([0.0, 0.999]), bm=bm, method="euler", dt=0.01)
        >>> tuple(ys.shape)
        (2, 4, 2)
    """

    noise_type: str = "additive"
    _cache_size: ClassVar[int] = 4

    def __init__(self, sde: Any, score: Any, event_shape: tuple[int, ...], cond: Conditioning | None = None, *,
                 t_start: float | None = None, ode: bool = False, sde_type: str = "ito") -> None:
        super().__init__()
        self.sde: AbstractSDE = resolve("sde", sde)
        if isinstance(score, AbstractScoreOperator):
            self.score_op: nn.Module = score
            self._call_op = True
        elif callable(score):
            self.score_op = _ScoreFnModule(score)
            self._call_op = False
        else:
            raise ConfigError(format_error("score", "an AbstractScoreOperator or a callable score_fn(x, t)",
                                           type(score).__name__))
        if not event_shape or any(int(d) < 1 for d in event_shape):
            raise ShapeError(format_error("event_shape", "positive sizes (channels, *spatial)", repr(event_shape)))
        if sde_type not in _SDE_TYPES:
            raise ConfigError(format_error("sde_type", f"one of {_SDE_TYPES}", repr(sde_type)))
        t0 = float(self.sde.T if t_start is None else t_start)
        if not 0 < t0 <= self.sde.T + 1e-12:
            raise ConfigError(format_error("t_start", f"a time in (0, T={self.sde.T}]", repr(t_start)))
        self.event_shape = tuple(int(d) for d in event_shape)
        self.cond, self.t_start, self.ode, self.sde_type = cond, t0, bool(ode), sde_type
        self.nfe = 0
        self._cache: list[tuple[float, Tensor, bool, Tensor]] = []

    # -- helpers ---------------------------------------------------------------------------------
    def time(self, s: Tensor | float, batch: int, like: Tensor) -> Tensor:
        """Diffusion times ``t = t_start - s`` as a ``(batch,)`` tensor like ``like``."""
        return torch.full((batch,), self.t_start - float(s), dtype=like.dtype, device=like.device)

    def unflatten(self, y: Tensor) -> Tensor:
        """``(batch, state)`` -> ``(batch, *event_shape)``."""
        return y.reshape(y.shape[0], *self.event_shape)

    def score(self, x: Tensor, t: Tensor) -> Tensor:
        """One score evaluation on fields ``(batch, *event)`` (counted in ``nfe``)."""
        self.nfe += 1
        return self.score_op(x, t, self.cond) if self._call_op else self.score_op(x, t)

    def clear_cache(self) -> None:
        """Forget cached drifts (done automatically when the cache is full)."""
        self._cache.clear()

    # -- the torchsde interface -------------------------------------------------------------------
    def f(self, s: Tensor, y: Tensor) -> Tensor:
        """Drift in reversed time, ``(batch, state)``."""
        key_s, grad = float(s), torch.is_grad_enabled()
        for cs, cy, cg, cf in self._cache:
            if cs == key_s and cy is y and cg == grad:
                return cf
        x = self.unflatten(y)
        t = self.time(s, y.shape[0], y)
        sc = self.score(x, t)
        fwd = self.sde.probability_flow_drift(x, t, sc) if self.ode else self.sde.reverse_drift(x, t, sc)
        out = (-fwd).reshape(y.shape)
        if len(self._cache) >= self._cache_size:
            self._cache.pop(0)
        self._cache.append((key_s, y, grad, out))
        return out

    def diffusion(self, s: Tensor | float, y: Tensor) -> Tensor:
        """``g(t)`` per member, ``(batch, 1)`` (zero for the probability-flow ODE)."""
        g = self.sde.diffusion(self.time(s, y.shape[0], y).double()).to(y.dtype)
        return torch.zeros_like(g)[:, None] if self.ode else g[:, None]

    def g_prod(self, s: Tensor, y: Tensor, v: Tensor) -> Tensor:
        """Diffusion times a Brownian increment ``v`` ``(batch, state)``."""
        if v.shape != y.shape:
            raise ShapeError(format_error("bm", f"Brownian increments of shape {tuple(y.shape)} (one channel per "
                                          "state entry)", f"shape {tuple(v.shape)}"))
        return self.diffusion(s, y) * v

    def f_and_g_prod(self, s: Tensor, y: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Drift and diffusion-increment product, one score evaluation."""
        return self.f(s, y), self.g_prod(s, y, v)

    def extra_repr(self) -> str:
        kind = "probability-flow ODE" if self.ode else "reverse SDE"
        return f"{kind} of {self.sde!r}, event_shape={self.event_shape}, t_start={self.t_start}, {self.sde_type}"


class DiagonalReverseTimeSDE(ReverseTimeSDE):
    """The same dynamics declared with ``"diagonal"`` noise, ``g(s, y)`` of shape ``(batch, state)``.

    torchsde's reversible Heun multiplies the stored diffusion by the increment with the
    noise type's product; for ``"additive"`` noise that is a dense ``(state, state)`` matrix,
    so this variant (elementwise product, same law) serves that method. Arguments as
    :class:`ReverseTimeSDE`.
    """

    noise_type: str = "diagonal"

    def g(self, s: Tensor, y: Tensor) -> Tensor:
        """Diagonal diffusion ``(batch, state)``."""
        return self.diffusion(s, y).expand_as(y)

    def f_and_g(self, s: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """Drift and diagonal diffusion, one score evaluation."""
        return self.f(s, y), self.g(s, y)

