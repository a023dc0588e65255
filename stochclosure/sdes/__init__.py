"""Forward noising SDEs: the interface and the built-in VE, VP and sub-VP processes."""

from .base import AbstractSDE, expand_as_batch
from .ve import VESDE, ExpVESDE
from .vp import VPSDE, SubVPSDE

__all__ = ["AbstractSDE", "VESDE", "ExpVESDE", "VPSDE", "SubVPSDE", "expand_as_batch"]
