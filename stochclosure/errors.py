"""The typed error hierarchy of stochclosure.

Every predictable mistake raises a subclass of :class:`StochClosureError` whose message
names the argument, what was expected, what was received and how to fix it. The classes
also derive from the closest builtin exception (``ValueError``, ``TypeError``,
``LookupError``) so generic ``except`` clauses keep working.
"""

from __future__ import annotations

__all__ = [
    "StochClosureError",
    "ShapeError",
    "NonFiniteError",
    "DTypeError",
    "DeviceError",
    "IncompatibleComponentsError",
    "UnknownPluginError",
    "AmbiguousPluginError",
    "PluginValidationError",
    "CheckpointError",
    "ConfigError",
    "DatasetError",
    "OutputError",
    "ResourceError",
    "ResolutionWarning",
    "format_error",
]


def format_error(argument: str, expected: str, got: str, fix: str | None = None) -> str:
    """Build the one-line message every stochclosure error uses.

    Args:
        argument: Name of the offending argument (``"x"``, ``"cond.fields"``, ``"steps"``).
        expected: What a valid value looks like.
        got: What was actually passed.
        fix: How to repair the call, if there is a useful hint.

    Returns:
        ``"argument 'x': expected ..., got ...; fix: ..."``.
    """
    msg = f"argument {argument!r}: expected {expected}, got {got}"
    if fix:
        msg += f"; fix: {fix}"
    return msg


class StochClosureError(Exception):
    """Base class of every error raised on purpose by stochclosure."""


class ShapeError(StochClosureError, ValueError):
    """A tensor has the wrong rank, shape, batch size or resolution."""


class NonFiniteError(StochClosureError, ValueError):
    """A tensor holds NaN or infinite values where finite ones are required."""


class DTypeError(StochClosureError, TypeError):
    """Tensors of incompatible or unsupported dtypes were combined."""


class DeviceError(StochClosureError, ValueError):
    """Tensors that must live on one device live on several."""


class IncompatibleComponentsError(StochClosureError, ValueError):
    """Two components (SDE, score operator, encoder, sampler, system) cannot work together."""


class UnknownPluginError(StochClosureError, LookupError):
    """A component name is not registered in its group."""


class AmbiguousPluginError(UnknownPluginError):
    """Several third-party distributions provide the same component name; pin one as ``"dist:name"``."""


class PluginValidationError(StochClosureError, TypeError):
    """A registered object does not implement the interface of its group."""


class CheckpointError(StochClosureError, ValueError):
    """A checkpoint is missing, truncated, corrupt, foreign or from an incompatible version."""


class ConfigError(StochClosureError, ValueError):
    """A configuration (YAML, dict spec) has unknown keys, missing keys or wrong types."""


class DatasetError(StochClosureError, ValueError):
    """A dataset file is missing, foreign, incomplete, or lacks a requested dataset."""


class OutputError(StochClosureError, OSError):
    """An output location cannot be written (read-only, missing permission, disk full)."""


class ResourceError(StochClosureError, MemoryError):
    """A requested size (ensemble members, samples) needs more memory than the device has available."""


class ResolutionWarning(UserWarning):
    """A grid too coarse for a component: it runs, but part of the component goes unused."""
