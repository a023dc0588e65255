"""Samplers: the interface, the shared grid-sampler driver, time grids, noise sources, the built-in algorithms."""

from . import grids
from .base import AbstractSampler, CountingScore, GaussianNoise, GridSampler, NoiseSource, SolverState, StepInfo
from .brownian import BrownianNoise
from .consistency import ConsistencySampler, consistency_sampling
from .denoiser import DenoiserScore
from .dpm_solver import DPMSolverPP2M, dpm_solver_pp_2m
from .edm import EDMHeun, edm_heun
from .euler_maruyama import EulerMaruyama, TruncatedKarrasEM, euler_maruyama
from .predictor_corrector import PredictorCorrector, langevin_corrector, predictor_corrector
from .probability_flow import ProbabilityFlowHeun, probability_flow_heun

__all__ = [
    "AbstractSampler",
    "GridSampler",
    "StepInfo",
    "SolverState",
    "DenoiserScore",
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
    "BrownianNoise",
    "EDMHeun",
    "DPMSolverPP2M",
    "edm_heun",
    "dpm_solver_pp_2m",
    "ConsistencySampler",
    "consistency_sampling",
]
