"""One registry per component kind, fed by ``importlib.metadata`` entry points.

Groups (``setup.cfg`` ``[options.entry_points]``):

=================  ===============================  =====================================
kind               entry-point group                interface
=================  ===============================  =====================================
``sde``            ``stochclosure.sdes``            :class:`~stochclosure.sdes.AbstractSDE`
``score_operator`` ``stochclosure.score_operators`` :class:`~stochclosure.scores.AbstractScoreOperator`
``encoder``        ``stochclosure.encoders``        :class:`~stochclosure.encoders.AbstractConditioningEncoder`
``sampler``        ``stochclosure.samplers``        :class:`~stochclosure.samplers.AbstractSampler`
``system``         ``stochclosure.systems``         :class:`~stochclosure.systems.AbstractSystem`
``closure``        ``stochclosure.closures``        :class:`~stochclosure.closures.AbstractClosureLaw`
=================  ===============================  =====================================

The core registers its own built-ins through the same entry points as any third-party
plugin. Entry points are read lazily on first use and cached; an entry point whose import
fails becomes a warning naming it and its distribution, never a crash; a duplicate name warns
and names both providers (the core's own entry point wins); :func:`register` adds objects at run time
(notebooks, tests).

Example:
    >>> from stochclosure import registry
    >>> sde = registry.resolve("sde", {"type": "vp", "beta_min": 0.1, "beta_max": 20.0})
    >>> type(sde).__name__
    'VPSDE'
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from importlib import metadata
from typing import Any

from .errors import ConfigError, PluginValidationError, UnknownPluginError, format_error

__all__ = [
    "KINDS",
    "GROUPS",
    "PluginWarning",
    "Registry",
    "RegisteredComponent",
    "get_registry",
    "register",
    "resolve",
    "get",
    "available",
    "refresh",
    "validate_component",
    "name_of",
]

GROUPS: dict[str, str] = {
    "sde": "stochclosure.sdes",
    "score_operator": "stochclosure.score_operators",
    "encoder": "stochclosure.encoders",
    "sampler": "stochclosure.samplers",
    "system": "stochclosure.systems",
    "closure": "stochclosure.closures",
}
KINDS = tuple(GROUPS)

# Interfaces are imported lazily (they import this module's users).
_INTERFACES: dict[str, str] = {
    "sde": "stochclosure.sdes.base:AbstractSDE",
    "score_operator": "stochclosure.scores.base:AbstractScoreOperator",
    "encoder": "stochclosure.encoders.base:AbstractConditioningEncoder",
    "sampler": "stochclosure.samplers.base:AbstractSampler",
    "system": "stochclosure.systems.base:AbstractSystem",
    "closure": "stochclosure.closures.base:AbstractClosureLaw",
}

# Names provided by the project's optional distributions, for "pip install" hints.
KNOWN_PROVIDERS: dict[tuple[str, str], str] = {
    ("sampler", "torchsde"): "stochclosure-torchsde",
    ("sampler", "reverse_sde"): "stochclosure-torchsde",
    ("score_operator", "fno"): "stochclosure-neuralop",
}


class PluginWarning(UserWarning):
    """A plugin could not be loaded, or two plugins claim the same name."""


def _load_object(path: str) -> Any:
    module, _, attr = path.partition(":")
    obj: Any = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def _interface(kind: str) -> type:
    return _load_object(_INTERFACES[kind])


def _abstract_names(base: type) -> list[str]:
    names = set(getattr(base, "__abstractmethods__", ()))
    for klass in base.__mro__:
        names |= set(getattr(klass, "__abstractmethods__", ()))
    return sorted(names)


def _positional(fn: Any) -> tuple[int, int, bool]:
    """(required, total, has *args) positional parameters of ``fn``, excluding ``self``."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return (0, 0, True)
    if params and params[0].name in ("self", "cls"):
        params = params[1:]
    pos = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return (sum(p.default is p.empty for p in pos), len(pos), any(p.kind is p.VAR_POSITIONAL for p in params))


def _arity_mismatch(impl: Any, spec: Any) -> bool:
    """True when ``impl`` cannot be called with the positional arguments the interface passes."""
    if isinstance(inspect.getattr_static(spec, "__isabstractmethod__", False), property):
        return False
    req_i, tot_i, var_i = _positional(impl)
    req_s, tot_s, _ = _positional(spec)
    return req_i > req_s or (tot_i < req_s and not var_i)


