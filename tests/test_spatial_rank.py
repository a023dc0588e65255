"""A score operator's declared spatial rank is enforced before its network runs."""

from __future__ import annotations

import pytest
import torch

import stochclosure as sc
from stochclosure.errors import ShapeError
from stochclosure.scores.base import bind_score


def test_ring_fno_refuses_a_torus_with_the_rank_in_the_message():
    pytest.importorskip("stochclosure_neuralop")
    score = sc.resolve("score_operator", {"type": "fno", "sde": "vp", "spatial_dims": 1, "width": 4, "modes": 2,
                                          "layers": 1, "embed_dim": 4})
    assert score.supported_spatial_dims() == (1,)
    model = sc.ClosureModel("vp", score, {"type": "euler_maruyama", "steps": 2})
    with pytest.raises(ShapeError, match=r"spatial rank 2.*spatial_dims=2"):
        model.sample(sc.Conditioning(), n=1, grid=(8, 8), generator=torch.Generator().manual_seed(0))
    u = model.sample(sc.Conditioning(), n=1, grid=(8,), generator=torch.Generator().manual_seed(0))
    assert u.shape[-1] == 8


def test_class_declared_ranks_are_the_default():
    op = sc.resolve("score_operator", {"type": "gaussian", "sde": "vp", "std": 1.0})
    assert set(op.supported_spatial_dims()) == {0, 1, 2}
    bind_score(op, None, event_shape=(1, 4, 4))  # accepted
    with pytest.raises(ShapeError, match="spatial rank 3"):
        bind_score(op, None, event_shape=(1, 2, 2, 2))
