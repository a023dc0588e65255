"""Conditioning encoders."""

from .base import AbstractConditioningEncoder
from .composite import CompositeEncoder, NormalizedEncoder
from .fields import FieldEncoder
from .sparse import SparseInterpEncoder, SparseSmoothEncoder, grid_points, sparse_from_grid

__all__ = [
    "AbstractConditioningEncoder",
    "FieldEncoder",
    "SparseInterpEncoder",
    "SparseSmoothEncoder",
    "CompositeEncoder",
    "NormalizedEncoder",
    "grid_points",
    "sparse_from_grid",
]
