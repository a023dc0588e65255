"""ClosureH5Dataset trusts nothing in the file: layout, split labels, measurements, JSON and statistics are checked."""

from __future__ import annotations

import shutil

import h5py
import numpy as np
import pytest
import torch

from stochclosure.data import ClosureH5Dataset, DatasetError
from stochclosure.data.generate import generate

CFG = {"system": {"K": 8, "J": 16}, "trajectories": 4, "batch_size": 2, "spinup_steps": 5, "record_every": 1,
       "records": 3, "obs_grid": 4, "split": {"train": 0.5, "val": 0.25, "test": 0.25}}


@pytest.fixture(scope="module")
def l96(tmp_path_factory):
    return generate("lorenz96", CFG, tmp_path_factory.mktemp("h5") / "l96.h5", progress=False)


def edited(src, tmp_path, edit):
    dst = tmp_path / "edited.h5"
    shutil.copy(src, dst)
    with h5py.File(dst, "a") as f:
        edit(f)
    return dst


def replace(key, data):
    def edit(f):
        del f[key]
        f[key] = data
    return edit


def resized(key, n=None, t=None):
    def edit(f):
        data = f[key][()]
        data = data[:n] if n is not None else data
        data = data[:, :t] if t is not None else data
        del f[key]
        f[key] = data
    return edit


def set_attr(key, name, value):
    def edit(f):
        f[key].attrs[name] = value
    return edit


def test_a_valid_file_loads_with_its_statistics(l96):
    ds = ClosureH5Dataset(l96, closure="U")
    mean, std = ds.target_statistics()
    assert mean.shape == (1,) and std.shape == (1,) and float(std) > 0
    assert len(ds) == 2 * 3 and ds.obs_points.shape == (4, 1)


def test_files_without_statistics_still_load(l96, tmp_path):
    def drop(f):
        for name in ("mean", "std", "statistics_of"):
            del f["res_8/U"].attrs[name]
    ds = ClosureH5Dataset(edited(l96, tmp_path, drop), closure="U")
    assert ds.target_statistics() is None and len(ds) == 6


BAD = [
    ("split_out_of_range", lambda f: f["split"].__setitem__(0, 5), {},
     r"'split'.*expected labels 0 \(train\), 1 \(val\), 2 \(test\), got values \[5\] at 1 of 4 trajectories"),
    ("split_negative", lambda f: f["split"].__setitem__(1, -1), {}, r"'split'.*got values \[-1\]"),
    ("split_float", replace("split", np.array([0.0, 1.0, 2.0, 0.0])), {}, r"'split'.*integer labels.*float64"),
    ("split_wrong_length", replace("split", np.zeros(5, dtype=np.int8)), {},
     r"'split'.*expected 4 labels, one per trajectory, got 5 \(target res_8/U has \(4, 3\)"),
    ("split_2d", replace("split", np.zeros((4, 1), dtype=np.int8)), {}, r"'split'.*1-D"),
    ("target_shorter_than_state", resized("res_8/U", t=2), {"closure": "U"},
     r"'res_8/U'.*expected 4 trajectories x 3 records.*got 4 x 2.*state res_8/state has \(4, 3\)"),
    ("fewer_state_trajectories", resized("res_8/state", n=3), {"closure": "U"},
     r"'res_8/state'.*expected 4 trajectories x 3 records.*got 3 x 3.*target res_8/U has \(4, 3\)"),
    ("time_too_long", replace("time", np.arange(4.0)), {}, r"'time'.*expected 3 record times, got 4"),
    ("missing_obs_points", lambda f: f.__delitem__("obs_points"), {"closure": "U"},
     r"'obs_points'.*expected dataset 'obs_points'"),
    ("obs_points_nan", replace("obs_points", np.full((4, 1), np.nan)), {"closure": "U"},
     r"'obs_points'.*expected finite numeric coordinates"),
    ("obs_wrong_points", replace("obs_points", np.zeros((3, 1))), {"closure": "U"},
     r"'obs/U'.*expected shape \(N, T, C, P\).*P=3.*got shape \(4, 3, 1, 4\)"),
    ("deep_json", lambda f: f.attrs.__setitem__("closures", "[" * 50_000 + "]" * 50_000), {},
     r"'closures'.*expected JSON nested at most 100 levels deep, got 50000"),
    ("huge_json", lambda f: f.attrs.__setitem__("system_config", '"' + "x" * (16 * 2**20) + '"'), {},
     r"'system_config'.*expected JSON text of at most 16777216 characters"),
    ("binary_json", lambda f: f.attrs.__setitem__("resolutions", np.arange(3)), {},
     r"'resolutions'.*expected JSON text.*ndarray"),
    ("closure_names_not_text", lambda f: f.attrs.__setitem__("closures", "[1, 2]"), {},
     r"'closures/resolutions'.*expected JSON lists of names"),
    ("nan_mean", set_attr("res_8/U", "mean", np.array([np.nan])), {"closure": "U"},
     r"\"res_8/U.attrs\['mean'\]\".*expected finite numbers, got \[nan\]"),
    ("inf_std", set_attr("res_8/U", "std", np.array([np.inf])), {"closure": "U"},
     r"res_8/U.attrs\['std'\].*expected non-negative finite numbers, got \[inf\]"),
    ("negative_std", set_attr("res_8/U", "std", np.array([-1.0])), {"closure": "U"},
     r"res_8/U.attrs\['std'\].*non-negative"),
    ("string_mean", set_attr("res_8/U", "mean", "large"), {"closure": "U"},
     r"res_8/U.attrs\['mean'\].*expected 1 number\(s\), one per channel, got dtype"),
    ("wrong_length_std", set_attr("res_8/U", "std", np.ones(3)), {"closure": "U"},
     r"res_8/U.attrs\['std'\].*expected 1 number\(s\).*shape \(3,\)"),
    ("only_mean", lambda f: f["res_8/U"].attrs.__delitem__("std"), {"closure": "U"},
     r"res_8/U.attrs\['std'\].*expected both attributes"),
]


@pytest.mark.parametrize("name,edit,kwargs,match", BAD, ids=[b[0] for b in BAD])
def test_a_corrupt_or_foreign_file_gets_a_dataset_error(l96, tmp_path, name, edit, kwargs, match):
    path = edited(l96, tmp_path, edit)
    with pytest.raises(DatasetError, match=match):
        ClosureH5Dataset(path, split=None, **kwargs)


def test_measurements_are_optional_only_when_not_requested(l96, tmp_path):
    path = edited(l96, tmp_path, lambda f: f.__delitem__("obs_points"))
    ds = ClosureH5Dataset(path, split=None, closure="U", obs=False)
    assert ds.obs_points is None and "obs_values" not in ds[0]
    torch.testing.assert_close(ds[0]["target"], ClosureH5Dataset(l96, split=None, closure="U")[0]["target"],
                               rtol=0, atol=0)
