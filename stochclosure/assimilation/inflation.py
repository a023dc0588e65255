"""Covariance inflation of a forecast ensemble before its analysis.

Ensemble filters under-estimate their forecast spread (sampling error, model error); inflation
restores it. Every inflation maps the forecast ensemble ``(M, *state)`` to an inflated one and
may keep a small state between cycles (:meth:`AbstractInflation.state_dict`), which the cycling
driver checkpoints.

* :class:`MultiplicativeInflation`: ``P -> lambda P`` (anomalies times ``sqrt(lambda)``).
* :class:`AdaptiveInflation`: ``lambda`` estimated every cycle from the innovation statistics
  ``E[d^T R^{-1} d] = lambda tr(R^{-1} H P H^T) + p`` (``d = y - H mean``; Desroziers et al.
  2005, QJRMS 131; the inflation estimate of Li, Kalnay & Miyoshi 2009, QJRMS 135, 523-533, in
  its R-weighted form, Wang & Bishop 2003), clipped to ``bounds`` and smoothed in time.
* :class:`AdditiveInflation`: ``x_i -> x_i + eta_i``, ``eta_i ~ N(0, std^2 I)`` with the members'
  mean removed (the ensemble mean is kept).
"""

from __future__ import annotations

import abc
import math
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor

from ..config import Configurable, check_config_keys
from ..errors import ConfigError, format_error
from .filters import check_ensemble
from .observations import AbstractObservation

__all__ = ["AbstractInflation", "MultiplicativeInflation", "AdaptiveInflation", "AdditiveInflation",
           "InflationChain", "INFLATIONS", "inflation_from_spec"]


def _inflate(ensemble: Tensor, factor: float) -> Tensor:
    if factor == 1.0:
        return ensemble
    x = ensemble.double()
    m = x.mean(0)
    return (m + math.sqrt(factor) * (x - m)).to(ensemble.dtype)


class AbstractInflation(Configurable, abc.ABC):
    """Inflation applied to the forecast ensemble before the analysis."""

    registry_name: ClassVar[str | None] = None
    stochastic: ClassVar[bool] = False
    """The inflation draws random numbers (pass ``generator``)."""

    @abc.abstractmethod
    def apply(self, ensemble: Tensor, obs_values: Tensor, op: AbstractObservation, *,
              generator: torch.Generator | None = None) -> Tensor:
        """The inflated ensemble ``(M, *state)`` (observations are read by adaptive schemes only)."""

    @property
    def factor(self) -> float:
        """The multiplicative covariance factor applied last (1 for none)."""
        return 1.0

    def state_dict(self) -> dict[str, float]:
        """What the inflation carries from one cycle to the next (JSON numbers)."""
        return {}

    def load_state_dict(self, state: dict[str, float]) -> None:
        """Restore :meth:`state_dict` (a resumed run)."""

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in getattr(self, "config", {}).items())
        return f"{type(self).__name__}({args})"


class MultiplicativeInflation(AbstractInflation):
    """Fixed multiplicative inflation of the forecast covariance, ``P -> factor P``.

    Args:
        factor: Covariance factor ``lambda >= 1`` (anomalies are scaled by ``sqrt(lambda)``).
    """

    registry_name: ClassVar[str | None] = "multiplicative"

    def __init__(self, factor: float = 1.0) -> None:
        if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not (1.0 <= factor < math.inf):
            raise ConfigError(format_error("factor", "a covariance inflation factor >= 1", repr(factor),
                                           "1.0 is no inflation; typical values are 1.01-1.5"))
        self._factor = float(factor)

    @property
    def factor(self) -> float:
        return self._factor

    def apply(self, ensemble: Tensor, obs_values: Tensor, op: AbstractObservation, *,
              generator: torch.Generator | None = None) -> Tensor:
        check_ensemble(ensemble, op)
        return _inflate(ensemble, self._factor)


class AdaptiveInflation(AbstractInflation):
    """Adaptive multiplicative inflation from innovation statistics (Li, Kalnay & Miyoshi 2009).

    Each cycle, with ``d = y - mean_i H x_i``, ``Y`` the observed anomalies and ``R = diag(r)``::

        lambda_o = (sum_j d_j^2 / r_j - p) / sum_j var_i(Y_ij) / r_j

    is the single-cycle estimate (unbiased when the forecast error covariance is ``lambda P``);
    it is clipped to ``bounds`` and smoothed, ``lambda = memory * lambda_prev + (1 - memory) * lambda_o``,
    then applied as ``P -> lambda P``.

    Args:
        initial: ``lambda`` before the first cycle.
        memory: Weight of the previous estimate in ``[0, 1)`` (0: no smoothing).
        bounds: ``(low, high)`` clip of the single-cycle estimate, ``1 <= low <= high``.
    """

    registry_name: ClassVar[str | None] = "adaptive"

    def __init__(self, initial: float = 1.0, memory: float = 0.9, bounds: Sequence[float] = (1.0, 3.0)) -> None:
        if not (isinstance(memory, (int, float)) and 0.0 <= memory < 1.0):
            raise ConfigError(format_error("memory", "a smoothing weight in [0, 1)", repr(memory)))
        try:
            lo, hi = (float(b) for b in bounds)
        except (TypeError, ValueError):
            raise ConfigError(format_error("bounds", "a pair (low, high)", repr(bounds))) from None
        if not (1.0 <= lo <= hi < math.inf):
            raise ConfigError(format_error("bounds", "1 <= low <= high < inf", repr(bounds)))
        if not (isinstance(initial, (int, float)) and lo <= initial <= hi):
            raise ConfigError(format_error("initial", f"a factor within bounds [{lo}, {hi}]", repr(initial)))
        self.memory, self.bounds, self._factor = float(memory), (lo, hi), float(initial)
        self.last_estimate: float | None = None

    @property
    def factor(self) -> float:
        return self._factor

    def estimate(self, ensemble: Tensor, obs_values: Tensor, op: AbstractObservation) -> float:
        """The single-cycle estimate ``lambda_o`` (unclipped) for a forecast ensemble."""
        event = check_ensemble(ensemble, op)
        y = op.check_values(obs_values, event).double()
        hx = op.apply(ensemble.double())
        r = op.variance(event).to(hx)
        d = y.to(hx) - hx.mean(0)
        spread = hx.var(0, unbiased=True)
        num = float((d * d / r).sum()) - d.numel()
        den = float((spread / r).sum())
        return num / den if den > 0 else math.inf

    def apply(self, ensemble: Tensor, obs_values: Tensor, op: AbstractObservation, *,
              generator: torch.Generator | None = None) -> Tensor:
        lam = self.estimate(ensemble, obs_values, op)
        self.last_estimate = lam
        lo, hi = self.bounds
        clipped = min(max(lam, lo), hi) if math.isfinite(lam) else hi
        self._factor = self.memory * self._factor + (1.0 - self.memory) * clipped
        return _inflate(ensemble, self._factor)

    def state_dict(self) -> dict[str, float]:
        return {"factor": self._factor}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self._factor = float(state["factor"])


