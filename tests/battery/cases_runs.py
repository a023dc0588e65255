"""Rows of the bad-input battery: run folders of train and distill, their values, the demo's sizes, seeds, devices."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Any

import torch
import yaml

from stochclosure import errors as E

from .base import BadInput, Context, cli_train

C = BadInput
_NO_DEVICE = "cuda:99"  # missing on a CPU-only torch and on any machine with fewer than 100 GPUs


def _trainer(c: Context, folder: Path | None = None, **kw: Any) -> Any:
    from stochclosure.data import TensorClosureDataset
    from stochclosure.model import ClosureModel
    from stochclosure.training.trainer import Trainer

    g = torch.Generator().manual_seed(0)
    data = TensorClosureDataset(torch.randn(4, 1, 16, 16, generator=g), fields=torch.randn(4, 1, 16, 16, generator=g))
    model = ClosureModel("vp", c.fno, {"type": "euler_maruyama", "steps": 2})
    return Trainer(model, data, checkpoint_dir=folder, **{"batch_size": 2, "max_steps": 1, "progress": False, **kw})


def _api_run(c: Context, name: str) -> Path:
    """A finished one-step run folder of :func:`_trainer` (made once)."""
    folder = c.folder / name
    if not (folder / "latest").exists():
        _trainer(c, folder).fit()
    return folder


def _latest_elsewhere(c: Context, name: str) -> Path:
    """A run folder whose ``latest`` names another run's checkpoint."""
    other = _api_run(c, f"{name}-other")
    folder = _api_run(c, name)
    (folder / "latest").write_text(f"../{other.name}/step-00000001")
    return folder


def _quiet_main(argv: list[str]) -> int:
    from stochclosure.cli import main

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return main(argv)


def _cli_run(c: Context, name: str, **changes: Any) -> list[str]:
    """``train`` arguments whose ``out`` already holds a finished run (trained once, quietly)."""
    argv = cli_train(c, name, out=name, **changes)
    if not (c.folder / name / "latest").exists():
        assert _quiet_main(cli_train(c, f"{name}-first", out=name)) == 0
    return argv


def _student(c: Context, levels: Any) -> Any:
    from stochclosure.model import ClosureModel
    from stochclosure.training.distill import make_student

    teacher = ClosureModel("vp", c.fno, {"type": "dpm_solver_pp_2m", "steps": 2})
    return make_student(teacher, levels, {"type": "dpm_solver_pp_2m", "steps": 2})


def _distill_config(c: Context, name: str, **changes: Any) -> Path:
    (c.folder / "teacher_run" / "step-00000001").mkdir(parents=True, exist_ok=True)
    cfg = {"teacher": "teacher_run/step-00000001", "data": {"path": str(c.folder / "ns.h5")}, "out": f"{name}-out",
           "student": {"levels": [1.0, 0.3]}, **changes}
    return c.path(f"{name}.yaml", yaml.safe_dump(cfg))


def _load_distill(path: Path) -> Any:
    from stochclosure.cli.distill import load_distill_config

    return load_distill_config(path)


def _demo(**kw: Any) -> Any:
    from stochclosure.cli.demo import run_demo

    return run_demo(kw.pop("out"), progress=False, **kw)


