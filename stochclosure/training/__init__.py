"""Training: the denoising score-matching :class:`Trainer`, its losses and consistency distillation.

:mod:`.trainer` fits a :class:`~stochclosure.ClosureModel` (schedule, EMA, validation, exact
resume); :mod:`.losses` holds the denoising score-matching loss and the diffusion-time laws;
:mod:`.distill` distils a trained model into a few-evaluation consistency model. Checkpoint
files are read and written by :mod:`stochclosure.checkpoint`, which imports nothing from here,
so loading a model never loads the trainer.
"""

from .distill import Distiller, consistency_targets, make_student
from .losses import dsm_loss, sample_times
from .trainer import EMA, Trainer, TrainResult

__all__ = ["Trainer", "TrainResult", "EMA", "dsm_loss", "sample_times", "Distiller", "consistency_targets",
           "make_student"]
