"""The shared grid-sampler driver: one loop, one grid value, denoisers as scores, precision and guards.

Tolerances (documented, float64 unless said otherwise):
* explicit grids equal to a named grid give bitwise the same samples (``rtol=0``);
* k-diffusion transcriptions (``sample_heun``, ``sample_dpmpp_2m`` on ``get_sigmas_karras``) vs
  the built-in samplers with ``grid={"sigmas": ...}`` and a :class:`DenoiserScore`: ``rtol=1e-9``
  of the samples' magnitude (the only differences are the sigma -> t -> sigma round trip of the
  geometric VE SDE, about 1e-14 relative per level, and the score/denoiser round trip);
* the denoiser-wrapped analytic Gaussian against the exact Gaussian score: ``rtol=1e-10`` for
  ``t >= 0.05``, ``1e-7`` at ``t = eps`` (``(D - x) / sigma^2`` cancels about ``1e-16 |x| / sigma^2``);
* DPM-Solver++(2M) against a float64 transcription of its step: ``rtol=1e-12`` (a float32
  ``expm1`` in the coefficients, as before, differs by about 1e-7).
"""

from __future__ import annotations

import inspect
import math

import pytest
import torch

import stochclosure as sc
from stochclosure.config import from_jsonable
from stochclosure.samplers import (
    ConsistencySampler,
    DenoiserScore,
    DPMSolverPP2M,
    EDMHeun,
    EulerMaruyama,
    GridSampler,
    PredictorCorrector,
    grids,
)
from stochclosure.scores import GaussianScore
from stochclosure.testing import assert_close

BUILT_IN = ["euler_maruyama", "truncated_karras_em", "predictor_corrector", "probability_flow_heun", "edm_heun",
            "dpm_solver_pp_2m", "consistency"]
M, S = 0.3, 0.7  # the analytic data law N(M, S^2) per coordinate


