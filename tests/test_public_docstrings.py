"""Every public name of the package (``__all__`` of the package and its subpackages) has a docstring.

Classes and functions need their own docstring; public methods and properties defined on a public
class need one too, or inherit it from the interface they implement (``inspect.getdoc``). Plain
constants (tuples, dicts, strings) and type aliases cannot carry a docstring and are skipped.
"""

from __future__ import annotations

import importlib
import inspect
import typing

import pytest

MODULES = [
    "stochclosure",
    "stochclosure.sdes",
    "stochclosure.scores",
    "stochclosure.encoders",
    "stochclosure.samplers",
    "stochclosure.samplers.grids",
    "stochclosure.systems",
    "stochclosure.systems.navier_stokes",
    "stochclosure.systems.subgrid",
    "stochclosure.rollouts",
    "stochclosure.assimilation",
    "stochclosure.distributions",
    "stochclosure.data",
    "stochclosure.data.generate",
    "stochclosure.train",
    "stochclosure.checkpoint",
    "stochclosure.losses",
    "stochclosure.metrics",
    "stochclosure.plots",
    "stochclosure.registry",
    "stochclosure.errors",
    "stochclosure.testing",
    "stochclosure.pretrained",
    "stochclosure_neuralop",
    "stochclosure_torchsde",
]


def _own_doc(obj: object) -> str | None:
    doc = obj.__dict__.get("__doc__") if inspect.isclass(obj) else getattr(obj, "__doc__", None)
    return doc.strip() if isinstance(doc, str) and doc.strip() else None


def _public_names(module_name: str) -> list[tuple[str, object]]:
    mod = importlib.import_module(module_name)
    names = getattr(mod, "__all__", None)
    assert names is not None, f"{module_name} must define __all__"
    return [(f"{module_name}.{n}", getattr(mod, n)) for n in names]


def _missing(qualname: str, obj: object) -> list[str]:
    if inspect.ismodule(obj):
        return [] if _own_doc(obj) else [qualname]
    if inspect.isclass(obj):
        out = [] if _own_doc(obj) else [qualname]
        for attr, member in vars(obj).items():
            if attr.startswith("_"):
                continue
            if isinstance(member, (staticmethod, classmethod)):
                member = member.__func__
            if isinstance(member, property) or inspect.isfunction(member):
                fn = getattr(obj, attr, None) if not isinstance(member, property) else member
                if not (inspect.getdoc(fn) or "").strip():
                    out.append(f"{qualname}.{attr}")
        return out
    if typing.get_origin(obj) is not None:
        return []  # a type alias (e.g. ``ScoreFn``), documented where it is defined
    if callable(obj):
        return [] if _own_doc(obj) else [qualname]
    return []  # constants


@pytest.mark.parametrize("module_name", MODULES)
def test_public_names_have_docstrings(module_name):
    missing = [m for q, obj in _public_names(module_name) for m in _missing(q, obj)]
    assert not missing, "public names without a docstring:\n  " + "\n  ".join(missing)


def test_module_docstrings():
    for module_name in MODULES:
        assert _own_doc(importlib.import_module(module_name)), f"{module_name} has no module docstring"
