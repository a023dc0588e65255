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
# # 02 · Your own components: SDE, sampler, encoder and score operator, registered and packaged
#
# Every component of a closure model is an object behind a small interface, found by **name**
# through one registry:
#
# | kind | interface | you implement |
# |---|---|---|
# | `sde` | `stochclosure.sdes.AbstractSDE` | `marginal_coefficients`, `drift`, `diffusion` |
# | `sampler` | `stochclosure.samplers.AbstractSampler` (or the `GridSampler` skeleton) | `sample`, `nfe` (or one `step` method) |
# | `encoder` | `stochclosure.encoders.AbstractConditioningEncoder` | `out_channels`, `forward(cond, grid)` |
# | `score_operator` | `stochclosure.scores.AbstractScoreOperator` | `forward(x, t, cond)` |
#
# Why names? A checkpoint, a YAML config or a colleague's script says `"sampler": "ddim"` and
# gets *your* class, without importing your code by hand. There are two ways to put a name in
# the registry:
#
# 1. `sc.register(kind, name, cls)` at run time: for a notebook or a quick experiment;
# 2. an **entry point** in your own package (`[options.entry_points]` of `setup.cfg`): installed
#    once, found by every Python process. stochclosure's own built-ins are registered this way.
#
# This tutorial writes one component of each kind, registers them with `register()`, runs the
# shipped contract suites (`stochclosure.testing`) on them, uses them by name in an ensemble
# rollout of 2-D Navier–Stokes, then does it again from a throwaway installed package, and
# cleans up after itself.

# %%
from __future__ import annotations

import argparse
import importlib
import inspect
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any, ClassVar

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torch import Tensor  # noqa: E402

import stochclosure as sc  # noqa: E402
from stochclosure import Conditioning  # noqa: E402
from stochclosure.encoders import AbstractConditioningEncoder  # noqa: E402
from stochclosure.fft import spectral_resample  # noqa: E402
from stochclosure.samplers import GridSampler, NoiseSource, SolverState  # noqa: E402
from stochclosure.scores import AbstractScoreOperator, wavenumbers  # noqa: E402
from stochclosure.sdes import AbstractSDE, expand_as_batch  # noqa: E402

parser = argparse.ArgumentParser(description="tutorial 02: custom components")
parser.add_argument("--smoke", action="store_true", help="tiny settings for CI")
parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "_out" / "02_register_components"))
args, _ = parser.parse_known_args(None if "ipykernel" not in sys.modules else [])
OUT = Path(args.out)
OUT.mkdir(parents=True, exist_ok=True)
SMOKE = args.smoke
T_START = time.perf_counter()
results: dict = {"smoke": SMOKE}

# %% [markdown]
# ## 1. A custom SDE: the cosine schedule
#
# The forward SDE decides how data are noised. Every SDE here has a Gaussian transition kernel
# `x_t | x_0 ~ N(alpha_t x_0, sigma_t² I)`; samplers only need `alpha_t`, `sigma_t`, the drift
# `f(t) x` and the diffusion `g(t)`. The *cosine* schedule of Nichol & Dhariwal (2021) is
# variance preserving (`sigma_t² = 1 - alpha_t²`) with
# `alpha_t = cos(pi/2 (t + s)/(1 + s)) / cos(pi/2 s/(1 + s))`, so
# `f(t) = d log(alpha_t)/dt` and, variance preserving, `g(t)² = -2 f(t)`.
#
# Times are tensors `t` of shape `(batch,)`; the base class derives the rest (`marginal`,
# `log_snr`, the reverse and probability-flow drifts, `prior_sample`). `tan` blows up at
# `t = 1`, so this SDE stops at `T = 0.99`, where `sigma_t / alpha_t` is already about 64.
# Constructor arguments become the component's configuration (`sde.config`), so keep them
# plain numbers.


