"""The shipped subgrid closure (ADM + Gaussian residual, fine-tuned) loads, draws and reproduces its record."""

from __future__ import annotations

import configparser
import fnmatch
import math
from pathlib import Path

import pytest
import torch

import stochclosure as sc
from stochclosure import pretrained
from stochclosure.closures import ADM, ResidualLaw
from stochclosure.errors import ConfigError, UnknownPluginError
from stochclosure.metrics import offline_scores
from stochclosure.systems import NavierStokes2DSubgrid
from stochclosure.testing import assert_close

NAME = pretrained.SUBGRID
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def law() -> ResidualLaw:
    return pretrained.load_pretrained(NAME)


@pytest.fixture(scope="module")
def test_set() -> dict[str, torch.Tensor]:
    """The regenerated offline test set (4 trajectories of a 128^2 DNS, about 10 s on one core)."""
    return pretrained.offline_test_set(NAME)


def test_both_closures_are_listed_and_the_default_is_unchanged():
    assert {pretrained.DEFAULT, NAME} <= set(pretrained.available())
    assert pretrained.DEFAULT == "ns2d_G_sparse_32"
    g = pretrained.pretrained_system()  # the G closure's reduced system, as the demo builds it
    assert isinstance(g, sc.systems.NavierStokes2D) and g.n == 32 and g.closure == "G"


def test_subgrid_closure_loads_as_adm_plus_gaussian_residual_with_its_options(law):
    info = pretrained.pretrained_info(NAME)
    assert info["kind"] == "subgrid_law" and info["resolution"] == 32
    assert isinstance(law, ResidualLaw) and not law.training
    assert isinstance(law.physics, ADM)
    # the physics part and its options round-trip through the checkpoint's registry spec
    assert law.physics.spec() == {"type": "adm", "order": info["how_made"]["config"]["adm_order"],
                                  "filter": "gaussian", "filter_width": None, "coarse_nonlinear": "two_thirds",
                                  "resolved_correction": True, "pad": 1.5}
    assert [i.spec() for i in law.residual.inputs] == [law.physics.spec()]
    assert law.residual.spec()["loss"] == "crps" and law.residual.spec()["noise"] == "coloured"
    size = sum(p.stat().st_size for p in pretrained.pretrained_path(NAME).iterdir())
    assert size <= 5e6
    system = pretrained.pretrained_system(NAME)
    assert isinstance(system, NavierStokes2DSubgrid)
    assert (system.n, system.filter_kind, system.coarse_nonlinear) == (32, "gaussian", "two_thirds")


def test_subgrid_closure_policy_and_online_record_are_the_studys():
    """The recorded policy and scores are those of the study's stage files (checked for consistency)."""
    info = pretrained.pretrained_info(NAME)
    pol = info["policy_held5"]
    assert pol["physics_every_step"] and pol["residual_every"] == 5
    assert math.isclose(pol["rho_per_draw"], pol["rho_per_step"] ** 5, rel_tol=1e-12)
    assert math.isclose(pol["dt"], 4 * info["system"]["dt"], rel_tol=1e-12)
    on = info["online40"]
    held = on["laws"]["ADM + Gaussian residual (CRPS), fine-tuned, AR(1), held 5"]
    adm = on["laws"]["ADM order 10"]
    assert on["cases"] == 40 and held["members"] == 8 and held["nfe_per_step"] == pytest.approx(0.2)
    for t, sc_held, sc_adm in zip(on["times"], held["scores"], adm["scores"]):
        assert sc_held["error"][0] < sc_adm["error"][0], t
        assert sc_held["finite"] == 1.0
    i24, i5 = on["times"].index(0.24), on["times"].index(0.5)
    assert 0.7 <= held["scores"][i24]["spread_skill"][0] <= 1.3
    assert 0.7 <= held["scores"][i5]["spread_skill"][0] <= 1.3
    assert held["crps_t05_over_adm_coloured_noise_ar1"] < 1.0


