"""Samplers: the interface, time grids, noise sources and the built-in algorithms."""

from . import grids
from .base import AbstractSampler, CountingScore, GaussianNoise, GridSampler, NoiseSource, StepInfo
from .euler_maruyama import EulerMaruyama, TruncatedKarrasEM, euler_maruyama
from .predictor_corrector import PredictorCorrector, langevin_corrector, predictor_corrector
from .probability_flow import ProbabilityFlowHeun, probability_flow_heun

__all__ = [
    "AbstractSampler",
    "GridSampler",
    "StepInfo",
    "NoiseSource",
    "GaussianNoise",
    "CountingScore",
    "EulerMaruyama",
    "TruncatedKarrasEM",
    "PredictorCorrector",
    "ProbabilityFlowHeun",
    "euler_maruyama",
    "predictor_corrector",
    "langevin_corrector",
    "probability_flow_heun",
    "grids",
]
