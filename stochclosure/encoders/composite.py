"""Encoders built from encoders: a channel stack and per-channel input normalisation."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from .._types import Conditioning
from ..errors import ConfigError, ShapeError, format_error
from ..registry import resolve
from .base import AbstractConditioningEncoder

__all__ = ["CompositeEncoder", "NormalizedEncoder"]


def _resolve(spec: Any) -> AbstractConditioningEncoder:
    return resolve("encoder", spec)


def _merge(conds: Iterable[Conditioning]) -> Conditioning:
    """Union of the set attributes of several example conditions (first one wins)."""
    out: dict[str, Any] = {}
    for c in conds:
        for f in dataclasses.fields(c):
            v = getattr(c, f.name)
            if v is not None and f.name not in out:
                out[f.name] = v
    return Conditioning(**out)


class CompositeEncoder(AbstractConditioningEncoder):
    """Stack the outputs of several encoders along the channel axis.

    Example: the research setting's condition (current vorticity + sparse closure values)::

        {"type": "composite", "encoders": [{"type": "field"}, {"type": "sparse_interp"}]}

    Args:
        encoders: Encoder specs (names, ``{"type": ...}`` dicts or instances), in channel order.

    Shapes:
        ``(B, sum(e.out_channels), *grid)``.
    """

    spatial_dims: ClassVar[tuple[int, ...]] = (1, 2)

    def __init__(self, encoders: Sequence[Any] = ("field",)) -> None:
        super().__init__()
        if isinstance(encoders, (str, dict)) or not len(encoders):
            raise ConfigError(format_error("encoders", "a non-empty list of encoder specs", repr(encoders)[:80],
                                           "wrap a single spec in a list"))
        self.encoders = nn.ModuleList([_resolve(e) for e in encoders])
        dims = set.intersection(*(set(e.spatial_dims) for e in self.encoders))
        self.spatial_dims = tuple(sorted(dims))  # type: ignore[misc]

    @property
    def out_channels(self) -> int:
        return sum(int(e.out_channels) for e in self.encoders)

    def forward(self, cond: Conditioning, grid: tuple[int, ...]) -> Tensor:
        outs = [e(cond, grid) for e in self.encoders]
        b = max(o.shape[0] for o in outs)
        outs = [o.expand(b, *o.shape[1:]) if o.shape[0] == 1 else o for o in outs]
        return torch.cat(outs, dim=1)

    @classmethod
    def example(cls) -> CompositeEncoder:
        return cls([{"type": "field"}, {"type": "sparse_interp"}, {"type": "sparse_smooth", "density": True}])

    def example_condition(self, batch: int, generator: torch.Generator | None = None) -> Conditioning:
        return _merge(e.example_condition(batch, generator) for e in self.encoders)


class NormalizedEncoder(AbstractConditioningEncoder):
    """Per-channel affine normalisation ``(e(cond) - mean) / std`` of another encoder's output.

    The statistics are part of the configuration (and buffers), so a checkpoint rebuilds the
    same normalisation; :meth:`fit` computes them from example conditions.

    Args:
        encoder: The wrapped encoder (spec or instance).
        mean: Per-output-channel means (``None``: zeros).
        std: Per-output-channel stds (``None``: ones).
    """

    spatial_dims: ClassVar[tuple[int, ...]] = (1, 2)

    def __init__(self, encoder: Any = "field", mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None) -> None:
        super().__init__()
        self.encoder = _resolve(encoder)
        c = int(self.encoder.out_channels)
        m = torch.zeros(c, dtype=torch.float64) if mean is None else torch.as_tensor(mean, dtype=torch.float64)
        s = torch.ones(c, dtype=torch.float64) if std is None else torch.as_tensor(std, dtype=torch.float64)
        if m.shape != (c,) or s.shape != (c,):
            raise ShapeError(format_error("mean/std", f"{c} values (the wrapped encoder's out_channels)",
                                          f"shapes {tuple(m.shape)} and {tuple(s.shape)}"))
        if not bool((s > 0).all()):
            raise ConfigError(format_error("std", "positive values", str(s.tolist())))
        self.spatial_dims = tuple(self.encoder.spatial_dims)  # type: ignore[misc]
        self.register_buffer("mean", m.float())
        self.register_buffer("std", s.float())

    @property
    def out_channels(self) -> int:
        return int(self.encoder.out_channels)

    def forward(self, cond: Conditioning, grid: tuple[int, ...]) -> Tensor:
        out = self.encoder(cond, grid)
        shape = (1, -1) + (1,) * (out.dim() - 2)
        return (out - self.mean.view(shape).to(out)) / self.std.view(shape).to(out)

    @classmethod
    def fit(cls, encoder: Any, conds: Iterable[Conditioning], grid: tuple[int, ...],
            min_std: float = 1e-6) -> NormalizedEncoder:
        """Build a normalised encoder with statistics of ``encoder`` over ``conds`` on ``grid``.

        Args:
            encoder: The encoder to wrap (spec or instance).
            conds: Conditions (e.g. batches of the training set).
            grid: Grid on which to encode them.
            min_std: Floor for constant channels.

        Returns:
            The :class:`NormalizedEncoder`.
        """
        enc = _resolve(encoder)
        n, s1, s2 = 0, 0.0, 0.0
        with torch.no_grad():
            for c in conds:
                e = enc(c, grid).double().transpose(0, 1).reshape(enc.out_channels, -1)
                n += e.shape[1]
                s1 = s1 + e.sum(1)
                s2 = s2 + (e**2).sum(1)
        if n == 0:
            raise ConfigError(format_error("conds", "at least one condition", "none"))
        mean = s1 / n
        std = (s2 / n - mean**2).clamp_min(0).sqrt().clamp_min(min_std)
        return cls(enc, mean.tolist(), std.tolist())

    @classmethod
    def example(cls) -> NormalizedEncoder:
        return cls("field", [0.5], [2.0])

    def example_condition(self, batch: int, generator: torch.Generator | None = None) -> Conditioning:
        return self.encoder.example_condition(batch, generator)
