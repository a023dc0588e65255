"""Checking keyword arguments against a constructor's signature, and restoring JSON-stored values.

The lowest layer of configuration handling: it imports nothing of the package but its errors,
so both :mod:`stochclosure.registry` (building components from specs) and
:mod:`stochclosure.config` (which re-exports these names) can use it.
"""

from __future__ import annotations

import inspect
import re
import types
import typing
from typing import Any

import torch

from .errors import ConfigError, format_error

__all__ = ["check_config_keys", "from_jsonable"]


def from_jsonable(value: Any) -> Any:
    """Inverse of :func:`to_jsonable` (tensors and non-finite floats restored)."""
    if isinstance(value, dict):
        if "__tensor__" in value:
            return torch.tensor(value["__tensor__"], dtype=getattr(torch, value.get("dtype", "float32")))
        if "__float__" in value:
            return float(value["__float__"])
        return {k: from_jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [from_jsonable(v) for v in value]
    return value


def check_config_keys(cls: type, config: dict[str, Any], where: str = "config") -> None:
    """Raise :class:`ConfigError` naming unknown keys for ``cls``'s constructor.

    Args:
        cls: The class that will receive ``config`` as keyword arguments.
        config: Keyword arguments.
        where: Name of the configuration block for the message.
    """
    sig = inspect.signature(cls.__init__)
    params = list(sig.parameters.values())[1:]
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return
    allowed = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    unknown = [k for k in config if k not in allowed]
    if unknown:
        raise ConfigError(format_error(f"{where}.{unknown[0]}", f"one of the keys {allowed} of {cls.__name__}",
                                       f"unknown key(s) {unknown}", "check the spelling or the component's docs"))
    required = [p.name for p in params if p.default is p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    missing = [k for k in required if k not in config]
    if missing:
        raise ConfigError(format_error(f"{where}.{missing[0]}", f"the required key(s) {missing} of {cls.__name__}",
                                       "nothing", "add them to the configuration"))
    _check_simple_types(cls, config, where)


_SIMPLE = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def _simple_annotation(hint: Any) -> tuple[tuple[type, ...], bool] | None:
    """``(allowed simple types, None allowed)`` for annotations like ``float``, ``int | None``; else ``None``."""
    args = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    simple = tuple(a for a in args if a in _SIMPLE)
    if not simple or any(a not in _SIMPLE and a is not type(None) for a in args):
        return None
    return simple, type(None) in args


def _check_simple_types(cls: type, config: dict[str, Any], where: str) -> None:
    """Refuse values whose type cannot be what a plainly annotated constructor parameter expects.

    Only parameters annotated with ``int``, ``float``, ``bool``, ``str`` or unions of them (and
    ``None``) are checked; an int is accepted for a float. Catches, for example, YAML 1.1 reading
    ``6.86e4`` (no dot before the exponent sign) as the string ``"6.86e4"``.
    """
    try:
        hints = typing.get_type_hints(cls.__init__)
    except Exception:  # noqa: BLE001 - unresolvable annotations: nothing to check
        return
    for key, value in config.items():
        simple = _simple_annotation(hints.get(key))
        if simple is None:
            continue
        allowed, optional = simple
        if value is None and optional:
            continue
        ok = any((isinstance(value, t) and not (t is not bool and isinstance(value, bool))) for t in allowed)
        ok = ok or (float in allowed and isinstance(value, int) and not isinstance(value, bool))
        if ok:
            continue
        fix = "write a value of that type"
        if isinstance(value, str) and re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)[eE]\d+", value.strip()):
            fix = f"YAML reads {value!r} as text: write the exponent with a sign and a dot, e.g. {_yaml_number(value)}"
        expected = " or ".join(_SIMPLE[t] for t in allowed) + (" or null" if optional else "")
        raise ConfigError(format_error(f"{where}.{key}", f"{expected} for {cls.__name__}",
                                       f"{type(value).__name__} {value!r}", fix))


def _yaml_number(text: str) -> str:
    mant, _, exp = text.strip().lower().partition("e")
    return f"{mant if '.' in mant else mant + '.0'}e+{exp}"