def gaussian_denoiser(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """``E[x_0 | x_0 + sigma z = x]`` for ``x_0 ~ N(M, S^2)``."""
    sig2 = sigma.reshape(-1, *([1] * (x.dim() - 1))) ** 2
    return M + S**2 / (S**2 + sig2) * (x - M)


# ---- one loop ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", BUILT_IN)
def test_built_in_samplers_only_implement_step(name):
    cls = type(sc.resolve("sampler", name))
    assert issubclass(cls, GridSampler)
    for method in ("sample", "integrate", "_run"):
        assert getattr(cls, method) is getattr(GridSampler, method), f"{cls.__name__} overrides {method}"
    assert "step" in cls.__dict__ or any("step" in k.__dict__ for k in cls.__mro__[1:-1] if k is not GridSampler)


@pytest.mark.parametrize("name", BUILT_IN)
def test_driver_counts_every_evaluation_and_reports_every_step(name):
    sde = sc.resolve("sde", "vp")
    op = GaussianScore(sde, mean=M, std=S)
    calls = []

    def score(x, t):
        calls.append(1)
        return op(x, t)

    sampler = sc.resolve("sampler", name)
    seen = []
    sampler.sample(score, sde, (3, 2), steps=4, callback=seen.append, generator=torch.Generator().manual_seed(0))
    assert len(calls) == sampler.nfe(4)
    assert [s.step for s in seen] == [0, 1, 2, 3] and all(s.n_steps == 4 for s in seen)
    assert seen[-1].nfe == len(calls) - int(sampler.denoise)
    assert all(a.nfe < b.nfe for a, b in zip(seen, seen[1:]))


def test_common_arguments_are_declared_once_and_seen_everywhere():
    own = {"edm_heun": {"s_churn"}, "dpm_solver_pp_2m": {"lower_order_final"}, "predictor_corrector": {"snr"},
           "consistency": {"times"}}
    common = set(inspect.signature(GridSampler).parameters)
    assert {"steps", "grid", "t_start", "t_end", "rho", "denoise", "data_std", "check_finite"} == common
    for name in BUILT_IN:
        cls = type(sc.resolve("sampler", name))
        params = set(inspect.signature(cls).parameters)
        assert common | own.get(name, set()) <= params, (name, params)
        assert set(sc.resolve("sampler", name).spec()) == params | {"type"}
    with pytest.raises(sc.ConfigError, match="'sampler.gird'"):
        sc.resolve("sampler", {"type": "edm_heun", "gird": "karras"})
    with pytest.raises(sc.ConfigError, match="rho.*YAML"):
        sc.resolve("sampler", {"type": "edm_heun", "rho": "7e0"})


def test_the_pretrained_checkpoint_sampler_spec_still_loads():
    spec = {"data_std": 0.0, "denoise": True, "grid": "log_snr", "lower_order_final": True, "rho": 7.0, "steps": 10,
            "t_end": None, "t_start": None, "type": "dpm_solver_pp_2m"}
    s = sc.resolve("sampler", spec)
    assert isinstance(s, DPMSolverPP2M) and s.grid == "log_snr" and s.steps == 10 and s.nfe() == 11
    again = sc.resolve("sampler", s.spec())
    assert again.spec() == s.spec()


# ---- the grid is one value ---------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["karras", "karras_sigma", "log_snr"])
def test_explicit_times_reproduce_a_named_grid_bitwise(kind):
    sde = sc.resolve("sde", "ve")
    op = GaussianScore(sde, mean=M, std=S)
    named = EulerMaruyama(steps=12, grid=kind)
    ts = named.time_grid(sde, 12)
    explicit = EulerMaruyama(grid={"times": ts.tolist()})
    assert explicit.steps == 12 and explicit.nfe() == named.nfe()
    a, b = (s.sample(lambda x, t: op(x, t), sde, (5, 3), generator=torch.Generator().manual_seed(4),
                     dtype=torch.float64) for s in (named, explicit))
    assert_close(b, a, rtol=0, what="explicit times vs the named grid")


def test_explicit_sigmas_map_to_times_of_the_same_noise_level():
    sde = sc.resolve("sde", "vp")
    sigmas = [40.0, 3.0, 0.5, 0.05, 0.0]
    s = EDMHeun(grid={"sigmas": torch.tensor(sigmas, dtype=torch.float64)})
    assert s.steps == 3 and s.denoise and s.nfe() == 2 * 3 + 1
    ts = s.time_grid(sde, 3)
    assert_close(torch.exp(-sde.log_snr(ts)), torch.tensor(sigmas[:-1], dtype=torch.float64), rtol=1e-9,
                 what="noise levels of the mapped times")
    assert s.spec()["grid"] == {"sigmas": {"__tensor__": sigmas, "dtype": "float64"}}
    assert sc.resolve("sampler", from_jsonable(s.spec())).steps == 3


def test_bad_grids_are_refused():
    with pytest.raises(sc.ConfigError, match="'grid'.*'times' or 'sigmas'"):
        EDMHeun(grid=[1.0, 0.5, 0.1])
    with pytest.raises(sc.ConfigError, match="'grid.times'.*decreasing"):
        EulerMaruyama(grid={"times": [0.5, 1.0]})
    with pytest.raises(sc.ConfigError, match="'grid.sigmas'"):
        EDMHeun(grid={"sigmas": [3.0, float("nan"), 0.0]})
    with pytest.raises(sc.ConfigError, match="'steps'"):
        EulerMaruyama(steps=3, grid={"times": [1.0, 0.1]})
    with pytest.raises(sc.ConfigError, match="'t_start/t_end'"):
        EulerMaruyama(t_start=0.5, grid={"times": [1.0, 0.1]})
    with pytest.raises(sc.ConfigError, match="'denoise'"):
        EDMHeun(denoise=False, grid={"sigmas": [3.0, 1.0, 0.0]})
    sde = sc.resolve("sde", "vp")
    with pytest.raises(sc.ConfigError, match="'steps'.*fixed by the explicit grid"):
        EulerMaruyama(grid={"times": [1.0, 0.5, 0.1]}).sample(lambda x, t: -x, sde, (2, 2), steps=5)
    with pytest.raises(sc.ConfigError, match="'grid.sigmas'.*sigma\\(T\\)"):
        EDMHeun(grid={"sigmas": [500.0, 1.0, 0.0]}).sample(lambda x, t: -x, sde, (2, 2))
    with pytest.raises(sc.ConfigError, match="'grid.times'.*T=1"):
        EulerMaruyama(grid={"times": [1.5, 0.1]}).sample(lambda x, t: -x, sde, (2, 2))


# ---- k-diffusion-style denoisers and schedules -------------------------------------------------
def get_sigmas_karras(n, sigma_min, sigma_max, rho=7.0):
    """k-diffusion's Karras schedule: ``n`` levels from ``sigma_max`` to ``sigma_min``, then 0."""
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return torch.cat([(hi + ramp * (lo - hi)) ** rho, torch.zeros(1, dtype=torch.float64)])


def kdiffusion_sample_heun(model, x, sigmas):
    """k-diffusion's ``sample_heun`` without churn (Karras et al. 2022, Alg. 2)."""
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        d = (x - model(x, sigmas[i] * s_in)) / sigmas[i]
        dt = sigmas[i + 1] - sigmas[i]
        if sigmas[i + 1] == 0:
            x = x + d * dt
        else:
            x_2 = x + d * dt
            d_2 = (x_2 - model(x_2, sigmas[i + 1] * s_in)) / sigmas[i + 1]
            x = x + (d + d_2) / 2 * dt
    return x


def kdiffusion_sample_dpmpp_2m(model, x, sigmas):
    """k-diffusion's ``sample_dpmpp_2m`` (DPM-Solver++(2M), Lu et al. 2022)."""
    s_in = x.new_ones([x.shape[0]])
    old = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in)
        t, t_next = -sigmas[i].log(), -sigmas[i + 1].log()
        h = t_next - t
        if old is None or sigmas[i + 1] == 0:
            x = (sigmas[i + 1] / sigmas[i]) * x - (-h).expm1() * denoised
        else:
            r = (t - (-sigmas[i - 1].log())) / h
            d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old
            x = (sigmas[i + 1] / sigmas[i]) * x - (-h).expm1() * d
        old = denoised
    return x