class AdditiveInflation(AbstractInflation):
    """Additive inflation: centred Gaussian noise of std ``std`` added to every member and entry.

    Args:
        std: Noise std (state units).
    """

    registry_name: ClassVar[str | None] = "additive"
    stochastic: ClassVar[bool] = True

    def __init__(self, std: float) -> None:
        if isinstance(std, bool) or not isinstance(std, (int, float)) or not (0.0 <= std < math.inf):
            raise ConfigError(format_error("std", "a non-negative noise std", repr(std)))
        self.std = float(std)

    def apply(self, ensemble: Tensor, obs_values: Tensor, op: AbstractObservation, *,
              generator: torch.Generator | None = None) -> Tensor:
        check_ensemble(ensemble, op)
        eta = torch.randn(ensemble.shape, generator=generator, dtype=torch.float64)
        eta = (eta - eta.mean(0)) * self.std
        return (ensemble.double() + eta.to(ensemble.device)).to(ensemble.dtype)


class InflationChain(AbstractInflation):
    """Several inflations applied in order (e.g. adaptive multiplicative, then additive).

    Args:
        parts: The inflations (objects or specs).
    """

    registry_name: ClassVar[str | None] = "chain"

    def __init__(self, parts: Sequence[Any]) -> None:
        self.parts = [inflation_from_spec(p) for p in parts]
        self.stochastic = any(p.stochastic for p in self.parts)  # type: ignore[misc]

    @property
    def factor(self) -> float:
        return math.prod(p.factor for p in self.parts)

    def apply(self, ensemble: Tensor, obs_values: Tensor, op: AbstractObservation, *,
              generator: torch.Generator | None = None) -> Tensor:
        for p in self.parts:
            ensemble = p.apply(ensemble, obs_values, op, generator=generator)
        return ensemble

    def state_dict(self) -> dict[str, float]:
        return {f"{i}.{k}": v for i, p in enumerate(self.parts) for k, v in p.state_dict().items()}

    def load_state_dict(self, state: dict[str, float]) -> None:
        for i, p in enumerate(self.parts):
            p.load_state_dict({k.split(".", 1)[1]: v for k, v in state.items() if k.split(".", 1)[0] == str(i)})

    def spec(self) -> dict[str, Any]:
        return {"type": "chain", "parts": [p.spec() for p in self.parts]}


INFLATIONS: dict[str, type[AbstractInflation]] = {
    "multiplicative": MultiplicativeInflation, "adaptive": AdaptiveInflation, "additive": AdditiveInflation,
    "chain": InflationChain,
}
"""Inflations by name (the ``type`` of a spec)."""


def inflation_from_spec(spec: Any) -> AbstractInflation:
    """An inflation from ``None`` (none), a number (fixed covariance factor), ``"adaptive"``, a spec dict
    ``{"type": name, **kwargs}`` (names of :data:`INFLATIONS`), a list (a chain), or as given."""
    if isinstance(spec, AbstractInflation):
        return spec
    if spec is None:
        return MultiplicativeInflation(1.0)
    if isinstance(spec, (int, float)) and not isinstance(spec, bool):
        return MultiplicativeInflation(float(spec))
    if isinstance(spec, str):
        spec = {"type": spec}
    if isinstance(spec, (list, tuple)):
        return InflationChain(list(spec))
    if not isinstance(spec, dict) or spec.get("type") not in INFLATIONS:
        got = repr(spec.get("type")) if isinstance(spec, dict) else f"{type(spec).__name__} {spec!r}"
        raise ConfigError(format_error("inflation", "None, a factor >= 1, 'adaptive', a list, or a spec with type in "
                                                    f"{sorted(INFLATIONS)}", got))
    cls = INFLATIONS[spec["type"]]
    kwargs = {k: v for k, v in spec.items() if k != "type"}
    check_config_keys(cls, kwargs, "inflation")
    return cls(**kwargs)
