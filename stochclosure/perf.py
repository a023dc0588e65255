"""CPU performance settings that change speed, never results.

glibc's ``malloc`` serves every block above ``M_MMAP_THRESHOLD`` (128 KiB at start, adapted up to
32 MiB) with a fresh ``mmap`` and gives it back with ``munmap`` when freed; it also trims the top
of the heap above ``M_TRIM_THRESHOLD``. A batched FNO pass allocates and frees tens of
multi-megabyte tensors per call, so every call page-faults its memory in again (the kernel zeroes
each page). :func:`tune_allocator` sets, through ``mallopt`` (the run-time twin of the
``MALLOC_*_`` environment variables, see ``mallopt(3)``):

* ``M_MMAP_MAX = 0``: large blocks come from the heap, which is reused across calls;
* ``M_TRIM_THRESHOLD = 1 GiB`` and ``M_TOP_PAD = 64 MiB``: freed memory stays in the process.

Measured on 2 CPU cores: 3.5-3.9x on FNO forward and backward passes at batch 64, 64²
(``benchmarks/cpu_speed.py``, ``benchmarks/results/cpu_speed.md``). The cost: the process keeps
its peak heap instead of returning freed memory to the system (a long-running process holds its
high-water mark), and fragmentation can raise the peak a little. Arithmetic is unchanged.

The ``stochclosure`` command line applies it at start-up. It is skipped when

* ``STOCHCLOSURE_MALLOC`` is ``0``, ``off``, ``no`` or ``false`` (opt out);
* any of ``MALLOC_MMAP_MAX_``, ``MALLOC_TRIM_THRESHOLD_``, ``MALLOC_TOP_PAD_``,
  ``MALLOC_MMAP_THRESHOLD_`` is set (the user's own allocator settings win);
* the C library is not glibc (musl, macOS, Windows: nothing to do).

Library code never calls it implicitly; notebooks and scripts may call it once.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

__all__ = ["tune_allocator", "allocator_settings", "ALLOCATOR_SETTINGS", "OPT_OUT_ENV"]

# mallopt parameter numbers from glibc's malloc.h
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_MAX = -1, -2, -4
ALLOCATOR_SETTINGS = {"MALLOC_MMAP_MAX_": 0, "MALLOC_TRIM_THRESHOLD_": 1 << 30, "MALLOC_TOP_PAD_": 64 << 20}
OPT_OUT_ENV = "STOCHCLOSURE_MALLOC"
_USER_ENV = ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_THRESHOLD_")
_applied: dict[str, int] | None = None


def _glibc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 - only glibc has it
        libc.mallopt  # noqa: B018
    except (OSError, AttributeError):
        return None
    return libc


def allocator_settings() -> dict[str, int] | None:
    """The settings :func:`tune_allocator` applied in this process, or ``None``."""
    return None if _applied is None else dict(_applied)


def tune_allocator(force: bool = False) -> bool:
    """Apply :data:`ALLOCATOR_SETTINGS` to glibc's allocator in this process (see the module docstring).

    Args:
        force: Apply even when the user set ``MALLOC_*_`` variables or opted out.

    Returns:
        ``True`` when the settings are in effect (now or from an earlier call), else ``False``.
    """
    global _applied
    if _applied is not None:
        return True
    if not force:
        if os.environ.get(OPT_OUT_ENV, "").strip().lower() in ("0", "off", "no", "false"):
            return False
        if any(k in os.environ for k in _USER_ENV):
            return False
    libc = _glibc()
    if libc is None:
        return False
    ok = all(libc.mallopt(param, value) == 1 for param, value in (
        (_M_MMAP_MAX, ALLOCATOR_SETTINGS["MALLOC_MMAP_MAX_"]),
        (_M_TRIM_THRESHOLD, ALLOCATOR_SETTINGS["MALLOC_TRIM_THRESHOLD_"]),
        (_M_TOP_PAD, ALLOCATOR_SETTINGS["MALLOC_TOP_PAD_"])))
    if ok:
        _applied = dict(ALLOCATOR_SETTINGS)
    return ok
