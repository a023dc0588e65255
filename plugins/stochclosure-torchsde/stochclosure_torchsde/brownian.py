"""One seeded ``torchsde.BrownianInterval`` per ensemble member, seen by torchsde as one batch."""

from __future__ import annotations

import numpy as np
import torch
import torchsde
from torch import Tensor

from stochclosure.errors import ConfigError, format_error

__all__ = ["MemberBrownian", "member_entropies"]


def member_entropies(seed: int, batch: int) -> list[int]:
    """Entropy of each member's Brownian interval: a function of ``(seed, member index)`` only.

    Args:
        seed: Ensemble seed (non-negative int).
        batch: Number of members.

    Returns:
        ``batch`` non-negative 63-bit integers; member ``i`` gets the same value for any ``batch > i``.
    """
    return [int(np.random.SeedSequence(seed, spawn_key=(i,)).generate_state(1, dtype=np.uint64)[0] >> 1)
            for i in range(batch)]


class MemberBrownian(torchsde.BaseBrownian):
    """A batch of independent Brownian motions, member ``i`` from its own seeded ``BrownianInterval``.

    Member ``i``'s path depends only on ``entropies[i]``, so an ensemble member is reproducible
    whatever the batch it is drawn in, and members are independent. torchsde sees the usual
    ``(batch, state)`` Brownian motion.

    Args:
        t0: Start of the (reversed) time range.
        t1: End of the range.
        state_size: Number of Brownian channels per member.
        entropies: One seed per member (see :func:`member_entropies`).
        dtype: Dtype of the increments.
        device: Device of the increments.
        dt: Expected step (speeds fixed-step queries up; ``None`` for adaptive stepping).
        levy_area_approximation: ``"none"`` or ``"space-time"`` (needed by ``srk``).
    """

    def __init__(self, t0: float, t1: float, state_size: int, entropies: list[int], *,
                 dtype: torch.dtype = torch.float32, device: torch.device | str | None = None,
                 dt: float | None = None, levy_area_approximation: str = "none") -> None:
        if not entropies:
            raise ConfigError(format_error("entropies", "at least one member seed", "an empty list"))
        self._members = [torchsde.BrownianInterval(t0=t0, t1=t1, size=(1, state_size), dtype=dtype, device=device,
                                                   entropy=e, dt=dt, levy_area_approximation=levy_area_approximation)
                         for e in entropies]
        self._shape = (len(entropies), int(state_size))
        self._dtype, self._device, self._levy = dtype, torch.device(device or "cpu"), levy_area_approximation

    def __call__(self, ta: float, tb: float | None = None, return_U: bool = False,
                 return_A: bool = False) -> Tensor | tuple[Tensor, ...]:
        parts = [m(ta, tb, return_U=return_U, return_A=return_A) for m in self._members]
        if isinstance(parts[0], tuple):
            return tuple(torch.cat([p[k] for p in parts], dim=0) for k in range(len(parts[0])))
        return torch.cat(parts, dim=0)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(members={self._shape[0]}, state_size={self._shape[1]}, levy={self._levy!r})"

    @property
    def dtype(self) -> torch.dtype:
        """Dtype of the increments."""
        return self._dtype

    @property
    def device(self) -> torch.device:
        """Device of the increments."""
        return self._device

    @property
    def shape(self) -> tuple[int, int]:
        """``(batch, state)`` shape of one increment."""
        return self._shape

    @property
    def levy_area_approximation(self) -> str:
        """Levy-area approximation passed to torchsde (``"none"``, ``"space-time"``, ...)."""
        return self._levy
