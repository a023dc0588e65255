"""The cycling driver: reproducibility, resumption (also after SIGKILL), closure memory, twin experiments."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch
from pyro import poutine

from stochclosure.assimilation import (
    ETKF,
    LETKF,
    AbstractEnsembleFilter,
    AssimilationResult,
    GridObservation,
    PointObservation,
    assimilate,
)
from stochclosure.errors import ConfigError, ShapeError
from stochclosure.rollouts import ClosureAR1, rollout
from stochclosure.systems import Lorenz96, NavierStokes2DSubgrid, PolynomialClosure

CUBIC = [-0.83, -1.08, 0.0063, 0.0022]       # a cubic fit of the two-scale closure (K = 8, J = 32, F = 20)


class Identity(AbstractEnsembleFilter):
    """No analysis: the ensemble runs free (the no-assimilation reference)."""

    def analyse(self, ensemble, obs_values, op, *, generator=None):
        return ensemble


def _cubic():
    poly = PolynomialClosure(CUBIC)
    return lambda cond: poly(cond.fields)


def _truth0(system, seed=5, spinup=300):
    x, y = system.full_initial_state(1, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    for _ in range(spinup):
        x, y = system.full_step(x, y)
    return x[0], y[0]


def _small_run(tmp_path=None, cycles=6, closure=None, **kw):
    l96 = Lorenz96(K=8, J=8, dt=2e-3)
    args = dict(observation=GridObservation(every=2, std=0.5), filter="enkf", members=6, cycles=cycles,
                steps_per_cycle=2, dt=0.01, seed=3, inflation=["adaptive", {"type": "additive", "std": 0.05}],
                resample_every=3, between=ClosureAR1(phi=0.9, sigma=0.5))
    args.update(kw)
    if tmp_path is not None:
        args["checkpoint"] = tmp_path / "run.safetensors"
    return assimilate(l96, _cubic() if closure is None else closure, _truth0(l96), **args)


def _assert_same(a: AssimilationResult, b: AssimilationResult) -> None:
    for name, x in a._tensors().items():
        if name.endswith("_seconds"):
            continue
        y = b._tensors()[name]
        assert x.dtype == y.dtype and x.shape == y.shape and torch.equal(x, y), name


def test_same_seed_same_run_other_seed_other_run():
    a, b, c = _small_run(), _small_run(), _small_run(seed=4)
    _assert_same(a, b)
    assert not torch.equal(a.analysis_rmse, c.analysis_rmse)
    assert a.cycles == 6 and a.rank_counts.shape == (6, 7) and a.truth.shape == (6, 1, 8)
    assert int(a.rank_counts.sum()) == 6 * 4                    # 4 observed values per cycle


def test_a_checkpointed_run_continues_to_the_uninterrupted_result(tmp_path):
    straight = _small_run()
    first = _small_run(tmp_path, cycles=3)
    assert first.cycles == 3
    resumed = _small_run(tmp_path, cycles=6)
    _assert_same(straight, resumed)
    again = _small_run(tmp_path, cycles=6)                     # finished: read back, nothing recomputed
    _assert_same(straight, again)
    with pytest.raises(ConfigError, match="'checkpoint'.*another run"):
        _small_run(tmp_path, cycles=6, seed=9)
    other = PolynomialClosure([*CUBIC[:3], 0.003])
    with pytest.raises(ConfigError, match="'checkpoint'.*another run"):       # another closure
        _small_run(tmp_path, cycles=6, closure=lambda cond: other(cond.fields))
    with pytest.raises(ConfigError, match="'cycles'.*at least the 6 cycles"):
        _small_run(tmp_path, cycles=4)


def test_result_files_round_trip(tmp_path):
    res = _small_run(cycles=2)
    path = res.save(tmp_path / "res.safetensors")
    back = AssimilationResult.load(path)
    _assert_same(res, back)
    assert back.config == res.config and back.summary().keys() == res.summary().keys()


def test_the_closure_memory_runs_on_across_analyses(tmp_path):
    """With no analysis, 5 cycles of 2 steps are one 10-step rollout of the same member keys (the AR(1)
    perturbation of the held closure and the 3-step draw schedule cross the cycle boundaries)."""
    l96 = Lorenz96(K=8, J=8, dt=2e-3)
    ens0 = 3.0 * torch.randn(4, 1, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    res = assimilate(l96, _cubic(), _truth0(l96), observation=GridObservation(std=1.0), filter=Identity(), members=4,
                     cycles=5, steps_per_cycle=2, dt=0.01, initial_ensemble=ens0, checkpoint=tmp_path / "c.safetensors",
                     resample_every=3, between=ClosureAR1(phi=0.9, sigma=0.5))
    from safetensors.torch import load_file

    keys = load_file(str(tmp_path / "c.safetensors"))["keys"]
    ref = poutine.condition(rollout, data={"member_seed": keys})(l96, _cubic(), ens0, 10, dt=0.01, resample_every=3,
                                                                  between=ClosureAR1(phi=0.9, sigma=0.5))
    assert torch.equal(res.ensemble, ref.states[-1])
    assert torch.equal(res.forecast_mean[1], ref.states[4].mean(0))


_SCRIPT = """
import sys, torch
from stochclosure.assimilation import GridObservation, assimilate
from stochclosure.rollouts import ClosureAR1
from stochclosure.systems import Lorenz96, PolynomialClosure
torch.set_num_threads(1)
l96 = Lorenz96(K=8, J=8, dt=2e-3)
x, y = l96.full_initial_state(1, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
for _ in range(300):
    x, y = l96.full_step(x, y)
poly = PolynomialClosure({cubic})
def report(c, scores):
    print("cycle", c, flush=True)
res = assimilate(l96, lambda cond: poly(cond.fields), (x[0], y[0]), observation=GridObservation(every=2, std=0.5),
                 filter="enkf", members=6, cycles=40, steps_per_cycle=2, dt=0.01, seed=3,
                 inflation=["adaptive", {{"type": "additive", "std": 0.05}}], resample_every=3,
                 between=ClosureAR1(phi=0.9, sigma=0.5), checkpoint=sys.argv[1], on_cycle=report)
res.save(sys.argv[2])
"""


def test_sigkill_mid_run_then_resume_is_bitwise_the_uninterrupted_run(tmp_path):
    script = tmp_path / "run.py"
    script.write_text(textwrap.dedent(_SCRIPT.format(cubic=CUBIC)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(script)]
    subprocess.run([*cmd, str(tmp_path / "a.ckpt"), str(tmp_path / "a.res")], check=True, env=env, timeout=300,
                   capture_output=True)
    proc = subprocess.Popen([*cmd, str(tmp_path / "b.ckpt"), str(tmp_path / "b.res")], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    for line in proc.stdout:                                   # kill it in the middle of the run
        if line.startswith("cycle 12"):
            os.kill(proc.pid, signal.SIGKILL)
            break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL and not (tmp_path / "b.res").exists()
    subprocess.run([*cmd, str(tmp_path / "b.ckpt"), str(tmp_path / "b.res")], check=True, env=env, timeout=300,
                   capture_output=True)
    _assert_same(AssimilationResult.load(tmp_path / "a.res"), AssimilationResult.load(tmp_path / "b.res"))
    leftovers = [p.name for p in tmp_path.iterdir() if ".tmp" in p.name]
    assert not leftovers, leftovers


def test_lorenz96_twin_etkf_with_the_cubic_closure_stays_below_the_observation_noise():
    """Full two-scale truth (K = 8, J = 32), every X observed every 0.05 time units with noise std 1,
    20 members of the reduced model with a cubic closure fitted to the truth's own closure.

    After 10 spin-up cycles the ETKF (adaptive inflation) keeps the analysis RMSE below the noise std
    in every cycle and never diverges, while the same ensemble without analysis drifts away."""
    l96 = Lorenz96(K=8, J=32, dt=1e-3)
    rec = l96.generate_records(4, generator=torch.Generator().manual_seed(0), spinup_steps=2000, record_every=10,
                               n_records=200)["fields"][8]
    poly = PolynomialClosure.fit(rec["state"], rec["U"])
    truth0 = _truth0(l96, spinup=2000)
    kw = dict(observation=GridObservation(std=1.0), members=20, cycles=40, steps_per_cycle=5, dt=0.01, spinup=10,
              seed=0)
    res = assimilate(l96, lambda cond: poly(cond.fields), truth0, filter=ETKF(), inflation="adaptive", **kw)
    s = res.summary()
    assert float(res.analysis_rmse[10:].max()) < 1.0, res.analysis_rmse
    assert s["analysis_rmse"] < 0.6 and s["divergences"] == 0 and not res.stopped
    assert 0.5 < s["analysis_spread_rmse"] < 2.0, s
    free = assimilate(l96, lambda cond: poly(cond.fields), truth0, filter=Identity(), **kw).summary()
    assert free["analysis_rmse"] > 3 * s["analysis_rmse"], free


def test_navier_stokes_subgrid_twin_with_point_observations_and_the_letkf():
    """Filtered DNS truth (32^2 -> 16^2), 8x8 point observations of vorticity (std 0.02), LETKF with
    8 members started from smooth (Gaussian-random-field) perturbations: the first analysis removes
    most of the initial error, and the analyses stay far below the error of the same ensemble run free."""
    system = NavierStokes2DSubgrid(n=16, n_fine=32, nu=1e-3, dt=1e-3)
    w0 = system.fine_initial_state(1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)[0]
    ens0 = system.filter(w0[None]) + system.initial_state(8, generator=torch.Generator().manual_seed(1),
                                                          dtype=torch.float64)
    pts = (torch.cartesian_prod(torch.arange(8), torch.arange(8)).double() + 0.5) / 8
    kw = dict(observation=PointObservation(pts, std=0.02), members=8, cycles=3, steps_per_cycle=20, seed=0,
              initial_ensemble=ens0)
    res = assimilate(system, None, w0, filter=LETKF(radius=0.1), inflation=1.2, **kw)
    free = assimilate(system, None, w0, filter=Identity(), **kw)
    assert float(res.analysis_rmse[0]) < 0.5 * float(res.forecast_rmse[0]), (res.forecast_rmse, res.analysis_rmse)
    assert float(res.analysis_rmse.max()) < 0.5 * float(free.analysis_rmse.min()), (res.analysis_rmse, free)
    assert res.truth.shape == (3, 1, 16, 16) and res.observations.shape == (3, 64)


def test_bad_arguments_are_refused_before_any_work(tmp_path):
    l96 = Lorenz96(K=8, J=8, dt=2e-3)
    truth0 = _truth0(l96, spinup=0)
    kw = dict(observation=GridObservation(std=1.0), filter="etkf", cycles=2, steps_per_cycle=2, dt=0.01)
    with pytest.raises(ConfigError, match="'members'"):
        assimilate(l96, None, truth0, members=1, **kw)
    with pytest.raises(ShapeError, match="'initial_ensemble'"):
        assimilate(l96, None, truth0, members=4, initial_ensemble=torch.zeros(3, 1, 8), **kw)
    with pytest.raises(ConfigError, match="'steps_per_cycle'.*whole number"):
        assimilate(l96, None, truth0, members=4, **{**kw, "dt": 0.0015, "steps_per_cycle": 1})
    with pytest.raises(ConfigError, match="'start'"):
        assimilate(l96, None, truth0, members=4, start={}, **kw)
    with pytest.raises(ConfigError, match="'filter'"):
        assimilate(l96, None, truth0, members=4, **{**kw, "filter": "kalman"})


def test_a_blown_up_forecast_is_recorded_and_stops_the_run(tmp_path):
    l96 = Lorenz96(K=8, J=8, dt=2e-3)
    kw = dict(observation=GridObservation(std=1.0), filter="etkf", members=4, cycles=5, steps_per_cycle=2, dt=0.01,
              checkpoint=tmp_path / "blow.safetensors")
    res = assimilate(l96, lambda cond: cond.fields * 1e300, _truth0(l96, spinup=0), **kw)
    assert res.stopped and res.cycles == 1 and bool(res.diverged[0])
    assert torch.isnan(res.analysis_rmse[0]) and res.summary()["divergences"] == 1
    again = assimilate(l96, lambda cond: cond.fields * 1e300, _truth0(l96, spinup=0), **kw)   # stays stopped
    assert again.stopped and again.cycles == 1
