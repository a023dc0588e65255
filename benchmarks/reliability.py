"""Reliability report: every bad input of the battery and the fault-injection runs.

    python benchmarks/reliability.py     # writes benchmarks/results/reliability.md (about a minute)

Part 1 runs every row of :data:`battery.CASES` (`tests/battery/`) (the table the test suite
runs too) and records the error each got. Part 2 injects faults into real processes: SIGKILL
during ``generate``, ``train`` and ``rollout`` then a restart compared with an uninterrupted run,
a diverging training run, unwritable and full output folders, and crafted files carrying pickle
payloads.
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
EXE = str(Path(sys.executable).parent / "stochclosure")
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
sys.path.insert(0, str(ROOT / "tests"))


_WORK = ["\0"]  # the scratch folder, written as $TMP in the report


def _cell(text: str, width: int = 230) -> str:
    text = " ".join(str(text).replace(_WORK[0], "$TMP").split()).replace("|", "\\|")
    return text if len(text) <= width else text[: width - 3] + "..."


def run_battery(folder: Path) -> tuple[list[str], int, int]:
    from battery import CASES, Context, run_case

    ctx = Context(folder)
    lines = ["| # | case | entry point | input | expected | got | exit | message |", "|---|---|---|---|---|---|---|---|"]
    passed = 0
    for i, case in enumerate(CASES, 1):
        out = run_case(case, ctx)
        passed += out.ok
        got = out.got if out.ok else f"**{out.got} (FAIL)**"
        code = "" if out.exit_code is None else str(out.exit_code)
        lines.append(f"| {i} | `{case.name}` | `{case.entry}` | {_cell(case.input, 80)} | {case.error.__name__} | "
                     f"{got} | {code} | {_cell(out.message)} |")
    assert not ctx.marker.exists(), "a crafted file ran code"
    return lines, passed, len(CASES)


# -- fault injection -----------------------------------------------------------------------------------------------
def _kill_when(cmd: list[str], ready: Callable[[], bool], cwd: Path, timeout: float = 120) -> tuple[bool, float]:
    """Start ``cmd``, SIGKILL it once ``ready()``; returns (was still running, seconds)."""
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=cwd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while time.monotonic() - t0 < timeout and not ready() and proc.poll() is None:
        time.sleep(0.01)
    running = proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return running, time.monotonic() - t0


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, timeout=300)
    if done.returncode:
        raise RuntimeError(done.stderr.decode()[-2000:])
    return done


def _h5_contents(path: Path) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    with h5py.File(path, "r") as f:
        f.visit(lambda n: out.__setitem__(n, f[n][()]) if isinstance(f[n], h5py.Dataset) else None)
    return out


def fault_generate(d: Path) -> tuple[str, str]:
    from stochclosure.data.generate import load_config

    cfg = load_config(ROOT / "configs" / "ns2d_tiny.yaml")
    cfg.update(trajectories=8, batch_size=1, spinup_steps=300, records=3)
    (d / "g.yaml").write_text(yaml.safe_dump(cfg))
    parts = d / "g.h5.parts"
    cmd = [EXE, "generate", "--system", "navier_stokes_2d", "--config", "g.yaml", "--no-progress", "--threads", "1"]
    running, secs = _kill_when(cmd + ["--out", "g.h5"], lambda: len(list(parts.glob("batch_*.h5"))) >= 3, d)
    done_parts = len(list(parts.glob("batch_*.h5")))
    _run(cmd + ["--out", "g.h5"], d)
    _run(cmd + ["--out", "ref.h5"], d)
    a, b = _h5_contents(d / "g.h5"), _h5_contents(d / "ref.h5")
    same = a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    ok = running and same and not parts.exists()
    return ("restart completed; file identical to an uninterrupted run" if ok else "MISMATCH",
            f"killed after {secs:.1f} s with {done_parts}/8 trajectory batches on disk; restart reused them; "
            f"{len(a)} datasets compared bit for bit")


def fault_train(d: Path, data: Path) -> tuple[str, str]:
    from safetensors.torch import load_file

    def cfg(out: str) -> str:
        text = {"data": {"path": str(data), "closure": "H", "resolution": 16, "val_split": None},
                "model": {"sde": "ve_exp", "sampler": {"type": "truncated_karras_em"},
                          "score": {"type": "fno", "width": 8, "modes": 4, "layers": 2, "embed_dim": 16,
                                    "encoder": "field"}},
                "trainer": {"batch_size": 4, "max_steps": 400, "checkpoint_every": 20, "val_every": 100},
                "out": out, "seed": 3}
        (d / f"{out}.yaml").write_text(yaml.safe_dump(text))
        return f"{out}.yaml"

    latest = d / "run" / "latest"
    cmd = [EXE, "train", "--no-progress", "--config"]
    running, secs = _kill_when(cmd + [cfg("run")], lambda: latest.exists(), d)
    at = latest.read_text() if latest.exists() else "none"
    _run(cmd + [cfg("run"), "--resume"], d)
    _run(cmd + [cfg("ref")], d)
    a = load_file(str(d / "run" / "step-00000400" / "model.safetensors"))
    b = load_file(str(d / "ref" / "step-00000400" / "model.safetensors"))
    # each tensor's difference as a fraction of its magnitude (float rounding is relative)
    worst = max(float((a[k] - b[k]).abs().max()) / max(float(a[k].abs().max()), float(b[k].abs().max()), 1e-30)
                for k in a if a[k].numel())
    ok = running and worst <= 1e-6
    return ("resumed to the uninterrupted weights" if ok else "MISMATCH",
            f"killed after {secs:.1f} s at checkpoint {at} of 400 steps; resumed; max |weight difference| vs an "
            f"uninterrupted run = {worst:.2g} of the weights' magnitude")


def fault_rollout(d: Path) -> tuple[str, str]:
    from safetensors.torch import load_file
    from test_rollout import exact_closure

    from stochclosure.systems import LinearRelaxation

    exact_closure(LinearRelaxation(n=8, forcing_mean=0.3), {"type": "euler_maruyama", "steps": 8}).save(d / "m")
    for out in ("ens", "ref"):
        (d / f"{out}.yaml").write_text(yaml.safe_dump(
            {"model": "m", "system": {"type": "linear_relaxation", "n": 8, "forcing_mean": 0.3}, "n_steps": 300,
             "members": 8, "seed": 1, "checkpoint_every": 10, "out": f"{out}.safetensors"}))
    ckpt = d / "ens.safetensors.ckpt"
    cmd = [EXE, "rollout", "--no-progress", "--threads", "1", "--config"]
    running, secs = _kill_when(cmd + ["ens.yaml"], lambda: ckpt.exists(), d)
    from safetensors import safe_open

    with safe_open(str(ckpt), "pt") as fh:
        step = json.loads(fh.metadata()["stochclosure"])["step"]
    _run(cmd + ["ens.yaml"], d)
    _run(cmd + ["ref.yaml"], d)
    a, b = load_file(str(d / "ens.safetensors")), load_file(str(d / "ref.safetensors"))
    same = all(torch.equal(a[k], b[k]) for k in ("states", "times", "steps"))
    ok = running and same and not ckpt.exists()
    return ("restart completed; output identical to an uninterrupted run" if ok else "MISMATCH",
            f"killed after {secs:.1f} s, checkpoint at step {step} of 300 (8 members); restart continued from it; "
            f"states of {tuple(a['states'].shape)} compared bit for bit")


def fault_diverging(d: Path) -> tuple[str, str]:
    from test_training import build

    import stochclosure as sc
    from stochclosure.checkpoint import load_model
    from stochclosure.train import Trainer

    model, data = build()

    class Poisoned(type(data)):
        def __getitem__(self, i):
            item = super().__getitem__(i)
            return {**item, "target": item["target"] * 1e30} if tr.step >= 15 else item

    tr = Trainer(model, Poisoned(data.tensors["target"], fields=data.tensors["fields"]), batch_size=8, max_steps=30,
                 checkpoint_every=5, progress=False, checkpoint_dir=d / "div", normalise_targets=False)
    try:
        tr.fit()
        return "NO ERROR", ""
    except sc.NonFiniteError as exc:
        kept = (d / "div" / "latest").read_text()
        good = load_model(d / "div" / kept)
        finite = all(bool(torch.isfinite(v).all()) for v in good.state_dict().values())
        return ("stopped with NonFiniteError; last good checkpoint kept" if finite else "BAD CHECKPOINT",
                f"{_cell(str(exc), 200)}; `latest` -> {kept}, loads with finite weights")


def fault_output(d: Path, code: int) -> tuple[str, str]:
    import contextlib
    import io

    from stochclosure import _io
    from stochclosure.cli import main

    real = _io._write_probe
    if code == errno.EACCES and os.geteuid() != 0:  # a real read-only folder where permissions bind
        ro = d / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        how = "a real chmod 500 folder"
    else:
        def probe(directory: Path) -> None:
            raise OSError(code, os.strerror(code), str(directory))

        _io._write_probe = probe
        ro = d / "ro"
        how = f"simulated {errno.errorcode[code]} from the write probe" + (" (root ignores permissions)"
                                                                           if code == errno.EACCES else "")
    (d / "gen.yaml").write_text("system: {K: 8}\ntrajectories: 1\nbatch_size: 1\nrecords: 1\n")
    (d / "tr.yaml").write_text(yaml.safe_dump({"data": {"path": "x.h5"}, "model": {"score": "gaussian"},
                                               "out": str(ro / "run")}))
    results = []
    try:
        for argv in (["generate", "--system", "lorenz96", "--config", str(d / "gen.yaml"), "--out",
                      str(ro / "x.h5"), "--no-progress"],):
            err = io.StringIO()
            t0 = time.perf_counter()
            with contextlib.redirect_stderr(err):
                rc = main(argv)
            results.append((argv[0], rc, err.getvalue().strip(), time.perf_counter() - t0))
        from stochclosure.rollouts import resumable_ensemble
        from stochclosure.systems import LinearRelaxation

        try:
            resumable_ensemble(LinearRelaxation(n=8), None, torch.zeros(1, 8, 8), 2, 2, seed=0,
                               checkpoint=ro / "r.ckpt")
            results.append(("rollout", 0, "no error", 0.0))
        except Exception as exc:  # noqa: BLE001
            results.append(("rollout", 2, f"{type(exc).__name__}: {exc}", 0.0))
    finally:
        _io._write_probe = real
        if ro.exists():
            ro.chmod(0o700)
    ok = all(rc == 2 and "OutputError" in msg for _, rc, msg, _ in results)
    return ("clear OutputError before any work" if ok else "MISSED",
            f"{how}; " + "; ".join(f"{cmd}: exit {rc}, {_cell(msg, 160)}" for cmd, rc, msg, _ in results))


def fault_pickles(d: Path) -> tuple[str, str]:
    from battery.base import Payload

    from stochclosure.checkpoint import load_model

    marker = d / "UNPICKLED"
    outcomes = []
    for name in ("evil.pt", "evil.safetensors", "evil.ckpt"):
        (d / name).write_bytes(pickle.dumps(Payload(str(marker))))
        try:
            load_model(d / name)
            outcomes.append(f"{name}: loaded?!")
        except Exception as exc:  # noqa: BLE001
            outcomes.append(f"{name}: {type(exc).__name__}")
    ok = not marker.exists() and all("CheckpointError" in o for o in outcomes)
    return ("refused; the payload never ran" if ok else "EXECUTED", "; ".join(outcomes))


def main() -> None:
    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="reliability-"))
    _WORK[0] = str(work)
    t0 = time.perf_counter()
    table, passed, total = run_battery(work / "battery")
    data = work / "battery" / "ns.h5"
    faults: list[tuple[str, str, str, float]] = []
    runs: list[tuple[str, Callable[[Path], tuple[str, str]]]] = [
        ("SIGKILL during `stochclosure generate`, then restart", fault_generate),
        ("SIGKILL during `stochclosure train`, then `--resume`", lambda p: fault_train(p, data)),
        ("SIGKILL during `stochclosure rollout`, then restart", fault_rollout),
        ("training diverges (targets x 1e30 from step 15)", fault_diverging),
        ("read-only output folder (generate, rollout)", lambda p: fault_output(p, errno.EACCES)),
        ("read-only file system (generate, rollout)", lambda p: fault_output(p, errno.EROFS)),
        ("disk full (generate, rollout)", lambda p: fault_output(p, errno.ENOSPC)),
        ("crafted checkpoints with a pickle payload", fault_pickles),
    ]
    for i, (name, fn) in enumerate(runs):
        d = work / f"fault{i}"
        d.mkdir()
        tic = time.perf_counter()
        outcome, detail = fn(d)
        faults.append((name, outcome, detail, time.perf_counter() - tic))
        print(f"{name}: {outcome}", flush=True)
    lines = ["# Reliability: bad inputs and injected faults", "",
             f"Generated by `python benchmarks/reliability.py` ({time.strftime('%Y-%m-%d')}); do not edit by hand. "
             f"The bad-input table is `tests/battery/` (`battery.CASES`), which "
             "`tests/test_reliability_battery.py` also runs row by row; the fault runs are tested in "
             "`tests/test_faults.py`, `tests/test_generate.py`, `tests/test_training.py`, `tests/test_security.py` "
             "and `tests/test_checkpoint.py`.", "",
             f"## Bad inputs: {passed} of {total} rows raise the expected typed error naming the argument", "",
             "Python rows raise the error; command-line rows (`exit` column) print it on one line and exit "
             "with status 2, no traceback.", "", *table, "",
             "## Fault injection", "", "| fault | outcome | details | seconds |", "|---|---|---|---|"]
    for name, outcome, detail, secs in faults:
        lines.append(f"| {name} | {outcome} | {_cell(detail, 600)} | {secs:.1f} |")
    lines += ["", f"Total time {time.perf_counter() - t0:.0f} s."]
    dest = ROOT / "benchmarks" / "results" / "reliability.md"
    dest.write_text("\n".join(lines).replace(str(work), "$TMP") + "\n")
    print(f"wrote {dest} ({passed}/{total} bad inputs, {len(faults)} fault runs)")


if __name__ == "__main__":
    main()