def test_policy_of_record_is_the_validation_choice_and_meets_the_online_goals_on_its_confirmation():
    """The calibrated policy: chosen by the recorded rule among the recorded candidates, then confirmed."""
    info = pretrained.pretrained_info(NAME)
    pol, held5 = info["policy"], info["policy_held5"]
    k = pol["residual_every"]
    assert pol["physics_every_step"] and k == 10 and pol["spread"] > 0
    assert math.isclose(pol["rho_per_step"], pol["fitted_rho_per_step"] ** (1 / pol["memory_factor"]), rel_tol=1e-12)
    assert math.isclose(pol["rho_per_draw"], pol["rho_per_step"] ** k, rel_tol=1e-12)
    assert math.isclose(pol["fitted_rho_per_step"], held5["rho_per_step"], rel_tol=1e-12)
    cands = pol["chosen_on"]["candidates"]
    best = min(cands, key=lambda c: (round(c["misfit"], 3), c["crps"][-1][0]))
    assert (best["spread"], best["memory_factor"]) == (pol["spread"], pol["memory_factor"])
    conf = pol["confirmation"]
    assert conf["case_seed"] not in (pol["chosen_on"]["case_seed"], info["online40"]["case_seed"])
    law, adm = conf["laws"][pol["rollout_api"].split("scored as ")[1].strip("'")], conf["laws"]["ADM order 10"]
    assert law["hold"] == k and law["nfe_per_step"] == pytest.approx(1 / k) and law["cheaper_than_dns"] >= 20
    for sc_law, sc_adm in zip(law["scores"], adm["scores"]):
        assert sc_law["error"][0] < sc_adm["error"][0] and sc_law["finite"] == 1.0
    for t in (0.24, 0.5):
        assert 0.7 <= law["scores"][conf["times"].index(t)]["spread_skill"][0] <= 1.3
    assert law["crps_t05_over_adm_coloured_noise_ar1"] < 1.0


def test_subgrid_closure_draws_have_the_right_shape_and_are_finite(law):
    w_fine, state_info = pretrained.initial_state(NAME)
    assert w_fine.shape == (1, 1, state_info["grid"], state_info["grid"]) and w_fine.dtype == torch.float64
    w = pretrained.pretrained_system(NAME).filter(w_fine).float().repeat(2, 1, 1, 1)
    with torch.no_grad():
        u = law.sample(sc.Conditioning(fields=w), 3, generator=torch.Generator().manual_seed(0))
    assert u.shape == (3, 2, 1, 32, 32)
    assert bool(torch.isfinite(u).all())
    assert float(u.std(0).mean()) > 0  # a stochastic law: the draws differ


def test_subgrid_closure_reproduces_its_recorded_offline_scores(law, test_set):
    """R² of the 16-draw ensemble mean on the regenerated test set, pooled, SE over the 4 trajectories.

    Same seeds and the same computation as the export, so only summation order differs: the
    recorded R² is reproduced to 0.05 of its standard error (about 5e-5 in R², where rounding
    moves it by ~1e-7). It must also agree with the R² on the study's own test split (8 other
    trajectories) within 3 standard errors of the difference: the small set measures the same law.
    """
    info = pretrained.pretrained_info(NAME)
    spec = info["offline_test"]
    with torch.no_grad():
        d = law.sample(sc.Conditioning(fields=test_set["state"]), spec["draws"],
                       generator=torch.Generator().manual_seed(spec["sample_seed"]))
    assert d.shape == (spec["draws"], *test_set["target"].shape)
    r2 = offline_scores(d, test_set["target"])["r2"]
    per = torch.tensor([offline_scores(d[:, test_set["trajectory"] == g], test_set["target"][test_set["trajectory"] == g])
                        ["r2"] for g in range(spec["trajectories"])], dtype=torch.float64)
    se = float(per.std() / math.sqrt(len(per)))
    rec, rec_se = spec["scores"]["r2"]
    assert abs(r2 - rec) <= 0.05 * rec_se, (r2, rec, rec_se)
    assert_close(torch.tensor(se), torch.tensor(rec_se), rtol=1e-3, what="standard error of R2")
    split, split_se = info["offline"]["study_test_split"]["scores"]["r2"]
    assert abs(r2 - split) <= 3 * math.hypot(se, split_se), (r2, split, se, split_se)
    assert r2 >= 0.97  # the study's offline goal for the learned law


def test_initial_state_is_the_first_test_trajectory_at_the_end_of_its_spinup(test_set):
    w_fine, state_info = pretrained.initial_state(NAME)
    assert_close(w_fine, test_set["fine_start"][:1], rtol=0, what="shipped initial state")
    first = pretrained.pretrained_system(NAME).filter(w_fine).float()
    assert_close(first, test_set["state"][:1], rtol=0, what="its filtered field, record 0 of trajectory 0")
    assert test_set["state"].shape == (16, 1, 32, 32) and test_set["trajectory"].tolist()[:5] == [0, 0, 0, 0, 1]


