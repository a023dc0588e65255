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
import re
import types
import typing
from pathlib import Path
from typing import Any

import torch

from .errors import ConfigError, format_error

__all__ = ["Configurable", "to_jsonable", "check_config_keys", "load_yaml_mapping", "load_json_text", "json_nesting",
           "MAX_CONFIG_BYTES", "MAX_NESTING", "MAX_YAML_NODES", "check_seed", "check_number", "check_device",
           "derive_seed", "SEED_LIMIT", "ENSEMBLE_SEED_LIMIT"]


MAX_CONFIG_BYTES = 4 * 2**20
"""Largest ``--config`` YAML file read (4 MiB; configurations are a few kB)."""

MAX_NESTING = 100
"""Deepest nesting of lists/mappings accepted in a YAML configuration or a JSON document."""

MAX_YAML_NODES = 100_000
"""Most values a YAML configuration may expand to, aliases counted at every use (alias bombs)."""


@functools.lru_cache(maxsize=1)
def _yaml_loader() -> type:
    """A ``yaml.SafeLoader`` that bounds nesting and the size the document expands to.

    ``yaml.safe_load`` builds an alias once and shares it, so a "billion laughs" document
    (``&a [x, x, ...]``, ``&b [*a, *a, ...]``, ...) loads in microseconds and then hangs whatever
    walks it (hashing, printing, validation). This loader counts, while composing, the number of
    values each node expands to (an alias counts the full size of its anchor at every use) and
    refuses a document above :data:`MAX_YAML_NODES`, nesting deeper than :data:`MAX_NESTING`, or
    an alias that refers to its own enclosing node (a recursive structure).
    """
    import yaml
    from yaml.events import AliasEvent
    from yaml.nodes import MappingNode, SequenceNode

    class BoundedSafeLoader(yaml.SafeLoader):
        def __init__(self, stream: str) -> None:
            super().__init__(stream)
            self._sizes: dict[int, int] = {}
            self._depth = 0

        def compose_node(self, parent: Any, index: Any) -> Any:
            alias = self.check_event(AliasEvent)
            self._depth += 1
            try:
                if self._depth > MAX_NESTING:
                    raise _YamlLimit(f"nesting deeper than {MAX_NESTING} levels", "flatten the configuration")
                node = super().compose_node(parent, index)
            finally:
                self._depth -= 1
            size = self._sizes.get(id(node))
            if size is None:
                if alias:
                    raise _YamlLimit("an alias to its own enclosing node (a recursive structure)",
                                     "remove the self-referencing alias")
                if isinstance(node, SequenceNode):
                    size = 1 + sum(self._sizes.get(id(c), 1) for c in node.value)
                elif isinstance(node, MappingNode):
                    size = 1 + sum(self._sizes.get(id(k), 1) + self._sizes.get(id(v), 1) for k, v in node.value)
                else:
                    size = 1
                self._sizes[id(node)] = size
            if size > MAX_YAML_NODES:
                raise _YamlLimit(f"a document expanding to more than {MAX_YAML_NODES} values (aliases counted "
                                 "at every use)", "write the values out instead of nesting aliases")
            return node

    return BoundedSafeLoader


class _YamlLimit(Exception):
    """A YAML document beyond the loader's bounds: ``args`` are (what was found, how to fix it)."""

SEED_LIMIT = 2**64
"""Seeds are integers in ``[0, SEED_LIMIT)``: what ``torch.Generator.manual_seed`` accepts without aliasing
(torch maps a negative seed ``s`` to ``2**64 + s``, so ``-1`` would silently equal ``2**64 - 1``)."""

ENSEMBLE_SEED_LIMIT = 2**32
"""Ensemble seeds (:func:`stochclosure.rollouts.ensemble`, ``stochclosure rollout``'s ``seed``) are integers in
``[0, ENSEMBLE_SEED_LIMIT)``: :func:`pyro.poutine.seed` also seeds NumPy, whose seeds are 32-bit."""


def check_seed(value: Any, argument: str = "seed", *, limit: int = SEED_LIMIT) -> int:
    """The one check of a random seed across the package (train, distill, demo, rollout, generate).

    Args:
        value: The seed as given.
        argument: Its name for the message (``"seed"``, ``"--seed"``, ``"initial.seed"``).
        limit: One above the largest seed accepted: :data:`SEED_LIMIT` (torch generators) or
            :data:`ENSEMBLE_SEED_LIMIT` (seeds of an ensemble, which also seed NumPy).

    Returns:
        ``value`` as an ``int``.

    Raises:
        ConfigError: not an integer (booleans and floats included), negative, or ``>= limit``.

    Example:
        >>> check_seed(7)
        7
    """
    bound = "2**64" if limit == SEED_LIMIT else "2**32" if limit == ENSEMBLE_SEED_LIMIT else str(limit)
    expected = f"an integer seed in [0, {bound})"
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(format_error(argument, expected, f"{type(value).__name__} {value!r}",
                                       "write a whole number such as 0"))
    if not 0 <= value < limit:
        why = ("torch generators take seeds in [0, 2**64)" if limit == SEED_LIMIT else
               f"ensemble seeds also seed NumPy, which takes seeds in [0, {bound})")
        raise ConfigError(format_error(argument, expected, repr(value), f"{why}; pick one there"))
    return int(value)


