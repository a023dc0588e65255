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
fails becomes a warning naming it and its distribution, never a crash; :func:`register` adds
objects at run time (notebooks, tests).

Specs resolve **registered names only**. A spec is a name, a ``{"type": name, ...}`` dict, a
class or an instance; the ``type`` of a spec read from a file (a checkpoint's ``config.json``,
a YAML configuration) never imports a module: ``"module:attr"`` import paths are not
accepted, so a file cannot make the library run code it names. Python users who need an
unregistered class pass the class (or an instance) itself, or :func:`register` it first.

Name clashes follow one deterministic rule, independent of installation order:

* the core's own entry point wins over any plugin's (the plugin's stays reachable pinned);
* two or more *third-party* distributions providing the same name make it **ambiguous**:
  resolving the bare name raises :class:`~stochclosure.errors.AmbiguousPluginError` listing the
  providers, and a :class:`PluginWarning` says so at discovery;
* ``"dist:name"`` (distribution name, a colon, the component name) pins the provider, e.g.
  ``{"type": "acme-closures:vp2"}``; distribution names compare as ``pip`` does (case, ``-``,
  ``_`` and ``.`` are equivalent). A component built from a pinned name records the pinned
  name in its spec, so a checkpoint reloads the same provider. :func:`provider_of` names the
  distribution a name resolves to.

A misspelt entry-point group (``stochclosure.sampler`` for ``stochclosure.samplers``, any
``stochclosure.*`` group close to a real one) warns, naming the distribution and both groups.
A component that is a ``torch.nn.Module`` but whose ``__init__`` forgets ``super().__init__()``
is a :class:`~stochclosure.errors.PluginValidationError` with the fix.

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
import re
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from importlib import metadata
from typing import Any

from ._arguments import check_config_keys, from_jsonable
from .errors import AmbiguousPluginError, ConfigError, PluginValidationError, UnknownPluginError, format_error

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
    "provider_of",
    "CORE_DISTRIBUTION",
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

CORE_DISTRIBUTION = "stochclosure"
"""The core's distribution: its entry points win every name clash."""

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
    """A plugin could not be loaded, two plugins claim the same name, or an entry-point group is misspelt."""


def _load_interface(path: str) -> Any:
    """Import one of the fixed :data:`_INTERFACES` (never a path read from user input)."""
    module, _, attr = path.partition(":")
    obj: Any = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def _interface(kind: str) -> type:
    return _load_interface(_INTERFACES[kind])


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
    if not inspect.isclass(obj):
        _check_initialised(kind, obj, name)
    return obj


def _not_initialised(kind: str, cls: type, name: str) -> PluginValidationError:
    return PluginValidationError(format_error(
        f"{kind} {name}", "a torch.nn.Module whose __init__ calls super().__init__() first",
        f"{cls.__module__}.{cls.__qualname__}, whose __init__ does not call super().__init__() (torch's "
        "_parameters, _modules and hooks are missing)",
        f"call super().__init__(...) as the first statement of {cls.__qualname__}.__init__, before setting "
        "any attribute"))


def _check_initialised(kind: str, obj: Any, name: str) -> None:
    """Refuse an ``nn.Module`` instance whose ``__init__`` skipped ``super().__init__()``."""
    import torch

    if isinstance(obj, torch.nn.Module) and "_parameters" not in vars(obj):
        raise _not_initialised(kind, type(obj), name)


def _construct(kind: str, cls: Any, kwargs: dict[str, Any], spec: Any) -> Any:
    """``cls(**kwargs)`` with typed errors for bad keywords and a forgotten ``super().__init__()``."""
    import torch

    try:
        obj = cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"could not build {kind} {spec!r} with {sorted(kwargs)}: {exc}") from exc
    except AttributeError as exc:
        module_cls = inspect.isclass(cls) and issubclass(cls, torch.nn.Module)
        if module_cls and ("Module.__init__()" in str(exc) or "'_" in str(exc)):
            raise _not_initialised(kind, cls, str(spec)) from exc
        raise
    _check_initialised(kind, obj, str(spec))
    return obj