def test_subgrid_closure_runs_in_the_rollout_api_with_an_ar1_latent(law):
    """A short ensemble with the rollout API (a draw every step, AR(1) latent): finite, with spread."""
    info = pretrained.pretrained_info(NAME)
    system = pretrained.pretrained_system(NAME)
    w0 = system.filter(pretrained.initial_state(NAME)[0]).float()[0]
    with torch.inference_mode():
        res = sc.ensemble(system, law, w0, 6, 3, seed=0, dt=info["policy"]["dt"], resample_every=1,
                          between=sc.NoiseAR1(rho=info["policy"]["rho_per_step"]), record_every=3)
    assert res.states.shape == (3, 3, 1, 32, 32)
    assert bool(torch.isfinite(res.states).all())
    assert float(res.states[-1].std(0).mean()) > 0


def test_policy_of_record_runs_as_its_rollout_api_says_and_its_spread_factor_widens_the_ensemble():
    """The README's recipe: set_spread, a draw every 10 steps, ADM every step. Over the first hold the members
    differ only through the one residual draw, so the ensemble spread scales with the factor (to a few %)."""
    pol = pretrained.pretrained_info(NAME)["policy"]
    system = pretrained.pretrained_system(NAME)
    w0 = system.filter(pretrained.initial_state(NAME)[0]).float()[0]
    spreads = []
    for factor in (1.0, pol["spread"]):
        law = pretrained.load_pretrained(NAME)  # a fresh copy: set_spread changes the law
        law.residual.set_spread(factor)
        with torch.inference_mode():
            res = sc.ensemble(system, law, w0, pol["residual_every"], 4, seed=0, dt=pol["dt"],
                              resample_every=pol["residual_every"], record_every=pol["residual_every"],
                              between=sc.NoiseAR1(rho=pol["rho_per_draw"], physics_every_step=True))
        assert bool(torch.isfinite(res.states).all())
        spreads.append(float(res.states[-1].std(0).mean()))
    assert spreads[1] / spreads[0] == pytest.approx(pol["spread"], rel=0.03)


def test_g_only_paths_give_typed_errors_not_wrong_data(monkeypatch):
    with pytest.raises(UnknownPluginError, match="installed"):
        pretrained.pretrained_path("no_such_closure")
    system = pretrained.pretrained_system(NAME)
    with pytest.raises(ConfigError, match="spec"):
        pretrained.subgrid_test_set(system, {"seed": 0, "trajectories": 0, "spinup_steps": 0, "records": 1,
                                             "record_every": 1})
    with pytest.raises(ConfigError, match="spec"):
        pretrained.subgrid_test_set(system, {"seed": 0})
    real = pretrained.pretrained_info
    monkeypatch.setattr(pretrained, "pretrained_info", lambda name=NAME: {**real(name), "kind": "future_kind"})
    for fn in (pretrained.offline_test_set, pretrained.pretrained_system):
        with pytest.raises(ConfigError, match="kind"):
            fn(NAME)


def test_package_data_globs_ship_every_file_of_both_closures():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    globs = [g.strip() for g in cfg["options.package_data"]["stochclosure"].split(",")]
    for name in (pretrained.DEFAULT, NAME):
        folder = pretrained.pretrained_path(name)
        files = [p for p in folder.iterdir() if p.is_file()]
        assert {p.name for p in files} >= {"config.json", "metadata.json", "model.safetensors"}
        for p in files:
            rel = f"pretrained/{name}/{p.name}"
            assert any(fnmatch.fnmatch(rel, g) for g in globs), rel


def test_readme_quotes_the_recorded_online_scores():
    """The README's numbers for the subgrid closure's policy of record are the metadata's, rounded (no drift)."""
    pol = pretrained.pretrained_info(NAME)["policy"]
    conf = pol["confirmation"]
    law = conf["laws"][pol["rollout_api"].split("scored as ")[1].strip("'")]
    i24, i5 = conf["times"].index(0.24), conf["times"].index(0.5)
    ss = f"{law['scores'][i24]['spread_skill'][0]:.2f} / {law['scores'][i5]['spread_skill'][0]:.2f}"
    ratio = f"{law['crps_t05_over_adm_coloured_noise_ar1']:.2f}x"
    text = " ".join((ROOT / "README.md").read_text().split())
    assert f"spread-skill {ss} at t = 0.24 / 0.5" in text
    assert f"{ratio} the CRPS of ADM + AR(1) coloured noise" in text
    assert f"by `policy[\"spread\"]` ({pol['spread']:g})" in text
    assert f"{law['cheaper_than_dns']:.0f}x cheaper" in text