def derive_seed(seed: int, *offsets: int, scale: int = 1) -> int:
    """``seed * scale + sum(offsets)`` folded into ``[0, 2**64)``: a seed derived from a checked seed stays valid.

    Values already in range are unchanged, so seeds derived this way reproduce earlier runs.

    Example:
        >>> derive_seed(2**64 - 1, 1)
        0
    """
    return (int(seed) * int(scale) + sum(int(o) for o in offsets)) % SEED_LIMIT


def check_number(value: Any, argument: str, *, integer: bool = False, minimum: float | None = None,
                 maximum: float | None = None, open_min: bool = False, open_max: bool = False,
                 fix: str | None = None) -> Any:
    """Check a configuration number: type (booleans refused), finiteness and range.

    Args:
        value: The value as given.
        argument: Its name for the message.
        integer: Require an ``int``.
        minimum: Lower bound (inclusive unless ``open_min``).
        maximum: Upper bound (inclusive unless ``open_max``).
        open_min: Exclude ``minimum`` itself.
        open_max: Exclude ``maximum`` itself.
        fix: Hint for the message.

    Returns:
        ``value`` (an ``int`` when ``integer``, else a ``float``).

    Raises:
        ConfigError: wrong type, NaN/inf, or out of range; the message names ``argument``.

    Example:
        >>> check_number(0.5, "min_lr_ratio", minimum=0, maximum=1)
        0.5
    """
    lo = "" if minimum is None else f"{'>' if open_min else '>='} {minimum:g}"
    hi = "" if maximum is None else f"{'<' if open_max else '<='} {maximum:g}"
    kind = "an integer" if integer else "a finite number"
    expected = kind + (f" {lo}" if lo else "") + (" and" if lo and hi else "") + (f" {hi}" if hi else "")
    type_ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not type_ok:
        hint = fix
        if isinstance(value, str) and not integer:
            hint = hint or "write a number; YAML reads 1e-3 as text, write 1.0e-3"
        raise ConfigError(format_error(argument, expected, f"{type(value).__name__} {value!r}", hint))
    if not integer and not math.isfinite(value):
        raise ConfigError(format_error(argument, expected, repr(value), fix))
    bad = (minimum is not None and (value <= minimum if open_min else value < minimum)) or \
          (maximum is not None and (value >= maximum if open_max else value > maximum))
    if bad:
        raise ConfigError(format_error(argument, expected, repr(value), fix))
    return int(value) if integer else float(value)


def check_device(value: Any, argument: str = "device") -> torch.device:
    """Check that a device exists here before any work is done on it.

    Args:
        value: A ``torch.device`` or its name (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``).
        argument: Its name for the message (``"--device"``, ``"trainer.device"``).

    Returns:
        The ``torch.device``.

    Raises:
        DeviceError: an unknown device name, CUDA/MPS requested from a torch without it, or a CUDA
            index beyond the visible GPUs.

    Example:
        >>> check_device("cpu")
        device(type='cpu')
    """
    from .errors import DeviceError

    try:
        device = torch.device(value)
    except (RuntimeError, TypeError, ValueError):
        raise DeviceError(format_error(argument, "a device such as 'cpu', 'cuda' or 'cuda:0'",
                                       f"{type(value).__name__} {value!r}", "use cpu or cuda")) from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            build = "a CPU-only torch build" if torch.version.cuda is None else "no visible GPU"
            raise DeviceError(format_error(argument, "a device available here", f"{str(device)!r}, but this is {build}",
                                           "use --device cpu (or install a CUDA build of torch on a machine with a "
                                           "GPU)"))
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DeviceError(format_error(argument, f"a CUDA index below {torch.cuda.device_count()} (visible GPUs)",
                                           repr(str(device)), "use cuda:0, or check CUDA_VISIBLE_DEVICES"))
    elif device.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise DeviceError(format_error(argument, "a device available here", f"{str(device)!r} (no MPS backend)",
                                           "use --device cpu"))
    elif device.type != "cpu":
        raise DeviceError(format_error(argument, "'cpu', 'cuda[:N]' or 'mps'", repr(str(device)), "use cpu or cuda"))
    return device