# %%
class CosineVPSDE(AbstractSDE):
    """Variance-preserving SDE with the cosine schedule (Nichol & Dhariwal 2021).

    Args:
        s: Offset that keeps ``beta`` finite near ``t = 0``.
        T: Final time (below 1, where ``beta`` diverges).
        eps: Smallest time used by samplers.
    """

    family: ClassVar[str] = "vp"

    def __init__(self, s: float = 0.008, T: float = 0.99, eps: float = 1e-3) -> None:
        self._check_times(T, eps)
        self.s, self.T, self.eps = float(s), float(T), float(eps)

    def _phase(self, t: Tensor) -> Tensor:
        return 0.5 * math.pi * (t.double() + self.s) / (1.0 + self.s)

    def marginal_coefficients(self, t: Tensor) -> tuple[Tensor, Tensor]:
        alpha = torch.cos(self._phase(t)) / math.cos(0.5 * math.pi * self.s / (1.0 + self.s))
        return alpha.to(t.dtype), torch.sqrt(1.0 - alpha**2).to(t.dtype)

    def drift_coefficient(self, t: Tensor) -> Tensor:
        return (-0.5 * math.pi / (1.0 + self.s) * torch.tan(self._phase(t))).to(t.dtype)

    def drift(self, x: Tensor, t: Tensor) -> Tensor:
        return expand_as_batch(self.drift_coefficient(t), x) * x

    def diffusion(self, t: Tensor) -> Tensor:
        return torch.sqrt(-2.0 * self.drift_coefficient(t))


# %% [markdown]
# ## 2. A custom sampler: DDIM with a stochasticity knob
#
# A sampler turns a score function `score_fn(x, t)` (the condition is already bound; samplers
# never see a network) into samples. DDIM (Song, Meng & Ermon 2021) steps from `t` to `t' < t`
# through the denoised estimate `x0 = (x + sigma_t² score) / alpha_t` and the implied noise
# `eps = -sigma_t score`:
#
# `x' = alpha_t' x0 + sqrt(sigma_t'² - c²) eps + c z`, with
# `c = eta sigma_t' sqrt(1 - (alpha_t sigma_t')² / (alpha_t' sigma_t)²)`.
#
# `eta = 0` is the deterministic DDIM, `eta = 1` the ancestral (DDPM) sampler. It works for any
# SDE with a Gaussian kernel: VE, VP, ours.
#
# Rather than implementing `sample()` from scratch, subclass `GridSampler`, the driver every
# built-in sampler uses, and write one `step(state, t_cur, t_next, score_fn, noise) -> state`
# that moves `state.x` from `t_cur` to `t_next < t_cur`. The driver builds the time grid (`grid=`
# a name such as `"log_snr"`, or explicit `{"times": [...]}` / `{"sigmas": [...]}`), draws the
# starting point, counts network evaluations, calls callbacks, finishes with Tweedie's denoising
# step and checks the result is finite. `__init__` declares only the sampler's own options,
# keyword-only, and forwards `**common` (`grid`, `t_start`, `t_end`, `rho`, `denoise`,
# `data_std`, `check_finite`) to the driver, which shows them all in the merged signature, so a
# configuration or checkpoint can set any of them and rollouts can control the starting noise
# per ensemble member (reproducible members, `NoiseAR1`, `WarmStart`), which a sampler written
# directly against `AbstractSampler` does not offer (such a sampler works in rollouts with
# `keyed=False`). Random numbers come from `noise` (a `NoiseSource`), never from the global
# generator, so the same seed gives the same samples.


# %%
class DDIM(GridSampler):
    """DDIM (Song, Meng & Ermon 2021); ``eta = 0`` deterministic, ``eta = 1`` ancestral sampling.

    One network evaluation per step; ``x`` is ``(batch, *event)``. Also takes the common
    arguments of ``GridSampler`` (default 50 steps on the ``"log_snr"`` grid).

    Args:
        steps: Default number of steps.
        eta: Stochasticity in ``[0, 1]``.
    """

    nfe_per_step: ClassVar[int] = 1
    default_steps: ClassVar[int] = 50
    default_grid: ClassVar[str] = "log_snr"

    def __init__(self, steps: int | None = None, *, eta: float = 1.0, **common: Any) -> None:
        if not 0.0 <= eta <= 1.0:
            raise sc.ConfigError(sc.errors.format_error("eta", "a float in [0, 1]", repr(eta)))
        super().__init__(steps, **common)
        self.eta = float(eta)

    def step(self, state: SolverState, t_cur: float, t_next: float, score_fn: Any,
             noise: NoiseSource) -> SolverState:
        x, sde = state.x, state.sde
        t = torch.full((x.shape[0],), t_cur, dtype=x.dtype, device=x.device)
        (a, s), (a_n, s_n) = sde.marginal_coefficients(t), sde.marginal_coefficients(torch.full_like(t, t_next))
        a, s, a_n, s_n = (expand_as_batch(v, x) for v in (a, s, a_n, s_n))
        score = score_fn(x, t)
        x0, eps = (x + s**2 * score) / a, -s * score
        c = self.eta * s_n * torch.sqrt((1.0 - (a * s_n) ** 2 / (a_n * s) ** 2).clamp(min=0.0))
        x = a_n * x0 + torch.sqrt((s_n**2 - c**2).clamp(min=0.0)) * eps
        state.x = x + c * noise.normal(x) if self.eta > 0 else x
        return state