CASES: list[BadInput] = [
    # -- Trainer values, checked before any work ---------------------------------------------------------------------
    C("runs_min_lr_ratio_negative", "Trainer", "min_lr_ratio=-0.5 (a negative learning rate at the end)",
      E.ConfigError, "'min_lr_ratio'", lambda c: _trainer(c, min_lr_ratio=-0.5)),
    C("runs_min_lr_ratio_above_one", "Trainer", "min_lr_ratio=1.5", E.ConfigError, "'min_lr_ratio'",
      lambda c: _trainer(c, min_lr_ratio=1.5)),
    C("runs_gamma_zero", "Trainer", "gamma=0 (step schedule)", E.ConfigError, "'gamma'", lambda c: _trainer(c, gamma=0.0)),
    C("runs_gamma_negative", "Trainer", "gamma=-0.5 (negative learning rates)", E.ConfigError, "'gamma'",
      lambda c: _trainer(c, gamma=-0.5)),
    C("runs_lr_zero", "Trainer", "lr=0", E.ConfigError, "'lr'", lambda c: _trainer(c, lr=0.0)),
    C("runs_warmup_negative", "Trainer", "warmup_steps=-3", E.ConfigError, "'warmup_steps'",
      lambda c: _trainer(c, warmup_steps=-3)),
    C("runs_warmup_beyond_run", "Trainer", "warmup_steps=50 with max_steps=10", E.ConfigError, "'warmup_steps'",
      lambda c: _trainer(c, warmup_steps=50, max_steps=10)),
    C("runs_seed_negative", "Trainer", "seed=-1 (torch would alias it to 2**64-1)", E.ConfigError, "'seed'",
      lambda c: _trainer(c, seed=-1)),
    C("runs_seed_too_large", "Trainer", "seed=2**64", E.ConfigError, "'seed'", lambda c: _trainer(c, seed=2**64)),
    C("runs_device_missing", "Trainer", f"device={_NO_DEVICE!r}", E.DeviceError, "'device'",
      lambda c: _trainer(c, device=_NO_DEVICE)),
    # -- run folders -------------------------------------------------------------------------------------------------
    C("runs_fit_over_a_run", "Trainer.fit", "a fresh run into a folder holding a finished run", E.OutputError,
      "'checkpoint_dir'", lambda c: _trainer(c, _api_run(c, "api-run")).fit()),
    C("runs_resume_changed_lr", "Trainer.fit(resume=True)", "lr changed since the run started", E.ConfigError,
      "trainer.lr", lambda c: _trainer(c, _api_run(c, "api-run-lr"), lr=5e-3).fit(resume=True)),
    C("runs_latest_elsewhere", "Trainer.fit(resume=True)", "`latest` naming another run's checkpoint",
      E.CheckpointError, "latest", lambda c: _trainer(c, _latest_elsewhere(c, "api-latest")).fit(resume=True)),
    # -- distillation ------------------------------------------------------------------------------------------------
    C("runs_levels_text", "make_student", "levels=['a', 0.3]", E.ConfigError, "'levels'",
      lambda c: _student(c, ["a", 0.3])),
    C("runs_levels_increasing", "make_student", "levels=[0.3, 1.0] (must decrease)", E.ConfigError, "'levels'",
      lambda c: _student(c, [0.3, 1.0])),
    C("runs_distill_out_is_teacher", "load_distill_config", "out: the teacher's run folder", E.OutputError, "'out'",
      lambda c: _load_distill(_distill_config(c, "d-same", out="teacher_run"))),
    C("runs_distill_path_escape", "load_distill_config", "data.path: ../../../x.h5 (leaves the config's folder)",
      E.ConfigError, "data.path",
      lambda c: _load_distill(_distill_config(c, "d-escape", data={"path": "../../../x.h5"}))),
    # -- demo --------------------------------------------------------------------------------------------------------
    C("runs_demo_horizon_zero", "run_demo", "horizon=0", E.ConfigError, "'horizon'",
      lambda c: _demo(out=c.folder / "demo-h", horizon=0.0)),
    C("runs_demo_one_member", "run_demo", "members=1 (no spread)", E.ConfigError, "'members'",
      lambda c: _demo(out=c.folder / "demo-m", members=1)),
    # -- command line ------------------------------------------------------------------------------------------------
    C("cli_train_over_a_run", "stochclosure train", "no --resume, out holding a finished run", E.OutputError, "'out'",
      lambda c: _cli_run(c, "cli-run"), cli=True),
    C("cli_train_resume_changed", "stochclosure train --resume", "trainer.lr and seed changed", E.ConfigError,
      "trainer.lr", lambda c: _cli_run(c, "cli-run-changed", seed=9,
                                       trainer={"batch_size": 2, "max_steps": 1, "lr": 5e-3}) + ["--resume"],
      cli=True),
    C("cli_train_seed_too_large", "stochclosure train", "seed: 2**64", E.ConfigError, "'seed'",
      lambda c: cli_train(c, "cs1", seed=2**64), cli=True),
    C("cli_train_min_lr_ratio", "stochclosure train", "trainer.min_lr_ratio: -1", E.ConfigError,
      "trainer.min_lr_ratio", lambda c: cli_train(c, "cs2", trainer={"min_lr_ratio": -1.0}), cli=True),
    C("cli_train_gamma_negative", "stochclosure train", "trainer.gamma: -0.5", E.ConfigError, "trainer.gamma",
      lambda c: cli_train(c, "cs3", trainer={"gamma": -0.5}), cli=True),
    C("cli_train_device_missing", "stochclosure train", f"--device {_NO_DEVICE}", E.DeviceError, "'--device'",
      lambda c: cli_train(c, "cs4") + ["--device", _NO_DEVICE], cli=True),
    C("cli_distill_levels_text", "stochclosure distill", "student.levels: [one, 0.3]", E.ConfigError,
      "student.levels", lambda c: ["distill", "--config", str(_distill_config(c, "cd1", student={
          "levels": ["one", 0.3]}))], cli=True),
    C("cli_distill_out_is_teacher", "stochclosure distill", "out: the teacher's run folder", E.OutputError, "'out'",
      lambda c: ["distill", "--config", str(_distill_config(c, "cd2", out="teacher_run"))], cli=True),
    C("cli_distill_out_inside_teacher", "stochclosure distill", "out: a folder inside the teacher's run folder",
      E.OutputError, "'out'",
      lambda c: ["distill", "--config", str(_distill_config(c, "cd3", out="teacher_run/student"))], cli=True),
    C("cli_distill_path_escape", "stochclosure distill", "data.path: ../../../x.h5", E.ConfigError, "data.path",
      lambda c: ["distill", "--config", str(_distill_config(c, "cd4", data={"path": "../../../x.h5"}))], cli=True),
    C("cli_demo_horizon_zero", "stochclosure demo", "--horizon 0", E.ConfigError, "'--horizon'",
      lambda c: ["demo", "--horizon", "0", "--out", str(c.folder / "cdemo")], cli=True),
    C("cli_demo_members_zero", "stochclosure demo", "--members 0", E.ConfigError, "'--members'",
      lambda c: ["demo", "--members", "0", "--out", str(c.folder / "cdemo")], cli=True),
    C("cli_rollout_seed_negative", "stochclosure rollout", "seed: -1", E.ConfigError, "'seed'",
      lambda c: ["rollout", "--config", str(c.rollout_config("crs", seed=-1)), "--no-progress"], cli=True),
]
