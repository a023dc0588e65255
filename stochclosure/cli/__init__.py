"""The ``stochclosure`` command line.

Errors that stochclosure raises on purpose are printed on one line (no traceback unless
``--debug``) and exit with status 2.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Callable, Sequence

from .errors import StochClosureError

__all__ = ["main", "COMMANDS"]

COMMANDS: dict[str, tuple[Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int], str]] = {}


def command(name: str, help: str) -> Callable[..., object]:
    """Register a sub-command: ``add_args(parser)`` then ``run(args) -> exit code``."""

    def deco(run: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
        add = getattr(run, "add_args", lambda p: None)
        COMMANDS[name] = (add, run, help)
        return run

    return deco


@command("plugins", "list every registered component by kind, with its distribution")
def _plugins(args: argparse.Namespace) -> int:
    from .registry import KINDS, get_registry

    rows = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for kind in KINDS:
            for comp in get_registry(kind).components(load=True):
                target = comp.target or f"{comp.obj.__module__}:{comp.obj.__qualname__}"
                rows.append((kind, comp.name, comp.provider, target))
    w = [max(len(r[i]) for r in rows + [("kind", "name", "distribution", "object")]) for i in range(4)]
    print("  ".join(h.ljust(w[i]) for i, h in enumerate(("kind", "name", "distribution", "object"))))
    for r in rows:
        print("  ".join(c.ljust(w[i]) for i, c in enumerate(r)))
    for c in caught:
        print(f"warning: {c.message}", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every registered sub-command."""
    _load_commands()
    parser = argparse.ArgumentParser(prog="stochclosure", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (add, _, help_) in sorted(COMMANDS.items()):
        p = sub.add_parser(name, help=help_, description=help_)
        add(p)
    return parser


def _load_commands() -> None:
    # Commands living in other modules register themselves on import.
    from . import demo, distill, rollout_cli, sampler_check, train_cli  # noqa: F401
    from .data import generate  # noqa: F401


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``stochclosure`` console script.

    Applies :func:`stochclosure.perf.tune_allocator` first (glibc allocator settings that make
    large batched passes several times faster; opt out with ``STOCHCLOSURE_MALLOC=0``).
    """
    from .perf import tune_allocator

    tune_allocator()
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    _, run, _ = COMMANDS[args.command]
    try:
        return int(run(args) or 0)
    except StochClosureError as exc:
        if args.debug:
            raise
        print(f"stochclosure {args.command}: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"stochclosure {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover - `python -m stochclosure.cli`
    from stochclosure.cli import main as _main  # the package's module, where commands register

    sys.exit(_main())