# %% [markdown]
# ## 3. A custom conditioning encoder: the Laplacian of the coarse field
#
# An encoder turns a `Conditioning` (coarse fields, history, sparse measurements) into channels
# on the grid of the sample, **at any resolution** (the grid is an argument, so a model trained
# at 32² can be sampled at 64²). For the Navier–Stokes closure `G = nu Lap(omega) + noise`, the
# Laplacian of the coarse vorticity is the physically relevant input; we compute it spectrally
# and resample it to the requested grid. Shapes: `cond.fields` `(B, C, *spatial)` in,
# `(B, out_channels, *grid)` out.


# %%
class LaplacianEncoder(AbstractConditioningEncoder):
    """Spectral Laplacian of the condition's fields, resampled to the target grid.

    Args:
        channels: Channels of ``cond.fields``.
        scale: Factor applied to the Laplacian (e.g. a viscosity).
    """

    spatial_dims: ClassVar[tuple[int, ...]] = (1, 2)

    def __init__(self, channels: int = 1, scale: float = 1.0) -> None:
        super().__init__()
        self.channels, self.scale = int(channels), float(scale)

    @property
    def out_channels(self) -> int:
        return self.channels

    def forward(self, cond: Conditioning, grid: tuple[int, ...]) -> Tensor:
        y = cond.fields
        spatial = tuple(y.shape[2:])
        dims = tuple(range(-len(spatial), 0))
        k2 = (2.0 * math.pi * wavenumbers(spatial, dtype=y.dtype, device=y.device)) ** 2
        lap = torch.fft.irfftn(-k2 * torch.fft.rfftn(y, dim=dims), s=spatial, dim=dims)
        return self.scale * spectral_resample(lap, tuple(grid))


# %% [markdown]
# ## 4. A custom score operator: a Gaussian around an encoder's output
#
# A score operator returns `grad_x log p_t(x | cond)` shaped like `x` `(B, C, *grid)`, for
# diffusion times `t` `(B,)`. In practice it is a neural network (the `fno` plugin); here we
# write an *exact* one: if `U | y ~ N(m(y), s² I)` then the noised law is
# `N(alpha_t m, (alpha_t² s² + sigma_t²) I)` and its score is
# `-(x - alpha_t m) / (alpha_t² s² + sigma_t²)`. The mean `m(y)` comes from any registered
# encoder, resolved **by name**: components compose through the registry too.
#
# `example_inputs()` gives the contract suite valid inputs; `resolution_invariant = True` asks
# it to also check a twice finer grid.


# %%
class EncodedGaussianScore(AbstractScoreOperator):
    """Exact score of ``U | y ~ N(gain * encoder(y), noise_std^2 I)`` under ``sde``.

    Args:
        sde: Forward SDE (name, spec or instance).
        encoder: Conditioning encoder giving the mean (name, spec or instance).
        gain: Factor applied to the encoder's output.
        noise_std: Std of the Gaussian around the mean.
    """

    spatial_dims: ClassVar[tuple[int, ...]] = (1, 2)
    resolution_invariant: ClassVar[bool] = True
    conditional: ClassVar[bool] = True

    def __init__(self, sde: Any = "vp", encoder: Any = "field", gain: float = 1.0, noise_std: float = 1.0) -> None:
        super().__init__()
        self.sde = sc.resolve("sde", sde)
        self.encoder = sc.resolve("encoder", encoder)
        self.gain, self.noise_std = float(gain), float(noise_std)

    def forward(self, x: Tensor, t: Tensor, cond: Conditioning | None = None) -> Tensor:
        alpha, sigma = (expand_as_batch(v, x) for v in self.sde.marginal_coefficients(t))
        mean = self.gain * self.encoder(cond, tuple(x.shape[2:])).to(x.dtype)
        return -(x - alpha * mean) / (alpha**2 * self.noise_std**2 + sigma**2)

    def example_inputs(self, batch: int, generator: torch.Generator | None = None
                       ) -> tuple[Tensor, Tensor, Conditioning | None]:
        x = torch.randn(batch, 1, 16, 16, generator=generator)
        t = self.sde.eps + (self.sde.T - self.sde.eps) * torch.rand(batch, generator=generator)
        return x, t, Conditioning(fields=torch.randn(batch, 1, 16, 16, generator=generator))


