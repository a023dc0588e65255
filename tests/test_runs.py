"""Run folders of ``train`` / ``distill``: no overwrite, one writer, a resume that checks its configuration."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

import stochclosure as sc
from stochclosure.cli import main
from stochclosure.data import TensorClosureDataset
from stochclosure.runs import HISTORY_FILE, check_separate_folders, latest_checkpoint, read_history
from stochclosure.training.trainer import Trainer

pytest.importorskip("stochclosure_neuralop")
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
FNO = {"type": "fno", "sde": "vp", "width": 4, "modes": 4, "layers": 1, "embed_dim": 4, "encoder": "field"}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from stochclosure.data.generate import generate

    cfg = {"system": {"n": 16, "closure": "H"}, "trajectories": 2, "batch_size": 2, "records": 2,
           "resolutions": [16], "closures": ["H"], "obs_grid": 4, "split": {"train": 0.5, "val": 0.5}}
    return generate("navier_stokes_2d", cfg, tmp_path_factory.mktemp("runs-data") / "ns.h5", progress=False)


def write_config(folder: Path, data: Path, name: str = "train", out: str = "run", seed: int = 3,
                 **trainer) -> Path:
    cfg = {"data": {"path": str(data), "closure": "H", "resolution": 16, "obs": False},
           "model": {"sde": "vp", "sampler": {"type": "euler_maruyama", "steps": 2}, "score": FNO},
           "trainer": {"batch_size": 2, "max_steps": 2, "checkpoint_every": 1, "val_every": 1, "lr": 1e-3, **trainer},
           "out": out, "seed": seed}
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def tiny_trainer(folder: Path | None, **kw) -> Trainer:
    g = torch.Generator().manual_seed(0)
    data = TensorClosureDataset(torch.randn(4, 1, 8, 8, generator=g), fields=torch.randn(4, 1, 8, 8, generator=g))
    torch.manual_seed(0)
    model = sc.ClosureModel("vp", FNO, {"type": "euler_maruyama", "steps": 2})
    opts = {"batch_size": 2, "max_steps": 2, "checkpoint_every": 1, "val_every": 1, "progress": False, **kw}
    return Trainer(model, data, checkpoint_dir=folder, **opts)


# -- no run overwrites another ---------------------------------------------------------------------------------------
def test_train_refuses_a_folder_holding_a_run_and_leaves_it_untouched(tmp_path, dataset, capsys):
    cfg = write_config(tmp_path, dataset)
    assert main(["train", "--config", str(cfg), "--no-progress"]) == 0
    capsys.readouterr()
    before = snapshot(tmp_path / "run")
    assert "latest" in before
    assert main(["train", "--config", str(cfg), "--no-progress"]) == 2
    line = one_error_line(capsys)
    assert "OutputError" in line and "'out'" in line and "holds a run" in line and "--resume" in line
    assert snapshot(tmp_path / "run") == before
    with pytest.raises(sc.OutputError, match=r"'checkpoint_dir'.*holds a run.*fit\(resume=True\)"):
        tiny_trainer(tmp_path / "run").fit()
    assert snapshot(tmp_path / "run") == before


def test_distill_out_may_not_be_inside_or_contain_the_teacher(tmp_path, capsys):
    from stochclosure.cli.distill import load_distill_config

    (tmp_path / "work" / "teacher" / "step-00000004").mkdir(parents=True)
    base = {"teacher": "teacher/step-00000004", "data": {"path": "ns.h5"}}
    for out, relation in (("teacher", "is it"), ("teacher/student", "lies inside it"), (".", "contains it")):
        path = tmp_path / "work" / "distill.yaml"
        path.write_text(yaml.safe_dump({**base, "out": out}))
        with pytest.raises(sc.OutputError, match=rf"'out'.*teacher's run folder.*{relation}"):
            load_distill_config(path)
    assert main(["distill", "--config", str(path)]) == 2
    assert "OutputError" in one_error_line(capsys)
    # a single-file teacher protects itself; a sibling folder is fine
    check_separate_folders(tmp_path / "student", tmp_path / "teacher.safetensors")
    with pytest.raises(sc.OutputError, match="contains"):
        check_separate_folders(tmp_path, tmp_path / "teacher.safetensors")


def test_distill_paths_follow_the_config_path_rule_of_train(tmp_path):
    from stochclosure.cli.distill import load_distill_config

    (tmp_path / "a" / "b").mkdir(parents=True)
    path = tmp_path / "a" / "b" / "distill.yaml"
    good = {"teacher": "teacher", "data": {"path": "ns.h5"}, "out": "student"}
    for key, change in (("data.path", {"data": {"path": "../../../etc/passwd"}}), ("teacher", {"teacher": "../t"}),
                        ("out", {"out": "../../s"})):
        path.write_text(yaml.safe_dump({**good, **change}))
        with pytest.raises(sc.ConfigError, match=rf"'{key}': expected a path inside"):
            load_distill_config(path)
    path.write_text(yaml.safe_dump({**good, "data": {"path": "../data/ns.h5"}, "root": ".."}))
    cfg = load_distill_config(path)
    assert cfg["data"]["path"] == str((tmp_path / "a" / "data" / "ns.h5").resolve()) and "root" not in cfg


# -- one writer per run folder ---------------------------------------------------------------------------------------
def _hold_lock(folder: Path) -> subprocess.Popen:
    code = ("import time; from stochclosure._io import exclusive_lock\n"
            f"with exclusive_lock({str(folder)!r}, 'out'):\n    print('held', flush=True); time.sleep(60)\n")
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=ENV)
    assert p.stdout.readline().strip() == "held"
    return p


def test_two_train_resume_processes_on_one_folder_the_second_exits_2_at_once(tmp_path, dataset):
    cfg = write_config(tmp_path, dataset, max_steps=10**6, checkpoint_every=10**6, val_every=10**6)
    cmd = [sys.executable, "-m", "stochclosure", "train", "--config", str(cfg), "--resume", "--no-progress"]
    first = subprocess.Popen(cmd, cwd=tmp_path, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    lock = tmp_path / "run.lock"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and first.poll() is None:
            if lock.exists() and lock.read_text().strip() == str(first.pid):
                break
            time.sleep(0.05)
        assert first.poll() is None, first.communicate()[1].decode()[-2000:]
        assert lock.read_text().strip() == str(first.pid), "the first process never took the lock"
        second = subprocess.run(cmd, cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=120)
        assert first.poll() is None, "the first process must still hold the folder"
    finally:
        first.kill()
        first.wait()
    lines = [ln for ln in second.stderr.splitlines() if ln.strip()]
    assert second.returncode == 2 and len(lines) == 1, second.stderr
    assert "OutputError" in lines[0] and "'out'" in lines[0] and f"pid {first.pid}" in lines[0]
    assert "trained" not in second.stdout
    assert not (tmp_path / "run" / "latest").exists()  # the second wrote nothing


def test_distill_and_the_python_trainer_take_the_same_lock(tmp_path, capsys):
    from stochclosure.cli.distill import run_distillation

    holder = _hold_lock(tmp_path / "student")
    try:
        cfg = {"teacher": str(tmp_path / "teacher.safetensors"), "data": {"path": str(tmp_path / "none.h5")},
               "out": str(tmp_path / "student")}
        with pytest.raises(sc.OutputError, match=rf"'out'.*locked by another running process \(pid {holder.pid}\)"):
            run_distillation(cfg, progress=False)  # before the (missing) data or teacher are opened
        with pytest.raises(sc.OutputError, match=rf"'checkpoint_dir'.*\(pid {holder.pid}\)"):
            tiny_trainer(tmp_path / "student").fit()
    finally:
        holder.kill()
        holder.wait()
    assert tiny_trainer(tmp_path / "student").fit().steps == 2  # the lock dies with its holder


# -- resume checks what it finds -------------------------------------------------------------------------------------
def test_resume_refuses_a_changed_configuration_listing_each_key(tmp_path, dataset, capsys):
    assert main(["train", "--config", str(write_config(tmp_path, dataset)), "--no-progress"]) == 0
    capsys.readouterr()
    changed = write_config(tmp_path, dataset, name="changed", seed=4, lr=2e-3, batch_size=1, max_steps=3)
    text = yaml.safe_load(changed.read_text())
    text["data"]["val_split"] = None
    changed.write_text(yaml.safe_dump(text))
    before = snapshot(tmp_path / "run")
    assert main(["train", "--config", str(changed), "--resume", "--no-progress"]) == 2
    line = one_error_line(capsys)
    assert "ConfigError" in line and "--allow-config-change" in line
    for change in ("trainer.lr: 0.001 -> 0.002", "trainer.batch_size: 2 -> 1", "trainer.seed: 3 -> 4", "seed: 3 -> 4",
                   "data.val_split: 'val' -> None"):
        assert change in line, change
    assert "max_steps" not in line  # a resume may extend the run
    assert snapshot(tmp_path / "run") == before

    assert main(["train", "--config", str(changed), "--resume", "--allow-config-change", "--no-progress"]) == 0
    assert "resumed from step 2" in capsys.readouterr().out
    (entry,) = read_history(tmp_path / "run")
    assert entry["accepted_explicitly"] and entry["step"] == 2 and entry["checkpoint"] == "step-00000002"
    assert entry["changes"]["trainer.lr"] == [0.001, 0.002] and entry["changes"]["trainer.max_steps"] == [2, 3]
    stored = json.loads((tmp_path / "run" / "step-00000003" / "config.json").read_text())["trainer"]
    assert stored["config"]["lr"] == 0.002 and stored["run"]["seed"] == 4  # the new configuration goes on

    # extending the run is no change to accept, but it is recorded
    longer = write_config(tmp_path, dataset, name="longer", seed=4, lr=2e-3, batch_size=1, max_steps=4)
    text["trainer"]["max_steps"] = 4
    longer.write_text(yaml.safe_dump(text))
    assert main(["train", "--config", str(longer), "--resume", "--no-progress"]) == 0
    last = read_history(tmp_path / "run")[-1]
    assert not last["accepted_explicitly"] and last["changes"] == {"trainer.max_steps": [3, 4]}
    assert (tmp_path / "run" / HISTORY_FILE).read_text().count("\n") == 2


def test_resume_through_the_python_api_compares_too(tmp_path):
    tiny_trainer(tmp_path / "run").fit()
    with pytest.raises(sc.ConfigError, match=r"'trainer.gamma'.*trainer.gamma: 0.5 -> 0.25.*allow_config_change=True"):
        tiny_trainer(tmp_path / "run", gamma=0.25, max_steps=3).fit(resume=True)
    res = tiny_trainer(tmp_path / "run", gamma=0.25, max_steps=3).fit(resume=True, allow_config_change=True)
    assert res.resumed_from == 2 and res.steps == 3
    assert read_history(tmp_path / "run")[0]["changes"]["trainer.gamma"] == [0.5, 0.25]


def test_latest_must_name_a_checkpoint_inside_its_run_folder(tmp_path):
    tiny_trainer(tmp_path / "a").fit()
    tiny_trainer(tmp_path / "b").fit()
    b = tmp_path / "b"
    assert latest_checkpoint(b) == b / "step-00000002"
    for text in ("../a/step-00000002", str(tmp_path / "a" / "step-00000002"), "step-00000009", ".", ""):
        (b / "latest").write_text(text)
        with pytest.raises(sc.CheckpointError, match="latest"):
            latest_checkpoint(b)
    (b / "latest").write_text("../a/step-00000002")
    with pytest.raises(sc.CheckpointError, match=r"latest.*step-XXXXXXXX"):
        tiny_trainer(b, max_steps=3).fit(resume=True)
    # a checkpoint that is a symbolic link to another run's
    (b / "step-00000003").symlink_to(tmp_path / "a" / "step-00000002")
    (b / "latest").write_text("step-00000003")
    with pytest.raises(sc.CheckpointError, match=r"a checkpoint inside .*leads to"):
        latest_checkpoint(b)
    (b / "step-00000003").unlink()
    (b / "latest").unlink()
    with pytest.raises(sc.CheckpointError, match=r"'latest' file naming the newest.*step-00000002"):
        tiny_trainer(b, max_steps=3).fit(resume=True)  # checkpoints without a pointer: never started over


# -- values checked before any work ----------------------------------------------------------------------------------
class Untouchable(TensorClosureDataset):
    def __getitem__(self, i):
        raise AssertionError("the data were read before the options were checked")


@pytest.mark.parametrize("options, name", [
    ({"min_lr_ratio": -0.5}, "min_lr_ratio"), ({"min_lr_ratio": 1.5}, "min_lr_ratio"),
    ({"gamma": 0.0}, "gamma"), ({"gamma": -0.5}, "gamma"), ({"gamma": 2.0}, "gamma"),
    ({"lr": 0.0}, "lr"), ({"lr": -1e-3}, "lr"), ({"lr": float("nan")}, "lr"), ({"lr": "1e-3"}, "lr"),
    ({"warmup_steps": -1}, "warmup_steps"), ({"warmup_steps": 2.5}, "warmup_steps"),
    ({"warmup_steps": 20, "max_steps": 10}, "warmup_steps"),
    ({"weight_decay": -1.0}, "weight_decay"), ({"grad_clip": -1.0}, "grad_clip"), ({"val_batches": 0}, "val_batches"),
    ({"seed": -1}, "seed"), ({"seed": 2**64}, "seed"), ({"seed": 1.0}, "seed"), ({"seed": True}, "seed"),
    ({"t_range": (0.5, 0.1)}, "t_range"), ({"t_range": (0.1, 2.0)}, "t_range"), ({"t_range": 0.1}, "t_range"),
    ({"weighting": "sigma3"}, "weighting"), ({"ema_decay": -0.1}, "ema_decay"),
])
def test_trainer_refuses_bad_values_before_any_work(options, name):
    model = sc.ClosureModel("vp", FNO, {"type": "euler_maruyama", "steps": 2})
    with pytest.raises(sc.ConfigError, match=rf"'{name}': expected"):
        Trainer(model, Untouchable(torch.zeros(4, 1, 8, 8)), progress=False, **options)


def test_a_missing_device_is_a_device_error_naming_it(tmp_path, dataset, capsys):
    model = sc.ClosureModel("vp", FNO, {"type": "euler_maruyama", "steps": 2})
    missing = ["cuda:99", "tpu"] + ([] if torch.cuda.is_available() else ["cuda"])
    for device in missing:
        with pytest.raises(sc.DeviceError, match="'device': expected"):
            Trainer(model, Untouchable(torch.zeros(4, 1, 8, 8)), device=device)
    cfg = write_config(tmp_path, dataset)
    assert main(["train", "--config", str(cfg), "--device", "cuda:99"]) == 2
    line = one_error_line(capsys)
    assert "DeviceError" in line and "'--device'" in line and "fix:" in line
    cfg = write_config(tmp_path, dataset, name="dev", device="cuda:99")
    assert main(["train", "--config", str(cfg)]) == 2
    assert "'trainer.device'" in one_error_line(capsys)
    assert not (tmp_path / "run").exists()


def test_one_seed_rule_and_derived_seeds_stay_valid():
    from stochclosure.config import check_seed, derive_seed

    assert check_seed(0) == 0 and check_seed(2**64 - 1) == 2**64 - 1
    for bad in (-1, 2**64, 1.5, "3", None, False):
        with pytest.raises(sc.ConfigError, match=r"'seed': expected an integer seed in \[0, 2\*\*64\)"):
            check_seed(bad)
    assert derive_seed(5, 1) == 6 and derive_seed(5, 2, scale=1_000_003) == 5_000_017  # unchanged where valid
    assert derive_seed(2**64 - 1, 1) == 0
    res = tiny_trainer(None, seed=2**64 - 1, max_steps=1).fit()  # the largest seed trains (data order, validation)
    assert res.steps == 1


def test_training_config_values_are_checked_before_the_data_are_opened(tmp_path, capsys):
    missing = tmp_path / "never-opened.h5"
    for change, name in ((("trainer", "min_lr_ratio", -1.0), "trainer.min_lr_ratio"),
                         (("trainer", "gamma", 0.0), "trainer.gamma"), (("", "seed", 2**64), "seed"),
                         (("trainer", "seed", -3), "trainer.seed")):
        cfg = yaml.safe_load(write_config(tmp_path, missing).read_text())
        block, key, value = change
        (cfg[block] if block else cfg)[key] = value
        (tmp_path / "bad.yaml").write_text(yaml.safe_dump(cfg))
        assert main(["train", "--config", str(tmp_path / "bad.yaml")]) == 2
        line = one_error_line(capsys)
        assert "ConfigError" in line and f"'{name}': expected" in line, line


def test_rollout_seeds_follow_the_seed_rule(tmp_path):
    from stochclosure.cli.rollout import load_rollout_config

    for change, name in (({"seed": -1}, "'seed'"), ({"initial": {"seed": 2**64}}, "'initial.seed'")):
        path = tmp_path / "r.yaml"
        path.write_text(yaml.safe_dump({"model": "none", "system": "linear_relaxation", "out": "e.safetensors",
                                        **change}))
        with pytest.raises(sc.ConfigError, match=rf"{name}: expected an integer seed"):
            load_rollout_config(path)


def test_demo_refuses_non_positive_sizes_before_any_work(tmp_path, capsys):
    from stochclosure.cli.demo import run_demo

    for kw, name in (({"horizon": 0.0}, "horizon"), ({"horizon": float("inf")}, "horizon"),
                     ({"members": 1}, "members"), ({"resample_every": 0}, "resample_every"),
                     ({"sampler_steps": 0}, "sampler_steps"), ({"record_every": -2}, "record_every"),
                     ({"seed": -1}, "seed")):
        with pytest.raises(sc.ConfigError, match=rf"'{name}': expected"):
            run_demo(tmp_path / "out", progress=False, **kw)
    assert not (tmp_path / "out").exists()
    with pytest.raises(sc.ConfigError, match=r"'horizon': expected at least one solver step"):
        run_demo(tmp_path / "out", horizon=1e-9, progress=False)
    for flags, name in ((["--horizon", "0"], "--horizon"), (["--members", "0"], "--members"),
                        (["--resample-every", "-1"], "--resample-every"), (["--seed", "-1"], "--seed"),
                        (["--threads", "-2"], "--threads")):
        assert main(["demo", "--out", str(tmp_path / "cli"), *flags]) == 2
        line = one_error_line(capsys)
        assert "ConfigError" in line and f"'{name}': expected" in line, line
    assert not (tmp_path / "cli").exists()


@pytest.mark.parametrize("levels", [["a", 0.3], [0.3, 1.0], [1.0, 1.0], [], "1.0", [2.0, 0.5], [1.0, 0.0],
                                    [float("nan")], [True]])
def test_distillation_levels_are_checked(levels):
    from stochclosure.training.distill import check_levels, make_student

    with pytest.raises(sc.ConfigError, match="'levels': expected"):
        check_levels(levels, horizon=1.0)
    teacher = sc.ClosureModel("vp", FNO, {"type": "dpm_solver_pp_2m", "steps": 2})
    with pytest.raises(sc.ConfigError, match="'levels': expected"):
        make_student(teacher, levels, {"type": "dpm_solver_pp_2m", "steps": 2})


def test_distill_config_values_are_checked_before_any_work(tmp_path, capsys):
    from stochclosure.cli.distill import load_distill_config

    base = {"teacher": "teacher", "data": {"path": "ns.h5"}, "out": "student"}
    for change, name in (({"student": {"levels": ["one", 0.3]}}, "student.levels"),
                         ({"student": {"levels": [0.3, 1.0]}}, "student.levels"),
                         ({"student": {"levels": [1.0, 0.3], "steps": 3}}, "student.steps"),
                         ({"trainer": {"gamma": -1.0}}, "trainer.gamma"), ({"seed": -2}, "seed")):
        path = tmp_path / "d.yaml"
        path.write_text(yaml.safe_dump({**base, **change}))
        with pytest.raises(sc.ConfigError, match=rf"'{name}': expected"):
            load_distill_config(path)
    path.write_text(yaml.safe_dump({**base, "student": {"levels": ["one", 0.3]}}))
    assert main(["distill", "--config", str(path)]) == 2
    assert "'student.levels'" in one_error_line(capsys)


# -- distillation noise does not depend on the batch split ------------------------------------------------------------
def test_distillation_noise_of_each_item_is_independent_of_the_batch_split(monkeypatch):
    """One process (batch of 6) and two ranks (items 0..2 and 3..5) see the same x_t for every item."""
    import stochclosure.training.distill as distill

    seen: list[torch.Tensor] = []

    def record(teacher, x_t, t, cond, sampler):
        seen.append(x_t.clone())
        return torch.zeros_like(x_t)

    monkeypatch.setattr(distill, "consistency_targets", record)
    teacher = sc.ClosureModel("vp", FNO, {"type": "dpm_solver_pp_2m", "steps": 2})
    student = distill.make_student(teacher, [1.0, 0.5, 0.2], {"type": "dpm_solver_pp_2m", "steps": 2})
    data = TensorClosureDataset(torch.randn(6, 1, 8, 8), fields=torch.randn(6, 1, 8, 8))
    d = distill.Distiller(student, teacher, data, batch_size=6, max_steps=1, progress=False)
    target, cond = d._batch(data, range(6), d._collate)
    for step in range(3):  # several steps: the generators must stay in step too
        gen_full, gen_0, gen_1 = (torch.Generator().manual_seed(100 + step) for _ in range(3))
        seen.clear()
        d._loss(target, cond, gen_full)
        d._loss(target[:3], cond.index(slice(0, 3)), gen_0, shard=(0, 3, 6))
        d._loss(target[3:], cond.index(slice(3, 6)), gen_1, shard=(3, 6, 6))
        full, first, second = seen
        from stochclosure.testing import assert_close

        assert_close(torch.cat([first, second]), full, rtol=0, what="x_t of items 0..5")  # the same arithmetic
        assert torch.equal(gen_full.get_state(), gen_0.get_state()) and torch.equal(gen_0.get_state(),
                                                                                    gen_1.get_state())