def validate_component(kind: str, obj: Any, name: str = "<object>") -> Any:
    """Check that ``obj`` (a class or an instance) implements the interface of ``kind``.

    A subclass of the interface must not be abstract; any other class must provide every
    abstract method of the interface (duck typing, as pluggy validates hook implementations).

    Args:
        kind: One of :data:`KINDS`.
        obj: The class or instance to check.
        name: Registered name, for the message.

    Returns:
        ``obj`` unchanged.

    Raises:
        PluginValidationError: listing the missing methods.
    """
    if kind not in GROUPS:
        raise UnknownPluginError(format_error("kind", f"one of {list(KINDS)}", repr(kind)))
    base = _interface(kind)
    cls = obj if inspect.isclass(obj) else type(obj)
    if issubclass(cls, base):
        missing = sorted(getattr(cls, "__abstractmethods__", ()))
    else:
        missing = [m for m in _abstract_names(base) if not callable(getattr(cls, m, None))]
    if not missing:
        missing = [m for m in _abstract_names(base) if _arity_mismatch(getattr(cls, m), getattr(base, m))]
        if missing:
            detail = "; ".join(f"{m}{inspect.signature(getattr(cls, m))} cannot be called as "
                               f"{m}{inspect.signature(getattr(base, m))}" for m in missing)
            raise PluginValidationError(
                f"{kind} {name!r} ({cls.__module__}.{cls.__qualname__}) does not implement {base.__name__}: "
                f"{detail}; fix: accept the interface's positional arguments")
    if missing:
        raise PluginValidationError(
            f"{kind} {name!r} ({cls.__module__}.{cls.__qualname__}) does not implement "
            f"{base.__name__}: missing {', '.join(missing)}; fix: implement them, or subclass "
            f"{base.__module__}.{base.__name__} and override the abstract methods"
        )
    return obj


@dataclass
class RegisteredComponent:
    """One entry of a registry.

    Attributes:
        name: The name users write in configs.
        kind: Component kind (``"sde"``, ...).
        provider: Distribution name (``"stochclosure"``, a plugin) or ``"register()"``.
        target: ``"module:attr"`` of an entry point, or ``None`` for run-time objects.
        obj: The loaded object, once loaded.
    """

    name: str
    kind: str
    provider: str
    target: str | None = None
    obj: Any = None
    entry_point: Any = None

    def load(self) -> Any:
        """Import the entry point (once) and check that it implements the interface of ``kind``."""
        if self.obj is None:
            self.obj = validate_component(self.kind, self.entry_point.load(), self.name)
        return self.obj


