"""The bad-input battery: every row of every area, in one table.

Areas (one module each, so that they can grow independently): ``cases_core`` (sampling,
components, rollouts, training, HDF5, checkpoints, configuration files and the command line),
``cases_files`` (files read and written: generate, HDF5 datasets, checkpoints, YAML/JSON bounds),
``cases_runs`` (training and distillation runs, their folders, resume and option checks),
``cases_assimilation`` (observation operators, filters, the cycling driver), ``cases_plugins``
(specs read from files, plugin name clashes, misspelt entry-point groups, forgotten init),
``cases_guards`` (input guards: half-precision conditions, generators, seeds, sizes too large for
memory, devices), ``cases_learned`` (learned closure laws, their training and checkpoints), ``cases_closures``
(physics closures, noise and residual laws), ``cases_da`` (assimilation experiment
configurations), ``cases_da_learned`` (learned and registered closures in them), ``cases_rollout`` (rollout guards, between-draw policies, closure laws in rollouts),
``cases_layers`` (the command line's config schemas and their path rule), ``cases_samplers`` (sampler
options, grids, starting points, non-finite solves), ``cases_residual_training``
(training a residual law), ``cases_demo`` (the demo's spread perturbation), ``cases_finetune`` (a-posteriori fine-tuning), ``cases_pretrained`` (the shipped pretrained closures),
``cases_spread`` (the post-hoc spread factor of a Gaussian law).
"""

from __future__ import annotations

from .base import BadInput, Context, Outcome, run_case
from .cases_assimilation import CASES as _ASSIMILATION
from .cases_closures import CASES as _CLOSURES
from .cases_core import CASES as _CORE
from .cases_da import CASES as _DA
from .cases_da_learned import CASES as _DA_LEARNED
from .cases_demo import CASES as _DEMO
from .cases_files import CASES as _FILES
from .cases_finetune import CASES as _FINETUNE
from .cases_guards import CASES as _GUARDS
from .cases_layers import CASES as _LAYERS
from .cases_learned import CASES as _LEARNED
from .cases_plugins import CASES as _PLUGINS
from .cases_pretrained import CASES as _PRETRAINED
from .cases_residual_training import CASES as _RESIDUAL_TRAINING
from .cases_rollout import CASES as _ROLLOUT
from .cases_runs import CASES as _RUNS
from .cases_samplers import CASES as _SAMPLERS
from .cases_spread import CASES as _SPREAD

__all__ = ["BadInput", "Outcome", "Context", "CASES", "run_case"]

CASES: list[BadInput] = [*_CORE, *_FILES, *_RUNS, *_ASSIMILATION, *_PLUGINS, *_GUARDS, *_LEARNED, *_CLOSURES,
                         *_DA, *_DA_LEARNED, *_ROLLOUT, *_LAYERS, *_SAMPLERS, *_RESIDUAL_TRAINING, *_DEMO,
                         *_FINETUNE, *_PRETRAINED, *_SPREAD]
