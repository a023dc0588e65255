"""Training: the denoising score-matching :class:`Trainer`, its losses and consistency distillation.

:mod:`.trainer` fits a :class:`~stochclosure.ClosureModel` (schedule, EMA, validation, exact
resume); :mod:`.losses` holds the denoising score-matching loss and the diffusion-time laws;
:mod:`.distill` distils a trained model into a few-evaluation consistency model. Checkpoint
files are read and written by :mod:`stochclosure.checkpoint`, which imports nothing from here,
so loading a model never loads the trainer. The trainer and the distiller are loaded on first
use (PEP 562): importing the losses alone stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

from .losses import dsm_loss, sample_times

__all__ = ["Trainer", "TrainResult", "EMA", "dsm_loss", "sample_times", "Distiller", "consistency_targets",
           "make_student"]

_LAZY = {"Trainer": ".trainer", "TrainResult": ".trainer", "EMA": ".trainer", "Distiller": ".distill",
         "consistency_targets": ".distill", "make_student": ".distill"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