def load_yaml_mapping(path: str | os.PathLike[str], expected: str = "a YAML mapping",
                      empty_ok: bool = False) -> dict[str, Any]:
    """Read a ``--config`` YAML file safely: plain data only, bounded in size, nesting and expansion.

    The loader is ``yaml.SafeLoader`` (no ``!!python`` tags) that also refuses, before building
    anything, a file above :data:`MAX_CONFIG_BYTES`, nesting deeper than :data:`MAX_NESTING` and
    documents whose aliases expand to more than :data:`MAX_YAML_NODES` values ("billion laughs").
    Anchors and aliases within those bounds are allowed. Every command's ``--config`` is read here.

    Args:
        path: The YAML file.
        expected: What the top level should be, for the error message.
        empty_ok: Read an empty file as ``{}`` instead of rejecting it.

    Raises:
        ConfigError: a missing or oversized file, a parse error, a document beyond the bounds or a
            top level that is not a mapping, each naming ``--config``.
    """
    import yaml

    p = Path(path)
    if not p.is_file():
        raise ConfigError(format_error("--config", "an existing YAML file", f"{str(p)!r} (not found)"))
    size = p.stat().st_size
    if size > MAX_CONFIG_BYTES:
        raise ConfigError(format_error("--config", f"a YAML file of at most {MAX_CONFIG_BYTES // 2**20} MiB",
                                       f"{str(p)!r} of {size / 2**20:.1f} MiB", "pass the configuration file"))
    try:
        loader = _yaml_loader()(p.read_text())  # a yaml.SafeLoader subclass
        try:
            raw = loader.get_single_data()
        finally:
            loader.dispose()
    except _YamlLimit as exc:
        got, fix = exc.args
        raise ConfigError(format_error("--config", "a plain YAML configuration", f"{got} in {str(p)!r}", fix)) from None
    except RecursionError:
        raise ConfigError(format_error("--config", "a plain YAML configuration",
                                       f"nesting deeper than {MAX_NESTING} levels in {str(p)!r}",
                                       "flatten the configuration")) from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(format_error("--config", "valid YAML (plain data, no !!python tags)",
                                       f"a parse error ({str(exc).splitlines()[0]})", "fix the YAML syntax")) from None
    if raw is None and empty_ok:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(format_error("--config", expected, type(raw).__name__))
    return raw


def json_nesting(text: str) -> int:
    """Deepest nesting of ``[``/``{`` in JSON ``text`` (brackets inside strings ignored).

    Linear in the text (NumPy on the bracket positions), so it can run before ``json.loads``,
    whose recursion a deeply nested document would exhaust.

    Example:
        >>> json_nesting('{"a": [1, [2, "]]]"]]}')
        3
    """
    import numpy as np

    stripped = re.sub(r'"(?:[^"\\]|\\.)*"', '""', text)
    codes = np.frombuffer(stripped.encode("utf-8", "surrogatepass"), dtype=np.uint8)
    steps = np.zeros(codes.shape, dtype=np.int8)
    steps[(codes == ord("[")) | (codes == ord("{"))] = 1
    steps[(codes == ord("]")) | (codes == ord("}"))] = -1
    at = np.flatnonzero(steps)
    return int(np.cumsum(steps[at], dtype=np.int64).max()) if at.size else 0


def load_json_text(text: str | bytes, where: str, error: type[Exception] = ConfigError, *,
                   max_chars: int = 16 * 2**20, max_depth: int = MAX_NESTING, source: str | None = None) -> Any:
    """Parse JSON read from a file or an attribute, bounded in size and nesting.

    Args:
        text: The JSON text (bytes are decoded as UTF-8).
        where: What is parsed (a path, ``"attribute 'closures' of data.h5"``), for the message.
        error: The error class to raise (``CheckpointError``, ``DatasetError``, ...).
        max_chars: Longest text accepted.
        max_depth: Deepest nesting accepted.
        source: The file the text comes from, when ``where`` does not say it (an attribute name).

    Returns:
        The parsed value.

    Raises:
        error: text that is too long, too deeply nested, not UTF-8 or not JSON, naming ``where``.
    """
    at = f" in {source!r}" if source else ""
    if isinstance(text, bytes):
        try:
            text = text.decode()
        except UnicodeDecodeError as exc:
            raise error(format_error(where, "UTF-8 JSON text", f"undecodable bytes ({exc}){at}",
                                     "the file is corrupt or of another kind")) from None
    if len(text) > max_chars:
        raise error(format_error(where, f"JSON text of at most {max_chars} characters", f"{len(text)} characters{at}",
                                 "the file is corrupt or of another kind"))
    depth = json_nesting(text)
    if depth > max_depth:
        raise error(format_error(where, f"JSON nested at most {max_depth} levels deep", f"{depth} levels{at}",
                                 "the file is corrupt or of another kind"))
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise error(format_error(where, "valid JSON", f"unparsable text ({str(exc)[:200]}){at}",
                                 "the file is corrupt or truncated")) from None


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