# %% [markdown]
# ## 5. Register them and run the contract suites
#
# `register()` checks at once that each class implements its interface (a missing method is an
# error naming it). The contract suites in `stochclosure.testing` then exercise the behaviour:
# shapes, seeding, consistency of drift / diffusion / marginal (by finite differences), the
# declared number of network evaluations, per-sample independence in a batch, other grids, and
# a sanity check of sample moments on an exact Gaussian score. Put the same calls in your own
# package's tests.

# %%
from stochclosure import testing  # noqa: E402

COMPONENTS = {("sde", "cosine_vp"): CosineVPSDE, ("sampler", "ddim"): DDIM,
              ("encoder", "laplacian"): LaplacianEncoder, ("score_operator", "encoded_gaussian"): EncodedGaussianScore}
for (kind, name), cls in COMPONENTS.items():
    sc.register(kind, name, cls, overwrite=True)
print({kind: [n for n in sc.available(kind)[kind] if (kind, n) in COMPONENTS] for kind, _ in COMPONENTS})

contract_seconds = {}
for name, instance, check in [
    ("cosine_vp", sc.resolve("sde", "cosine_vp"), testing.check_sde),
    ("ddim", sc.resolve("sampler", {"type": "ddim", "steps": 50}), testing.check_sampler),
    ("ddim eta=0", sc.resolve("sampler", {"type": "ddim", "steps": 50, "eta": 0.0}), testing.check_sampler),
    ("laplacian", sc.resolve("encoder", "laplacian"), testing.check_encoder),
    ("encoded_gaussian", sc.resolve("score_operator", {"type": "encoded_gaussian", "sde": "cosine_vp",
                                                       "encoder": "laplacian"}), testing.check_score_operator),
]:
    t0 = time.perf_counter()
    check(instance)   # raises AssertionError with an explanation on the first violation
    contract_seconds[name] = time.perf_counter() - t0
    print(f"contract passed: {name} ({contract_seconds[name]:.2f} s)")
results["contracts_passed"] = sorted(contract_seconds)

# %% [markdown]
# A contract is not a proof of accuracy. A quick accuracy check of the sampler: draw from an
# exact Gaussian score (`gaussian`, std 0.5) under our SDE and compare the sample std with 0.5
# as the number of steps grows. DDIM is a first-order method in `log(alpha/sigma)`: with few
# steps it under-disperses by a few percent, the error shrinks like `1/steps`, and the
# stochastic variant (`eta = 1`) needs more steps than the deterministic one.

# %%
gauss = sc.ClosureModel("cosine_vp", {"type": "gaussian", "sde": "cosine_vp", "std": 0.5}, "ddim")
check = {}
for eta in (0.0, 1.0):
    for steps in (10, 30, 100):
        x = gauss.sample(None, n=4000, grid=(4,), sampler={"type": "ddim", "steps": steps, "eta": eta},
                         generator=torch.Generator().manual_seed(0))
        check[f"eta={eta:g}, steps={steps}"] = {"mean": float(x.mean()), "std": float(x.std())}
        print(f"eta = {eta:g}, {steps:3d} steps: mean {float(x.mean()):+.4f} (exact 0), std {float(x.std()):.4f} (exact 0.5)")
results["ddim_gaussian_check"] = check

# %% [markdown]
# ## 6. Use them by name: a physics-based stochastic closure in an ensemble rollout
#
# Put the four together into a closure model for the Navier–Stokes closure `G` on a 32² grid:
# `U | omega ~ N(nu Lap(omega), s² I)`. The residual std `s` is fitted in one line from the
# shipped test set (`offline_test_set()` holds coarse states and true closures). This is a
# deliberately simple, *analytic* closure (no training): the point is that every piece is
# addressed by name, exactly as a checkpoint or a YAML file would.

# %%
from stochclosure.pretrained import initial_state, offline_test_set  # noqa: E402
from stochclosure.rollouts import ensemble, rollout  # noqa: E402
from stochclosure.systems import NavierStokes2D  # noqa: E402
from stochclosure.systems.navier_stokes import coarsen  # noqa: E402

w0, state_info = initial_state()
nu = float(state_info["system"]["nu"])
test = offline_test_set()
lap = sc.resolve("encoder", {"type": "laplacian", "scale": nu})
resid = test["target"] - lap(Conditioning(fields=test["state"]), (32, 32))
noise_std = float(resid.std())
print(f"nu Lap(omega) explains G up to a relative error {float(resid.norm() / test['target'].norm()):.2f}; "
      f"residual std {noise_std:.4f}")

