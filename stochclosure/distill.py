"""Few-evaluation closures: distil a trained closure model into a consistency model.

**Method.** Consistency distillation (Song et al. 2023) trains a student ``f(x_t, t)`` to return
the end point ``x_0`` of the teacher's probability-flow ODE trajectory through ``x_t``. Song et
al. bootstrap the target from the student's own (EMA) value one ODE step later; here the teacher
solves the *whole* remaining interval instead (``teacher_steps`` DPM-Solver++(2M) steps from ``t``
to ``eps``, then Tweedie's denoising step), so each target is the exact consistency value up to
the teacher's solver error and no bootstrapping bias accumulates. At ``t = T`` this is the
knowledge distillation of Luhman & Luhman (2021); at smaller ``t`` it gives the re-noising steps
of multistep consistency sampling and the warm starts of :class:`~stochclosure.rollouts.WarmStart`.
Each training step draws a batch ``(U, y)``, one level ``t`` from ``levels``, ``x_t = alpha_t
normalise(U) + sigma_t z``, the teacher's target ``x_0(x_t)`` (no gradients) and minimises
``|f(x_t, t, y) - x_0(x_t)|^2`` (normalised units). Because the teacher's ODE map is a
deterministic function of ``x_t``, the regression's minimiser is the map itself, so the student's
one-step law is the teacher's ODE law, not its mean.

**Components.** :class:`ConsistencyScore` (registered score operator ``consistency``) wraps the
student network (``backbone``, e.g. ``fno``, initialised with the teacher's weights) and exposes
``f`` through the score interface: ``score = (alpha_t f - x) / sigma_t^2``, so Tweedie's formula
returns ``f``. :class:`~stochclosure.samplers.consistency.ConsistencySampler` (registered sampler
``consistency``) samples with 1-2 evaluations. A distilled model is a plain
:class:`~stochclosure.ClosureModel` checkpoint: :func:`~stochclosure.checkpoint.load_model`
rebuilds it like any other.

**Training.** :class:`Distiller` is the :class:`~stochclosure.train.Trainer` with this loss, so
it has the same schedule, EMA, validation, checkpoints and exact resume after a kill;
``stochclosure distill --config FILE.yaml [--resume]`` runs it from a YAML file.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor

from ._types import Conditioning, check_tensor
from .cli import command
from .config import check_number, check_seed
from .errors import ConfigError, format_error
from .model import ClosureModel
from .registry import resolve
from .scores.base import AbstractScoreOperator, bind_score
from .sdes.base import expand_as_batch
from .train import Trainer

__all__ = ["ConsistencyScore", "Distiller", "consistency_targets", "make_student", "check_levels",
           "load_distill_config", "run_distillation"]


def check_levels(levels: Any, horizon: float | None = None, argument: str = "levels") -> list[float]:
    """Check distillation levels: a non-empty list of finite, strictly decreasing diffusion times ``> 0``.

    Args:
        levels: The levels as given.
        horizon: The SDE's ``T``, the largest level allowed (``None``: not checked).
        argument: Name for the message (``"student.levels"`` in a config).

    Returns:
        The levels as floats.

    Raises:
        ConfigError: not a list of numbers (text, booleans, NaN included), empty, not strictly
            decreasing, or outside ``(0, T]``.

    Example:
        >>> check_levels([1.0, 0.3])
        [1.0, 0.3]
    """
    expected = "a non-empty list of strictly decreasing diffusion times in (0, T]"
    if isinstance(levels, (str, bytes)) or not isinstance(levels, Sequence) or not levels:
        raise ConfigError(format_error(argument, expected, f"{type(levels).__name__} {levels!r}",
                                       "e.g. [1.0, 0.3]: the first is the consistency sampler's start"))
    for v in levels:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ConfigError(format_error(argument, expected, f"{list(levels)!r} (holds {type(v).__name__} {v!r})",
                                           "write numbers, e.g. [1.0, 0.3]"))
    out = [float(v) for v in levels]
    if any(b >= a for a, b in zip(out, out[1:])) or out[-1] <= 0:
        raise ConfigError(format_error(argument, expected, repr(out), "sort them from the largest time down, all > 0"))
    if horizon is not None and out[0] > horizon:
        raise ConfigError(format_error(argument, f"diffusion times <= T={horizon} (the SDE's horizon)", repr(out)))
    return out


class ConsistencyScore(AbstractScoreOperator):
    """The score interface of a consistency-distilled student (registered as ``consistency``).

    ``forward`` is the backbone's score; the name marks the operator as distilled (its Tweedie
    denoiser ``(x + sigma_t^2 score) / alpha_t`` is the consistency function, not the posterior
    mean) and the configuration records how it was made.

    Args:
        backbone: The student network's score operator (name, spec or instance), usually the
            teacher's architecture so that it starts from the teacher's weights.
        teacher_sampler: Spec of the teacher ODE solver used for the targets (provenance).
        levels: Diffusion times the student was trained at (provenance; the consistency sampler
            should evaluate at these times).
    """

    conditional: ClassVar[bool] = True

    def __init__(self, backbone: Any, teacher_sampler: Any = None, levels: list[float] | None = None) -> None:
        super().__init__()
        self.backbone = resolve("score_operator", backbone)
        self.teacher_sampler = teacher_sampler
        self.levels = None if levels is None else [float(v) for v in levels]
        self.sde = getattr(self.backbone, "sde", None)
        self.spatial_dims = tuple(getattr(self.backbone, "spatial_dims", (2,)))  # type: ignore[misc]
        self.resolution_invariant = bool(getattr(self.backbone, "resolution_invariant", False))  # type: ignore[misc]

    def forward(self, x: Tensor, t: Tensor, cond: Conditioning | None = None) -> Tensor:
        return self.backbone(x, t, cond)

    @classmethod
    def example(cls) -> ConsistencyScore:
        return cls({"type": "gaussian", "sde": "vp", "std": 1.0})

    def example_inputs(self, batch: int, generator: torch.Generator | None = None
                       ) -> tuple[Tensor, Tensor, Conditioning | None]:
        return self.backbone.example_inputs(batch, generator)


def consistency_targets(teacher: ClosureModel, x_t: Tensor, t: float, cond: Conditioning | None,
                        sampler: Any) -> Tensor:
    """The teacher's probability-flow ODE end points ``x_0(x_t)`` (normalised units, no gradients).

    Args:
        teacher: The trained closure model.
        x_t: ``(B, C, *grid)`` points at diffusion time ``t``.
        t: The common diffusion time of the batch.
        cond: Condition with batch ``B`` (or ``None``).
        sampler: A deterministic grid sampler spec (e.g. ``{"type": "dpm_solver_pp_2m", "steps": 6}``);
            its ``t_start`` is set to ``t``.

    Returns:
        ``(B, C, *grid)``.
    """
    base = resolve("sampler", sampler)
    if getattr(base, "stochastic", True):
        raise ConfigError(format_error("teacher_sampler", "a deterministic (ODE) sampler, e.g. dpm_solver_pp_2m",
                                       f"{type(base).__name__} (stochastic)",
                                       "consistency targets are the end points of the probability-flow ODE"))
    ode = resolve("sampler", {**base.spec(), "t_start": float(t)})
    with torch.no_grad():
        score_fn = bind_score(teacher.score, cond, validate=False)
        return ode.sample(score_fn, teacher.sde, tuple(x_t.shape), x_init=x_t, dtype=x_t.dtype, device=x_t.device)


def make_student(teacher: ClosureModel, levels: list[float], teacher_sampler: Any, steps: int = 1) -> ClosureModel:
    """A student :class:`ClosureModel`: the teacher's network (copied weights) behind :class:`ConsistencyScore`.

    Args:
        teacher: The trained model.
        levels: Training diffusion times, decreasing, the first one the sampler's start.
        teacher_sampler: Spec of the teacher's ODE solver.
        steps: Default number of consistency steps (evaluation times ``levels[:steps]``).
    """
    levels = check_levels(levels, teacher.sde.T)
    check_number(steps, "steps", integer=True, minimum=1, maximum=len(levels), fix="one evaluation per level at most")
    spec = resolve("sampler", teacher_sampler).spec()
    score = ConsistencyScore(teacher.score.spec(), teacher_sampler=spec, levels=levels)
    score.backbone.load_state_dict(teacher.score.state_dict())
    return ClosureModel(teacher.sde.spec(), score, {"type": "consistency", "times": levels[:steps]},
                        channels=teacher.channels, target_mean=teacher.target_mean.clone(),
                        target_std=teacher.target_std.clone())


class Distiller(Trainer):
    """:class:`~stochclosure.train.Trainer` whose loss is the consistency-distillation regression.

    Args:
        student: From :func:`make_student` (its score is trained; normalisation is the teacher's).
        teacher: The trained closure model (frozen).
        train_data: Closure dataset (the teacher's training data).
        val_data: Validation dataset or ``None``.
        levels: Diffusion times to train at, drawn uniformly per step (default: the student's).
        teacher_sampler: Teacher ODE solver spec (default: the student's record of it).
        **kwargs: Any :class:`~stochclosure.train.Trainer` option (``normalise_targets`` is forced off).
    """

    def __init__(self, student: ClosureModel, teacher: ClosureModel, train_data: Any, val_data: Any = None, *,
                 levels: list[float] | None = None, teacher_sampler: Any = None, **kwargs: Any) -> None:
        kwargs["normalise_targets"] = False
        kwargs.setdefault("t_range", (student.sde.eps, student.sde.T))
        super().__init__(student, train_data, val_data, **kwargs)
        self.teacher = teacher.to(self.device).eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        score = student.score
        self.levels = check_levels(levels if levels is not None else getattr(score, "levels", None), student.sde.T)
        self.teacher_sampler = teacher_sampler if teacher_sampler is not None else getattr(score, "teacher_sampler",
                                                                                          None)
        if self.teacher_sampler is None:
            raise ConfigError(format_error("teacher_sampler", "an ODE sampler spec", "None"))
        base = resolve("sampler", self.teacher_sampler)
        if getattr(base, "stochastic", True):
            raise ConfigError(format_error("teacher_sampler", "a deterministic (ODE) sampler, e.g. dpm_solver_pp_2m",
                                           f"{type(base).__name__} (stochastic)",
                                           "consistency targets are the end points of the probability-flow ODE"))
        self.config.update({"levels": self.levels, "teacher_sampler": base.spec()})

    def _loss(self, target: Tensor, cond: Conditioning, gen: torch.Generator, net: Any = None,
              shard: tuple[int, int, int] | None = None) -> Tensor:
        """Consistency loss of a batch; ``shard = (lo, hi, total)`` is this rank's slice of the global batch.

        Randomness per step: one level index, then the noise of all ``total`` items of the global
        batch (item ``k`` gets row ``k``), of which this rank keeps rows ``lo:hi``. The generator
        therefore advances identically on every rank and in one process, and each item's noise
        does not depend on how the batch is split.
        """
        check_tensor("target", target, finite=True)
        x0 = self.model.normalise(target)
        c = None if cond.is_empty() else cond
        i = int(torch.randint(len(self.levels), (1,), generator=gen))
        t = self.levels[i]
        lo, hi, total = shard if shard is not None else (0, x0.shape[0], x0.shape[0])
        z = torch.randn((total, *x0.shape[1:]), generator=gen, dtype=x0.dtype).to(x0.device)[lo:hi]
        sde = self.model.sde
        tb = torch.full((x0.shape[0],), t, dtype=x0.dtype, device=x0.device)
        alpha, sigma = sde.marginal_coefficients(tb)
        x_t = expand_as_batch(alpha, x0) * x0 + expand_as_batch(sigma, x0) * z
        y = consistency_targets(self.teacher, x_t, t, c, self.teacher_sampler)
        score = (self.model.score if net is None else net)(x_t, tb, c)
        f = sde.denoise(x_t, tb, score)
        return ((f - y) ** 2).mean()


# -- the command line ------------------------------------------------------------------------------------
_BLOCKS = {"teacher", "data", "student", "trainer", "out", "seed", "root"}
_STUDENT_KEYS = {"levels", "teacher_sampler", "steps"}


def load_distill_config(path: str | Path) -> dict[str, Any]:
    """Read and check a distillation YAML file before any work.

    Blocks ``teacher``, ``data``, ``student``, ``trainer``, ``out``, ``seed`` (and ``root``).
    ``teacher`` is a checkpoint path; ``data`` is the training block of ``stochclosure train``;
    ``student`` has ``levels`` (strictly decreasing diffusion times), ``teacher_sampler`` (ODE
    sampler spec) and ``steps`` (the distilled model's default number of evaluations). Paths
    (``teacher``, ``data.path``, ``out``) follow the config-path rule of ``stochclosure train``
    (:mod:`stochclosure._io`), and ``out`` may not be, lie inside or contain the teacher's run
    folder. Unknown keys and bad values raise :class:`ConfigError`; an ``out`` overlapping the
    teacher raises :class:`~stochclosure.errors.OutputError`.
    """
    from .config import load_yaml_mapping
    from .runs import check_separate_folders, teacher_run_folder
    from .train_cli import _DATA_KEYS, _check_types, check_blocks, check_trainer_block, resolve_paths

    path = Path(path)
    cfg = load_yaml_mapping(path, "a mapping with blocks teacher, data, student, trainer, out")
    check_blocks(cfg, (("", _BLOCKS), ("data", _DATA_KEYS), ("student", _STUDENT_KEYS)), "distill")
    for key in ("teacher", "data", "out"):
        if key not in cfg:
            raise ConfigError(format_error(key, f"a {key!r} entry in the config", "nothing"))
    if not isinstance(cfg["data"], dict) or "path" not in cfg["data"]:
        raise ConfigError(format_error("data.path", "a data block with a path", repr(cfg["data"])))
    _check_types({k: v for k, v in cfg.items() if k in ("data", "seed")})
    st = cfg.get("student") or {}
    if "levels" in st:
        check_levels(st["levels"], argument="student.levels")
    if "steps" in st:
        n = len(st["levels"]) if "levels" in st else None
        check_number(st["steps"], "student.steps", integer=True, minimum=1, maximum=n,
                     fix="one evaluation per level at most")
    if "teacher_sampler" in st and not isinstance(st["teacher_sampler"], (str, dict)):
        raise ConfigError(format_error("student.teacher_sampler", "a sampler name or {type: ...}",
                                       repr(st["teacher_sampler"])))
    check_trainer_block(cfg)
    resolve_paths(cfg, path, ("teacher", "data.path", "out"))
    check_separate_folders(cfg["out"], teacher_run_folder(cfg["teacher"]), "out")
    return cfg


def run_distillation(cfg: dict[str, Any], resume: bool = False, progress: bool = True, *,
                     allow_config_change: bool = False, device: str | None = None) -> Any:
    """Build teacher, student, data and :class:`Distiller` from ``cfg`` and train (see :func:`load_distill_config`).

    ``out`` is checked against the teacher's folder, locked and checked for another run before
    anything is built (:func:`stochclosure.train_cli.run_folder`); teacher, data, student block
    and seed are recorded with the run and compared on resume.
    """
    from .checkpoint import load_model
    from .runs import check_separate_folders, teacher_run_folder
    from .train_cli import check_trainer_block, data_block, open_datasets, run_folder

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


def _run(args: argparse.Namespace) -> int:
    from .train_cli import run_command

    return run_command(args, load_distill_config, run_distillation, "distilled")


def _add_args(p: argparse.ArgumentParser) -> None:
    from .train_cli import add_run_args

    p.add_argument("--config", required=True, help="distillation YAML (blocks teacher, data, student, trainer, out)")
    add_run_args(p)


_run.add_args = _add_args  # type: ignore[attr-defined]
command("distill", "distil a trained closure model into a 1-2 evaluation consistency model (resumable)")(_run)
