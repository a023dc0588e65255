"""Package a trained closure run as a shipped pretrained closure (``stochclosure/pretrained/NAME``).

Copies the run's latest checkpoint (configuration, raw and EMA weights; no optimiser state),
stores a statistically steady fine-grid initial state taken from the *test* split of the
dataset, writes ``metadata.json`` with how the model was made, and measures the recorded
offline error on the small test set that :func:`stochclosure.pretrained.offline_test_set`
regenerates (so a test can check the shipped model reproduces it).

Usage:
    python benchmarks/export_pretrained.py --run benchmarks/work/runs/G_sparse_interp \
        --config configs/paper/train_G_sparse_interp.yaml --data benchmarks/work/ns2d_data.h5
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
from pathlib import Path

import h5py
import torch
import yaml
from safetensors.torch import save_file

import stochclosure as sc
from stochclosure import metrics
from stochclosure.checkpoint import library_versions, load_model, read_config
from stochclosure.pretrained import offline_test_set

ROOT = Path(__file__).resolve().parents[1]


def offline_error(model: sc.ClosureModel, data: dict[str, torch.Tensor], samples: int, seed: int) -> dict[str, float]:
    """Relative Frobenius error / MSE / CRPS of ``samples`` draws per test condition."""
    cond = sc.Conditioning(fields=data["state"], obs_values=data["obs_values"], obs_points=data["obs_points"])
    with torch.inference_mode():
        u = model.sample(cond, n=samples, generator=torch.Generator().manual_seed(seed))  # (S, R, 1, n, n)
    truth = data["target"]
    return {
        "rel_fro_single": float(metrics.relative_frobenius_error(u[0], truth).mean()),
        "rel_fro_mean": float(metrics.relative_frobenius_error(u.mean(0), truth).mean()),
        "mse_single": float(metrics.mse(u[0], truth)),
        "crps": float(metrics.crps_ensemble(u, truth, member_dim=0).mean()),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True, help="training output folder (has `latest`)")
    p.add_argument("--config", required=True, help="the training YAML the run used")
    p.add_argument("--data", required=True, help="the HDF5 dataset the run used")
    p.add_argument("--name", default="ns2d_G_sparse_32")
    p.add_argument("--state-record", type=int, default=100, help="record index of the shipped initial state")
    args = p.parse_args()

    run = Path(args.run)
    latest = run / (run / "latest").read_text().strip() if (run / "latest").is_file() else run
    dest = ROOT / "stochclosure" / "pretrained" / args.name
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    cfg = read_config(latest)
    for f in latest.iterdir():
        if f.name in ("config.json", "model.safetensors", "ema.safetensors"):
            shutil.copy2(f, tmp / f.name)

    with h5py.File(args.data, "r") as h5:
        test = [i for i, s in enumerate(h5["split"][:]) if s == 2]
        n_fine = max(int(r) for r in json.loads(h5.attrs["resolutions"]))
        state = torch.from_numpy(h5[f"res_{n_fine}/state"][test[0], args.state_record]).double()[None]
        t_state = float(h5["time"][args.state_record])
        system_cfg = json.loads(h5.attrs["system_config"])
        data_cfg = json.loads(h5.attrs["generate_config"])
    save_file({"state": state.float().contiguous()}, str(tmp / "initial_state.safetensors"))
    train_cfg = yaml.safe_load(Path(args.config).read_text())
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    except OSError:
        commit = "unknown"
    meta = {
        "name": args.name,
        "description": "closure G of the stochastic 2-D Navier-Stokes system at 32x32, conditioned on the "
                       "coarse vorticity and 16x16 sparse measurements of G (periodic interpolation encoding)",
        "closure": train_cfg["data"]["closure"],
        "resolution": int(train_cfg["data"]["resolution"]),
        "obs_grid": int(data_cfg.get("obs_grid", 16)),
        "how_made": {
            "command": f"stochclosure train --config {Path(args.config).as_posix()}",
            "train_config": train_cfg,
            "data_command": "stochclosure generate --system navier_stokes_2d --config configs/paper/ns2d_data.yaml",
            "data_config": data_cfg,
            "steps": cfg.get("extra", {}).get("step", cfg.get("step")),
            "history_tail": cfg.get("extra", {}).get("history", [])[-3:] if isinstance(cfg.get("extra"), dict) else None,
            "git_commit": commit,
            "versions": library_versions(),
        },
        "initial_state": {"time": t_state, "grid": n_fine, "system": {k: v for k, v in system_cfg.items()
                                                                        if k not in ("closure", "type")},
                          "source": f"test split trajectory {test[0]}, record {args.state_record}"},
        "offline_test": {"seed": 123, "records": 8, "record_every": 50, "obs_grid": 16, "samples": 8,
                         "sample_seed": 0},
    }
    (tmp / "metadata.json").write_text(json.dumps(meta, indent=2, default=str))
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)

    model = load_model(dest)
    data = offline_test_set(args.name)
    spec = meta["offline_test"]
    meta["offline_test"]["errors"] = offline_error(model, data, spec["samples"], spec["sample_seed"])
    (dest / "metadata.json").write_text(json.dumps(meta, indent=2, default=str))
    size = sum(f.stat().st_size for f in dest.iterdir())
    print(json.dumps(meta["offline_test"], indent=2))
    print(f"exported {dest} ({size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
