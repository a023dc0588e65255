"""Faults: a killed rollout resumes exactly; unwritable or full output folders fail before any work.

SIGKILL during `generate` and `train` is tested in test_generate.py and test_training.py; the
non-finite training stop that keeps the last good checkpoint in test_training.py.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

import stochclosure as sc
from stochclosure import _io
from stochclosure.cli import main
from stochclosure.rollout_cli import load_rollout_config, run_rollout
from stochclosure.rollouts import ClosureAR1, NoiseAR1, ensemble, resumable_ensemble
from stochclosure.systems import LinearRelaxation

sys.path.insert(0, str(Path(__file__).parent))
from test_rollout import exact_closure  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def small():
    system = LinearRelaxation(n=8, forcing_mean=0.3)
    model = exact_closure(system, {"type": "euler_maruyama", "steps": 8})
    v0 = system.initial_state(1, generator=torch.Generator().manual_seed(0))[0]
    return system, model, v0


class _Kill(Exception):
    pass


@pytest.mark.parametrize("kw", [{}, {"resample_every": 3, "between": ClosureAR1(0.9, 0.5), "history": 2},
                                {"between": NoiseAR1(0.8), "init_perturbation": 0.1, "record_every": 4}],
                         ids=["hold", "closure_ar1+history", "noise_ar1+perturbed+sparse_records"])
def test_interrupted_rollout_resumes_to_the_uninterrupted_result(small, tmp_path, kw, monkeypatch):
    system, model, v0 = small
    ref = ensemble(system, model, v0, 23, members=5, seed=3, **kw)
    ckpt = tmp_path / "run.ckpt"
    calls = {"n": 0}
    step = type(system).step

    def dying_step(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 14:  # dies during step 14, after the checkpoint of step 10
            raise _Kill
        return step(self, *a, **k)

    monkeypatch.setattr(type(system), "step", dying_step)
    with pytest.raises(_Kill):
        resumable_ensemble(system, model, v0, 23, 5, seed=3, checkpoint=ckpt, checkpoint_every=5, **kw)
    monkeypatch.setattr(type(system), "step", step)
    meta_step = int(__import__("json").loads(
        __import__("safetensors").safe_open(str(ckpt), "pt").metadata()["stochclosure"])["step"])
    assert meta_step == 10
    counted = {"n": 0}

    def counting_step(self, *a, **k):
        counted["n"] += 1
        return step(self, *a, **k)

    monkeypatch.setattr(type(system), "step", counting_step)
    res = resumable_ensemble(system, model, v0, 23, 5, seed=3, checkpoint=ckpt, checkpoint_every=5, **kw)
    assert counted["n"] == 23 - 10  # nothing redone
    assert torch.equal(res.states, ref.states) and torch.equal(res.steps, ref.steps)  # nothing lost
    assert sorted(res.closures) == sorted(ref.closures)
    assert all(torch.equal(res.closures[s], ref.closures[s]) for s in ref.closures)


def test_resumable_rollout_refuses_another_runs_checkpoint_and_unkeyed_streams(small, tmp_path):
    system, model, v0 = small
    ckpt = tmp_path / "c.safetensors"
    resumable_ensemble(system, model, v0, 4, 3, seed=1, checkpoint=ckpt, checkpoint_every=2)
    with pytest.raises(sc.ConfigError, match="'checkpoint'.*another run"):
        resumable_ensemble(system, model, v0, 4, 3, seed=2, checkpoint=ckpt, checkpoint_every=2)
    with pytest.raises(sc.ConfigError, match="'keyed'"):
        resumable_ensemble(system, model, v0, 4, 3, seed=1, checkpoint=tmp_path / "d", keyed=False)
    (tmp_path / "junk").write_bytes(b"not a checkpoint")
    with pytest.raises(sc.CheckpointError, match="'checkpoint'.*unreadable"):
        resumable_ensemble(system, model, v0, 4, 3, seed=1, checkpoint=tmp_path / "junk")


def _rollout_config(tmp_path: Path, small, n_steps: int = 300, out: str = "ens.safetensors") -> Path:
    system, model, _ = small
    if not (tmp_path / "model").exists():
        model.save(tmp_path / "model")
    cfg = {"model": "model", "system": {"type": "linear_relaxation", "n": 8, "forcing_mean": 0.3},
           "n_steps": n_steps, "members": 8, "seed": 1, "checkpoint_every": 10, "record_every": 2, "out": out}
    path = tmp_path / f"{out}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_sigkill_during_rollout_cli_then_restart_gives_the_uninterrupted_file(tmp_path, small):
    cfg = _rollout_config(tmp_path, small)
    out, ckpt = tmp_path / "ens.safetensors", tmp_path / "ens.safetensors.ckpt"
    exe = Path(sys.executable).parent / "stochclosure"
    cmd = [str(exe), "rollout", "--config", str(cfg), "--no-progress", "--threads", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not ckpt.exists() and proc.poll() is None:
            time.sleep(0.01)
        time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert ckpt.exists() and not out.exists(), "killed too late to test resuming"
    killed_at = __import__("json").loads(__import__("safetensors").safe_open(str(ckpt), "pt").metadata()
                                         ["stochclosure"])["step"]
    assert 0 < killed_at < 300
    done = subprocess.run(cmd, capture_output=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr.decode()
    assert out.exists() and not ckpt.exists()
    ref = run_rollout(load_rollout_config(_rollout_config(tmp_path, small, out="ref.safetensors")), progress=False)
    a, b = load_file(str(out)), load_file(str(ref))
    assert a.keys() == b.keys()
    for k in ("states", "times", "steps"):
        assert torch.equal(a[k], b[k]), k
    assert a["states"].shape == (151, 8, 1, 8, 8)
    # the finished output is kept as it is; another configuration is refused
    assert main(["rollout", "--config", str(cfg), "--no-progress"]) == 0
    text = yaml.safe_load(cfg.read_text())
    text["seed"] = 2
    cfg.write_text(yaml.safe_dump(text))
    assert main(["rollout", "--config", str(cfg), "--no-progress"]) == 2


# -- unwritable or full output folders: a clear error before any work --------------------------------------------
def _unwritable(monkeypatch, code: int) -> list[str]:
    """Make every write probe fail with ``code``; returns the list of probed folders."""
    probed: list[str] = []

    def probe(directory):
        probed.append(str(directory))
        raise OSError(code, os.strerror(code), str(directory))

    monkeypatch.setattr(_io, "_write_probe", probe)
    return probed


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions; the read-only case is "
                                               "simulated in the tests below")
def test_read_only_folder_with_real_permissions(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(sc.OutputError, match="'out'.*cannot be written"):
            _io.preflight_output(ro / "x.h5", "out")
    finally:
        ro.chmod(0o700)


def test_preflight_probe_reports_read_only_and_full_disks(tmp_path, monkeypatch):
    assert _io.preflight_output(tmp_path / "sub" / "x.h5") == tmp_path / "sub"  # the real probe works
    assert [p.name for p in (tmp_path / "sub").iterdir()] == []  # and leaves nothing behind
    _unwritable(monkeypatch, errno.EROFS)
    with pytest.raises(sc.OutputError, match="'--out'.*read-only file system"):
        _io.preflight_output(tmp_path / "x.h5", "--out")
    monkeypatch.undo()
    _unwritable(monkeypatch, errno.ENOSPC)
    with pytest.raises(sc.OutputError, match="'--out'.*full disk"):
        _io.preflight_output(tmp_path / "x.h5", "--out")
    monkeypatch.undo()
    monkeypatch.setattr(_io.shutil, "disk_usage", lambda p: type("U", (), {"free": 1024})())
    with pytest.raises(sc.OutputError, match=r"'--out'.*at least 16 MiB free.*0\.0 MiB free"):
        _io.preflight_output(tmp_path / "x.h5", "--out")


@pytest.mark.parametrize("code,match", [(errno.EROFS, "read-only"), (errno.ENOSPC, "full disk")])
def test_generate_train_and_rollout_fail_before_work_on_bad_output(tmp_path, monkeypatch, capsys, small, code,
                                                                   match):
    from stochclosure.data import TensorClosureDataset
    from stochclosure.train import Trainer

    cfg = _rollout_config(tmp_path, small)
    gen_cfg = tmp_path / "gen.yaml"
    gen_cfg.write_text(yaml.safe_dump({"system": {"K": 8}, "trajectories": 1, "batch_size": 1, "records": 1}))
    built = {"n": 0}
    real = LinearRelaxation.__init__

    def counting_init(self, *a, **k):  # "work" = building the system; none must happen after a failed probe
        built["n"] += 1
        real(self, *a, **k)

    _unwritable(monkeypatch, code)
    assert main(["generate", "--system", "lorenz96", "--config", str(gen_cfg), "--out",
                 str(tmp_path / "d" / "x.h5"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "OutputError" in err and match in err and "'--out'" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "d" / "x.h5.parts").exists()
    monkeypatch.setattr(LinearRelaxation, "__init__", counting_init)
    assert main(["rollout", "--config", str(cfg), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "OutputError" in err and match in err and built["n"] == 0
    pytest.importorskip("stochclosure_neuralop")
    model = sc.ClosureModel("ve_exp", {"type": "fno", "encoder": "field", "width": 4, "modes": 2, "layers": 1,
                                       "embed_dim": 4}, {"type": "truncated_karras_em"})
    data = TensorClosureDataset(torch.randn(4, 1, 8, 8), fields=torch.randn(4, 1, 8, 8))
    tr = Trainer(model, data, batch_size=2, max_steps=2, progress=False, checkpoint_dir=tmp_path / "run")
    with pytest.raises(sc.OutputError, match=f"'checkpoint_dir'.*{match}"):
        tr.fit()
    assert tr.step == 0
