"""``stochclosure finetune --config``: a smoke run through the command table, its outputs and its refusals."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from stochclosure.checkpoint import load_model, save_model
from stochclosure.cli import COMMANDS, main

pytest.importorskip("stochclosure_neuralop")

SYSTEM = {"type": "navier_stokes_2d_subgrid", "n": 16, "n_fine": 32, "nu": 1e-3, "dt": 1e-3, "sigma": 0.0}


def make_inputs(folder):
    from stochclosure.closures import ADM, GaussianClosure, ResidualLaw
    from stochclosure.registry import resolve

    system = resolve("system", SYSTEM)
    torch.manual_seed(0)
    backbone = {"type": "fno", "sde": "vp", "encoder": {"type": "field"}, "width": 4, "modes": 4, "layers": 1,
                "embed_dim": 4}
    law = ResidualLaw(ADM.from_system(system, order=2), GaussianClosure(backbone, noise="white"))
    save_model(law, folder / "law.safetensors")
    g = torch.Generator().manual_seed(1)
    w = [system.initial_state(3, generator=g)]
    for _ in range(4 * 2):
        w.append(system.step(w[-1], 5.0 * torch.randn(w[-1].shape, generator=g)))
    torch.save({"w": torch.stack(w[::2], 1), "record_every": 2}, folder / "w.pt")  # (3, 5, 1, 16, 16)
    cfg = {"law": "law.safetensors", "system": SYSTEM, "data": {"path": "w.pt", "val_trajectories": 1},
           "finetune": {"steps": 2, "members": 2, "windows_per_step": 2, "records": 2, "lr": 1e-3, "val_every": 1},
           "out": "ft"}
    path = folder / "finetune.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path, cfg


def test_finetune_command_writes_a_loadable_law_history_and_figure(tmp_path, capsys):
    assert "finetune" in COMMANDS
    path, _ = make_inputs(tmp_path)
    assert main(["finetune", "--config", str(path), "--no-progress"]) == 0
    out = tmp_path / "ft"
    history = json.loads((out / "history.json").read_text())
    assert [h["step"] for h in history] == [0, 1, 2]
    assert all(h["val_crps"] > 0 and h["val_spread_skill"] > 0 for h in history)
    assert (out / "finetune.png").stat().st_size > 1000
    law = load_model(out / "law.safetensors")
    assert type(law).__name__ == "ResidualLaw"
    first = {k: v.clone() for k, v in law.state_dict().items()}
    assert main(["finetune", "--config", str(path), "--no-progress"]) == 0  # a finished run: returned as it is
    again = load_model(out / "law.safetensors").state_dict()
    assert all(torch.equal(first[k], again[k]) for k in first)


@pytest.mark.parametrize("change, named", [
    ({"finetune": {"members": 1}}, "finetune.members"),
    ({"finetune": {"stepz": 2}}, "finetune"),
    ({"data": {"path": "w.pt", "record_every": 0}}, "data.record_every"),
    ({"dt": -1.0}, "dt"),
    ({"oot": "x"}, "oot"),
])
def test_bad_configs_exit_2_with_one_line(tmp_path, capsys, change, named):
    path, cfg = make_inputs(tmp_path)
    path.write_text(yaml.safe_dump({**cfg, **change}))
    assert main(["finetune", "--config", str(path), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "ConfigError" in err[0] and named in err[0], err


def test_too_few_states_for_the_records_is_refused(tmp_path, capsys):
    path, cfg = make_inputs(tmp_path)
    path.write_text(yaml.safe_dump({**cfg, "finetune": {**cfg["finetune"], "records": 5}}))
    assert main(["finetune", "--config", str(path), "--no-progress"]) == 2
    assert "finetune.records" in capsys.readouterr().err


def test_the_example_config_passes_the_schema():
    from pathlib import Path

    from stochclosure.cli.finetune import load_finetune_config

    cfg = load_finetune_config(Path(__file__).resolve().parents[1] / "configs" / "closures" / "finetune.yaml")
    assert cfg["finetune"]["records"] == 3 and cfg["data"]["record_every"] == 2


def test_generate_style_hdf5_trajectories_are_split_by_their_labels(tmp_path):
    import h5py
    import numpy as np

    from stochclosure.cli.finetune import read_trajectories, trajectory_windows

    w = np.random.default_rng(0).standard_normal((4, 5, 1, 16, 16)).astype(np.float32)
    with h5py.File(tmp_path / "d.h5", "w") as f:
        f["res_16/state"] = w
        f["split"] = np.array([0, 1, 0, 2], dtype=np.int8)
    data = {"path": str(tmp_path / "d.h5"), "record_every": 3, "resolution": None, "val_trajectories": 1}
    train, val, every = read_trajectories(data, 16)
    assert every == 3 and torch.equal(train, torch.from_numpy(w[[0, 2]])) and torch.equal(val, torch.from_numpy(w[[1]]))
    win = trajectory_windows(train, records=2, record_every=every)
    assert tuple(win.truth.shape) == (2 * 3, 2, 1, 16, 16)
    assert torch.equal(win.truth[1, 0], train[1, 1])  # window (start 0, trajectory 1): its first record
