"""Observation operators: interpolation exactness, periodicity, matrices, noise statistics, specs."""

from __future__ import annotations

import math

import pytest
import torch

from stochclosure.assimilation import (
    FullFieldObservation,
    GridObservation,
    LinearObservation,
    PointObservation,
    observation_from_spec,
    periodic_weights,
    sample_observations,
)
from stochclosure.errors import ConfigError, NonFiniteError, ShapeError
from stochclosure.testing import assert_close


def _bandlimited(grid, points, kmax, gen):
    """A random real trigonometric polynomial (|k_i| <= kmax) on ``grid`` and its exact values at ``points``."""
    d = len(grid)
    ks = torch.cartesian_prod(*[torch.arange(-kmax, kmax + 1)] * d).reshape(-1, d).double()
    amp = torch.randn(ks.shape[0], 2, generator=gen, dtype=torch.float64)

    def f(x):  # x (..., d)
        phase = 2 * math.pi * x @ ks.T
        return (amp[:, 0] * torch.cos(phase) + amp[:, 1] * torch.sin(phase)).sum(-1)

    axes = [torch.arange(n, dtype=torch.float64) / n for n in grid]
    mesh = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1)
    return f(mesh)[None], f(points)


@pytest.mark.parametrize("grid", [(16,), (15,), (16, 16), (12, 18)])
def test_spectral_points_are_exact_for_band_limited_fields(grid, gen):
    points = torch.rand(40, len(grid), generator=gen, dtype=torch.float64)
    field, exact = _bandlimited(grid, points, kmax=min(grid) // 2 - 1, gen=gen)
    op = PointObservation(points, std=0.1)
    assert_close(op.apply(field), exact, rtol=1e-12, what="spectral interpolation of a band-limited field")


def test_points_reproduce_grid_values_and_wrap_periodically(gen):
    field = torch.randn(3, 2, 8, 12, generator=gen, dtype=torch.float64)      # arbitrary, not band-limited
    idx = torch.tensor([[0, 0], [7, 11], [3, 5]])
    points = idx.double() / torch.tensor([8.0, 12.0])
    for method in ("spectral", "linear"):
        op = PointObservation(points + torch.tensor([1.0, -2.0]), std=1.0, method=method)  # shifted by whole periods
        got = op.apply(field).reshape(3, 2, 3)
        assert_close(got, field[:, :, idx[:, 0], idx[:, 1]], rtol=1e-12, what=f"{method} at grid points")


def test_linear_interpolation_is_the_neighbours_average_across_the_boundary():
    field = torch.arange(8, dtype=torch.float64).reshape(1, 1, 8) ** 2
    op = PointObservation(torch.tensor([[7.5 / 8], [2.25 / 8]]), std=1.0, method="linear")
    expected = torch.tensor([(49.0 + 0.0) / 2, 0.75 * 4 + 0.25 * 9], dtype=torch.float64)
    assert_close(op.apply(field)[0], expected, rtol=1e-14, what="periodic linear interpolation")


def test_points_see_the_same_band_limited_field_at_every_resolution(gen):
    points = torch.rand(25, 2, generator=gen, dtype=torch.float64)
    coarse, _ = _bandlimited((16, 16), points, 5, torch.Generator().manual_seed(3))
    fine, _ = _bandlimited((64, 64), points, 5, torch.Generator().manual_seed(3))
    op = PointObservation(points, std=0.1)
    assert_close(op.apply(coarse), op.apply(fine), rtol=1e-12, what="16^2 vs 64^2")


def test_weights_rows_sum_to_one(gen):
    x = torch.rand(30, generator=gen, dtype=torch.float64)
    for n in (7, 8):
        for method in ("spectral", "linear"):
            w = periodic_weights(x, n, method)
            assert_close(w.sum(1), torch.ones(30, dtype=torch.float64), rtol=1e-13, what=f"{method} n={n}")


def test_channels_order_locations_and_matrix(gen):
    pts = torch.rand(5, 2, generator=gen, dtype=torch.float64)
    op = PointObservation(pts, std=0.5, channels=[1, 0])
    state = torch.randn(4, 3, 8, 8, generator=gen, dtype=torch.float64)
    out = op.apply(state)
    assert out.shape == (4, 10)
    assert_close(out[:, :5], PointObservation(pts, channels=1).apply(state), rtol=0, what="channel-major order")
    assert op.locations((3, 8, 8)).shape == (10, 2)
    h = op.matrix((3, 8, 8))
    assert_close(state.reshape(4, -1) @ h.T, out, rtol=1e-13, what="H x vs apply")
    with pytest.raises(ShapeError, match="'state'.*at least 2 channels"):
        op.apply(torch.zeros(1, 1, 8, 8))


def test_grid_and_full_field_operators(gen):
    x = torch.randn(6, 1, 8, generator=gen, dtype=torch.float64)          # Lorenz-96 X: a ring (1, K)
    every2 = GridObservation(every=2, std=1.0)
    assert_close(every2.apply(x), x[:, 0, ::2], rtol=0, what="every other X")
    assert_close(every2.locations((1, 8))[:, 0], torch.arange(0, 8, 2).double() / 8, rtol=0, what="locations")
    assert_close(GridObservation(std=1.0).apply(x), x[:, 0], rtol=0, what="all X")
    w = torch.randn(2, 2, 6, 6, generator=gen)
    full = FullFieldObservation(std=0.1)
    assert full.n_obs((2, 6, 6)) == 72
    assert_close(full.apply(w), w.reshape(2, -1), rtol=0, what="full field")
    sub = GridObservation(every=3, offset=1, spatial_dims=2, channels=1)
    assert_close(sub.apply(w), w[:, 1, 1::3, 1::3].reshape(2, -1), rtol=0, what="strided 2-D")


def test_linear_operator_with_batch_axes(gen):
    h = torch.randn(3, 8, generator=gen, dtype=torch.float64)
    op = LinearObservation(h, std=[0.1, 0.2, 0.3], event_shape=(1, 8))
    x = torch.randn(5, 4, 1, 8, generator=gen, dtype=torch.float64)
    assert_close(op.apply(x), x.reshape(5, 4, 8) @ h.T, rtol=1e-14, what="H x")
    assert_close(op.variance((1, 8)), torch.tensor([0.01, 0.04, 0.09], dtype=torch.float64), rtol=1e-15, what="R")
    with pytest.raises(ShapeError, match="'state'"):
        op.apply(torch.zeros(2, 8))


def test_noise_has_the_declared_per_observation_std(gen):
    """Sample std of 20000 draws: its relative standard error is 1/sqrt(2 n) = 0.5 %; 5 of them allowed."""
    std = torch.tensor([0.1, 1.0, 3.0])
    op = GridObservation(std=std)
    truth = torch.tensor([[1.0, -2.0, 0.5]], dtype=torch.float64)
    draws = sample_observations(truth.expand(20000, 1, 1, 3)[:, 0], op, gen)
    rel = draws.sub(truth[0]).std(0) / std.double()
    assert float((rel - 1).abs().max()) < 5 / math.sqrt(2 * 20000)
    mean_z = (draws.mean(0) - truth[0]) / (std.double() / math.sqrt(20000))
    assert float(mean_z.abs().max()) < 5


def test_likelihood_is_the_gaussian_density(gen):
    op = GridObservation(every=2, std=torch.tensor([0.5, 2.0]))
    x = torch.randn(3, 1, 4, generator=gen, dtype=torch.float64)
    y = torch.randn(2, generator=gen, dtype=torch.float64)
    lp = op.likelihood(x).log_prob(y)
    r = torch.tensor([0.25, 4.0], dtype=torch.float64)
    manual = -0.5 * (((y - x[:, 0, ::2]) ** 2) / r + torch.log(2 * math.pi * r)).sum(-1)
    assert lp.shape == (3,)
    assert_close(lp, manual, rtol=1e-13, what="log-likelihood")


def test_specs_rebuild_the_operator(gen):
    pts = torch.rand(6, 2, generator=gen)
    state = torch.randn(2, 1, 8, 8, generator=gen)
    for op in (PointObservation(pts, std=0.3, method="linear"), GridObservation(every=2, spatial_dims=2),
               FullFieldObservation(std=0.2), LinearObservation(torch.randn(4, 64, generator=gen), event_shape=(1, 8, 8))):
        again = observation_from_spec(op.spec())
        assert type(again) is type(op)
        assert_close(again.apply(state), op.apply(state), rtol=0, what=f"{type(op).__name__} from its spec")
    with pytest.raises(ConfigError, match="'observation'"):
        observation_from_spec({"type": "module:Thing"})


def test_bad_operators_are_refused():
    with pytest.raises(ShapeError, match="'points'"):
        PointObservation(torch.zeros(4, 3))
    with pytest.raises(NonFiniteError, match="'points'"):
        PointObservation(torch.tensor([[float("nan"), 0.0]]))
    with pytest.raises(ConfigError, match="'std'"):
        GridObservation(std=0.0)
    with pytest.raises(ConfigError, match="'method'"):
        PointObservation(torch.zeros(2, 2), method="cubic")
    with pytest.raises(ShapeError, match="'std'.*3 per-observation"):
        GridObservation(std=[1.0, 2.0]).variance((1, 3))
    with pytest.raises(ShapeError, match="'event_shape'"):
        LinearObservation(torch.zeros(2, 6), event_shape=(1, 5))
