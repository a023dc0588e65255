"""The online stage of the reduced-scale reference benchmark: its regenerated starts and its scale fit."""

from __future__ import annotations

import json
import math

import h5py
import torch
import yaml
from benchmark_scripts import load_benchmark

from stochclosure.data.generate import generate
from stochclosure.testing import assert_close


def _bench():
    return load_benchmark("paper_ns2d.py", "paper_ns2d")


def test_starts_are_the_generated_states(tmp_path):
    """Stepping only the val/test members of a batch (with the batch's noise) gives the states that
    ``generate`` stores for them, at record 0 and at a later record."""
    cfg = {"system": {"n": 16, "nu": 1e-3, "dt": 1e-3, "sigma": 5e-5, "noise_alpha": 0.005, "noise_kappa": 10.0},
           "trajectories": 8, "batch_size": 4, "seed": 3, "spinup_steps": 30, "record_every": 5, "records": 3,
           "resolutions": [16], "coarsen": "stride", "closures": ["G"], "obs_grid": 4,
           "split": {"train": 0.5, "val": 0.25, "test": 0.25}, "dtype": "float64"}
    path = tmp_path / "data.yaml"
    path.write_text(yaml.safe_dump(cfg))
    generate("navier_stokes_2d", cfg, tmp_path / "data.h5", progress=False)
    starts = _bench().generate_starts(path, tmp_path, (0, 2))
    with h5py.File(tmp_path / "data.h5", "r") as f:
        labels = f["split"][:]
        assert sorted(c["traj"] for c in starts["test"] if c["record"] == 0) == [i for i, s in enumerate(labels) if s == 2]
        assert len(starts["val"]) == 2 * int((labels == 1).sum())
        for case in starts["val"] + starts["test"]:
            stored = torch.from_numpy(f["res_16/state"][case["traj"], case["record"]]).double()
            assert_close(case["state"][0], stored, rtol=1e-6, what=f"state of trajectory {case['traj']}")  # float32 on disk
            assert math.isclose(case["time"], float(f["time"][case["record"]]), rel_tol=1e-12)


def _run(err0: float, spread: float, members: int, n_t: int = 6) -> dict:
    """A synthetic per-case result: shared error ``err0`` and member spread ``spread`` at every time."""
    return {"members": members, "spread2": [0.0] + [spread**2] * n_t, "mse": [0.0] + [err0**2 + spread**2 / members] * n_t,
            "ratio": math.sqrt((members + 1) / members) * spread / math.sqrt(err0**2 + spread**2 / members)}


def test_fit_scales_the_spread_to_the_shared_error():
    """Spread proportional to the scale: the fit lands where the spread equals the shared error
    (spread-skill 1), from under- and from over-dispersed trials."""
    bench = _bench()
    for spread in (0.5, 2.0):
        fit = bench.fit_forcing_scale([_run(1.0, spread, 8), _run(1.0, spread, 8)], 2.5)
        assert math.isclose(fit["forcing_scale"], round(2.5 / spread, 2), rel_tol=1e-9)
        assert fit["cases"] == 2 and fit["members"] == 8


def test_summary_pools_cases():
    bench = _bench()
    runs = [{**_run(1.0, 1.0, 4), "err_mean": [0.0, 1.0], "crps": [0.0, 2.0], "rank_histogram": [1, 2, 3, 4, 5]},
            {**_run(1.0, 1.0, 4), "err_mean": [0.0, 3.0], "crps": [0.0, 4.0], "rank_histogram": [5, 4, 3, 2, 1]}]
    s = bench.summarise_runs(runs)
    assert s["cases"] == 2 and s["rank_histogram"] == [6, 6, 6, 6, 6]
    assert math.isclose(s["err_mean"][1], 2.0) and math.isclose(s["err_mean_se"][1], 1.0)  # std 1.414 / sqrt 2
    assert math.isclose(s["ratio_pooled"], 1.0, rel_tol=1e-12)


def test_between_draw_scale_is_fitted_on_validation_runs_only(tmp_path):
    """The between-draw fit reads the validation runs of the physics-between policy (trial scale 1)
    alone, writes ``calibration_between.json`` once, and the collection skips that file and treats the
    fitted policy as optional (a case without it still counts)."""
    bench = _bench()
    times = {"err_mean": [0.0] * 7, "crps": [0.0] * 7, "rank_histogram": [1] * 5, "times": list(range(7)),
             "case": {"traj": 0, "time": 0.0}}
    (tmp_path / "val0_physics_between.json").write_text(json.dumps({**_run(1.0, 0.5, 4), **times}))
    (tmp_path / "test0_physics_between.json").write_text(json.dumps({**_run(1.0, 4.0, 4), **times}))  # must not count
    (tmp_path / "test0_held.json").write_text(json.dumps({**_run(1.0, 1.0, 4), **times}))
    cal = bench._calibration(tmp_path, 1, False, trial="physics_between", trial_scale=1.0, name="calibration_between.json")
    assert math.isclose(cal["forcing_scale"], 2.0, rel_tol=1e-9) and cal["trial_scale"] == 1.0
    assert json.loads((tmp_path / "calibration_between.json").read_text()) == cal
    assert not (tmp_path / "calibration.json").exists()
    out = bench.collect_online_cases(tmp_path, "x", None)
    assert out["incomplete"] == [] and set(out["test"]) == {"held", "physics_between"} and set(out["val"]) == {"physics_between"}
