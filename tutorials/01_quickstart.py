# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 01 · Quickstart: a pretrained stochastic closure, from one draw to an ensemble forecast
#
# A coarse 32×32 simulation of 2-D turbulence cannot resolve everything: the part of the dynamics
# it misses enters as a *closure term* `U`. stochclosure learns the **distribution** `p(U | y)` of
# that term given what the coarse model knows (`y`: the coarse vorticity and a few sparse
# measurements) and draws closures from it inside the coarse solver. This tutorial
#
# 1. loads the closure shipped with the package,
# 2. draws closures for known conditions and checks them against the truth,
# 3. runs one ensemble forecast with those closures and compares it with the no-closure model,
# 4. writes figures and a small JSON of key numbers.
#
# Run it as a script (`python tutorials/01_quickstart.py [--smoke] [--out DIR]`) or open it as a
# notebook with jupytext. `--smoke` runs a much shorter forecast (for CI).

# %%
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

import stochclosure as sc  # noqa: E402
from stochclosure import metrics, plots  # noqa: E402

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--smoke", action="store_true", help="tiny settings for CI")
parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "_out" / "01_quickstart"))
args, _ = parser.parse_known_args(None if "ipykernel" not in sys.modules else [])
OUT = Path(args.out)
OUT.mkdir(parents=True, exist_ok=True)
SMOKE = args.smoke
torch.manual_seed(0)
T_START = time.perf_counter()
results: dict = {"smoke": SMOKE}

# %% [markdown]
# ## 1. Load the shipped closure
#
# `load_pretrained()` rebuilds a `ClosureModel` from a checkpoint folder: a JSON configuration
# that names every component through the registry (SDE `vp`, score operator `fno` with its
# conditioning encoder, sampler `dpm_solver_pp_2m`) plus safetensors weights. No code is
# unpickled. `pretrained_info()` says how it was made.

# %%
from stochclosure.pretrained import initial_state, load_pretrained, offline_test_set, pretrained_info  # noqa: E402

model = load_pretrained()
info = pretrained_info()
print(info["description"])
print("SDE:", model.sde.spec())
print("sampler:", model.sampler.spec())
print("score operator:", type(model.score).__name__, "with encoder", model.score.encoder.spec()["type"])
results["model"] = {"name": info["name"], "resolution": info["resolution"], "obs_grid": info["obs_grid"],
                    "parameters": sum(p.numel() for p in model.parameters())}

# %% [markdown]
# ## 2. Draw closures for known conditions
#
# A `Conditioning` carries everything the closure may depend on, passed explicitly on every call:
# `fields` `(batch, channels, n, n)` (the coarse vorticity) and sparse measurements
# `obs_values` `(batch, channels, points)` at physical points `obs_points` `(points, 2)` in
# `[0, 1)²`. `offline_test_set()` regenerates a few such conditions with the true closure from
# a fixed seed. `model.sample(cond, n=8)` draws 8 closures per condition in **one batched
# reverse-SDE solve** and returns `(n, batch, channels, n, n)`.

# %%
test = offline_test_set()
n_cond = 2 if SMOKE else 8
cond = sc.Conditioning(fields=test["state"][:n_cond], obs_values=test["obs_values"][:n_cond],
                       obs_points=test["obs_points"])
truth_u = test["target"][:n_cond]
t0 = time.perf_counter()
with torch.inference_mode():
    u = model.sample(cond, n=8, generator=torch.Generator().manual_seed(0))
t_sample = time.perf_counter() - t0
print("samples:", tuple(u.shape), f"in {t_sample:.2f} s ({model.sampler.nfe()} network evaluations each)")

# %% [markdown]
# How good are they? The relative Frobenius error `||U - U_true|| / ||U_true||` of one sample and
# of the mean of the 8 samples, and the CRPS (a proper score of the whole ensemble: it rewards a
# sharp distribution centred on the truth). The shipped metadata records the same numbers on the
# same test set.

# %%
err_single = float(metrics.relative_frobenius_error(u[0], truth_u).mean())
err_mean = float(metrics.relative_frobenius_error(u.mean(0), truth_u).mean())
crps = float(metrics.crps_ensemble(u, truth_u).mean())
print(f"relative error: one sample {err_single:.3f}, mean of 8 {err_mean:.3f}; CRPS {crps:.2e}")
print("recorded at export:", info["offline_test"]["errors"])
results["offline"] = {"rel_error_single": err_single, "rel_error_mean8": err_mean, "crps": crps,
                      "seconds_per_batch": t_sample}
plots.plot_fields(truth_u[0, 0], u[:, 0, 0], OUT / "closure_samples.png",
                  title="closure G: truth, three draws, mean of 8 and spread")

# %% [markdown]
# ## 3. An ensemble forecast
#
# The truth is the full stochastic Navier–Stokes model on a 64² grid. The reduced model runs on
# 32² and needs the closure `G` at every step. We record the truth's coarse vorticity and the
# sparse measurements of its closure (16×16 points) as the forecast would receive them.

