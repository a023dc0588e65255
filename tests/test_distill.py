"""Consistency distillation: the 1-2 evaluation sampler/score pair, checkpoints, resume, CLI."""

from __future__ import annotations

import pytest
import torch

import stochclosure as sc
from stochclosure.checkpoint import load_model
from stochclosure.data.base import TensorClosureDataset
from stochclosure.samplers import ConsistencySampler
from stochclosure.scores.analytic import GaussianScore
from stochclosure.scores.consistency import ConsistencyScore
from stochclosure.testing import check_sampler, check_score_operator
from stochclosure.training.distill import Distiller, consistency_targets, make_student

MEAN, STD, GRID = 0.5, 0.7, (8, 8)
LEVELS = [1.0, 0.3]
TEACHER_ODE = {"type": "dpm_solver_pp_2m", "steps": 24}


def _teacher() -> sc.ClosureModel:
    return sc.ClosureModel("vp", GaussianScore("vp", mean=MEAN, std=STD), TEACHER_ODE)


def _student(teacher: sc.ClosureModel) -> sc.ClosureModel:
    """A small FNO student (the exact teacher has no weights to copy)."""
    torch.manual_seed(0)
    fno = sc.resolve("score_operator", {"type": "fno", "sde": "vp", "channels": 1, "encoder": None, "width": 8,
                                        "modes": 3, "layers": 1, "embed_dim": 8})
    score = ConsistencyScore(fno, teacher_sampler=TEACHER_ODE, levels=LEVELS)
    return sc.ClosureModel("vp", score, {"type": "consistency", "times": LEVELS[:1]})


def _data(n: int = 512) -> TensorClosureDataset:
    gen = torch.Generator().manual_seed(3)
    return TensorClosureDataset(MEAN + STD * torch.randn(n, 1, *GRID, generator=gen))


def test_registered_pair_passes_contracts():
    assert sc.registry.get("sampler", "consistency") is ConsistencySampler
    assert sc.registry.get("score_operator", "consistency") is ConsistencyScore
    check_sampler(ConsistencySampler.example())
    check_score_operator(ConsistencyScore.example())
    s = ConsistencySampler(times=[1.0, 0.3])
    assert s.nfe() == 2 and s.time_grid(sc.resolve("sde", "vp"), 2)[:2].tolist() == [1.0, 0.3]


def test_consistency_targets_are_the_teacher_ode_end_points():
    """For a Gaussian law the probability-flow map from t is affine: x0 = m + (s / std_t)(x - alpha m)."""
    teacher = _teacher()
    x = torch.randn(4000, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    for t in LEVELS:
        a, sig = (float(v) for v in teacher.sde.marginal_coefficients(torch.tensor([t], dtype=torch.float64)))
        std_t = (a**2 * STD**2 + sig**2) ** 0.5
        x_t = a * MEAN + std_t * x
        y = consistency_targets(teacher, x_t, t, None, TEACHER_ODE)
        err = (y - (MEAN + STD * x)).abs()
        assert float(err.max()) < 0.04 and float(err.mean()) < 0.01, t  # DPM-Solver++(2M) error at 24 steps


@pytest.mark.slow
def test_distilled_gaussian_one_and_two_steps_reproduce_the_law(tmp_path):
    """Distil the exact Gaussian score (VP): 1 and 2 evaluations give mean within 0.03 and std within 5 %."""
    teacher = _teacher()
    student = _student(teacher)
    dist = Distiller(student, teacher, _data(), batch_size=64, max_steps=300, lr=1e-2, schedule="cosine",
                     ema_decay=0.9, checkpoint_dir=tmp_path / "run", checkpoint_every=100, val_every=100,
                     progress=False, seed=0)
    res = dist.fit()
    assert res.steps == 300 and res.checkpoint is not None
    loaded = load_model(res.checkpoint)  # like any other checkpoint
    assert isinstance(loaded.score, ConsistencyScore) and loaded.sampler.spec()["type"] == "consistency"
    for steps, sampler in ((1, None), (2, {"type": "consistency", "times": LEVELS})):
        u = loaded.sample(None, n=2000, grid=GRID, sampler=sampler, generator=torch.Generator().manual_seed(steps))
        m, s = float(u.mean()), float(u.std())
        assert abs(m - MEAN) < 0.03, (steps, m)
        assert abs(s / STD - 1) < 0.05, (steps, s)
        pix = u.reshape(2000, -1)
        assert float(pix.mean(0).sub(MEAN).abs().max()) < 0.1  # every pixel, not only on average
        assert float((pix.std(0) / STD - 1).abs().max()) < 0.12
    # the same model with the teacher's posterior mean would have no spread at all:
    mean_only = teacher.sample(None, n=500, grid=GRID, sampler={"type": "consistency"},
                               generator=torch.Generator().manual_seed(0))
    assert float(mean_only.std()) < 0.05


def test_distillation_resumes_exactly(tmp_path):
    teacher = _teacher()

    def run(out, steps, resume=False):
        student = _student(teacher)
        return Distiller(student, teacher, _data(128), batch_size=32, max_steps=steps, lr=1e-2, ema_decay=0.9,
                         schedule="constant",
                         checkpoint_dir=out, checkpoint_every=4, val_every=4, progress=False, seed=1
                         ).fit(resume=resume)

    full = run(tmp_path / "a", 8)
    run(tmp_path / "b", 4)
    resumed = run(tmp_path / "b", 8, resume=True)
    assert resumed.resumed_from == 4
    a, b = load_model(full.checkpoint), load_model(resumed.checkpoint)
    for (k, va), (_, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(va, vb), k


def test_make_student_copies_the_teacher_and_validates():
    torch.manual_seed(0)
    fno = {"type": "fno", "sde": "vp", "channels": 1, "encoder": {"type": "field", "channels": 1}, "width": 8,
           "modes": 3, "layers": 1, "embed_dim": 8}
    teacher = sc.ClosureModel("vp", fno, {"type": "dpm_solver_pp_2m", "steps": 4}, target_mean=torch.tensor([0.2]),
                              target_std=torch.tensor([3.0]))
    student = make_student(teacher, [1.0, 0.4], {"type": "dpm_solver_pp_2m", "steps": 4}, steps=2)
    x = torch.randn(2, 1, 8, 8)
    t = torch.full((2,), 0.5)
    cond = sc.Conditioning(fields=torch.randn(2, 1, 8, 8))
    with torch.no_grad():
        assert torch.equal(student.score(x, t, cond), teacher.score(x, t, cond))
    assert torch.equal(student.target_std, teacher.target_std)
    assert student.sampler.nfe() == 2
    with pytest.raises(sc.ConfigError, match="levels"):
        make_student(teacher, [0.3, 1.0], {"type": "dpm_solver_pp_2m"})
    with pytest.raises(sc.ConfigError, match="teacher_sampler"):
        consistency_targets(teacher, x, 0.5, cond, {"type": "euler_maruyama", "steps": 3})


def test_distill_config_parse_errors_are_config_errors(tmp_path):
    from stochclosure.cli.distill import load_distill_config
    from stochclosure.errors import ConfigError

    bad = tmp_path / "bad.yaml"
    bad.write_text("teacher: [unclosed\n")
    with pytest.raises(ConfigError, match="--config.*valid YAML"):
        load_distill_config(bad)
    tagged = tmp_path / "tagged.yaml"
    tagged.write_text("teacher: !!python/object/apply:os.system ['true']\n")
    with pytest.raises(ConfigError, match="no !!python tags"):
        load_distill_config(tagged)
