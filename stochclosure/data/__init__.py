"""Closure datasets: the item protocol, batching and storage."""

from .base import ITEM_KEYS, TensorClosureDataset, collate_closure
from .hdf5 import ClosureH5Dataset, DatasetError

__all__ = ["ITEM_KEYS", "TensorClosureDataset", "collate_closure", "ClosureH5Dataset", "DatasetError"]
