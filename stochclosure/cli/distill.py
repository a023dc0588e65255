"""``stochclosure distill --config FILE.yaml [--resume]``: distil a trained closure into a consistency model.

The method and its components are in :mod:`stochclosure.training.distill`; this module reads and
checks the YAML file and runs :class:`~stochclosure.training.distill.Distiller` in a locked,
resumable run folder, like ``stochclosure train``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..checkpoint import load_model
from ..config import check_number, check_seed, load_yaml_mapping
from ..runs import check_separate_folders, teacher_run_folder
from ..training.distill import Distiller, make_student
from .schemas import DistillConfig, parse, to_dict
from .train import add_run_args, check_trainer_block, data_block, open_datasets, run_command, run_folder

__all__ = ["load_distill_config", "run_distillation", "run", "add_arguments"]

def load_distill_config(path: str | Path) -> dict[str, Any]:
    """Read and check a distillation YAML file before any work.

    Blocks ``teacher``, ``data``, ``student``, ``trainer``, ``out``, ``seed`` (and ``root``), checked
    against :class:`~stochclosure.cli.schemas.DistillConfig`. ``teacher`` is a checkpoint path;
    ``data`` is the training block of ``stochclosure train``; ``student`` has ``levels`` (strictly
    decreasing diffusion times), ``teacher_sampler`` (ODE sampler spec) and ``steps`` (the distilled
    model's default number of evaluations, at most one per level). Paths (``teacher``,
    ``data.path``, ``out``) follow the one config-path rule (:mod:`stochclosure._io`), and ``out``
    may not be, lie inside or contain the teacher's run folder. Unknown keys and bad values raise
    :class:`ConfigError`; an ``out`` overlapping the teacher raises
    :class:`~stochclosure.errors.OutputError`.
    """
    path = Path(path)
    raw = load_yaml_mapping(path, "a mapping with blocks teacher, data, student, trainer, out")
    cfg = to_dict(parse(DistillConfig, raw, path, "distill"))
    st = cfg["student"] or {}
    if st.get("levels") is not None:
        check_number(st["steps"], "student.steps", integer=True, minimum=1, maximum=len(st["levels"]),
                     fix="one evaluation per level at most")
    check_trainer_block(cfg)
    check_separate_folders(cfg["out"], teacher_run_folder(cfg["teacher"]), "out")
    return cfg


def run_distillation(cfg: dict[str, Any], resume: bool = False, progress: bool = True, *,
                     allow_config_change: bool = False, device: str | None = None) -> Any:
    """Build teacher, student, data and :class:`Distiller` from ``cfg`` and train (see :func:`load_distill_config`).

    ``out`` is checked against the teacher's folder, locked and checked for another run before
    anything is built (:func:`stochclosure.cli.train.run_folder`); teacher, data, student block
    and seed are recorded with the run and compared on resume.
    """
    check_separate_folders(cfg["out"], teacher_run_folder(cfg["teacher"]), "out")
    kw = check_trainer_block(cfg)
    seed = check_seed(cfg.get("seed", 0), "seed")
    if device is not None:
        kw["device"] = device
    with run_folder(cfg["out"], resume):
        train, val = open_datasets(cfg["data"])
        teacher = load_model(cfg["teacher"])
        st = dict(cfg.get("student") or {})
        levels = st.get("levels") or [teacher.sde.T]
        teacher_sampler = st.get("teacher_sampler") or {"type": "dpm_solver_pp_2m", "steps": 6}
        student = make_student(teacher, levels, teacher_sampler, steps=st.get("steps", 1))
        kw.pop("normalise_targets", None)
        kw.setdefault("seed", seed)
        kw.setdefault("progress", progress)
        distiller = Distiller(student, teacher, train, val, checkpoint_dir=cfg["out"], **kw)
        distiller.run_config = {"data": data_block(cfg["data"]), "seed": seed, "teacher": str(cfg["teacher"]),
                                "student": {"steps": st.get("steps", 1)}}
        distiller._allow_flag = "--allow-config-change"
        return distiller.fit(resume=resume, allow_config_change=allow_config_change)


def run(args: argparse.Namespace) -> int:
    """Run ``stochclosure distill`` with the parsed arguments."""
    return run_command(args, load_distill_config, run_distillation, "distilled")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of ``stochclosure distill``."""
    p.add_argument("--config", required=True, help="distillation YAML (blocks teacher, data, student, trainer, out)")
    add_run_args(p)

