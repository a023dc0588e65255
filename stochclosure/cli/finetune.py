"""``stochclosure finetune --config FILE.yaml``: a-posteriori fine-tuning of a closure law by rollout scores.

The YAML file (read with ``yaml.safe_load``; relative paths follow the rule of
:mod:`stochclosure._io`: inside the config's folder, or inside its ``root``)::

    law: runs/gaussian/step-00000400    # a closure-law checkpoint (stochclosure train / checkpoint.save_model)
    system: {type: navier_stokes_2d_subgrid, n: 32, filter: gaussian}
    dt: 1.0e-3                          # coarse time step (default: the system's dt)
    data:
      path: trajectories.pt             # .pt / .safetensors with w (N, T, C, *grid), or a `generate` HDF5 file
      record_every: 20                  # coarse steps between stored states (default: the file's)
      resolution: 32                    # HDF5 only: res_<n>/state (default: the system's n)
      val_trajectories: 1               # tensor files: the last k trajectories validate (HDF5: its val split)
    finetune: {steps: 20, members: 4, windows_per_step: 2, records: 3, rho: 0.99, lr: 3.0e-4}
    out: runs/finetuned                 # checkpoint + history.json + finetune.png; resumable

Windows start at every stored state with ``records`` states after it. Writes ``out/law.safetensors``
(loadable by :func:`stochclosure.checkpoint.load_model` and ``stochclosure rollout``),
``out/history.json`` and ``out/finetune.png`` (validation score and spread-skill against the step).
Running the same file again resumes (or returns the finished run); a changed configuration on the
same ``out`` is refused.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .._io import exclusive_lock, preflight_output
from ..config import load_yaml_mapping
from ..errors import ConfigError, format_error
from .schemas import FinetuneFileConfig, parse, to_dict

__all__ = ["load_finetune_config", "run_finetune", "trajectory_windows", "read_trajectories", "run", "add_arguments"]


def load_finetune_config(path: str | Path) -> dict[str, Any]:
    """Read and check a fine-tuning YAML file before any work (schema, then the fine-tuning settings).

    Raises:
        ConfigError: an unknown or missing key, a wrong type or range (naming the key).
    """
    from ..training.finetune import FinetuneConfig

    path = Path(path)
    raw = load_yaml_mapping(path, "a mapping with keys law, system, data, finetune, out")
    cfg = to_dict(parse(FinetuneFileConfig, raw, path, "finetune"))
    try:
        FinetuneConfig(**cfg["finetune"])
    except TypeError as exc:
        raise ConfigError(format_error("finetune", "FinetuneConfig keys (steps, members, windows_per_step, records, "
                                       "hold, hold_physics, rho, lr, score, params, clip, val_every, seed)", str(exc))) from None
    except ConfigError as exc:
        raise ConfigError(f"finetune.{exc}".replace("finetune.argument '", "argument 'finetune.")) from None
    return cfg


def read_trajectories(data: dict[str, Any], n: int | None) -> tuple[Tensor, Tensor, int]:
    """``(train, val, record_every)`` trajectories ``(N, T, C, *grid)`` of the ``data`` block.

    Raises:
        ConfigError: a missing tensor, a wrong shape, no record spacing or no validation trajectory.
    """
    path = Path(data["path"])
    if path.suffix in (".h5", ".hdf5"):
        return _read_h5(path, data, n)
    if path.suffix == ".safetensors":
        from ..checkpoint import load_tensors

        tensors = load_tensors(path)
    elif path.suffix == ".pt":
        tensors = torch.load(path, weights_only=True, map_location="cpu")
    else:
        raise ConfigError(format_error("data.path", "a .pt, .safetensors or .h5 file", repr(str(path))))
    w = tensors.get("w") if isinstance(tensors, dict) else None
    if not isinstance(w, Tensor) or w.dim() < 4:
        raise ConfigError(format_error("data.path", "a tensor 'w' of shape (N, T, C, *grid)",
                                       f"{sorted(tensors) if isinstance(tensors, dict) else type(tensors).__name__}"))
    every = data["record_every"] if data["record_every"] is not None else tensors.get("record_every")
    if every is None:
        raise ConfigError(format_error("data.record_every", "the coarse steps between stored states", "none",
                                       "set data.record_every or store record_every in the file"))
    k = data["val_trajectories"]
    if not 0 < k < w.shape[0]:
        raise ConfigError(format_error("data.val_trajectories", f"from 1 to {w.shape[0] - 1} (of {w.shape[0]})", repr(k)))
    w = w.float()
    return w[:-k], w[-k:], int(every)


def _read_h5(path: Path, data: dict[str, Any], n: int | None) -> tuple[Tensor, Tensor, int]:
    import h5py

    with h5py.File(path, "r") as f:
        res = data["resolution"] or n
        key = f"res_{res}/state"
        if key not in f:
            raise ConfigError(format_error("data.resolution", f"a stored resolution with states ({key})",
                                           f"{sorted(k for k in f if k.startswith('res_'))}"))
        w = torch.from_numpy(f[key][()]).float()
        split = torch.from_numpy(f["split"][()]).long()
    if data["record_every"] is None:
        raise ConfigError(format_error("data.record_every", "the coarse steps between stored states", "none",
                                       "set data.record_every (the file stores records in its own steps)"))
    if not bool((split == 1).any()) or not bool((split == 0).any()):
        raise ConfigError(format_error("data.path", "train and val trajectories", f"split counts {split.bincount().tolist()}"))
    return w[split == 0], w[split == 1], int(data["record_every"])


def trajectory_windows(w: Tensor, records: int, record_every: int) -> Any:
    """Every window of ``records`` stored states after a start, of trajectories ``w (N, T, C, *grid)``.

    Raises:
        ConfigError: the trajectories are shorter than ``records + 1`` states.
    """
    from ..training.finetune import FinetuneWindows

    if w.shape[1] <= records:
        raise ConfigError(format_error("finetune.records", f"fewer than the {w.shape[1]} stored states per trajectory",
                                       repr(records)))
    starts = range(w.shape[1] - records)
    return FinetuneWindows(w0=torch.cat([w[:, j] for j in starts]),
                           truth=torch.cat([w[:, j + 1: j + 1 + records] for j in starts]), record_every=record_every)


def run_finetune(cfg: dict[str, Any], progress: bool = True) -> dict[str, Any]:
    """Fine-tune the law of ``cfg`` and write ``out``; returns a summary."""
    from ..checkpoint import load_model, save_model
    from ..registry import resolve
    from ..training.finetune import FinetuneConfig, finetune

    out = Path(cfg["out"])
    preflight_output(out, "out", is_dir=True)
    ft = FinetuneConfig(**cfg["finetune"])
    system = resolve("system", cfg["system"])
    law = load_model(cfg["law"])
    train, val, every = read_trajectories(cfg["data"], getattr(system, "n", None))
    dt = float(cfg["dt"] if cfg["dt"] is not None else system.dt)
    with exclusive_lock(out / "finetune-state.pt", "out"):  # one job per run folder
        result = finetune(law, system, trajectory_windows(train, ft.records, every), ft, dt=dt,
                          val=trajectory_windows(val, ft.records, every), out=out, progress=progress)
    path = save_model(result.law, out / "law.safetensors", extra={"finetune": {**ft.to_dict(), "dt": dt,
                                                                                "best_step": result.best_step}})
    from ..checkpoint import atomic_write_bytes

    atomic_write_bytes(out / "history.json", json.dumps(result.history, indent=1).encode())
    _figure(result.history, out / "finetune.png")
    return {"checkpoint": str(path), "best_step": result.best_step, "resumed_from": result.resumed_from,
            "history": result.history}


def _figure(history: list[dict[str, Any]], path: Path) -> None:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..checkpoint import atomic_write_bytes

    steps = [h["step"] for h in history if h["val_crps"] is not None]
    fig, ax = plt.subplots(1, 2, figsize=(8, 3))
    ax[0].plot(steps, [h["val_crps"] for h in history if h["val_crps"] is not None], "o-")
    ax[0].set(xlabel="step", ylabel="validation score (normalised)")
    ax[1].plot(steps, [h["val_spread_skill"] for h in history if h["val_crps"] is not None], "o-")
    ax[1].axhline(1.0, color="k", lw=0.5)
    ax[1].set(xlabel="step", ylabel="spread-skill (last record)")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def run(args: argparse.Namespace) -> int:
    """Run ``stochclosure finetune`` with the parsed arguments."""
    if args.threads:
        torch.set_num_threads(args.threads)
    summary = run_finetune(load_finetune_config(args.config), progress=not args.no_progress)
    last = summary["history"][-1]
    print(f"fine-tuned to step {last['step']} (best step {summary['best_step']}"
          + (f", resumed from {summary['resumed_from']}" if summary["resumed_from"] else "") + ")"
          + (f": validation score {last['val_crps']:.4g}, spread-skill {last['val_spread_skill']:.3f}"
             if last["val_crps"] is not None else ""), file=sys.stderr)
    print(f"checkpoint: {summary['checkpoint']}")
    return 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of ``stochclosure finetune``."""
    p.add_argument("--config", required=True, help="fine-tuning YAML (law, system, data, finetune, out)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
