"""Bad input gets a typed error naming the argument, what was expected and what was received."""

from __future__ import annotations

import pytest
import torch

import stochclosure as sc
from stochclosure.scores import GaussianScore, LinearGaussianScore


@pytest.fixture
def model():
    op = LinearGaussianScore("vp", smoothing_length=0.05, noise_std=0.1)
    return sc.ClosureModel("vp", op, {"type": "euler_maruyama", "steps": 5})


def _cond(b=2, n=8):
    return sc.Conditioning(fields=torch.randn(b, 1, n, n))


def test_nan_in_condition(model):
    f = torch.randn(2, 1, 8, 8)
    f[1, 0, 3, 4] = float("nan")
    with pytest.raises(sc.NonFiniteError, match=r"'cond.fields'.*1 NaN and 0 inf.*index \(1, 0, 3, 4\)"):
        model.sample(sc.Conditioning(fields=f))


def test_inf_in_condition(model):
    f = torch.randn(2, 1, 8, 8)
    f[0, 0, 0, 0] = float("inf")
    with pytest.raises(sc.NonFiniteError, match=r"'cond.fields'.*0 NaN and 1 inf"):
        model.sample(sc.Conditioning(fields=f))


def test_nan_in_x_is_caught_by_check_tensor():
    x = torch.zeros(2, 1, 4, 4)
    x[0, 0, 1, 1] = float("nan")
    with pytest.raises(sc.NonFiniteError, match="'x'.*spectral layers spread a single NaN"):
        sc.check_tensor("x", x, rank=4)


def test_wrong_rank_condition(model):
    with pytest.raises(sc.ShapeError, match=r"'cond.fields'.*3 or 4 dimensions.*got 2 dimensions"):
        model.sample(sc.Conditioning(fields=torch.randn(8, 8)))


def test_mismatched_batch_in_condition():
    with pytest.raises(sc.ShapeError, match=r"'cond'.*one batch size.*'fields': 2, 'features': 3"):
        sc.Conditioning(fields=torch.randn(2, 1, 4, 4), features=torch.randn(3, 5)).validate()


def test_condition_grid_differs_from_requested_grid(model):
    with pytest.raises(sc.ShapeError, match=r"'cond.fields'.*spatial shape \(16, 16\).*got spatial shape \(8, 8\)"):
        model.sample(_cond(), grid=(16, 16))


def test_wrong_dtype():
    with pytest.raises(sc.DTypeError, match=r"'x'.*a floating dtype.*torch.int64.*x.float\(\)"):
        sc.check_tensor("x", torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(sc.DTypeError, match=r"'x'.*torch.Tensor.*list"):
        sc.check_tensor("x", [1.0, 2.0])


def test_wrong_device():
    x = torch.zeros(2, 3, device="meta")
    with pytest.raises(sc.DeviceError, match=r"'x'.*device cpu.*got meta"):
        sc.check_tensor("x", x, device=torch.device("cpu"), finite=False)


def test_unknown_component_names():
    with pytest.raises(sc.UnknownPluginError, match="unknown sde 'vpp'.*did you mean 'vp'"):
        sc.ClosureModel("vpp", GaussianScore("vp"))
    with pytest.raises(sc.UnknownPluginError, match="unknown sampler 'fast'"):
        sc.ClosureModel("vp", GaussianScore("vp"), "fast")


def test_class_not_implementing_interface():
    class Fake:
        def forward(self, x):
            return x

    with pytest.raises(sc.PluginValidationError, match=r"forward\(self, x\) cannot be called as forward\(self, x.*t.*cond"):
        sc.register("score_operator", "fake", Fake)

    class NoMethods:
        pass

    with pytest.raises(sc.PluginValidationError, match="does not implement AbstractSystem: missing initial_state, step"):
        sc.register("system", "nomethods", NoMethods)


def test_score_built_for_another_sde():
    with pytest.raises(sc.IncompatibleComponentsError, match="built for SDE.*'ve'.*uses.*'vp'"):
        sc.ClosureModel("vp", GaussianScore("ve"))


def test_sparse_points_outside_domain():
    with pytest.raises(sc.ShapeError, match=r"'cond.obs_points'.*\[0, 1\).*points % 1.0"):
        sc.Conditioning(obs_values=torch.randn(2, 1, 3), obs_points=torch.tensor([[0.1, 0.2], [1.0, 0.5],
                                                                                   [0.3, 0.3]])).validate()


def test_obs_values_without_points():
    with pytest.raises(sc.ShapeError, match="obs_values and obs_points given together"):
        sc.Conditioning(obs_values=torch.randn(2, 1, 3)).validate()


def test_bad_ensemble_size_and_steps(model):
    with pytest.raises(sc.ConfigError, match="'n'.*positive integer"):
        model.sample(_cond(), n=0)
    with pytest.raises(sc.ConfigError, match="'steps'.*positive integer"):
        model.sample(_cond(), steps=-1)


def test_score_operator_with_wrong_output_shape():
    class Bad(sc.scores.AbstractScoreOperator):
        def forward(self, x, t, cond=None):
            return x[:, :, :2]

    with pytest.raises(sc.ShapeError, match="score operator output.*like x"):
        sc.bind_score(Bad(), None, event_shape=(1, 8, 8), batch=2)


def test_score_is_probed_once_per_grid_but_condition_checked_every_call():
    calls = []

    class Counting(GaussianScore):
        def forward(self, x, t, cond=None):
            calls.append(x.shape[0])
            return super().forward(x, t, cond)

    model = sc.ClosureModel("vp", Counting("vp"), {"type": "euler_maruyama", "steps": 3})
    for _ in range(2):
        model.sample(_cond(b=4), n=2)
    assert calls.count(1) == 1 and calls.count(8) == 2 * 4  # one probe, then 3 steps + denoise per draw
    f = torch.randn(4, 1, 8, 8)
    f[2, 0, 1, 1] = float("nan")
    with pytest.raises(sc.NonFiniteError, match="cond.fields"):
        model.sample(sc.Conditioning(fields=f), n=2)
