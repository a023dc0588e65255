"""``stochclosure train --config FILE.yaml [--resume]`` on a small generated HDF5 dataset."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

import stochclosure as sc
from stochclosure.checkpoint import load_model
from stochclosure.cli import main

pytest.importorskip("stochclosure_neuralop")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from stochclosure.data.generate import generate

    out = tmp_path_factory.mktemp("data") / "ns.h5"
    cfg = {"system": {"n": 32, "closure": "H"}, "trajectories": 4, "batch_size": 2, "spinup_steps": 2,
           "record_every": 1, "records": 3, "resolutions": [16], "closures": ["H"], "obs_grid": 8,
           "split": {"train": 0.5, "val": 0.25, "test": 0.25}}
    generate("navier_stokes_2d", cfg, out, progress=False)
    return out


def write_config(tmp_path, data, **trainer):
    cfg = {
        "data": {"path": str(data), "closure": "H", "resolution": 16, "val_split": "val"},
        "model": {"sde": "ve_exp", "sampler": {"type": "truncated_karras_em"},
                  "score": {"type": "fno", "width": 8, "modes": 4, "layers": 2, "embed_dim": 16,
                            "encoder": {"type": "composite", "encoders": ["field", "sparse_interp"]}}},
        "trainer": {"batch_size": 4, "max_steps": 12, "checkpoint_every": 6, "val_every": 6, **trainer},
        "out": "run",
        "seed": 3,
    }
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_train_then_resume_and_load(tmp_path, dataset, capsys):
    cfg = write_config(tmp_path, dataset)
    assert main(["train", "--config", str(cfg), "--no-progress", "--json"]) == 0
    out = capsys.readouterr().out
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["steps"] == 12 and summary["val_loss"] is not None
    assert summary["checkpoint"].endswith("run/step-00000012")
    model = load_model(summary["checkpoint"])
    assert model.score.encoder.out_channels == 2
    ds = __import__("stochclosure.data.hdf5", fromlist=["x"]).ClosureH5Dataset(dataset, split="test", resolution=16)
    target, cond = ds.collate([ds[0], ds[1]])
    u = model.sample(cond, n=3, generator=torch.Generator().manual_seed(0))
    assert u.shape == (3, 2, *target.shape[1:]) and bool(torch.isfinite(u).all())

    # a longer run resumes from step 12 instead of starting over
    cfg = write_config(tmp_path, dataset, max_steps=18)
    assert main(["train", "--config", str(cfg), "--resume", "--no-progress"]) == 0
    assert "resumed from step 12" in capsys.readouterr().out


def test_config_errors_are_one_line_and_name_the_key(tmp_path, dataset, capsys):
    cfg = write_config(tmp_path, dataset)
    text = yaml.safe_load(cfg.read_text())
    text["data"]["resolutoin"] = 16
    cfg.write_text(yaml.safe_dump(text))
    assert main(["train", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "ConfigError" in err and "data.resolutoin" in err and "Traceback" not in err
    with pytest.raises(sc.ConfigError, match="trainer.max_step"):
        from stochclosure.cli.train import load_train_config, run_training

        text["data"].pop("resolutoin")
        text["trainer"]["max_step"] = 3
        cfg.write_text(yaml.safe_dump(text))
        run_training(load_train_config(cfg), progress=False)
    assert main(["train", "--config", str(tmp_path / "nope.yaml")]) == 2


def test_distill_cli_runs_resumes_and_loads(tmp_path, dataset, capsys):
    cfg = yaml.safe_load(write_config(tmp_path, dataset).read_text())
    cfg["model"] = {"sde": "vp", "sampler": {"type": "dpm_solver_pp_2m", "steps": 4},
                    "score": {"type": "fno", "sde": "vp", "width": 8, "modes": 4, "layers": 2, "embed_dim": 16,
                              "encoder": "field"}}
    cfg["trainer"]["max_steps"] = 6
    (tmp_path / "teacher.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["train", "--config", str(tmp_path / "teacher.yaml"), "--no-progress", "--json"]) == 0
    teacher = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["checkpoint"]
    dcfg = {"teacher": teacher,
            "data": {"path": str(dataset), "closure": "H", "resolution": 16, "obs": False, "val_split": "val"},
            "student": {"levels": [1.0, 0.3], "steps": 1, "teacher_sampler": {"type": "dpm_solver_pp_2m", "steps": 3}},
            "trainer": {"batch_size": 4, "max_steps": 4, "checkpoint_every": 2, "val_every": 2, "val_batches": 1},
            "out": "student", "seed": 0}
    (tmp_path / "distill.yaml").write_text(yaml.safe_dump(dcfg))
    assert main(["distill", "--config", str(tmp_path / "distill.yaml"), "--no-progress", "--json"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("distilled 4 steps")
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["steps"] == 4 and summary["checkpoint"].endswith("student/step-00000004")
    student = load_model(summary["checkpoint"])
    ds = __import__("stochclosure.data.hdf5", fromlist=["x"]).ClosureH5Dataset(dataset, split="test", resolution=16,
                                                                               obs=False)
    _, cond = ds.collate([ds[0]])
    u = student.sample(cond, n=2, generator=torch.Generator().manual_seed(0))
    assert u.shape == (2, 1, 1, 16, 16) and bool(torch.isfinite(u).all())
    # a longer run resumes from step 4
    dcfg["trainer"]["max_steps"] = 6
    (tmp_path / "distill.yaml").write_text(yaml.safe_dump(dcfg))
    assert main(["distill", "--config", str(tmp_path / "distill.yaml"), "--resume", "--no-progress"]) == 0
    assert "resumed from step 4" in capsys.readouterr().out
