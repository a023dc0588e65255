"""``assimilate --config``: the experiment config, results file, report, resumption and closures."""

from __future__ import annotations

import argparse
import json
import math

import pytest
import torch
import yaml

from stochclosure.assimilation import AssimilationResult
from stochclosure.assimilation.experiment import ExperimentConfig, build_forecast
from stochclosure.cli import assimilate as command
from stochclosure.errors import ConfigError
from stochclosure.systems import Lorenz96

BASE = {
    "system": {"type": "lorenz96", "K": 8, "J": 8, "dt": 0.002}, "dt": 0.01, "every": 2,
    "truth": {"spinup": 1.0, "seed": 1}, "observation": {"type": "grid", "every": 1, "std": 0.5},
    "closure": {"type": "cubic", "noise": "ar1", "fit_time": 2.0}, "filter": "etkf", "inflation": 1.1,
    "members": 6, "cycles": 10, "spinup_cycles": 2, "seed": 3,
}


def _run(tmp_path, cfg, *extra):
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(cfg))
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    return command.run(parser.parse_args(["--config", str(path), "--quiet", *extra]))


def test_command_writes_results_summary_and_report(tmp_path, capsys):
    out = tmp_path / "run"
    assert _run(tmp_path, BASE, "--out", str(out)) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    res = AssimilationResult.load(out / "result.safetensors")
    assert res.cycles == 10 and res.members == 6 and res.spinup == 2
    summary = json.loads((out / "summary.json").read_text())
    assert summary["summary"]["analysis_rmse"] == pytest.approx(printed["analysis_rmse"], rel=1e-12)
    assert summary["config"]["closure"]["noise"] == "ar1"
    fitted = summary["fitted"]
    assert len(fitted["coefficients"]) == 4 and 0.0 < fitted["phi"] < 1.0 and fitted["sigma"] > 0.0
    # observing every X with std 0.5, the analysis beats the observations and the forecast
    s = res.summary()
    assert s["analysis_rmse"] < 0.5 and s["analysis_rmse"] < s["forecast_rmse"] and s["divergences"] == 0
    report = (out / "report" / "report.md").read_text()
    for fig in ("error_vs_cycle.png", "spread_vs_rmse.png", "rank_histogram.png"):
        assert fig in report
        assert (out / "report" / fig).read_bytes().startswith(b"\x89PNG") and (out / "report" / fig).stat().st_size > 5000
    leftovers = [p.name for p in out.rglob("*") if ".tmp" in p.name]      # every file written atomically
    assert not leftovers, leftovers


