"""``benchmarks/closures.py --quick``: the whole study on a tiny DNS, and its resume from the work folder."""

from __future__ import annotations

import json

import pytest
import torch
from benchmark_scripts import load_benchmark

pytest.importorskip("stochclosure_neuralop")


def _module():
    return load_benchmark("closures.py", "closures_study")


def test_quick_study_writes_every_closure_and_resumes_from_its_cache(tmp_path):
    mod = _module()
    out, work = tmp_path / "out", tmp_path / "work"
    assert mod.main(["--quick", "--out", str(out), "--work", str(work)]) == 0
    first = json.loads((out / "closures_quick.json").read_text())["results"]
    md = (out / "closures_quick.md").read_text()
    for name in ("no closure", "Smagorinsky, fitted c_s", "ADM order 10", "gradient", "ADM + white noise",
                 "ADM + coloured noise, inflated (val)", "deterministic FNO (ADM input)",
                 "ADM + Gaussian residual (CRPS)", "ADM + Gaussian residual (NLL)",
                 "ADM + coloured noise, AR(1), inflated (val)"):
        assert name in md, name
    main = first["gaussian / two_thirds"]
    # ADM is near-exact with the Gaussian filter even on the tiny DNS (measured R^2 0.989 vs 0.787)
    assert main["offline"]["ADM order 10"]["r2"][0] > main["offline"]["Smagorinsky, fitted c_s"]["r2"][0] + 0.1
    assert main["offline"]["ADM + coloured noise"]["spread_skill"][0] > 0
    assert all(row["scores"][-1]["finite"] == 1.0 for row in main["online"]["laws"].values())
    assert "online" not in first["spectral / exact"]
    # the sharp filter's diffusion closure works around the learned mean: one more network evaluation per draw
    sharp, gauss = first["spectral / exact"]["diffusion"], main["diffusion"]
    steps = mod.QUICK["diffusion"]["steps"][0]
    row = sharp[f"deterministic FNO + diffusion remainder ({steps} steps)"]
    assert row["nfe_per_draw"] == gauss[f"ADM + diffusion residual ({steps} steps)"]["nfe_per_draw"] + 1
    _check_fresh_case_online_study(mod, main, md)
    _check_sharp_online_study(mod, first["spectral / exact"]["online sharp"], md)
    # the confirmation cases: another DNS seed, every configured run scored, goal rows written
    conf = main["confirm"]
    assert list(conf["laws"]) == mod.QUICK["confirm"]["runs"] and conf["seed"] != main["online40"]["seed"]
    assert "Gaussian filter, online, confirmation" in md
    # the long-window fine-tune: scored on the first fresh cases (dagger) and on a second set of new cases
    hz = main["horizon"]
    assert set(hz["confirm"]["laws"]) == set(mod.QUICK["confirm_horizon"]["runs"])
    assert hz["confirm"]["seed"] not in (conf["seed"], main["online40"]["seed"]) and hz["finetune"]["seconds"] > 0
    assert len(hz["first40"]) == 1 and "Long-window fine-tune" in md and "second confirmation" in md
    # the calibration on validation runs: every candidate run, the rule's choice, then the third confirmation
    cal, ch = main["calibrated"]["calibration"], mod.QUICK["calibrate_horizon"]
    assert len(cal["candidates"]) == len(ch["alphas"]) * len(ch["memory"])
    best = min(cal["candidates"], key=lambda c: (round(c["misfit"], 3), c["crps"][-1][0]))  # the rule, fixed
    assert (best["alpha"], best["memory"]) == (cal["alpha"], cal["memory"])
    assert set(main["calibrated"]["confirm"]["laws"]) == set(mod.QUICK["confirm_calibrated"]["runs"])
    assert "third confirmation" in md and "Validation candidates" in md
    # the sharp term's shape given the coarse field, on the validation snapshots
    gs = first["spectral / exact"]["online sharp40"]["gaussianity"]
    assert gs["z"]["std"][0] > 0 and 0 <= gs["z"]["coverage_80"][0] <= 1 and "How Gaussian is the sharp" in md
    _check_sharp40_online_study(mod, first["spectral / exact"], md)
    # a second run reads every stage back from the work folder: identical scores
    assert mod.main(["--quick", "--out", str(out), "--work", str(work)]) == 0
    second = json.loads((out / "closures_quick.json").read_text())["results"]
    assert second == first