class Registry(Mapping[str, Any]):
    """Registry of one component kind, read from its entry-point group on first use.

    It is a read-only mapping ``name -> class`` (loading on access); use :meth:`register` to add
    and :meth:`resolve` to build objects from user specs.

    Args:
        kind: Component kind, a key of :data:`GROUPS`.
    """

    def __init__(self, kind: str) -> None:
        if kind not in GROUPS:
            raise UnknownPluginError(format_error("kind", f"one of {list(KINDS)}", repr(kind)))
        self.kind = kind
        self.group = GROUPS[kind]
        self._entries: dict[str, RegisteredComponent] | None = None
        self._failed: dict[str, str] = {}

    # -- discovery ---------------------------------------------------------------------------
    def _discover(self) -> dict[str, RegisteredComponent]:
        if self._entries is not None:
            return self._entries
        entries: dict[str, RegisteredComponent] = {}
        # The core's own entry points come first, so a plugin cannot silently shadow a built-in.
        def order(e: metadata.EntryPoint) -> tuple[bool, str, str]:
            dist_name = e.dist.name if e.dist is not None else ""
            return (dist_name != "stochclosure", dist_name, e.name)

        for ep in sorted(metadata.entry_points(group=self.group), key=order):
            dist = ep.dist.name if ep.dist is not None else "<unknown distribution>"
            if ep.name in entries:
                first = entries[ep.name]
                if first.provider == dist and first.target == ep.value:
                    continue  # same distribution seen twice on sys.path
                warnings.warn(
                    f"{self.kind} name {ep.name!r} is provided twice: by {first.provider} ({first.target}) and "
                    f"by {dist} ({ep.value}); using the one from {first.provider}",
                    PluginWarning,
                    stacklevel=3,
                )
                continue
            entries[ep.name] = RegisteredComponent(ep.name, self.kind, dist, ep.value, entry_point=ep)
        self._entries = entries
        return entries

    def refresh(self) -> None:
        """Forget the cache; entry points are read again on next use (after ``pip install``)."""
        runtime = {k: v for k, v in (self._entries or {}).items() if v.entry_point is None}
        self._entries = None
        self._failed = {}
        self._discover().update(runtime)

    def _try_load(self, comp: RegisteredComponent) -> Any | None:
        try:
            return comp.load()
        except PluginValidationError as exc:
            self._failed[comp.name] = str(exc)
            warnings.warn(f"rejected {self.kind} plugin: {exc}", PluginWarning, stacklevel=3)
        except Exception as exc:  # noqa: BLE001 - a broken plugin must not take the registry down
            msg = (f"could not load {self.kind} plugin {comp.name!r} (entry point {comp.target} in group "
                   f"{self.group}, distribution {comp.provider}): {type(exc).__name__}: {exc}")
            self._failed[comp.name] = msg
            warnings.warn(msg + "; the other plugins still load", PluginWarning, stacklevel=3)
        return None

    # -- mapping protocol ----------------------------------------------------------------------
    def __getitem__(self, name: str) -> Any:
        return self.get(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self._discover() and name not in self._failed

    def names(self) -> list[str]:
        """Sorted names that are registered (broken plugins excluded once they failed)."""
        return sorted(n for n in self._discover() if n not in self._failed)

    def components(self, load: bool = True) -> list[RegisteredComponent]:
        """Every entry; with ``load=True`` each is imported (broken ones warn and are dropped)."""
        out = []
        for name in sorted(self._discover()):
            comp = self._discover()[name]
            if load and self._try_load(comp) is None:
                continue
            out.append(comp)
        return out

    # -- lookup ------------------------------------------------------------------------------
    def get(self, name: str) -> Any:
        """Return the registered class (or factory) called ``name``.

        Raises:
            UnknownPluginError: listing the installed names and a ``pip install`` hint.
        """
        entries = self._discover()
        comp = entries.get(name)
        if comp is not None and name not in self._failed:
            obj = self._try_load(comp)
            if obj is not None:
                return obj
        raise self._unknown(name)

    def _unknown(self, name: str) -> UnknownPluginError:
        names = self.names()
        hint = ""
        if name in self._failed:
            hint = f"; it is installed but failed to load: {self._failed[name]}"
        elif (self.kind, name) in KNOWN_PROVIDERS:
            hint = f"; fix: pip install {KNOWN_PROVIDERS[(self.kind, name)]}"
        else:
            close = difflib.get_close_matches(name, names, n=1)
            if close:
                hint = f"; did you mean {close[0]!r}?"
        return UnknownPluginError(
            f"unknown {self.kind} {name!r}; installed {self.kind}s: {', '.join(names) or 'none'}{hint}"
        )

    def register(self, name: str, obj: Any, *, overwrite: bool = False) -> Any:
        """Register ``obj`` (a class implementing the interface) under ``name`` at run time.

        Args:
            name: The name to use in configs.
            obj: The class.
            overwrite: Replace an existing entry silently instead of raising.

        Returns:
            ``obj``, so this works as a decorator through :func:`register`.

        Raises:
            PluginValidationError: if ``obj`` does not implement the interface.
            ValueError: if ``name`` exists and ``overwrite`` is false.
        """
        validate_component(self.kind, obj, name)
        entries = self._discover()
        if name in entries and not overwrite and entries[name].obj is not obj:
            raise ConfigError(format_error("name", f"a {self.kind} name not yet taken",
                                           f"{name!r}, already provided by {entries[name].provider}",
                                           "pick another name or pass overwrite=True"))
        entries[name] = RegisteredComponent(name, self.kind, "register()", None, obj=obj)
        self._failed.pop(name, None)
        return obj

    def unregister(self, name: str) -> None:
        """Remove a name registered at run time (tests, notebooks)."""
        self._discover().pop(name, None)

    def name_of(self, obj: Any) -> str | None:
        """The name under which ``obj``'s class is registered, if any (loaded entries only)."""
        cls = obj if inspect.isclass(obj) else type(obj)
        for name, comp in self._discover().items():
            if comp.obj is cls:
                return name
        for name, comp in self._discover().items():
            if comp.target and comp.target == f"{cls.__module__}:{cls.__qualname__}":
                return name
        return None

    def resolve(self, spec: Any, **overrides: Any) -> Any:
        """Turn a user spec into an instance.

        Args:
            spec: A registered name, a class, an instance (returned as is), or a dict
                ``{"type": name, **kwargs}``.
            **overrides: Extra keyword arguments for the constructor.

        Returns:
            The instance.

        Raises:
            UnknownPluginError: for an unknown name (the message lists the installed ones).
            ConfigError: for a malformed spec or unknown constructor keys.
            PluginValidationError: for a class or instance that does not implement the interface.
        """
        base = _interface(self.kind)
        if isinstance(spec, base) or (not inspect.isclass(spec) and not isinstance(spec, (str, dict))
                                      and spec is not None):
            validate_component(self.kind, spec)
            if overrides:
                raise ConfigError(format_error("overrides", "no keyword arguments for an instance",
                                               f"{sorted(overrides)}", "configure the instance directly"))
            return spec
        kwargs: dict[str, Any] = {}
        if isinstance(spec, dict):
            if "type" not in spec:
                raise ConfigError(format_error(f"{self.kind}.type", "a 'type' key naming the component",
                                               f"keys {sorted(spec)}", f"add 'type': one of {self.names()}"))
            kwargs = {k: v for k, v in spec.items() if k != "type"}
            spec = spec["type"]
        if isinstance(spec, str):
            cls = self.get(spec) if ":" not in spec else validate_component(self.kind, _load_object(spec), spec)
        elif inspect.isclass(spec):
            cls = validate_component(self.kind, spec)
        else:
            raise ConfigError(format_error(self.kind, "a name, class, instance or {'type': name, ...} dict",
                                           type(spec).__name__))
        kwargs.update(overrides)
        from .config import check_config_keys, from_jsonable

        # JSON forms first (a saved inf is {"__float__": "inf"}), so the type checks see the values themselves
        kwargs = {k: from_jsonable(v) for k, v in kwargs.items()}
        if inspect.isclass(cls):
            check_config_keys(cls, kwargs, where=self.kind)
        try:
            return cls(**kwargs)
        except TypeError as exc:
            raise ConfigError(f"could not build {self.kind} {spec!r} with {sorted(kwargs)}: {exc}") from exc


_REGISTRIES: dict[str, Registry] = {}


def get_registry(kind: str) -> Registry:
    """The (cached) :class:`Registry` for ``kind``."""
    if kind not in _REGISTRIES:
        _REGISTRIES[kind] = Registry(kind)
    return _REGISTRIES[kind]


def register(kind: str, name: str, obj: Any = None, *, overwrite: bool = False) -> Any:
    """Register a component at run time; usable as a decorator.

    Example:
        >>> import stochclosure as sc
        >>> @sc.register("sde", "my_ve", overwrite=True)
        ... class MyVE(sc.sdes.VESDE):
        ...     pass
        >>> sc.resolve("sde", "my_ve").sigma_max
        50.0
    """
    if obj is None:
        return lambda o: get_registry(kind).register(name, o, overwrite=overwrite)
    return get_registry(kind).register(name, obj, overwrite=overwrite)


def resolve(kind: str, spec: Any, **overrides: Any) -> Any:
    """Build a component of ``kind`` from a name, class, instance or ``{"type": ...}`` dict."""
    return get_registry(kind).resolve(spec, **overrides)


def get(kind: str, name: str) -> Any:
    """The registered class called ``name`` in ``kind``."""
    return get_registry(kind).get(name)


def available(kind: str | None = None) -> dict[str, list[str]]:
    """Names registered per kind (all kinds when ``kind`` is ``None``)."""
    kinds = KINDS if kind is None else (kind,)
    return {k: get_registry(k).names() for k in kinds}


def refresh() -> None:
    """Re-read entry points of every kind (after installing a plugin in a running session)."""
    for reg in _REGISTRIES.values():
        reg.refresh()


def name_of(kind: str, obj: Any) -> str | None:
    """Registered name of ``obj`` (class or instance) in ``kind``, or ``None``."""
    return get_registry(kind).name_of(obj)
