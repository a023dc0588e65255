"""Score operators: the interface, condition binding and exact Gaussian scores."""

from .analytic import (
    Covariance,
    DenseCovariance,
    GaussianScore,
    IsotropicCovariance,
    LinearGaussianScore,
    SpectralCovariance,
    grf_spectrum,
    wavenumbers,
)
from .base import AbstractScoreOperator, bind_score

__all__ = [
    "AbstractScoreOperator",
    "bind_score",
    "Covariance",
    "IsotropicCovariance",
    "DenseCovariance",
    "SpectralCovariance",
    "GaussianScore",
    "LinearGaussianScore",
    "grf_spectrum",
    "wavenumbers",
]
