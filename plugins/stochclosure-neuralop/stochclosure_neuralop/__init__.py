"""FNO score operators for stochclosure, built from neuraloperator 2.0 parts."""

from .score import FNOScore, GaussianFourierEmbedding, contract_dense_bmm, periodic_coordinates, use_bmm_contraction

__version__ = "0.1.0"

__all__ = ["__version__", "FNOScore", "GaussianFourierEmbedding", "periodic_coordinates", "contract_dense_bmm",
           "use_bmm_contraction"]
