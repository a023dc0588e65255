"""Systems (coarse solvers) a closure plugs into."""

from .base import AbstractSystem
from .linear import LinearRelaxation

__all__ = ["AbstractSystem", "LinearRelaxation"]