SPEC = {"sde": "cosine_vp",
        "score": {"type": "encoded_gaussian", "sde": "cosine_vp",
                  "encoder": {"type": "laplacian", "scale": nu}, "noise_std": noise_std},
        "sampler": {"type": "ddim", "steps": 10, "eta": 1.0}}
physics = sc.ClosureModel(**SPEC)
print("model built from names:", json.dumps(physics.score.spec()))

# %% [markdown]
# The truth is the full stochastic model on 64²; the reduced model on 32² receives a closure
# drawn from our model every 5 steps. The no-closure model is the baseline.

# %%
fine = NavierStokes2D(**state_info["system"])
coarse = NavierStokes2D(**{**state_info["system"], "n": 32, "closure": "G"})
n_steps = 100 if SMOKE else 1000
record_every = 20 if SMOKE else 100
members = 4 if SMOKE else 16
gen = torch.Generator().manual_seed(1)
w, truth = w0, [coarsen(w0, 32)]
for step in range(n_steps):
    w = fine.full_step(w, generator=gen)
    if (step + 1) % record_every == 0:
        truth.append(coarsen(w, 32))
truth = torch.cat(truth).float()
v0 = coarsen(w0, 32)[0].float()


def run_ensemble(model: sc.ClosureModel) -> Any:
    with torch.inference_mode():
        return ensemble(coarse, model, v0, n_steps, members, seed=0, resample_every=5, record_every=record_every)


t0 = time.perf_counter()
ens_a = run_ensemble(physics)
t_a = time.perf_counter() - t0
base = rollout(coarse, None, v0, n_steps, record_every=record_every)
err = sc.metrics.relative_frobenius_error(ens_a.mean.float(), truth)[:, 0]
err_base = sc.metrics.relative_frobenius_error(base.states.float(), truth)[:, 0]
spread = ens_a.spread.float().pow(2).mean((-1, -2, -3)).sqrt()
print(f"{members} members x {n_steps} steps in {t_a:.1f} s")
print(f"final relative error: physics closure {float(err[-1]):.4f}, no closure {float(err_base[-1]):.4f}")

fig, ax = plt.subplots(figsize=(6, 3.6))
ax.plot(ens_a.times, err, "o-", label="ensemble mean, custom closure (cosine_vp + ddim + laplacian)")
ax.plot(ens_a.times, err_base, "s--", label="no closure")
ax.set_xlabel("time")
ax.set_ylabel("relative vorticity error")
ax.legend(fontsize=8)
ax.grid(alpha=0.3)
fig.tight_layout()
fig.savefig(OUT / "custom_closure_rollout.png", dpi=110)
plt.close(fig)
results["rollout_register"] = {"members": members, "steps": n_steps, "seconds": t_a,
                               "rel_error_final": float(err[-1]), "rel_error_final_no_closure": float(err_base[-1]),
                               "spread_final": float(spread[-1]), "residual_std": noise_std}

# %% [markdown]
# ## 7. The same components from an installed package (entry points)
#
# `register()` lasts as long as the Python process. To make the names available to every
# process (the CLI, a training job, a colleague loading your checkpoint), ship the classes in a
# package that declares **entry points** in the stochclosure groups:
#
# ```ini
# [options.entry_points]
# stochclosure.sdes = cosine_vp = my_package:CosineVPSDE
# stochclosure.samplers = ddim = my_package:DDIM
# ```
#
# The registry reads these through `importlib.metadata` the first time a kind is used.
# Below, we write such a package into a temporary folder from the very classes above, and
# `pip install --target` it into another temporary folder, so that this virtual environment is
# not touched. (In your own project you would simply `pip install -e .`.) First we drop the
# run-time registrations so that the names can only come from the package.

# %%
for (kind, name) in COMPONENTS:
    sc.registry.get_registry(kind).unregister(name)
assert "ddim" not in sc.available("sampler")["sampler"]

