"""Ensemble data assimilation with stochastic-closure forecasts.

A forecast ensemble of the reduced model (any closure, run by :func:`~stochclosure.rollouts.rollout`)
is corrected by sparse, noisy observations of a truth every few time units:

* :mod:`.observations`: observation operators ``H`` with Gaussian noise (points of a periodic
  field by spectral or linear interpolation, every ``k``-th grid point, the full field, any matrix);
* :mod:`.filters`: stochastic EnKF, ETKF and LETKF (Gaspari–Cohn R-localisation, batched over
  grid points), all in ensemble space and float64;
* :mod:`.inflation`: fixed and adaptive multiplicative, and additive inflation;
* :mod:`.kalman`: the exact Kalman filter (the linear-Gaussian reference);
* :mod:`.particle`: a bootstrap particle filter through :class:`pyro.infer.SMCFilter`;
* :mod:`.twins` and :mod:`.cycle`: twin experiments (:func:`assimilate`), reproducible by seed
  and resumable after a kill;
* :mod:`.experiment` and :mod:`.command`: twin experiments from a configuration file
  (:class:`ExperimentConfig`, :func:`run_experiment`, ``stochclosure assimilate --config``) with
  a results file and a report.
"""

from .cycle import assimilate
from .experiment import ExperimentConfig, RecordedTwin, run_experiment
from .filters import ETKF, FILTERS, LETKF, AbstractEnsembleFilter, EnKF, filter_from_spec
from .inflation import (
    INFLATIONS,
    AbstractInflation,
    AdaptiveInflation,
    AdditiveInflation,
    InflationChain,
    MultiplicativeInflation,
    inflation_from_spec,
)
from .kalman import Gaussian, KalmanFilter, kalman_analysis, kalman_forecast
from .localization import gaspari_cohn, periodic_distance
from .observations import (
    OBSERVATIONS,
    AbstractObservation,
    FullFieldObservation,
    GridObservation,
    LinearObservation,
    PointObservation,
    observation_from_spec,
    periodic_weights,
    sample_observations,
)
from .particle import BootstrapParticleFilter, ParticleFilterResult
from .result import AssimilationResult
from .twins import AbstractTwin, FullModelTwin, Lorenz96Twin, ReducedTwin, twin_for

__all__ = [
    "assimilate",
    "AssimilationResult",
    "ExperimentConfig",
    "run_experiment",
    "RecordedTwin",
    "AbstractObservation",
    "PointObservation",
    "GridObservation",
    "FullFieldObservation",
    "LinearObservation",
    "sample_observations",
    "periodic_weights",
    "observation_from_spec",
    "OBSERVATIONS",
    "AbstractEnsembleFilter",
    "EnKF",
    "ETKF",
    "LETKF",
    "filter_from_spec",
    "FILTERS",
    "AbstractInflation",
    "MultiplicativeInflation",
    "AdaptiveInflation",
    "AdditiveInflation",
    "InflationChain",
    "inflation_from_spec",
    "INFLATIONS",
    "gaspari_cohn",
    "periodic_distance",
    "Gaussian",
    "KalmanFilter",
    "kalman_analysis",
    "kalman_forecast",
    "BootstrapParticleFilter",
    "ParticleFilterResult",
    "AbstractTwin",
    "Lorenz96Twin",
    "FullModelTwin",
    "ReducedTwin",
    "twin_for",
]
