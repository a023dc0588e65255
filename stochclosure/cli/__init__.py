"""The ``stochclosure`` command line.

Every sub-command lives in its own module of this package and is listed in the static table
:data:`COMMANDS` (name -> module and help line). A command's module is imported only when that
command runs (or its ``--help`` is asked), so starting the program for one command never loads
the others, and no command module imports this package's ``__init__`` to register itself.
Each command module defines ``add_arguments(parser)`` and ``run(args) -> exit code``.

Errors that stochclosure raises on purpose are printed on one line (no traceback unless
``--debug``) and exit with status 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from types import ModuleType

from .. import perf
from ..errors import StochClosureError

__all__ = ["main", "build_parser", "COMMANDS", "Command"]


@dataclass(frozen=True)
class Command:
    """One row of the command table.

    Attributes:
        module: Dotted name of the module defining ``add_arguments(parser)`` and ``run(args)``.
        help: The one-line description shown by ``stochclosure --help``.
    """

    module: str
    help: str

    def load(self) -> ModuleType:
        """Import the command's module (only now: the table itself imports nothing)."""
        return importlib.import_module(self.module)


COMMANDS: dict[str, Command] = {
    "assimilate": Command("stochclosure.cli.assimilate",
                          "run a data-assimilation twin experiment (truth, observations, ensemble filter) from a YAML "
                          "config"),
    "demo": Command("stochclosure.cli.demo",
                    "ensemble forecast with the shipped pretrained closure vs no closure; writes a report"),
    "distill": Command("stochclosure.cli.distill",
                       "distil a trained closure model into a 1-2 evaluation consistency model (resumable)"),
    "finetune": Command("stochclosure.cli.finetune",
                        "fine-tune a closure law by the CRPS of short ensemble rollouts through the coarse solver "
                        "(resumable)"),
    "generate": Command("stochclosure.cli.generate", "simulate a system and write a resumable HDF5 closure dataset"),
    "plugins": Command("stochclosure.cli.plugins", "list every registered component by kind, with its distribution"),
    "rollout": Command("stochclosure.cli.rollout",
                       "run a resumable, checkpointed ensemble rollout from a trained closure"),
    "samplers": Command("stochclosure.cli.samplers",
                        "sample a known Gaussian random field with every sampler and report the error"),
    "train": Command("stochclosure.cli.train", "train a closure model on an HDF5 closure dataset (resumable)"),
}
"""The sub-commands: name -> :class:`Command` (module imported when the command runs)."""


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The argument parser.

    Args:
        only: Load the arguments of this command only (its module is imported); ``None`` loads
            every command's arguments, ``""`` none (the top-level help needs only the table).
    """
    parser = argparse.ArgumentParser(prog="stochclosure", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, cmd in sorted(COMMANDS.items()):
        p = sub.add_parser(name, help=cmd.help, description=cmd.help)
        if only is None or only == name:
            cmd.load().add_arguments(p)
    return parser


def _chosen(argv: Sequence[str]) -> str:
    """The sub-command named on the line (the first word that is not an option), or ``""``."""
    word = next((a for a in argv if not a.startswith("-")), "")
    return word if word in COMMANDS else ""


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``stochclosure`` console script.

    Applies :func:`stochclosure.perf.tune_allocator` first (glibc allocator settings that make
    large batched passes several times faster; opt out with ``STOCHCLOSURE_MALLOC=0``).
    """
    perf.tune_allocator()
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(_chosen(argv))
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    run = COMMANDS[args.command].load().run
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
