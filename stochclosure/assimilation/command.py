"""``stochclosure assimilate --config FILE.yaml``: a twin experiment from a configuration file.

``add_args(parser)`` declares the options and ``run(args)`` runs the experiment
(:func:`~.experiment.run_experiment`) and prints its summary; errors are the package's typed
errors (a one-line message at the command line). A killed run continues when started again
with the same configuration and output folder.
"""

from __future__ import annotations

import argparse
import json

__all__ = ["add_args", "run", "HELP"]

HELP = "run a data-assimilation twin experiment (truth, observations, ensemble filter) from a YAML config"


def add_args(parser: argparse.ArgumentParser) -> None:
    """Declare the options of ``assimilate`` on ``parser``."""
    parser.add_argument("--config", required=True, help="YAML experiment (see configs/assimilation/)")
    parser.add_argument("--out", default=None, help="output folder (default: the config's out:)")
    parser.add_argument("--cycles", type=int, default=None, help="override the config's cycles")
    parser.add_argument("--members", type=int, default=None, help="override the config's members")
    parser.add_argument("--seed", type=int, default=None, help="override the config's seed")
    parser.add_argument("--no-report", action="store_true", help="write the results file only, no report folder")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    """Run the experiment of ``args.config`` into ``args.out``; returns the exit status (0).

    Raises:
        ConfigError: an unreadable or invalid configuration, or no output folder.
        OutputError: the output folder cannot be written or another process is writing it.
    """
    from ..config import load_yaml_mapping
    from .experiment import ExperimentConfig, run_experiment

    raw = load_yaml_mapping(args.config, "an assimilation experiment (a YAML mapping)")
    for key in ("cycles", "members", "seed"):
        if getattr(args, key, None) is not None:
            raw[key] = getattr(args, key)
    cfg = ExperimentConfig.from_dict(raw, args.config)
    result = run_experiment(cfg, args.out, progress=not args.quiet, report=not args.no_report)
    out = args.out or cfg.out
    s = result.summary()
    print(json.dumps({"out": str(out), **{k: s[k] for k in ("cycles", "analysis_rmse", "forecast_rmse",
                                                             "analysis_spread_rmse", "analysis_crps", "divergences")}}))
    return 0
