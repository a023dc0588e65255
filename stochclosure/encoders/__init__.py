"""Conditioning encoders."""

from .base import AbstractConditioningEncoder
from .fields import FieldEncoder

__all__ = ["AbstractConditioningEncoder", "FieldEncoder"]
