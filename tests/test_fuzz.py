"""Property-based fuzzing: configuration files and encoder inputs either work or raise a typed error.

Anything else (a raw KeyError, TypeError, IndexError, a NaN spreading silently) is a bug.
Kept fast: few examples, no deadline.
"""

from __future__ import annotations

import math

import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import stochclosure as sc
from stochclosure.cli.rollout import load_rollout_config
from stochclosure.cli.train import load_train_config
from stochclosure.data.generate import normalise_config

FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                        HealthCheck.too_slow])
scalars = st.one_of(st.none(), st.booleans(), st.integers(-5, 10**6), st.floats(allow_nan=True),
                    st.text(max_size=8), st.sampled_from(["run", "x.h5", "../x", "/tmp", "vp", "fno", "H", "train"]))
values = st.recursive(scalars, lambda c: st.one_of(st.lists(c, max_size=3),
                                                   st.dictionaries(st.text(max_size=6), c, max_size=3)), max_leaves=8)
TRAIN_KEYS = ["data", "model", "trainer", "out", "seed", "root", "data.path", "data.closure", "data.resolution",
              "data.history", "data.obs", "data.val_split", "model.sde", "model.score", "model.sampler",
              "model.channels", "trainer.batch_size", "bogus"]


def _put(cfg: dict, key: str, value) -> None:
    block, _, sub = key.partition(".")
    if sub:
        if not isinstance(cfg.get(block), dict):
            cfg[block] = {}
        cfg[block][sub] = value
    else:
        cfg[block] = value


@FUZZ
@given(st.dictionaries(st.sampled_from(TRAIN_KEYS), values, max_size=5))
def test_train_config_loading_never_fails_untyped(tmp_path_factory, changes):
    folder = tmp_path_factory.mktemp("fuzz")
    cfg = {"data": {"path": "x.h5"}, "model": {"score": "gaussian"}, "out": "run"}
    for k, v in changes.items():
        _put(cfg, k, v)
    path = folder / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    try:
        out = load_train_config(path)
    except sc.ConfigError as exc:
        assert "argument '" in str(exc)
    else:
        assert out["out"].startswith(str(folder)) or out["out"].startswith("/")


@FUZZ
@given(st.dictionaries(st.sampled_from(["trajectories", "batch_size", "seed", "spinup_steps", "record_every",
                                        "records", "resolutions", "coarsen", "closures", "obs_grid", "split",
                                        "dtype", "system", "typo"]), values, max_size=4))
def test_generate_config_normalisation_never_fails_untyped(raw):
    try:
        cfg = normalise_config(raw)
    except sc.ConfigError as exc:
        assert "argument '" in str(exc)
    else:
        assert cfg["trajectories"] >= 1 and cfg["batch_size"] >= 1


@FUZZ
@given(st.dictionaries(st.sampled_from(["model", "system", "initial", "n_steps", "members", "seed",
                                        "checkpoint_every", "record_every", "resample_every", "sampler_steps",
                                        "out", "root", "typo"]), values, max_size=5))
def test_rollout_config_loading_never_fails_untyped(tmp_path_factory, changes):
    folder = tmp_path_factory.mktemp("fuzz")
    cfg = {"model": "none", "system": "linear_relaxation", "out": "o.safetensors", **changes}
    path = folder / "r.yaml"
    path.write_text(yaml.safe_dump(cfg))
    try:
        load_rollout_config(path)
    except sc.ConfigError as exc:
        assert "argument '" in str(exc)


@FUZZ
@given(st.binary(max_size=200))
def test_arbitrary_bytes_as_a_config_file(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("fuzz") / "b.yaml"
    path.write_bytes(data)
    for loader in (load_train_config, load_rollout_config):
        try:
            loader(path)
        except sc.ConfigError:
            pass
        except UnicodeDecodeError:
            pytest.fail("undecodable bytes must be a ConfigError")


# -- encoder inputs ------------------------------------------------------------------------------------------------
@st.composite
def conditions(draw):
    b = draw(st.integers(0, 3))
    rank = draw(st.sampled_from([2, 3, 4, 4, 4, 5]))
    shape = [b] + [draw(st.sampled_from([1, 2, 8, 16])) for _ in range(rank - 1)]
    fields = torch.randn(*shape, dtype=draw(st.sampled_from([torch.float32, torch.float64])))
    if fields.numel() and draw(st.booleans()):
        fields.view(-1)[draw(st.integers(0, fields.numel() - 1))] = draw(st.sampled_from([math.nan, math.inf]))
    n_pts = draw(st.integers(1, 12))
    pts = torch.tensor(draw(st.lists(st.lists(st.floats(-0.5, 1.5), min_size=2, max_size=2), min_size=n_pts,
                                     max_size=n_pts)), dtype=torch.float32)
    vals = torch.randn(draw(st.sampled_from([b, b + 1])), 1, n_pts)
    return sc.Conditioning(fields=fields, obs_values=vals, obs_points=pts)


@FUZZ
@given(conditions(), st.sampled_from([(16, 16), (8, 8), (16,), (12, 20)]))
def test_encoders_and_sampling_give_finite_output_or_a_typed_error(cond, grid):
    from stochclosure.encoders.composite import CompositeEncoder

    enc = CompositeEncoder(["field", "sparse_interp"])
    model = sc.ClosureModel("vp", {"type": "linear_gaussian", "sde": "vp", "smoothing_length": 0.05,
                                   "noise_std": 0.1}, {"type": "euler_maruyama", "steps": 2})
    for call in (lambda: enc(cond.validate(), grid), lambda: model.sample(cond, grid=grid if len(grid) == 2 else None)):
        try:
            out = call()
        except sc.StochClosureError as exc:
            assert "argument '" in str(exc) or "expected" in str(exc)
        else:
            assert bool(torch.isfinite(out).all()), "a non-finite input went through silently"
