"""Record streams for dataset generation, shared by the systems.

A system that can produce training data implements ``iter_records(batch, *, generator,
spinup_steps, record_every, n_records, resolutions, closures, coarsen_method, dtype, device)``,
a generator yielding one record at a time as ``(time, {res: {name: (batch, C, *grid)}})`` with
``name`` ``"state"`` or a closure name, tensors on the CPU. Streaming keeps memory at one record
per batch whatever the trajectory length; :func:`collect_records` stacks a stream in memory.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

__all__ = ["collect_records"]


def collect_records(stream: Iterable[tuple[float, dict[int, dict[str, Tensor]]]]) -> dict[str, Any]:
    """Stack a record stream.

    Returns:
        ``{"time": (T,) float64, "fields": {res: {name: (batch, T, C, *grid)}}}``.
    """
    times: list[float] = []
    acc: dict[int, dict[str, list[Tensor]]] = {}
    for t, rec in stream:
        times.append(float(t))
        for res, d in rec.items():
            for name, v in d.items():
                acc.setdefault(res, {}).setdefault(name, []).append(v)
    return {"time": torch.tensor(times, dtype=torch.float64),
            "fields": {res: {k: torch.stack(v, 1) for k, v in d.items()} for res, d in acc.items()}}
