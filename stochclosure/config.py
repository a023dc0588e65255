"""Configuration captured from constructor signatures.

A component's configuration *is* its constructor call: :class:`Configurable` records the
bound arguments of the most derived ``__init__`` (defaults filled in) as ``self.config``, so
``type(obj)(**obj.config)`` rebuilds it and a checkpoint can store ``{"type": name,
**config}`` as JSON. This is the idea of diffusers' ``register_to_config``, without a
decorator on every class.
"""

from __future__ import annotations

import functools
import inspect
import json
import math
import os
from pathlib import Path
from typing import Any

import torch

from .errors import ConfigError, format_error

__all__ = ["Configurable", "to_jsonable", "check_config_keys", "load_yaml_mapping"]


def load_yaml_mapping(path: str | os.PathLike[str], expected: str = "a YAML mapping",
                      empty_ok: bool = False) -> dict[str, Any]:
    """Read a ``--config`` YAML file safely (``yaml.safe_load``: plain data, no ``!!python`` tags).

    Args:
        path: The YAML file.
        expected: What the top level should be, for the error message.
        empty_ok: Read an empty file as ``{}`` instead of rejecting it.

    Raises:
        ConfigError: a missing file, a parse error or a top level that is not a mapping, each
            naming ``--config``.
    """
    import yaml

    p = Path(path)
    if not p.is_file():
        raise ConfigError(format_error("--config", "an existing YAML file", f"{str(p)!r} (not found)"))
    try:
        raw = yaml.safe_load(p.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(format_error("--config", "valid YAML (plain data, no !!python tags)",
                                       f"a parse error ({str(exc).splitlines()[0]})", "fix the YAML syntax")) from None
    if raw is None and empty_ok:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(format_error("--config", expected, type(raw).__name__))
    return raw


def to_jsonable(value: Any, key: str = "config") -> Any:
    """Convert a configuration value to plain JSON types.

    Tensors become nested lists (with their dtype recorded as ``{"__tensor__": ..., "dtype": ...}``),
    tuples become lists. Anything else that JSON cannot hold raises :class:`ConfigError`.
    """
    if isinstance(value, torch.Tensor):
        return {"__tensor__": value.detach().cpu().tolist(), "dtype": str(value.dtype).replace("torch.", "")}
    if isinstance(value, Configurable):
        return value.spec()
    if isinstance(value, dict):
        return {str(k): to_jsonable(v, f"{key}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v, f"{key}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, float) and not math.isfinite(value):
        return {"__float__": repr(value)}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise ConfigError(format_error(key, "a JSON-serialisable value (number, string, list, dict, tensor, None)",
                                   f"{type(value).__name__}", "pass plain values to the constructor"))


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


class Configurable:
    """Mixin recording constructor arguments as ``self.config`` (a dict).

    Subclasses need nothing special: each ``__init__`` is wrapped once so that only the outermost
    (most derived) call records its bound arguments with defaults applied.

    Example:
        >>> class Foo(Configurable):
        ...     def __init__(self, a: int, b: float = 2.0):
        ...         self.a = a
        >>> Foo(1).config
        {'a': 1, 'b': 2.0}
    """

    config: dict[str, Any]
    registry_name: str | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is None or getattr(init, "_captures_config", False):
            return
        sig = inspect.signature(init)

        @functools.wraps(init)
        def wrapped(self: Any, *args: Any, **kw: Any) -> None:
            outer = not getattr(self, "_config_capturing", False)
            if outer:
                object.__setattr__(self, "_config_capturing", True)
            try:
                init(self, *args, **kw)
            finally:
                if outer:
                    object.__setattr__(self, "_config_capturing", False)
            if outer:
                bound = sig.bind(self, *args, **kw)
                bound.apply_defaults()
                cfg: dict[str, Any] = {}
                for name, value in list(bound.arguments.items())[1:]:
                    param = sig.parameters[name]
                    if param.kind is param.VAR_KEYWORD:
                        cfg.update(value)
                    elif param.kind is not param.VAR_POSITIONAL:
                        cfg[name] = value
                object.__setattr__(self, "config", cfg)

        wrapped._captures_config = True  # type: ignore[attr-defined]
        cls.__init__ = wrapped  # type: ignore[method-assign]

    def spec(self) -> dict[str, Any]:
        """A JSON-ready ``{"type": name, **config}`` from which the registry rebuilds ``self``."""
        name = type(self).registry_name
        kind = getattr(type(self), "component_kind", None)
        if name is None and kind is not None:
            from .registry import name_of

            name = name_of(kind, self)
        if name is None:
            name = f"{type(self).__module__}:{type(self).__qualname__}"
        cfg = getattr(self, "config", {})
        return {"type": name, **{k: to_jsonable(v, k) for k, v in cfg.items()}}

    def config_json(self) -> str:
        """:meth:`spec` as a JSON string."""
        return json.dumps(self.spec(), sort_keys=True)
