"""Memory estimates checked before a large allocation, so a size asked for by mistake is refused.

An ensemble of ``members = 10**9`` or ``n = 10**9`` closure samples would otherwise be allocated:
the process is killed by the operating system (no message at all) or torch raises a raw
allocator error after minutes of work. :func:`check_allocation` compares a *lower bound* of the
bytes a call will need with the memory available on its device and raises :class:`ResourceError`
naming the argument when the bound does not fit. Being a lower bound, the check never refuses a
call that would have fitted; it catches the sizes that cannot.

Available memory is ``MemAvailable + SwapFree`` of ``/proc/meminfo`` (capped by the cgroup's
``memory.max`` when the process runs in a limited container) for the CPU, and the free memory
reported by :func:`torch.cuda.mem_get_info` for a CUDA device. Where it cannot be read (other
platforms, other devices) nothing is refused. Setting the environment variable
``STOCHCLOSURE_SKIP_MEMORY_CHECK=1`` skips the check (e.g. on machines whose memory accounting
is unusual).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import torch

from .errors import ResourceError, format_error

__all__ = ["SKIP_ENV", "available_bytes", "allocation_bytes", "check_allocation", "check_ensemble_memory"]

SKIP_ENV = "STOCHCLOSURE_SKIP_MEMORY_CHECK"
"""Environment variable: ``1`` turns :func:`check_allocation` off."""


def _meminfo_bytes(path: Path = Path("/proc/meminfo")) -> int | None:
    try:
        fields = dict(line.split(":", 1) for line in path.read_text().splitlines() if ":" in line)
        kib = int(fields["MemAvailable"].split()[0]) + int(fields.get("SwapFree", "0 kB").split()[0])
    except (OSError, KeyError, ValueError):
        return None
    return kib * 1024


def _cgroup_bytes(root: Path = Path("/sys/fs/cgroup")) -> int | None:
    """Room left under a cgroup v2 memory limit, ``None`` without one."""
    try:
        limit = (root / "memory.max").read_text().strip()
        if limit == "max":
            return None
        return max(int(limit) - int((root / "memory.current").read_text().strip()), 0)
    except (OSError, ValueError):
        return None


def available_bytes(device: torch.device | str | None = None) -> int | None:
    """Bytes available for new tensors on ``device`` (CPU when ``None``), or ``None`` if unknown.

    Example:
        >>> available_bytes("meta") is None
        True
    """
    dev = torch.device("cpu" if device is None else device)
    if dev.type == "cuda":
        try:
            return int(torch.cuda.mem_get_info(dev)[0])
        except (RuntimeError, AssertionError, ValueError):
            return None
    if dev.type != "cpu":
        return None
    known = [b for b in (_meminfo_bytes(), _cgroup_bytes()) if b is not None]
    return min(known) if known else None


def allocation_bytes(shape: Sequence[int], dtype: torch.dtype, copies: float = 1.0) -> int:
    """Bytes of ``copies`` tensors of ``shape`` and ``dtype`` (exact integer arithmetic, no overflow).

    Example:
        >>> allocation_bytes((1000, 3, 32, 32), torch.float32)
        12288000
    """
    itemsize = torch.empty((), dtype=dtype).element_size()
    return int(math.ceil(math.prod(int(s) for s in shape) * itemsize * copies))


def _gib(n: float) -> str:
    return f"{n / 2**30:.3g} GiB"


def check_allocation(argument: str, shape: Sequence[int], dtype: torch.dtype,
                     device: torch.device | str | None = None, *, copies: float = 1.0, value: object = None,
                     fix: str | None = None) -> int:
    """Refuse an allocation that cannot fit in the memory of ``device``, naming the argument that sized it.

    Args:
        argument: The argument whose value makes the allocation large (``"members"``, ``"n"``).
        shape: Shape of the tensor to be allocated (e.g. ``(records, members, C, *grid)``).
        dtype: Its dtype.
        device: Where it will live (CPU when ``None``).
        copies: How many such tensors are certainly alive at once (a lower bound).
        value: The argument's value, for the message.
        fix: How to make the call smaller (a generic hint when ``None``).

    Returns:
        The estimated bytes.

    Raises:
        ResourceError: the estimate exceeds the available memory; the message names ``argument``,
            the estimate and what is available, and how to skip the check.

    Example:
        >>> check_allocation("members", (10, 8, 1, 16, 16), torch.float32)
        81920
    """
    need = allocation_bytes(shape, dtype, copies)
    if os.environ.get(SKIP_ENV, "") == "1":
        return need
    free = available_bytes(device)
    if free is not None and need > free:
        where = str(torch.device("cpu" if device is None else device))
        got = (f"{argument} = {value!r}, which needs at least {_gib(need)} ({copies:g} x {tuple(int(s) for s in shape)} "
               f"{str(dtype).replace('torch.', '')}) with {_gib(free)} available on {where}")
        hint = fix or f"use a smaller {argument}"
        raise ResourceError(format_error(argument, f"a size whose tensors fit in memory ({_gib(free)} available)",
                                         got, f"{hint}; or set {SKIP_ENV}=1 to skip this check"))
    return need


def check_ensemble_memory(members: int, n_steps: int, record_every: int, state_shape: Sequence[int],
                          dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> int:
    """Refuse an ensemble whose recorded states alone cannot fit in memory.

    The lower bound counted: the records ``(n_steps // record_every + 1, members, *state_shape)``
    plus two working states per member (the state being stepped and its closure).

    Args:
        members: Ensemble size.
        n_steps: Solver steps.
        record_every: Steps between records.
        state_shape: Shape of one member's state, e.g. ``(1, 32, 32)``.
        dtype: State dtype.
        device: Where the ensemble runs.

    Returns:
        The estimated bytes.

    Raises:
        ResourceError: naming ``members`` (or ``n_steps`` when the records outnumber the members).

    Example:
        >>> check_ensemble_memory(16, 100, 10, (1, 32, 32))
        851968
    """
    records = int(n_steps) // int(record_every) + 1
    argument, value = ("members", members) if members >= records else ("n_steps", n_steps)
    return check_allocation(argument, (records + 2, int(members), *state_shape), dtype, device, value=value,
                            fix="use fewer members, fewer steps or a larger record_every")
