"""Shared fixtures: deterministic seeds and small Gaussian targets."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(1234)

