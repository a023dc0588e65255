"""Every tutorial runs end to end in smoke mode and writes sane outputs.

Each tutorial is run as a script in a subprocess (one thread, output to ``tmp_path``), as CI and
a reader would run it; the test then checks its figures (non-empty PNG files) and the key numbers
of its ``results.json`` (finite, within plausible ranges).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

TUTORIALS = Path(__file__).resolve().parents[1] / "tutorials"
PNG = b"\x89PNG\r\n\x1a\n"


def _numbers(obj):
    if isinstance(obj, bool):
        return
    if isinstance(obj, (int, float)):
        yield float(obj)
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _numbers(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _numbers(v)


def run_tutorial(name: str, out: Path) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("STOCHCLOSURE_TEST_THREADS", "1"), "MPLBACKEND": "Agg"}
    proc = subprocess.run([sys.executable, str(TUTORIALS / f"{name}.py"), "--smoke", "--out", str(out)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, f"{name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    res = json.loads((out / "results.json").read_text())
    assert res["smoke"] is True
    pngs = sorted(out.glob("*.png"))
    assert pngs and sorted(p.name for p in pngs) == sorted(res["figures"])
    for p in pngs:
        data = p.read_bytes()
        assert data.startswith(PNG) and len(data) > 5000, f"{p.name} is not a real figure ({len(data)} bytes)"
    bad = [v for v in _numbers(res) if not math.isfinite(v)]
    assert not bad, f"non-finite numbers in {name}/results.json"
    return res


def test_all_tutorials_are_tested():
    assert sorted(p.stem for p in TUTORIALS.glob("[0-9][0-9]_*.py")) == sorted(EXPECTED)


def test_01_quickstart(tmp_path):
    res = run_tutorial("01_quickstart", tmp_path)
    off, on = res["offline"], res["online"]
    assert 0.0 < off["rel_error_single"] < 0.1 and off["rel_error_mean8"] <= off["rel_error_single"] + 1e-6
    assert 0.0 < off["crps"] < 0.01
    # the learned closure beats no closure
    assert on["rel_error_final_closure"] < 0.5 * on["rel_error_final_no_closure"]
    assert on["spread_final"] > 0


def test_02_register_components(tmp_path):
    res = run_tutorial("02_register_components", tmp_path)
    assert res["contracts_passed"] == ["cosine_vp", "ddim", "ddim eta=0", "encoded_gaussian", "laplacian"]
    pk = res["package"]
    assert set(pk["providers"].values()) == {"sc-tutorial-plugin"} and pk["cli_rows"] == 4
    assert pk["identical_ensemble"] is True
    best = res["ddim_gaussian_check"]["eta=0, steps=100"]
    assert abs(best["mean"]) < 0.03 and abs(best["std"] - 0.5) < 0.02
    ro = res["rollout_register"]
    assert ro["rel_error_final"] < ro["rel_error_final_no_closure"]


def test_03_uncertainty_quantification(tmp_path):
    res = run_tutorial("03_uncertainty_quantification", tmp_path)
    syn = res["synthetic"]
    assert 0.9 < syn["calibrated"]["spread_skill_ratio"] < 1.1
    assert syn["under-dispersed"]["spread_skill_ratio"] < 0.7 < 1.5 < syn["over-dispersed"]["spread_skill_ratio"]
    assert syn["calibrated"]["crps"] < min(v["crps"] for k, v in syn.items() if k != "calibrated")
    sc = res["lorenz96"]["scores"]
    assert sc["deterministic (cubic)"]["rmse_mid"] < sc["no closure"]["rmse_mid"]
    ar1 = next(v for k, v in sc.items() if k.startswith("stochastic, AR(1)"))
    assert ar1["spread_mid"] > sc["deterministic (cubic)"]["spread_mid"]
    assert sc["AR(1), noise x3 (over-dispersed)"]["spread_skill_mid"] > ar1["spread_skill_mid"]
    assert ar1["crps_mean"] < sc["deterministic (cubic)"]["crps_mean"]
    ns = res["navier_stokes"]["scores"]
    assert ns["stochastic"]["rel_error_final"] < ns["no closure"]["rel_error_final"]
    assert 0 < ns["stochastic"]["spread_skill_final"] < 1


def test_04_ensemble_rollouts(tmp_path):
    res = run_tutorial("04_ensemble_rollouts", tmp_path)
    assert res["replay_identical"] is True and res["predictive_matches_single_run"] is True
    assert res["condition_max_rel_error"] < 3e-6  # of the states' magnitude (~3)
    pol = res["policies"]
    assert pol["every 20, hold"]["spread"] > pol["every 5, hold"]["spread"] > pol["every step"]["spread"]
    assert 0.5 < pol["every step"]["spread"] / pol["reference_spread"] < 1.5
    assert pol["no closure"]["spread"] == 0.0
    pi = res["perturb_initial"]
    assert 0.8 < pi["ic_only_initial"] < 1.2 and pi["both"] > max(pi["ic_only"], pi["closure_only"])
    bs = res["batch_size"]
    assert set(bs) == {"1", "4", "16"} and all(v["seconds"] > 0 for v in bs.values())


def test_05_sparse_measurements_and_resolution(tmp_path):
    res = run_tutorial("05_sparse_measurements_and_resolution", tmp_path)
    interp = res["encoder_reconstruction"]["sparse_interp"]
    assert interp["4"]["32"] > interp["8"]["32"] > interp["16"]["32"]     # more points, better fields
    tr = res["resolution_transfer"]
    for n in (32, 64, 128):
        assert tr[f"as trained @ {n}"]["rel_error_single"] < 0.1
    assert tr["reference_grid=(32, 32) @ 128"]["sample_std"] > tr["as trained @ 128"]["sample_std"]
    dens = res["measurement_density"]
    assert dens["16"]["model_rel_error_mean"] < dens["16"]["interp_only_rel_error"]
    assert dens["16"]["model_rel_error_mean"] < dens["4"]["model_rel_error_mean"]


def test_06_data_assimilation(tmp_path):
    res = run_tutorial("06_data_assimilation", tmp_path)
    l96 = res["lorenz96"]
    # without a closure the reduced model's X dynamics are wrong: the filter loses the truth
    assert l96["no closure"]["analysis_rmse"] > 3 * l96["cubic"]["analysis_rmse"]
    for name in ("cubic", "cubic + AR(1)"):   # with a closure the analysis beats the observations (std 1)
        assert l96[name]["analysis_rmse"] < 0.8 and l96[name]["divergences"] == 0, name
    # the AR(1) noise is what spreads the ensemble: without inflation it is the better calibrated
    det, sto = l96["cubic"]["no_inflation"], l96["cubic + AR(1)"]["no_inflation"]
    assert sto["forecast_spread"] > 1.3 * det["forecast_spread"]
    assert abs(sto["spread_rmse"] - 1) < abs(det["spread_rmse"] - 1)
    for row in res["navier_stokes"]["scores"].values():
        assert 0 < row["analysis_rmse"] < 4 * 0.005 and row["analysis_seconds"] < row["forecast_seconds"]


def test_07_custom_closure_law(tmp_path):
    res = run_tutorial("07_custom_closure_law", tmp_path)
    assert res["contract_passed"] is True and res["reload"]["identical_draws"] is True
    assert res["reload"]["config"]["closure"]["type"] == "stencil_gaussian"
    off = res["offline"]
    assert off["stencil_gaussian"]["r2"] > 0.3 > off["no_closure"]["r2"]
    assert off["stencil_gaussian"]["crps"] < 0.7 * off["no_closure"]["crps"]
    assert 0.7 < off["stencil_gaussian"]["spread_skill"] < 1.3
    st = res["stencil_relative"]  # the diffusion part of G: a discrete Laplacian
    assert all(0.15 < v < 0.5 for v in (st[0][1], st[1][0], st[1][2], st[2][1]))
    assert all(abs(v) < 0.2 for v in (st[0][0], st[0][2], st[2][0], st[2][2]))  # measured: 0.31-0.36 and |corners| <= 0.10
    roll = res["rollouts"]  # the reloaded user law in ensemble, Predictive and `stochclosure rollout`
    assert roll["finite"] and roll["cli_exit"] == 0 and roll["final_spread"] > 0
    assert roll["ensemble_shape"][1:] == [8, 1, 16, 16] and roll["predictive_closure_shape"] == [4, 1, 16, 16]


EXPECTED = ["01_quickstart", "02_register_components", "03_uncertainty_quantification", "04_ensemble_rollouts",
            "05_sparse_measurements_and_resolution", "06_data_assimilation", "07_custom_closure_law"]


@pytest.mark.parametrize("name", EXPECTED)
def test_tutorial_is_a_percent_notebook_with_prose(name):
    text = (TUTORIALS / f"{name}.py").read_text()
    assert "# %% [markdown]\n# # " in text, "title cell"
    assert text.count("# %% [markdown]") >= 4, "prose cells explaining the why"
    assert "--smoke" in text and "--out" in text
