"""The bad-input battery: every row of every area, in one table.

Areas (one module each, so that they can grow independently): ``cases_core`` (sampling,
components, rollouts, training, HDF5, checkpoints, configuration files and the command line),
``cases_files`` (files read and written: generate, HDF5 datasets, checkpoints, YAML/JSON bounds),
``cases_runs`` (training and distillation runs, their folders, resume and option checks),
``cases_assimilation`` (observation operators, filters, the cycling driver), ``cases_samplers``
(sampler options, grids, starting points, non-finite solves).
"""

from __future__ import annotations

from .base import BadInput, Context, Outcome, run_case
from .cases_assimilation import CASES as _ASSIMILATION
from .cases_core import CASES as _CORE
from .cases_files import CASES as _FILES
from .cases_runs import CASES as _RUNS
from .cases_samplers import CASES as _SAMPLERS

__all__ = ["BadInput", "Outcome", "Context", "CASES", "run_case"]

CASES: list[BadInput] = [*_CORE, *_FILES, *_RUNS, *_ASSIMILATION, *_SAMPLERS]
