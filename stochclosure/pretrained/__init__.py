"""Pretrained closures shipped with the package (small, CPU-trained, with their provenance).

``ns2d_G_sparse_32``: the closure ``G`` of the stochastic 2-D Navier–Stokes system (REFERENCE
§2) at 32^2, conditioned on the coarse vorticity and sparse measurements of ``G`` at 16x16
physical points (periodic interpolation encoding). It was trained by ``stochclosure train`` on
``configs/paper/train_G_sparse_interp.yaml``; ``pretrained_info(name)`` says exactly how (data
config, steps, losses, the library versions) and records its offline error on a small test set
that :func:`offline_test_set` regenerates from a fixed seed.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..errors import UnknownPluginError

__all__ = ["available", "pretrained_path", "load_pretrained", "pretrained_info", "initial_state",
           "offline_test_set", "DEFAULT"]

DEFAULT = "ns2d_G_sparse_32"


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


def load_pretrained(name: str = DEFAULT, weights: str = "ema") -> Any:
    """Load pretrained closure ``name`` as a :class:`~stochclosure.ClosureModel` (eval mode)."""
    from ..checkpoint import load_model

    return load_model(pretrained_path(name), weights=weights)


def initial_state(name: str = DEFAULT) -> tuple[Tensor, dict[str, Any]]:
    """A statistically steady fine-grid state shipped with ``name`` and what it is.

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

    The shipped fine state is advanced with the full stochastic model from a fixed seed; every
    ``record_every`` steps the coarse state, the true closure and its sparse measurements are
    taken, exactly as ``stochclosure generate`` does.

    Returns:
        ``{"state": (R, 1, n, n), "target": (R, 1, n, n), "obs_values": (R, 1, P), "obs_points": (P, 2)}``
        at the model's resolution.
    """
    from ..systems.navier_stokes import NavierStokes2D, coarsen

    info = pretrained_info(name)
    spec = info["offline_test"]
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
