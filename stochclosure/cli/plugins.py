"""``stochclosure plugins``: list every registered component by kind, with its distribution."""

from __future__ import annotations

import argparse
import sys
import warnings

from ..registry import KINDS, get_registry

__all__ = ["add_arguments", "run"]

_HEADER = ("kind", "name", "distribution", "object")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """``plugins`` takes no arguments."""


def run(args: argparse.Namespace) -> int:
    """Print one row per registered component (loading each, so broken plugins warn)."""
    rows = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for kind in KINDS:
            for comp in get_registry(kind).components(load=True):
                target = comp.target or f"{comp.obj.__module__}:{comp.obj.__qualname__}"
                rows.append((kind, comp.name, comp.provider, target))
    w = [max(len(r[i]) for r in [*rows, _HEADER]) for i in range(4)]
    print("  ".join(h.ljust(w[i]) for i, h in enumerate(_HEADER)))
    for r in rows:
        print("  ".join(c.ljust(w[i]) for i, c in enumerate(r)))
    for c in caught:
        print(f"warning: {c.message}", file=sys.stderr)
    return 0
