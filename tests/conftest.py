"""Shared test setup: deterministic seeds, one intra-op thread.

Small FFTs and elementwise kernels run far slower with two threads than with one when the two
cores are shared (thread hand-off dominates), so the suite runs single-threaded; tests that
measure threading set it themselves.
"""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed_and_threads():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(1234)
