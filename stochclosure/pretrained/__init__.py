"""Pretrained closures shipped with the package (small, CPU-trained, with their provenance).

``ns2d_G_sparse_32``: the closure ``G`` of the stochastic 2-D Navier–Stokes system (REFERENCE
§2) at 32^2, conditioned on the coarse vorticity and sparse measurements of ``G`` at 16x16
physical points (periodic interpolation encoding). It was trained by ``stochclosure train`` on
``configs/paper/train_G_sparse_interp.yaml``; ``pretrained_info(name)`` says exactly how (data
config, steps, losses, the library versions) and records its offline error on a small test set
that :func:`offline_test_set` regenerates from a fixed seed.

``ns2d_subgrid_gaussian_32``: the subgrid term ``U`` of 2-D Navier–Stokes under a Gaussian filter
at 32^2 (:class:`~stochclosure.systems.NavierStokes2DSubgrid`, 128^2 DNS, 2/3-rule coarse
solver), as the residual law ``U = ADM + r``, ``r ~ N(mu(y), sigma(y)^2)`` coloured in space
(:class:`~stochclosure.closures.ResidualLaw`), trained by the Gaussian CRPS and fine-tuned
a-posteriori on ensemble rollouts by ``benchmarks/closures.py`` and exported by
``benchmarks/export_subgrid_pretrained.py``. ``pretrained_info(name)`` records the system
(``"system"``), the rollout policy it was scored with (``"policy"``: the coarse ``dt``, the AR(1)
latent memory ``rho_per_step``, the draw interval), the study's online scores on 40 held-out
cases and its offline scores on a test set that :func:`offline_test_set` regenerates from a
fixed seed; :func:`pretrained_system` builds the system.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..checkpoint import load_model
from ..errors import ConfigError, UnknownPluginError, format_error
from ..systems.navier_stokes import NavierStokes2D, coarsen
from ..systems.subgrid import NavierStokes2DSubgrid

__all__ = ["available", "pretrained_path", "load_pretrained", "pretrained_info", "initial_state",
           "offline_test_set", "pretrained_system", "subgrid_test_set", "DEFAULT", "SUBGRID"]

DEFAULT = "ns2d_G_sparse_32"
SUBGRID = "ns2d_subgrid_gaussian_32"

#: ``metadata.json``'s ``"kind"``: the diffusion closure ``G`` (no ``kind`` entry) or a subgrid law.
KINDS = ("diffusion_G", "subgrid_law")


def available() -> list[str]:
    """Names of the pretrained closures installed with the package."""
    root = resources.files(__name__)
    return sorted(p.name for p in root.iterdir() if p.is_dir() and (p / "metadata.json").is_file())


def pretrained_path(name: str = DEFAULT) -> Path:
    """Directory of pretrained closure ``name`` (a checkpoint loadable by ``load_model``)."""
    path = Path(str(resources.files(__name__) / name))
    if not (path / "metadata.json").is_file():
        raise UnknownPluginError(f"unknown pretrained closure {name!r}; installed: {', '.join(available()) or 'none'}")
    return path


def pretrained_info(name: str = DEFAULT) -> dict[str, Any]:
    """Provenance and recorded metrics of ``name`` (``metadata.json``)."""
    return json.loads((pretrained_path(name) / "metadata.json").read_text())


def _kind(name: str, info: dict[str, Any]) -> str:
    kind = info.get("kind", "diffusion_G")
    if kind not in KINDS:
        raise ConfigError(format_error(f"{name}: metadata.json kind", f"one of {KINDS}", repr(kind),
                                       "this stochclosure is older than the pretrained closure; upgrade it"))
    return str(kind)


def load_pretrained(name: str = DEFAULT, weights: str = "ema") -> Any:
    """Load pretrained closure ``name`` in eval mode.

    ``ns2d_G_sparse_32`` is a :class:`~stochclosure.ClosureModel`; ``ns2d_subgrid_gaussian_32`` a
    :class:`~stochclosure.closures.ResidualLaw` (ADM + Gaussian residual; stored without EMA
    weights, so ``weights="ema"`` loads its raw weights).
    """
    return load_model(pretrained_path(name), weights=weights)


def pretrained_system(name: str = DEFAULT) -> NavierStokes2D | NavierStokes2DSubgrid:
    """The reduced (coarse) system pretrained closure ``name`` belongs to.

    ``ns2d_G_sparse_32``: :class:`~stochclosure.systems.NavierStokes2D` at the model's resolution
    with the closure ``G`` (as ``stochclosure demo`` builds it);
    ``ns2d_subgrid_gaussian_32``: :class:`~stochclosure.systems.NavierStokes2DSubgrid` (its
    ``step`` takes the closure; its ``dt`` is the DNS step, the coarse step of the recorded scores
    is ``pretrained_info(name)["policy"]["dt"]``).
    """
    info = pretrained_info(name)
    if _kind(name, info) == "subgrid_law":
        return NavierStokes2DSubgrid(**{k: v for k, v in info["system"].items() if k != "type"})
    return NavierStokes2D(**{**info["initial_state"]["system"], "n": int(info["resolution"]),
                             "closure": info["closure"]})


def initial_state(name: str = DEFAULT) -> tuple[Tensor, dict[str, Any]]:
    """A statistically steady fine-grid state shipped with ``name`` and what it is.

    For ``ns2d_subgrid_gaussian_32`` it is the 128^2 DNS vorticity of the first trajectory of
    :func:`offline_test_set` at the end of its spin-up; ``pretrained_system(name).filter(state)``
    is the coarse state to start an ensemble from.

    Returns:
        ``(state (1, 1, n, n) float64, info)``; ``info`` has the physical time, the grid and the
        system configuration it belongs to.
    """
    from safetensors.torch import load_file

    path = pretrained_path(name) / "initial_state.safetensors"
    state = load_file(str(path))["state"].double()
    return state, pretrained_info(name)["initial_state"]


def offline_test_set(name: str = DEFAULT) -> dict[str, Tensor]:
    """Regenerate the small test set the recorded offline error of ``name`` was measured on.

    For ``ns2d_subgrid_gaussian_32`` this is :func:`subgrid_test_set` of its metadata's
    ``offline_test`` entry (a filtered DNS from a fixed seed, several seconds on one core). For
    ``ns2d_G_sparse_32``: the shipped fine state is advanced with the full stochastic model from a fixed seed; every
    ``record_every`` steps the coarse state, the true closure and its sparse measurements are
    taken, exactly as ``stochclosure generate`` does.

    Returns:
        ``{"state": (R, 1, n, n), "target": (R, 1, n, n), "obs_values": (R, 1, P), "obs_points": (P, 2)}``
        at the model's resolution.
    """
    info = pretrained_info(name)
    spec = info["offline_test"]
    if _kind(name, info) == "subgrid_law":
        return subgrid_test_set(pretrained_system(name), spec)
    w, state_info = initial_state(name)
    fine = NavierStokes2D(**state_info["system"])
    gen = torch.Generator().manual_seed(int(spec["seed"]))
    n_coarse, closure = int(info["resolution"]), info["closure"]
    k = int(spec["obs_grid"])
    stride = fine.n // k
    states, targets, obs = [], [], []
    for step in range(int(spec["records"]) * int(spec["record_every"])):
        w_next, clos = fine.full_step_with_closures(w, generator=gen)
        if (step + 1) % int(spec["record_every"]) == 0:
            states.append(coarsen(w, n_coarse, "stride"))
            targets.append(coarsen(clos[closure], n_coarse, "stride"))
            obs.append(clos[closure][..., ::stride, ::stride].reshape(1, 1, -1))
        w = w_next
    axes = torch.arange(k, dtype=torch.float64) / k
    points = torch.stack(torch.meshgrid(axes, axes, indexing="ij"), -1).reshape(-1, 2)
    return {"state": torch.cat(states).float(), "target": torch.cat(targets).float(),
            "obs_values": torch.cat(obs).float(), "obs_points": points.float()}


def subgrid_test_set(system: NavierStokes2DSubgrid, spec: dict[str, Any]) -> dict[str, Tensor]:
    """A filtered-DNS test set of the subgrid closure, regenerated from a fixed seed.

    ``trajectories`` DNS runs from Gaussian random fields drawn with ``seed`` (float64, one
    batched run), spun up ``spinup_steps`` DNS steps, then recorded every ``record_every`` steps:
    the filtered vorticity and the true subgrid term ``U`` (:meth:`NavierStokes2DSubgrid.closure_term`).

    Args:
        system: The subgrid system (its DNS and filter).
        spec: ``{"seed", "trajectories", "spinup_steps", "records", "record_every"}``.

    Returns:
        ``{"state": (T R, 1, n, n), "target": (T R, 1, n, n), "trajectory": (T R,) int64,
        "fine_start": (T, 1, N, N) float64}``, trajectory-major, float32 fields; ``fine_start``
        is the DNS state at the end of the spin-up.
    """
    try:
        seed, traj, spin, records, every = (int(spec[k]) for k in
                                            ("seed", "trajectories", "spinup_steps", "records", "record_every"))
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(format_error("spec", "integers seed, trajectories, spinup_steps, records, record_every",
                                       repr(spec))) from exc
    if min(traj, records, every) < 1 or spin < 0:
        raise ConfigError(format_error("spec", "trajectories, records, record_every >= 1 and spinup_steps >= 0",
                                       repr(spec)))
    gen = torch.Generator().manual_seed(seed)
    states, targets = [], []
    with torch.no_grad():
        w = system.fine_initial_state(traj, generator=gen, dtype=torch.float64)
        w = system.fine.simulate(w, spin, generator=gen) if spin else w
        start = w.clone()
        for r in range(records):
            if r:
                w = system.fine.simulate(w, every, generator=gen)
            states.append(system.filter(w).float())
            targets.append(system.closure_term(w).float())
    return {"state": torch.stack(states, 1).flatten(0, 1), "target": torch.stack(targets, 1).flatten(0, 1),
            "trajectory": torch.arange(traj).repeat_interleave(records), "fine_start": start}