@pytest.mark.parametrize("which", ["heun", "dpmpp_2m"])
def test_kdiffusion_schedule_and_denoiser_run_unchanged(which):
    sde = sc.resolve("sde", "ve")  # geometric VE: sigma_t from 0 to ~50
    sigmas = get_sigmas_karras(12, 0.02, 40.0)
    x_T = 40.0 * torch.randn(16, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    if which == "heun":
        ref = kdiffusion_sample_heun(gaussian_denoiser, x_T, sigmas)
        sampler = EDMHeun(grid={"sigmas": sigmas})
    else:
        ref = kdiffusion_sample_dpmpp_2m(gaussian_denoiser, x_T, sigmas)
        sampler = DPMSolverPP2M(grid={"sigmas": sigmas}, lower_order_final=False)
    calls = []
    score = DenoiserScore(lambda x, s: calls.append(1) or gaussian_denoiser(x, s), sde)
    out = sampler.sample(score, sde, (16, 3), x_init=x_T)
    assert out.dtype == torch.float64
    assert len(calls) == sampler.nfe() == (2 * 11 + 1 if which == "heun" else 12)
    assert_close(out, ref, rtol=1e-9, what=f"{which}: built-in vs k-diffusion's loop")


@pytest.mark.parametrize("sde_name", ["ve", "ve_exp", "vp", "subvp"])
def test_denoiser_score_of_an_analytic_gaussian_is_its_exact_score(sde_name):
    sde = sc.resolve("sde", sde_name)
    exact = GaussianScore(sde, mean=M, std=S)
    score = DenoiserScore(gaussian_denoiser, sde)
    x = 3.0 * torch.randn(6, 1, 4, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for t in (sde.eps, 0.05, 0.4, sde.T):
        tb = torch.full((6,), t, dtype=torch.float64)
        # (D - x) / sigma^2 cancels: about 1e-16 |x| / sigma_t^2 of the score, 3e-9 of it at sigma_t ~ 1e-3
        assert_close(score(x, tb), exact(x, tb), rtol=1e-10 if t >= 0.05 else 1e-7, what=f"denoiser score at t={t}")


def test_a_denoiser_model_samples_its_law():
    """Wrapped denoiser, 18 EDM steps: N(M, S^2) within Monte Carlo error (8000 draws: 0.02 on the mean, 4 % on std)."""
    sde = sc.resolve("sde", "ve")
    x = EDMHeun().sample(DenoiserScore(gaussian_denoiser, sde), sde, (8000, 2),
                         generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    assert abs(x.mean().item() - M) < 0.02 and abs(x.std().item() / S - 1) < 0.04


# ---- precision ---------------------------------------------------------------------------------
def test_x_init_keeps_its_dtype():
    sde = sc.resolve("sde", "vp")
    op = GaussianScore(sde, mean=M, std=S)
    x0 = torch.randn(4, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for name in BUILT_IN:
        sampler = sc.resolve("sampler", name)
        out = sampler.sample(lambda x, t: op(x, t), sde, (4, 2), steps=3, x_init=x0)
        assert out.dtype == torch.float64, name
        cast = sampler.sample(lambda x, t: op(x, t), sde, (4, 2), steps=3, x_init=x0, dtype=torch.float32)
        assert cast.dtype == torch.float32, name  # an explicit dtype casts the start
    assert EulerMaruyama(steps=3).sample(lambda x, t: op(x, t), sde, (4, 2)).dtype == torch.float32


def test_dpm_solver_coefficients_are_float64_for_float64_samples():
    sde = sc.resolve("sde", "vp")
    op = GaussianScore(sde, mean=M, std=S)
    x0 = torch.randn(8, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    sampler = DPMSolverPP2M(steps=7, denoise=False)
    out = sampler.sample(lambda x, t: op(x, t), sde, (8, 3), x_init=x0)
    ts = sampler.time_grid(sde, 7).tolist()
    x, prev, h_prev = x0, None, 0.0
    for i in range(7):
        (a, s), (a1, s1) = (tuple(float(v) for v in sde.marginal_coefficients(torch.tensor([t], dtype=torch.float64)))
                            for t in (ts[i], ts[i + 1]))
        x0_hat = sde.denoise(x, torch.full((8,), ts[i], dtype=torch.float64), op(x, torch.full((8,), ts[i],
                                                                                         dtype=torch.float64)))
        h = (math.log(a1) - math.log(s1)) - (math.log(a) - math.log(s))
        d = x0_hat if prev is None or i == 6 else (1 + h / (2 * h_prev)) * x0_hat - h / (2 * h_prev) * prev
        x = s1 / s * x - a1 * math.expm1(-h) * d
        prev, h_prev = x0_hat, h
    assert_close(out, x, rtol=1e-12, what="DPM-Solver++(2M) vs its float64 transcription")


# ---- guards ------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [{"rho": float("nan")}, {"rho": 0.0}, {"rho": -1.0}, {"rho": float("inf")},
                                 {"data_std": float("nan")}, {"data_std": -0.5}, {"data_std": float("inf")},
                                 {"steps": 0}, {"t_start": float("nan")}, {"t_end": -1.0}, {"t_start": 0.1, "t_end": 0.2},
                                 {"denoise": "yes"}, {"check_finite": 1}])
@pytest.mark.parametrize("name", ["euler_maruyama", "edm_heun", "dpm_solver_pp_2m", "predictor_corrector"])
def test_options_are_checked_at_construction(name, bad):
    with pytest.raises(sc.ConfigError, match=f"{next(iter(bad))}'"):
        sc.resolve("sampler", {"type": name, **bad})


def test_times_out_of_the_sde_range_fail_at_sample_time():
    sde = sc.resolve("sde", "vp")
    with pytest.raises(sc.ConfigError, match="t_start/t_end.*T=1"):
        EulerMaruyama(steps=2, t_start=3.0).sample(lambda x, t: -x, sde, (2, 2))


def test_non_finite_x_init_is_named():
    sde = sc.resolve("sde", "vp")
    x = torch.zeros(4, 3)
    x[2, 1] = float("nan")
    with pytest.raises(sc.NonFiniteError, match=r"'x_init'.*members \[2\]"):
        EDMHeun(steps=2).sample(lambda x, t: -x, sde, (4, 3), x_init=x)


@pytest.mark.parametrize("name", BUILT_IN)
def test_a_score_turning_nan_midway_names_the_step_and_members(name):
    sde = sc.resolve("sde", "vp")
    sampler = sc.resolve("sampler", {"type": name, "steps": 4, "check_finite": True})
    ts = sampler.time_grid(sde, 4).tolist()
    t_bad = ts[1] if name != "consistency" else ts[0]  # the score is NaN for t <= t_bad

    def score(x, t):
        s = -x.clone()
        s[[1, 3]] = torch.where(t[[1, 3], None] <= t_bad + 1e-12, float("nan"), s[[1, 3]])
        return s

    # the Langevin corrector shares one step size over the batch, so a NaN member spreads to all
    members = "0, 1, 2, 3, 4" if name == "predictor_corrector" else "1, 3"
    with pytest.raises(sc.NonFiniteError, match=rf"{type(sampler).__name__} step [0-9] of 4 .*members \[{members}\]"):
        sampler.sample(score, sde, (5, 2), generator=torch.Generator().manual_seed(0))
    quiet = sc.resolve("sampler", {"type": name, "steps": 4, "check_finite": False})
    out = quiet.sample(score, sde, (5, 2), generator=torch.Generator().manual_seed(0))
    assert not bool(torch.isfinite(out[[1, 3]]).all())
    assert bool(torch.isfinite(out[[0, 2, 4]]).all()) or name == "predictor_corrector"


def test_nan_only_in_the_final_denoising_step_is_named_as_such():
    sde = sc.resolve("sde", "vp")
    t_end = sde.eps

    def score(x, t):
        return torch.where(t[:, None] <= t_end, float("nan"), -x)

    with pytest.raises(sc.NonFiniteError, match="final denoising step.*members \\[0, 1\\]"):
        PredictorCorrector(steps=3).sample(score, sde, (2, 2))


def test_consistency_times_spelling_still_works():
    s = ConsistencySampler(times=[1.0, 0.3])
    assert s.nfe() == 2 and s.time_grid(sc.resolve("sde", "vp"), 2)[:2].tolist() == [1.0, 0.3]
    with pytest.raises(sc.ConfigError, match="'times'"):
        ConsistencySampler(times=[0.3, 1.0])
    assert grids.parse_grid("karras") == "karras"


class _Damped(GridSampler):
    """A user's sampler written as tutorial 02 shows: its own option, ``**common`` forwarded."""

    default_steps = 5

    def __init__(self, steps: int | None = None, *, gain: float = 1.0, **common) -> None:
        super().__init__(steps, **common)
        self.gain = gain

    def step(self, state, t_cur, t_next, score_fn, noise):
        tb = torch.full((state.x.shape[0],), t_cur, dtype=state.x.dtype)
        state.x = state.x + self.gain * (t_cur - t_next) * score_fn(state.x, tb)
        return state


def test_a_user_sampler_gets_every_common_argument_and_the_driver():
    s = _Damped(gain=0.5, t_start=0.4, data_std=1.0)
    assert {"gain", "t_start", "t_end", "grid", "rho", "data_std", "check_finite"} <= set(s.spec())
    assert s.spec()["gain"] == 0.5 and s.spec()["t_start"] == 0.4
    warm = type(s)(**{**{k: v for k, v in s.spec().items() if k != "type"}, "t_start": 0.2})  # as WarmStart does
    sde = sc.resolve("sde", "vp")
    assert warm.time_grid(sde, 5)[0].item() == 0.2 and warm.nfe() == 6
    seen = []
    out = warm.sample(lambda x, t: -x, sde, (3, 2), callback=seen.append, generator=torch.Generator().manual_seed(0))
    assert len(seen) == 5 and seen[-1].nfe == 5 and bool(torch.isfinite(out).all())


def test_torchsde_plugin_shares_the_start_checks():
    plugin = pytest.importorskip("stochclosure_torchsde")
    sde = sc.resolve("sde", "vp")
    sampler = plugin.TorchSDESampler(steps=3, per_member_noise=False)
    x = torch.zeros(3, 2, dtype=torch.float64)
    assert sampler.sample(lambda x, t: -x, sde, (3, 2), x_init=x).dtype == torch.float64
    x[1, 0] = float("inf")
    with pytest.raises(sc.NonFiniteError, match=r"'x_init'.*members \[1\]"):
        sampler.sample(lambda x, t: -x, sde, (3, 2), x_init=x)


@pytest.mark.parametrize("name", BUILT_IN)
def test_every_sampler_spec_survives_json_and_rebuilds(name):
    """A checkpoint stores ``spec()`` as JSON (EDM's default ``s_tmax = inf`` as ``{"__float__": "inf"}``)."""
    import json

    for s in (sc.resolve("sampler", name), sc.resolve("sampler", {"type": name, "steps": 3, "data_std": 0.5})):
        again = sc.resolve("sampler", json.loads(json.dumps(s.spec())))
        assert type(again) is type(s) and again.spec() == s.spec()


def test_an_explicit_grid_reports_the_range_it_visits():
    from stochclosure.training.trainer import default_t_range

    s = sc.resolve("sampler", {"type": "truncated_karras_em", "grid": {"times": [0.3, 0.1, 0.02]}})
    assert (s.t_start, s.t_end, s.steps) == (0.3, 0.02, 2)
    model = sc.ClosureModel("vp", {"type": "gaussian", "sde": "vp", "std": 1.0}, s)
    assert default_t_range(model) == (0.02, 0.3)
    assert EDMHeun(grid={"sigmas": [50.0, 1.0, 0.0]}).t_start is None  # needs the SDE: the trainer uses [eps, T]


def test_closure_model_keeps_the_dtype_of_x_init():
    """``ClosureModel.sample(x_init=float64)`` returns float64 unless a dtype is asked for."""
    import stochclosure as sc

    model = sc.ClosureModel("vp", {"type": "gaussian", "sde": "vp", "std": 1.0}, {"type": "euler_maruyama", "steps": 3})
    x0 = torch.randn(2, 1, 1, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(1)
    assert model.sample(sc.Conditioning(), n=2, grid=(4, 4), x_init=x0, generator=g).dtype == torch.float64
    out = model.sample(sc.Conditioning(), n=2, grid=(4, 4), x_init=x0, generator=g, dtype=torch.float32)
    assert out.dtype == torch.float32
    assert model.sample(sc.Conditioning(), n=2, grid=(4, 4), generator=g).dtype == torch.float32