def test_a_stopped_run_continues_to_the_uninterrupted_result(tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    _run(tmp_path, BASE, "--out", str(straight), "--no-report")
    _run(tmp_path, BASE, "--out", str(resumed), "--no-report", "--cycles", "4")
    assert AssimilationResult.load(resumed / "result.safetensors").cycles == 4
    _run(tmp_path, BASE, "--out", str(resumed), "--no-report")
    a = AssimilationResult.load(straight / "result.safetensors")
    b = AssimilationResult.load(resumed / "result.safetensors")
    for name in ("analysis_rmse", "forecast_rmse", "analysis_spread", "observations", "ensemble"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name


def test_cubic_ar1_forecast_is_the_polynomial_plus_stationary_ar1_noise():
    """The forecast system adds cubic(X) to the rollout's AR(1) term, whose innovation gives the fitted stationary std."""
    cfg = ExperimentConfig.from_dict({**BASE, "closure": {"type": "cubic", "coefficients": [0.5, -1.0, 0.0, 0.01],
                                                          "noise": "ar1", "phi": 0.8, "sigma": 2.0}})
    l96 = Lorenz96(K=8, J=8, dt=0.002)
    system, closure, kw, info = build_forecast(cfg, l96)
    x = torch.randn(3, 1, 8, dtype=torch.float64)
    u = 0.5 - x + 0.01 * x**3
    assert torch.equal(system.step(x, None, 0.01), l96.step(x, u, 0.01))
    assert kw["between"].phi == 0.8 and kw["between"].sigma == pytest.approx(2.0 * math.sqrt(1 - 0.64), rel=1e-12)
    assert float(closure(type("C", (), {"fields": x})()).abs().max()) == 0.0
    none_system, none_closure, none_kw, _ = build_forecast(ExperimentConfig.from_dict({**BASE, "closure": "none"}), l96)
    assert none_system is l96 and none_closure is None and none_kw == {}


def test_noise_in_the_closure_spreads_the_forecast(tmp_path):
    """From a nearly collapsed ensemble (std 1e-4), one cycle of 0.1 time units: without closure noise the
    spread only grows by the chaos (a factor ~e^(0.1 lambda), lambda ~ 2), with the AR(1) noise (innovation
    ~0.6 per step, 10 steps of 0.01) it is of order 0.01 * 0.6 * sqrt(10) ~ 0.02, a hundred times more."""
    common = {**BASE, "every": 10, "init_spread": 1.0e-4, "inflation": None, "cycles": 2, "spinup_cycles": 0}
    det = {**common, "closure": {"type": "cubic", "fit_time": 2.0}}
    noisy = {**common, "closure": {"type": "cubic", "noise": "ar1", "fit_time": 2.0}}
    _run(tmp_path, det, "--out", str(tmp_path / "det"), "--no-report")
    _run(tmp_path, noisy, "--out", str(tmp_path / "noisy"), "--no-report")
    a = AssimilationResult.load(tmp_path / "det" / "result.safetensors").forecast_spread[0]
    b = AssimilationResult.load(tmp_path / "noisy" / "result.safetensors").forecast_spread[0]
    assert float(a) < 1e-3 and float(b) > 20 * float(a), (float(a), float(b))


def test_config_paths_and_errors(tmp_path):
    cfg = ExperimentConfig.from_dict({**BASE, "out": "runs/x"}, tmp_path / "c.yaml")
    assert cfg.out == str((tmp_path / "runs" / "x").resolve())
    with pytest.raises(ConfigError, match="members"):
        ExperimentConfig.from_dict({**BASE, "members": 1})
    with pytest.raises(ConfigError, match="observation"):
        ExperimentConfig.from_dict({k: v for k, v in BASE.items() if k != "observation"})
    pts = ExperimentConfig.from_dict({**BASE, "observation": {"type": "points", "points": {"regular": 4},
                                                              "std": 0.1}}).observation["points"]
    assert len(pts) == 16 and pts[0] == [0.125, 0.125]


@pytest.mark.parametrize("name", ["lorenz96_etkf", "ns2d_letkf"])
def test_example_configs_are_valid(name):
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "configs" / "assimilation" / f"{name}.yaml"
    from stochclosure.config import load_yaml_mapping

    cfg = ExperimentConfig.from_dict(load_yaml_mapping(path), path)
    assert cfg.members >= 16 and cfg.out is not None


def test_a_recorded_truth_replays_the_full_model_run(tmp_path):
    """RecordedTwin with the truth's X every cycle gives the run the full-model twin gives, bit for bit."""
    from stochclosure.assimilation.experiment import RecordedTwin, _truth_start, run_experiment
    from stochclosure.assimilation.twins import Lorenz96Twin

    cfg = ExperimentConfig.from_dict({**BASE, "closure": {"type": "cubic", "coefficients": [-0.8, -1.1, 0.0, 0.002]},
                                      "cycles": 5})
    l96 = Lorenz96(K=8, J=8, dt=0.002)
    x, y = _truth_start(l96, Lorenz96Twin(l96), 1.0, 1)
    x, y, rec = x[None], y[None], [x[None]]
    for _ in range(5):
        for _ in range(10):                   # a cycle: 2 forecast steps of 0.01 = 10 full steps of 0.002
            x, y = l96.full_step(x, y)
        rec.append(x)
    direct = run_experiment(cfg, tmp_path / "direct", progress=False, report=False)
    replay = run_experiment(cfg, tmp_path / "replay", progress=False, report=False,
                            truth=RecordedTwin(torch.cat(rec), period=0.01 * 2))
    for name in ("observations", "analysis_rmse", "ensemble"):
        assert torch.equal(getattr(direct, name), getattr(replay, name)), name
    with pytest.raises(ConfigError, match="truth"):
        run_experiment(ExperimentConfig.from_dict({**BASE, "cycles": 9, "closure": "none"}), tmp_path / "short",
                       progress=False, report=False, truth=RecordedTwin(torch.cat(rec), period=0.02))


def test_a_killed_command_resumes_to_the_uninterrupted_result(tmp_path):
    """SIGKILL the command mid-run (after its checkpoint holds 5 cycles); the same command again
    finishes the run, and the result equals an uninterrupted run's."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from safetensors import safe_open

    cfg = {**BASE, "cycles": 60, "closure": {"type": "cubic", "noise": "ar1", "coefficients": [-0.8, -1.1, 0.0, 0.002],
                                              "phi": 0.9, "sigma": 1.5}}
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "stochclosure", "assimilate", "--config", str(path), "--quiet", "--no-report", "--out"]
    subprocess.run([*cmd, str(tmp_path / "a")], check=True, env=env, timeout=300, capture_output=True)
    proc = subprocess.Popen([*cmd, str(tmp_path / "b")], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt, done, deadline = tmp_path / "b" / "checkpoint.safetensors", 0, time.time() + 120
    while done < 5 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
        try:
            with safe_open(str(ckpt), framework="pt") as fh:
                done = json.loads(fh.metadata()["stochclosure"])["cycles_done"]
        except Exception:  # noqa: BLE001 - not written yet
            pass
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL and not (tmp_path / "b" / "result.safetensors").exists()
    subprocess.run([*cmd, str(tmp_path / "b")], check=True, env=env, timeout=300, capture_output=True)
    a = AssimilationResult.load(tmp_path / "a" / "result.safetensors")
    b = AssimilationResult.load(tmp_path / "b" / "result.safetensors")
    assert a.cycles == b.cycles == 60
    for name in ("analysis_rmse", "forecast_rmse", "analysis_spread", "observations", "rank_counts", "ensemble"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name


def test_a_checkpoint_closure_runs_through_the_command(tmp_path):
    """A saved closure model (an exact Gaussian score, 16^2 fields) as the forecast closure of a small
    Navier-Stokes LETKF twin, drawn every 2 steps with its starting noise correlated in time: the run
    completes, and the closure's draws give the forecast more spread than the same run without closure."""
    from stochclosure.model import ClosureModel
    from stochclosure.scores.analytic import LinearGaussianScore

    model = ClosureModel("vp", LinearGaussianScore("vp", smoothing_length=0.05, noise_std=0.1),
                         {"type": "euler_maruyama", "steps": 3})
    model.save(tmp_path / "closure.safetensors")
    ns = {"system": {"type": "navier_stokes_2d_subgrid", "n": 16, "n_fine": 32, "nu": 1.0e-3, "dt": 1.0e-3},
          "every": 10, "truth": {"spinup": 0.05, "seed": 2}, "filter": {"type": "letkf", "radius": 0.2},
          "observation": {"type": "points", "points": {"regular": 4}, "std": 0.01}, "members": 4, "cycles": 3,
          "spinup_cycles": 0, "init_spread": 1.0e-3}
    learned = {**ns, "closure": {"type": "checkpoint", "path": "closure.safetensors", "noise_rho": 0.5,
                                 "resample_every": 2, "sampler_steps": 3}}
    _run(tmp_path, learned, "--out", str(tmp_path / "learned"), "--no-report")
    _run(tmp_path, {**ns, "closure": "none"}, "--out", str(tmp_path / "none"), "--no-report")
    a = AssimilationResult.load(tmp_path / "learned" / "result.safetensors")
    b = AssimilationResult.load(tmp_path / "none" / "result.safetensors")
    assert a.cycles == 3 and bool(torch.isfinite(a.analysis_rmse).all())
    assert float(a.forecast_spread[0]) > 2 * float(b.forecast_spread[0]), (a.forecast_spread, b.forecast_spread)


def test_physics_every_step_reaches_the_rollout_policy():
    """``physics_every_step: true`` on a registered residual law gives the rollout a remainder-holding policy."""
    from stochclosure.rollouts import Hold, NoiseAR1
    from stochclosure.systems.subgrid import NavierStokes2DSubgrid

    ns = NavierStokes2DSubgrid(n=16, n_fine=32, nu=1.0e-3, dt=1.0e-3)
    law = {"type": "residual", "options": {"physics": {"type": "adm", "order": 2}, "residual": "white"},
           "resample_every": 5, "physics_every_step": True}
    _, closure, kw, _ = build_forecast(ExperimentConfig.from_dict({**BASE, "closure": law}), ns)
    assert kw["between"] == Hold(physics_every_step=True) and hasattr(closure, "physics")
    _, _, kw, _ = build_forecast(ExperimentConfig.from_dict({**BASE, "closure": {**law, "noise_rho": 0.9}}), ns)
    assert kw["between"] == NoiseAR1(rho=0.9, physics_every_step=True)
    with pytest.raises(ConfigError, match="physics_every_step"):
        ExperimentConfig.from_dict({**BASE, "closure": {"type": "cubic", "physics_every_step": True}})
    with pytest.raises(ConfigError, match="physics_every_step"):
        ExperimentConfig.from_dict({**BASE, "closure": {**law, "physics_every_step": "yes"}})