def canonical_distribution(name: str) -> str:
    """A distribution name normalised as ``pip`` compares them (PEP 503): ``Acme_Closures`` -> ``acme-closures``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _dist_name(ep: metadata.EntryPoint) -> str:
    return ep.dist.name if ep.dist is not None else "<unknown distribution>"


def _misspelt_groups(group: str) -> list[tuple[str, str]]:
    """``(distribution, wrong group)`` for every installed ``stochclosure.*`` group closest to ``group``.

    A group that is not one of :data:`GROUPS` but whose suffix is close to a real one (a missing
    ``s``, a typo) is a plugin author's mistake that would otherwise be ignored silently.
    """
    real = {g.split(".", 1)[1]: g for g in GROUPS.values()}
    out = []
    eps = metadata.entry_points()
    for wrong in sorted(eps.groups):
        if not wrong.startswith("stochclosure.") or wrong in GROUPS.values():
            continue
        close = difflib.get_close_matches(wrong.split(".", 1)[1], list(real), n=1, cutoff=0.75)
        if close and real[close[0]] == group:
            out.extend((d, wrong) for d in sorted({_dist_name(ep) for ep in eps.select(group=wrong)}))
    return out


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
    and :meth:`resolve` to build objects from user specs. Name clashes follow the rule of the
    module docstring: the core wins, third-party clashes are ambiguous, ``"dist:name"`` pins.

    Args:
        kind: Component kind, a key of :data:`GROUPS`.
    """

    def __init__(self, kind: str) -> None:
        if kind not in GROUPS:
            raise UnknownPluginError(format_error("kind", f"one of {list(KINDS)}", repr(kind)))
        self.kind = kind
        self.group = GROUPS[kind]
        self._entries: dict[str, RegisteredComponent] | None = None
        self._pinned: dict[tuple[str, str], RegisteredComponent] = {}
        self._ambiguous: dict[str, list[RegisteredComponent]] = {}
        self._failed: dict[str, str] = {}

    # -- discovery ---------------------------------------------------------------------------
    def _read_entry_points(self) -> dict[str, list[RegisteredComponent]]:
        """Every entry point of the group, per name, the core's first, then by distribution name."""
        def order(e: metadata.EntryPoint) -> tuple[bool, str, str]:
            dist = canonical_distribution(_dist_name(e))
            return (dist != CORE_DISTRIBUTION, dist, e.value)

        by_name: dict[str, list[RegisteredComponent]] = {}
        for ep in sorted(metadata.entry_points(group=self.group), key=order):
            comp = RegisteredComponent(ep.name, self.kind, _dist_name(ep), ep.value, entry_point=ep)
            same = [c for c in by_name.get(ep.name, [])
                    if canonical_distribution(c.provider) == canonical_distribution(comp.provider)]
            if same:
                continue  # one distribution seen twice on sys.path: its first entry stands
            by_name.setdefault(ep.name, []).append(comp)
        return by_name

    def _discover(self) -> dict[str, RegisteredComponent]:
        if self._entries is not None:
            return self._entries
        for dist, wrong in _misspelt_groups(self.group):
            warnings.warn(f"distribution {dist} declares entry points in group {wrong!r}, which stochclosure "
                          f"does not read; fix: rename the group to {self.group!r} in its setup.cfg/pyproject "
                          f"entry points and reinstall it", PluginWarning, stacklevel=3)
        entries: dict[str, RegisteredComponent] = {}
        self._pinned, self._ambiguous = {}, {}
        for name, comps in self._read_entry_points().items():
            for comp in comps:
                self._pinned[(canonical_distribution(comp.provider), name)] = comp
            if len(comps) == 1:
                entries[name] = comps[0]
            elif canonical_distribution(comps[0].provider) == CORE_DISTRIBUTION:
                entries[name] = comps[0]
                others = ", ".join(f"{c.provider} ({c.target})" for c in comps[1:])
                warnings.warn(f"{self.kind} name {name!r} is provided twice: by {comps[0].provider} "
                              f"({comps[0].target}) and by {others}; using the one from {comps[0].provider} "
                              f"(the core's own wins); pin another provider as 'distribution:{name}'",
                              PluginWarning, stacklevel=3)
            else:
                self._ambiguous[name] = comps
                warnings.warn(str(self._ambiguity(name)), PluginWarning, stacklevel=3)
        self._entries = entries
        return entries

    def refresh(self) -> None:
        """Forget the cache; entry points are read again on next use (after ``pip install``)."""
        runtime = {k: v for k, v in (self._entries or {}).items() if v.entry_point is None}
        self._entries = None
        self._failed = {}
        self._discover().update(runtime)
        for name in runtime:
            self._ambiguous.pop(name, None)

    def _try_load(self, comp: RegisteredComponent, key: str | None = None) -> Any | None:
        key = comp.name if key is None else key
        try:
            return comp.load()
        except PluginValidationError as exc:
            self._failed[key] = str(exc)
            warnings.warn(f"rejected {self.kind} plugin: {exc}", PluginWarning, stacklevel=3)
        except Exception as exc:  # noqa: BLE001 - a broken plugin must not take the registry down
            msg = (f"could not load {self.kind} plugin {comp.name!r} (entry point {comp.target} in group "
                   f"{self.group}, distribution {comp.provider}): {type(exc).__name__}: {exc}")
            self._failed[key] = msg
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
        if not isinstance(name, str) or name in self._failed:
            return False
        try:
            self.component(name)
        except UnknownPluginError:
            return False
        return True

    def names(self) -> list[str]:
        """Sorted names that resolve (broken plugins excluded once they failed).

        An ambiguous name is listed in its pinned forms only (``"dist:name"``, one per provider).
        """
        entries = self._discover()
        pinned = [f"{c.provider}:{n}" for n, comps in self._ambiguous.items() for c in comps]
        return sorted([n for n in entries if n not in self._failed] + [p for p in pinned if p not in self._failed])

    def components(self, load: bool = True) -> list[RegisteredComponent]:
        """Every entry (each provider of an ambiguous name too); with ``load=True`` each is
        imported (broken ones warn and are dropped)."""
        entries = self._discover()
        listed = [(n, entries[n]) for n in sorted(entries)]
        listed += [(f"{c.provider}:{n}", c) for n in sorted(self._ambiguous) for c in self._ambiguous[n]]
        out = []
        for key, comp in listed:
            if load and (key in self._failed or self._try_load(comp, key) is None):
                continue
            out.append(comp)
        return out

    # -- lookup ------------------------------------------------------------------------------
    def component(self, name: str) -> RegisteredComponent:
        """The entry a name (``"name"`` or a pinned ``"dist:name"``) stands for, without importing it.

        Raises:
            AmbiguousPluginError: a bare name several third-party distributions provide.
            UnknownPluginError: an unknown name or distribution; never imports a module path.
        """
        entries = self._discover()
        if ":" in name:
            dist, _, bare = name.partition(":")
            comp = self._pinned.get((canonical_distribution(dist), bare))
            if comp is None:
                raise self._unknown_pinned(name, dist, bare)
            return comp
        if name in self._ambiguous:
            raise self._ambiguity(name)
        if name not in entries:
            raise self._unknown(name)
        return entries[name]

    def get(self, name: str) -> Any:
        """Return the registered class (or factory) called ``name`` (or pinned ``"dist:name"``).

        Raises:
            AmbiguousPluginError: several third-party distributions provide ``name``.
            UnknownPluginError: listing the installed names and a ``pip install`` hint.
        """
        comp = self.component(name)
        if name not in self._failed:
            obj = self._try_load(comp, name)
            if obj is not None:
                return obj
        raise self._unknown(name)

    def provider_of(self, name: str) -> str:
        """The distribution whose component ``name`` resolves to (``"register()"`` for run-time objects)."""
        return self.component(name).provider

    def _ambiguity(self, name: str) -> AmbiguousPluginError:
        comps = self._ambiguous[name]
        providers = ", ".join(f"{c.provider} ({c.target})" for c in comps)
        pins = " or ".join(repr(f"{c.provider}:{name}") for c in comps)
        return AmbiguousPluginError(format_error(
            f"{self.kind}.type", f"a {self.kind} name provided by one distribution",
            f"{name!r}, provided by {len(comps)} third-party distributions: {providers}",
            f"pin the provider as {pins}, or uninstall one of them"))

    def _unknown_pinned(self, name: str, dist: str, bare: str) -> UnknownPluginError:
        providers = sorted(c.provider for (_, n), c in self._pinned.items() if n == bare)
        have = f"{bare!r} is provided by {', '.join(providers)}" if providers else f"no distribution provides {bare!r}"
        return UnknownPluginError(format_error(
            f"{self.kind}.type", f"a registered {self.kind} name, or 'distribution:name' pinning an installed "
            "distribution's entry point", f"{name!r}: distribution {dist!r} provides no {self.kind} {bare!r} "
            f"({have}); 'module:attr' import paths are not accepted in specs, so nothing was imported",
            "pass the class or instance itself from Python, or register it first with "
            f"stochclosure.register({self.kind!r}, name, cls) (or an entry point in group {self.group}) "
            "and use that name"))

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
            name: The name to use in configs (no colon: ``"dist:name"`` is reserved for pinning).
            obj: The class.
            overwrite: Replace an existing entry silently instead of raising.

        Returns:
            ``obj``, so this works as a decorator through :func:`register`.

        Raises:
            PluginValidationError: if ``obj`` does not implement the interface.
            ConfigError: if ``name`` is taken and ``overwrite`` is false, or contains a colon.
        """
        if not isinstance(name, str) or not name or ":" in name:
            raise ConfigError(format_error("name", "a non-empty name without ':' (':' pins a distribution)",
                                           repr(name), "use e.g. 'my_sampler'"))
        validate_component(self.kind, obj, name)
        entries = self._discover()
        if name in self._ambiguous and not overwrite:
            raise ConfigError(format_error("name", f"a {self.kind} name not yet taken",
                                           f"{name!r}, already provided by "
                                           f"{', '.join(c.provider for c in self._ambiguous[name])}",
                                           "pick another name or pass overwrite=True"))
        if name in entries and not overwrite and entries[name].obj is not obj:
            raise ConfigError(format_error("name", f"a {self.kind} name not yet taken",
                                           f"{name!r}, already provided by {entries[name].provider}",
                                           "pick another name or pass overwrite=True"))
        entries[name] = RegisteredComponent(name, self.kind, "register()", None, obj=obj)
        self._ambiguous.pop(name, None)
        self._failed.pop(name, None)
        return obj

    def unregister(self, name: str) -> None:
        """Remove a name registered at run time (tests, notebooks)."""
        self._discover().pop(name, None)

    def name_of(self, obj: Any) -> str | None:
        """The name under which ``obj``'s class is registered, if any.

        A class that is not what its bare name resolves to (a plugin shadowed by the core, or one
        provider of an ambiguous name) is named in the pinned form ``"dist:name"``.
        """
        cls = obj if inspect.isclass(obj) else type(obj)
        entries = self._discover()
        target = f"{cls.__module__}:{cls.__qualname__}"
        for match in (lambda c: c.obj is cls, lambda c: c.target is not None and c.target == target):
            for name, comp in entries.items():
                if match(comp):
                    return name
            for (_, name), comp in self._pinned.items():
                if match(comp):
                    return name if entries.get(name) is comp else f"{comp.provider}:{name}"
        return None

    def resolve(self, spec: Any, **overrides: Any) -> Any:
        """Turn a user spec into an instance.

        Args:
            spec: A registered name (or pinned ``"dist:name"``), a class, an instance (returned
                as is), or a dict ``{"type": name, **kwargs}``. Names never import module paths.
            **overrides: Extra keyword arguments for the constructor.

        Returns:
            The instance.

        Raises:
            UnknownPluginError: for an unknown name (the message lists the installed ones), or
                a ``"module:attr"`` path (refused, nothing imported).
            AmbiguousPluginError: for a bare name several third-party distributions provide.
            ConfigError: for a malformed spec or unknown constructor keys.
            PluginValidationError: for a class or instance that does not implement the interface,
                or an ``nn.Module`` whose ``__init__`` forgot ``super().__init__()``.
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
            cls = self.get(spec)
        elif inspect.isclass(spec):
            cls = validate_component(self.kind, spec)
        else:
            raise ConfigError(format_error(self.kind, "a name, class, instance or {'type': name, ...} dict",
                                           type(spec).__name__))
        kwargs.update(overrides)
        # JSON forms first (a saved inf is {"__float__": "inf"}), so the type checks see the values themselves
        kwargs = {k: from_jsonable(v) for k, v in kwargs.items()}
        if inspect.isclass(cls):
            check_config_keys(cls, kwargs, where=self.kind)
        return _construct(self.kind, cls, kwargs, spec)


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


def provider_of(kind: str, name: str) -> str:
    """The distribution that provides the ``kind`` component a name resolves to.

    Args:
        kind: One of :data:`KINDS`.
        name: A registered name, or a pinned ``"dist:name"``.

    Returns:
        The distribution's name as installed (``"stochclosure"``, ``"acme-closures"``), or
        ``"register()"`` for a component registered at run time.

    Raises:
        AmbiguousPluginError: several third-party distributions provide the bare ``name``.
        UnknownPluginError: nothing provides it.

    Example:
        >>> from stochclosure import registry
        >>> registry.provider_of("sde", "vp")
        'stochclosure'
    """
    return get_registry(kind).provider_of(name)