# %%
from stochclosure.rollouts import StreamedObservations, ensemble, regular_points, rollout  # noqa: E402
from stochclosure.systems import NavierStokes2D  # noqa: E402
from stochclosure.systems.navier_stokes import coarsen  # noqa: E402

w0, state_info = initial_state()                       # (1, 1, 64, 64) float64, a statistically steady state
fine = NavierStokes2D(**state_info["system"])
coarse = NavierStokes2D(**{**state_info["system"], "n": 32, "closure": "G"})
horizon = 0.1 if SMOKE else 1.0
n_steps = int(round(horizon / fine.dt))
record_every = 20 if SMOKE else 100
obs_k = int(info["obs_grid"])

gen = torch.Generator().manual_seed(1)
w, truth_states, obs = w0, [coarsen(w0, 32)], []
for step in range(n_steps):
    w_next, closures = fine.full_step_with_closures(w, generator=gen)
    obs.append(closures["G"][..., :: fine.n // obs_k, :: fine.n // obs_k].reshape(1, 1, -1))
    w = w_next
    if (step + 1) % record_every == 0:
        truth_states.append(coarsen(w, 32))
truth_states = torch.cat(truth_states).float()             # (time, 1, 32, 32)
observations = StreamedObservations(torch.stack(obs).float()[:, 0], regular_points(obs_k))

# %% [markdown]
# `ensemble()` runs all members in one batched pass: the closure is a pyro sample site
# `closure/{step}`, the members live under a `pyro.plate`, so one reverse-SDE solve serves every
# member. A fresh closure is drawn every 10 solver steps and held in between (the closure varies
# slowly; tutorial 04 shows the other policies). `rollout(coarse, None, ...)` is the no-closure
# baseline.

# %%
members = 4 if SMOKE else 16
v0 = coarsen(w0, 32)[0].float()                           # (1, 32, 32)
t0 = time.perf_counter()
with torch.inference_mode():
    ens = ensemble(coarse, model, v0, n_steps, members, seed=0, resample_every=10, observations=observations,
                   sampler={"type": "dpm_solver_pp_2m", "steps": 5}, record_every=record_every,
                   t0=float(state_info["time"]))
t_ens = time.perf_counter() - t0
base = rollout(coarse, None, v0, n_steps, record_every=record_every, t0=float(state_info["time"]))
print(f"{members} members x {n_steps} steps in {t_ens:.1f} s; result dims {ens.dims}, members {tuple(ens.members.shape)}")

# %%
mem = ens.members.float()                                 # (time, members, 1, 32, 32)
err_ens = metrics.relative_frobenius_error(mem.mean(1), truth_states)[:, 0]
err_base = metrics.relative_frobenius_error(base.states.float(), truth_states)[:, 0]
crps_t = metrics.crps_ensemble(mem, truth_states, member_dim=1).mean((-1, -2, -3))
for t, a, b in zip(ens.times.tolist(), err_ens.tolist(), err_base.tolist()):
    print(f"t = {t:6.2f}  error with learned closure {a:.4f}   without closure {b:.4f}")

fig, ax = plt.subplots(figsize=(6, 3.6))
ax.plot(ens.times, err_ens, "o-", label="ensemble mean, learned closure")
ax.plot(ens.times, err_base, "s--", label="no closure")
ax.set_xlabel("time")
ax.set_ylabel("relative vorticity error")
ax.set_yscale("symlog", linthresh=1e-4)
ax.legend()
ax.grid(alpha=0.3)
fig.tight_layout()
fig.savefig(OUT / "forecast_error.png", dpi=110)
plt.close(fig)
figs = plots.rollout_report(ens, truth_states, OUT, prefix="forecast", vorticity=True)

# %% [markdown]
# The learned closure keeps the coarse forecast close to the truth, where the no-closure model
# drifts away (its error grows roughly linearly: the missing viscosity and noise act every step).
# `rollout_report` wrote the standard figures: fields (truth, members, mean, spread), error and
# spread over time, energy spectra and a rank histogram. Tutorial 03 reads them properly.

# %%
results["online"] = {
    "members": members, "steps": n_steps, "horizon": horizon, "seconds": t_ens,
    "rel_error_final_closure": float(err_ens[-1]), "rel_error_final_no_closure": float(err_base[-1]),
    "crps_final": float(crps_t[-1]),
    "spread_final": float(mem[-1].std(0).pow(2).mean().sqrt()),
}
results["figures"] = sorted(p.name for p in OUT.glob("*.png"))
results["seconds_total"] = time.perf_counter() - T_START
assert all(math.isfinite(v) for v in (err_single, err_mean, crps, float(err_ens[-1])))
(OUT / "results.json").write_text(json.dumps(results, indent=2))
print(json.dumps({k: results[k] for k in ("offline", "online")}, indent=2))
print(f"wrote {OUT}")
