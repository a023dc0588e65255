"""Coarse-field encoders: the current state (and optionally its history) on any grid."""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor

from .._types import Conditioning, check_condition_dtype
from ..errors import ShapeError, format_error
from ..fft import spectral_resample
from .base import AbstractConditioningEncoder

__all__ = ["FieldEncoder"]


class FieldEncoder(AbstractConditioningEncoder):
    """Pass ``cond.fields`` (and the last ``history`` states) through, resampled spectrally.

    Resampling to another resolution is by Fourier truncation / zero padding, exact for
    band-limited periodic fields.

    Args:
        channels: Channels of ``cond.fields``.
        history: Number of history states to append (0 = only the current state).
    """

    spatial_dims: ClassVar[tuple[int, ...]] = (1, 2)

    def __init__(self, channels: int = 1, history: int = 0) -> None:
        super().__init__()
        self.channels, self.history = int(channels), int(history)

    @property
    def out_channels(self) -> int:
        return self.channels * (1 + self.history)

    def forward(self, cond: Conditioning, grid: tuple[int, ...]) -> Tensor:
        check_condition_dtype(cond)
        if cond.fields is None:
            raise ShapeError(format_error("cond.fields", f"a field (batch, {self.channels}, *spatial)", "None",
                                          "pass Conditioning(fields=state)"))
        if cond.fields.shape[1] != self.channels:
            raise ShapeError(format_error("cond.fields", f"{self.channels} channels",
                                          f"{cond.fields.shape[1]} (shape {tuple(cond.fields.shape)})",
                                          "set FieldEncoder(channels=...) to match"))
        parts = [cond.fields]
        if self.history:
            if cond.history is None or cond.history.shape[1] < self.history:
                got = "None" if cond.history is None else f"{cond.history.shape[1]} states"
                raise ShapeError(format_error("cond.history", f"at least {self.history} states", got))
            h = cond.history[:, -self.history:]
            parts.append(h.reshape(h.shape[0], -1, *h.shape[3:]))
        import torch

        out = torch.cat(parts, dim=1)
        return spectral_resample(out, tuple(grid))
