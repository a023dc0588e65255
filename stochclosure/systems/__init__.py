"""Systems (coarse solvers) a closure plugs into."""

from .base import AbstractSystem
from .linear import LinearRelaxation
from .lorenz96 import Lorenz96, PolynomialAR1Closure, PolynomialClosure
from .navier_stokes import NavierStokes2D
from .subgrid import NavierStokes2DSubgrid, SmagorinskyClosure

__all__ = ["AbstractSystem", "LinearRelaxation", "NavierStokes2D", "NavierStokes2DSubgrid", "SmagorinskyClosure",
           "Lorenz96", "PolynomialClosure", "PolynomialAR1Closure"]