def _check_fresh_case_online_study(mod, main, md):
    """The fresh-case online study: every run finite, held draws at 1 / hold NFE per step, ranks per lattice point."""
    on, oc = main["online40"], mod.QUICK["online40"]
    assert on["cases"] == oc["cases"] and on["times"] == oc["times"]
    k = oc["hold"]
    held = on["laws"][f"{mod.LEARNED}, AR(1), held {k}"]
    assert held["nfe_per_step"] == 1.0 / k and on["laws"][f"{mod.LEARNED}, AR(1)"]["nfe_per_step"] == 1.0
    assert f"{mod.LEARNED}, fine-tuned, AR(1), held {k}" in on["laws"] and on["finetune"]["seconds"] > 0
    for row in on["laws"].values():
        assert row["scores"][-1]["finite"] == 1.0
        assert len(row["scores"][-1]["per_case_error"]) == oc["cases"]
        if row["members"] > 1:  # one rank per lattice point and case
            assert sum(row["scores"][-1]["rank_histogram"]) == oc["cases"] * oc["rank_points"] ** 2
        assert row["dns_seconds_per_member_time_unit"] > 0 and row["seconds_per_member_time_unit"] > 0
    assert "fresh held-out cases" in md and "Earlier online study" in md


def _check_sharp_online_study(mod, on, md):
    """The sharp setting's online study: every closure family, finite, the diffusion remainder's NFE per step."""
    oc, steps = mod.QUICK["online_sharp"], mod.QUICK["diffusion"]["steps"][0]
    k = oc["hold"]
    assert on["cases"] == mod.QUICK["trajectories"]["test"] and on["times"] == oc["times"]
    teacher = on["laws"][f"deterministic FNO + diffusion remainder ({steps} steps), AR(1), held {k}"]
    assert teacher["members"] == oc["members"] and teacher["hold"] == k
    # mu (the deterministic FNO) every step, the sampler's steps plus its final denoising step every k steps
    assert teacher["nfe_per_step"] == 1 + (steps + 1) / k
    assert f"ADM + coloured noise, AR(1), held {k}, inflated (val)" in on["laws"] and on["alpha"] > 0
    for row in on["laws"].values():
        assert row["scores"][-1]["finite"] == 1.0 and row["seconds_per_member_time_unit"] > 0
        assert len(row["scores"][-1]["per_case_energy"]) == on["cases"] and row["scores"][-1]["energy"][0] > 0
    assert "Sharp filter, online" in md and "Fair energy score" in md


def _check_sharp40_online_study(mod, sharp, md):
    """The sharp online study from the fresh cases: the same closures and inflations as the test-case study."""
    on, first = sharp["online sharp40"], sharp["online sharp"]
    assert on["cases"] == mod.QUICK["online40"]["cases"] and on["times"] == mod.QUICK["online_sharp40"]["times"]
    assert on["guard"] <= 1e-5 and on["alpha"] == first["alpha"] and not on["pending"]
    assert set(on["laws"]) == set(first["laws"]) and set(on["extra"]["laws"]) == set(first["extra"]["laws"])
    assert on["extra"]["inflation"] == first["extra"]["inflation"]
    for row in closures_sharp_runs(on):
        assert row["scores"][-1]["finite"] == 1.0 and len(row["scores"][-1]["per_case_crps"]) == on["cases"]
    assert "fresh held-out cases to t =" in md and "Earlier sharp online study, kept for reference" in md


def closures_sharp_runs(on):
    return [*on["laws"].values(), *on["extra"]["laws"].values()]


class _CountingLaw:
    """A physics + remainder law whose remainder draw is its latent, counting the calls of each part."""

    def __init__(self):
        self.calls = {"physics": 0, "remainder": 0}
        law = self

        class Physics:
            def mean(self, cond):
                law.calls["physics"] += 1
                return torch.ones_like(cond.fields)

        class Residual:
            def latent_shape(self, cond, grid):
                return (1, *grid)

            def draw(self, cond, z, grid=None):
                law.calls["remainder"] += 1
                return z

        self.physics, self.residual = Physics(), Residual()


def test_drawer_holds_the_remainder_and_advances_its_latent_by_rho_to_the_hold():
    from stochclosure.errors import ConfigError
    from stochclosure.testing import assert_close

    mod = _module()
    law, rho, k = _CountingLaw(), 0.9, 3
    call = mod.drawer(law, rho, alpha=2.0, hold=k)
    w, gen, memory = torch.zeros(2, 1, 4, 4), torch.Generator().manual_seed(0), {}
    outs = [call(w, gen, memory) for _ in range(7)]
    assert law.calls == {"physics": 7, "remainder": 3}  # draws at calls 0, 3 and 6
    ref = torch.Generator().manual_seed(0)
    z1 = torch.randn(2, 1, 4, 4, generator=ref)
    z2 = rho**k * z1 + (1 - rho ** (2 * k)) ** 0.5 * torch.randn(2, 1, 4, 4, generator=ref)
    for i in range(3):
        assert torch.equal(outs[i], outs[0])
    assert_close(outs[0], 1 + 2.0 * z1, rtol=1e-12, what="first held draw")
    assert_close(outs[3], 1 + 2.0 * z2, rtol=1e-12, what="second draw, latent advanced by rho^k")
    whole = _CountingLaw()
    call = mod.drawer(whole, rho, hold=k, hold_physics=True)
    memory = {}
    for _ in range(7):
        call(w, gen, memory)
    assert whole.calls == {"physics": 3, "remainder": 3}
    with pytest.raises(ConfigError):
        mod.drawer(law, rho, hold=0)