WORK = Path(tempfile.mkdtemp(prefix="stochclosure_tutorial02_"))
src, site = WORK / "src", WORK / "site"
pkg = src / "sc_tutorial_plugin"
pkg.mkdir(parents=True)
HEADER = '''"""Custom stochclosure components written in tutorial 02."""
from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import Tensor

import stochclosure as sc
from stochclosure import Conditioning
from stochclosure.encoders import AbstractConditioningEncoder
from stochclosure.fft import spectral_resample
from stochclosure.samplers import GridSampler, NoiseSource, SolverState
from stochclosure.scores import AbstractScoreOperator, wavenumbers
from stochclosure.sdes import AbstractSDE, expand_as_batch
'''
body = "\n\n".join(inspect.getsource(obj) for obj in (CosineVPSDE, DDIM, LaplacianEncoder, EncodedGaussianScore))
(pkg / "__init__.py").write_text(HEADER + "\n\n" + body)
(src / "pyproject.toml").write_text('[build-system]\nrequires = ["setuptools>=61"]\nbuild-backend = "setuptools.build_meta"\n')
(src / "setup.cfg").write_text(textwrap.dedent("""\
    [metadata]
    name = sc-tutorial-plugin
    version = 0.1.0

    [options]
    packages = sc_tutorial_plugin
    install_requires = stochclosure

    [options.entry_points]
    stochclosure.sdes =
        cosine_vp = sc_tutorial_plugin:CosineVPSDE
    stochclosure.samplers =
        ddim = sc_tutorial_plugin:DDIM
    stochclosure.encoders =
        laplacian = sc_tutorial_plugin:LaplacianEncoder
    stochclosure.score_operators =
        encoded_gaussian = sc_tutorial_plugin:EncodedGaussianScore
    """))

# Build without fetching anything when setuptools is already installed; otherwise let pip
# fetch it into an isolated build environment.
cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(site), str(src)]
if importlib.util.find_spec("setuptools") is not None:
    cmd[4:4] = ["--no-build-isolation", "--no-index"]
t0 = time.perf_counter()
subprocess.run(cmd, check=True)
t_install = time.perf_counter() - t0
print(f"installed into {site} in {t_install:.1f} s:", sorted(p.name for p in site.iterdir()))

# %% [markdown]
# Make the folder importable and visible to `importlib.metadata` (it scans `sys.path`), then
# tell the registry to read the entry points again (`refresh()`; a new process would simply
# find them). The registry now knows which distribution provides each name.

# %%
sys.path.insert(0, str(site))
importlib.invalidate_caches()
sc.registry.refresh()
providers = {}
for (kind, name) in COMPONENTS:
    comp = next(c for c in sc.registry.get_registry(kind).components() if c.name == name)
    providers[f"{kind}:{name}"] = comp.provider
    print(f"{kind:15s} {name:17s} provided by {comp.provider} ({comp.target})")
assert set(providers.values()) == {"sc-tutorial-plugin"}
assert sc.registry.get("sampler", "ddim").__module__ == "sc_tutorial_plugin"

# A fresh process finds them too: `stochclosure plugins` lists every component with its package.
listing = subprocess.run([sys.executable, "-m", "stochclosure", "plugins"], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])})
rows = [line for line in listing.stdout.splitlines() if "sc-tutorial-plugin" in line]
print("\n".join(rows))
assert len(rows) == 4

# %% [markdown]
# Build the model from the very same specification, now served by the installed package, and run
# the same ensemble: same seed, same ensemble, member for member.

# %%
packaged = sc.ClosureModel(**SPEC)
print(type(packaged.sampler).__module__, type(packaged.score).__module__)
ens_b = run_ensemble(packaged)
# equal up to float rounding: differences at most 1e-6 of the states' magnitude
same = float((ens_a.states - ens_b.states).abs().max()) <= 1e-6 * float(ens_a.states.abs().max())
print("packaged components reproduce the registered ones:", same)
assert same
results["package"] = {"providers": providers, "install_seconds": t_install, "cli_rows": len(rows),
                      "identical_ensemble": same}

# %% [markdown]
# ## 8. Clean up
#
# Remove the folder from `sys.path`, forget the module and the registry entries, delete the
# temporary files. Nothing was installed into the virtual environment.

# %%
sys.path.remove(str(site))
for mod in [m for m in sys.modules if m == "sc_tutorial_plugin" or m.startswith("sc_tutorial_plugin.")]:
    del sys.modules[mod]
importlib.invalidate_caches()
sc.registry.refresh()
shutil.rmtree(WORK)
assert "ddim" not in sc.available("sampler")["sampler"] and not WORK.exists()
print("cleaned up; samplers now:", sc.available("sampler")["sampler"])

# %%
results["seconds_total"] = time.perf_counter() - T_START
results["figures"] = sorted(p.name for p in OUT.glob("*.png"))
(OUT / "results.json").write_text(json.dumps(results, indent=2))
print(json.dumps(results, indent=2))
