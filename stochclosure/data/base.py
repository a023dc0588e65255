"""The closure-dataset item protocol, batching, and an in-memory dataset.

Every closure dataset (HDF5-backed or in memory) is a ``torch.utils.data.Dataset`` whose items
are dicts of *unbatched* tensors:

====================  ==========================  =================================
key                   shape                       meaning
====================  ==========================  =================================
``"target"``          ``(C, *grid)``              the closure term U (required)
``"fields"``          ``(C_f, *grid)``            coarse state(s) y (optional)
``"history"``         ``(k, C_f, *grid)``         earlier states, oldest first (optional)
``"obs_values"``      ``(C_o, P)``                sparse measurements (optional)
``"features"``        ``(F,)``                    non-field conditioning (optional)
====================  ==========================  =================================

and which has an attribute ``obs_points`` ``(P, d)`` (or ``None``) shared by all items.
:func:`collate_closure` batches items into ``(target (B, C, *grid), Conditioning)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from .._types import Conditioning, check_tensor
from ..errors import ShapeError, format_error

__all__ = ["ITEM_KEYS", "collate_closure", "TensorClosureDataset"]

ITEM_KEYS = ("target", "fields", "history", "obs_values", "features")


def collate_closure(items: Sequence[dict[str, Tensor]], obs_points: Tensor | None = None
                    ) -> tuple[Tensor, Conditioning]:
    """Stack dataset items into a batch.

    Args:
        items: Dicts following the item protocol of this module.
        obs_points: ``(P, d)`` measurement coordinates shared by the items.

    Returns:
        ``(target, cond)``: target ``(B, C, *grid)`` and the batched :class:`Conditioning`.
    """
    if not items:
        raise ShapeError(format_error("items", "at least one dataset item", "an empty batch"))
    keys = set(items[0])
    if "target" not in keys:
        raise ShapeError(format_error("items[0]", "a dict with key 'target'", f"keys {sorted(keys)}"))
    stacked = {k: torch.stack([it[k] for it in items]) for k in keys if k in ITEM_KEYS}
    cond = Conditioning(
        fields=stacked.get("fields"),
        history=stacked.get("history"),
        obs_values=stacked.get("obs_values"),
        obs_points=obs_points if "obs_values" in stacked else None,
        features=stacked.get("features"),
    )
    return stacked["target"], cond


class TensorClosureDataset(Dataset):
    """A closure dataset held in memory (tests, tutorials, small problems).

    Args:
        target: ``(N, C, *grid)``.
        fields: ``(N, C_f, *grid)`` or ``None``.
        history: ``(N, k, C_f, *grid)`` or ``None``.
        obs_values: ``(N, C_o, P)`` or ``None``.
        obs_points: ``(P, d)`` or ``None``.
        features: ``(N, F)`` or ``None``.
    """

    def __init__(self, target: Tensor, fields: Tensor | None = None, history: Tensor | None = None,
                 obs_values: Tensor | None = None, obs_points: Tensor | None = None,
                 features: Tensor | None = None) -> None:
        check_tensor("target", target, min_rank=2)
        self.tensors: dict[str, Tensor] = {"target": target}
        for name, v in (("fields", fields), ("history", history), ("obs_values", obs_values), ("features", features)):
            if v is not None:
                check_tensor(name, v, batch=target.shape[0])
                self.tensors[name] = v
        Conditioning(fields=fields, history=history, obs_values=obs_values, obs_points=obs_points,
                     features=features).validate()
        self.obs_points = obs_points

    def __len__(self) -> int:
        return int(self.tensors["target"].shape[0])

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return {k: v[i] for k, v in self.tensors.items()}

    def collate(self, items: Sequence[dict[str, Any]]) -> tuple[Tensor, Conditioning]:
        """:func:`collate_closure` with this dataset's ``obs_points`` (pass as ``collate_fn``)."""
        return collate_closure(items, self.obs_points)
