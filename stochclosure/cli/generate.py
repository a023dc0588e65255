"""``stochclosure generate --system NAME --config FILE.yaml --out FILE.h5``: write a closure dataset.

The generation itself (validation, batches, resumable parts, assembly) is
:func:`stochclosure.data.generate.generate`; this module reads the YAML file and runs it.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from ..config import load_yaml_mapping
from ..data.generate import generate, normalise_config
from .schemas import GenerateConfig, parse

__all__ = ["run", "add_arguments"]


def run(args: argparse.Namespace) -> int:
    """Run ``stochclosure generate`` with the parsed arguments."""
    if args.threads:
        torch.set_num_threads(args.threads)
    raw = load_yaml_mapping(args.config, empty_ok=True)
    parse(GenerateConfig, raw, args.config, "generate", where="config")  # keys and types, with near misses
    cfg = normalise_config(raw)  # ranges, dtypes, device, compression (the library's own check)
    t0 = time.perf_counter()
    path = generate(args.system, cfg, args.out, progress=not args.no_progress)
    dt = time.perf_counter() - t0
    print(f"wrote {path} ({cfg['trajectories']} trajectories, {dt:.1f} s)", file=sys.stderr)
    return 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of ``stochclosure generate``."""
    p.add_argument("--system", required=True, help="registered system name (see `stochclosure plugins`)")
    p.add_argument("--config", required=True, help="YAML file: a `system` block and generation keys")
    p.add_argument("--out", required=True, help="output .h5 file (resumes an unfinished run of the same config)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")

