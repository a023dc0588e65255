"""`stochclosure generate`: HDF5 layout, resumability after SIGKILL, and the lazy dataset."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import yaml

from stochclosure import errors as sc_errors
from stochclosure._io import temporary_name
from stochclosure.cli import main
from stochclosure.data import ClosureH5Dataset, DatasetError, collate_closure
from stochclosure.data.generate import generate, load_config
from stochclosure.errors import ConfigError
from stochclosure.testing import assert_close

ROOT = Path(__file__).resolve().parents[1]
TINY_NS = ROOT / "configs" / "ns2d_tiny.yaml"
TINY_L96 = ROOT / "configs" / "lorenz96_tiny.yaml"



def _contents(path: Path) -> dict[str, np.ndarray]:
    out = {}
    with h5py.File(path, "r") as f:
        f.visit(lambda n: out.__setitem__(n, f[n][()]) if isinstance(f[n], h5py.Dataset) else None)
    return out


@pytest.fixture(scope="module")
def ns_file(tmp_path_factory):
    out = tmp_path_factory.mktemp("ns") / "ns.h5"
    generate("navier_stokes_2d", load_config(TINY_NS), out, progress=False)
    return out


def test_layout_attributes_and_split(ns_file):
    with h5py.File(ns_file, "r") as f:
        assert f.attrs["format"] == "stochclosure.closure-dataset" and f.attrs["format_version"] == 1
        assert f.attrs["system"] == "navier_stokes_2d"
        assert json.loads(f.attrs["system_config"])["n"] == 32
        assert "torch" in json.loads(f.attrs["versions"]) and len(json.loads(f.attrs["batch_seeds"])) == 3
        assert f["res_32/state"].shape == (6, 4, 1, 32, 32) and f["res_16/H"].shape == (6, 4, 1, 16, 16)
        assert f["res_32/G"].chunks == (1, 1, 1, 32, 32) and f["res_32/G"].compression == "gzip"
        assert f["obs_points"].shape == (256, 2) and f["obs/H"].shape == (6, 4, 1, 256)
        np.testing.assert_allclose(f["time"][()], 1e-3 * (20 + 5 * np.arange(4)))
        # split by trajectory: val and test get round(0.25 * 6) = 2 trajectories each, train the rest
        assert np.bincount(f["split"][()], minlength=3).tolist() == [2, 2, 2]
        # striding: the coarse fields are the fine point values; obs are point values at i/16
        np.testing.assert_array_equal(f["res_16/H"][()], f["res_32/H"][..., ::2, ::2])
        np.testing.assert_array_equal(f["obs/G"][()], f["res_32/G"][..., ::2, ::2].reshape(6, 4, 1, 256))
        g = f["res_32/G"][()]
        assert np.abs(g[0] - g[1]).max() > 1e-3 * np.abs(g).max()  # trajectories differ


def test_lazy_dataset_items_follow_the_protocol(ns_file):
    ds = ClosureH5Dataset(ns_file, split="train", closure="G", resolution=32, history=2)
    with h5py.File(ns_file, "r") as f:
        train = np.flatnonzero(f["split"][()] == 0)
        g = f["res_32/G"][()]
        st = f["res_32/state"][()]
    assert len(ds) == len(train) * 2
    item = ds[1]
    assert set(item) == {"target", "fields", "history", "obs_values"}
    np.testing.assert_array_equal(item["target"].numpy(), g[train[0], 3])
    np.testing.assert_array_equal(item["history"].numpy(), st[train[0], 1:3])
    target, cond = ds.collate([ds[0], ds[1]])
    assert target.shape == (2, 1, 32, 32) and cond.obs_values.shape == (2, 1, 256)
    assert cond.obs_points.shape == (256, 2)
    # lazy: nothing is open until an item is read; pickling (DataLoader workers) drops the handle
    import pickle
    again = pickle.loads(pickle.dumps(ds))
    assert again._file is None
    assert_close(again[1]["target"], item["target"], rtol=0, what="item read after unpickling")
    loader = torch.utils.data.DataLoader(ds, batch_size=3, collate_fn=ds.collate)
    t, c = next(iter(loader))
    assert t.shape[0] == 3 and c.history.shape == (3, 2, 1, 32, 32)
    # two worker processes, each opening the file itself, see every item exactly once
    workers = torch.utils.data.DataLoader(ds, batch_size=1, num_workers=2, collate_fn=ds.collate)
    got = torch.cat([b[0] for b in workers])
    assert_close(got, torch.stack([ds[i]["target"] for i in range(len(ds))]), rtol=0, what="items read by workers")
    assert collate_closure([ds[0]], ds.obs_points)[0].shape == (1, 1, 32, 32)
    no_obs = ClosureH5Dataset(ns_file, split="test", obs=False, fields=False)
    assert set(no_obs[0]) == {"target"} and no_obs.obs_points is None


def test_in_memory_items_equal_the_lazy_ones(ns_file):
    for history in (0, 2):
        lazy = ClosureH5Dataset(ns_file, split="train", closure="G", resolution=32, history=history, in_memory=False)
        mem = ClosureH5Dataset(ns_file, split="train", closure="G", resolution=32, history=history, in_memory=True)
        auto = ClosureH5Dataset(ns_file, split="train", closure="G", resolution=32, history=history)
        assert lazy._memory is None and mem._memory is not None and auto._memory is not None  # small file
        assert len(lazy) == len(mem)
        for i in range(len(lazy)):
            a, b = lazy[i], mem[i]
            assert set(a) == set(b)
            for k in a:
                torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    ClosureH5Dataset.IN_MEMORY_BYTES, old = 0, ClosureH5Dataset.IN_MEMORY_BYTES
    try:
        assert ClosureH5Dataset(ns_file, split="train", closure="G", resolution=32)._memory is None
    finally:
        ClosureH5Dataset.IN_MEMORY_BYTES = old


def test_dataset_errors_are_typed_and_explain(ns_file, tmp_path):
    with pytest.raises(DatasetError, match="no file"):
        ClosureH5Dataset(tmp_path / "missing.h5")
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f["x"] = np.zeros(3)
    with pytest.raises(DatasetError, match="format"):
        ClosureH5Dataset(foreign)
    with pytest.raises(DatasetError, match="system.*lorenz96"):
        ClosureH5Dataset(ns_file, system="lorenz96")
    with pytest.raises(DatasetError, match="closure"):
        ClosureH5Dataset(ns_file, closure="U")
    with pytest.raises(DatasetError, match="resolution"):
        ClosureH5Dataset(ns_file, resolution=64)
    broken = tmp_path / "broken.h5"
    with h5py.File(ns_file, "r") as src, h5py.File(broken, "w") as dst:
        dst.attrs.update(src.attrs)
        for k in ("split", "time", "obs_points", "res_32/state"):
            dst[k] = src[k][()]
    with pytest.raises(DatasetError, match="res_32/H"):
        ClosureH5Dataset(broken, closure="H", resolution=32)


def test_config_errors_name_the_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"trajectorys": 3}))
    with pytest.raises(ConfigError, match="trajectorys"):
        load_config(bad)
    bad.write_text(yaml.safe_dump({"system": {"nuu": 1e-3}}))
    with pytest.raises(ConfigError, match="nuu"):
        generate("navier_stokes_2d", load_config(bad), tmp_path / "x.h5", progress=False)
    # the command line reports it on one line with exit status 2
    assert main(["generate", "--system", "navier_stokes_2d", "--config", str(bad), "--out",
                 str(tmp_path / "x.h5"), "--no-progress"]) == 2


def test_lorenz96_dataset_in_one_dimension(tmp_path):
    out = generate("lorenz96", load_config(TINY_L96), tmp_path / "l96.h5", progress=False)
    ds = ClosureH5Dataset(out, split=None, closure="U_step", system="lorenz96")
    assert len(ds) == 4 * 20 and ds[0]["target"].shape == (1, 8) and ds[0]["obs_values"].shape == (1, 4)
    assert ds.obs_points.shape == (4, 1)


def _run_cli(out: Path, cfg: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    exe = Path(sys.executable).parent / "stochclosure"  # the console script
    return subprocess.Popen([str(exe), "generate", "--system", "navier_stokes_2d",
                             "--config", str(cfg), "--out", str(out), "--no-progress", "--threads", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)


def test_sigkill_and_resume_gives_the_uninterrupted_file(tmp_path):
    # A real subprocess is killed with SIGKILL once some (not all) batches are done, plus garbage
    # temporaries as left by a kill in the middle of a write; the restarted run must reuse the
    # finished batches and produce exactly the file of an uninterrupted run.
    cfg = load_config(TINY_NS)
    cfg.update(trajectories=8, batch_size=1, spinup_steps=300, records=3)
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "ns.h5"
    parts = tmp_path / "ns.h5.parts"
    proc = _run_cli(out, cfg_path)
    deadline = time.time() + 60
    while time.time() < deadline and len(list(parts.glob("batch_*.h5"))) < 2 and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    finished = sorted(p.name for p in parts.glob("batch_*.h5"))
    assert 2 <= len(finished) < 8 and not out.exists(), finished
    for p in parts.glob("batch_*.h5"):  # every part under its final name is a valid, complete file
        with h5py.File(p, "r") as f:
            assert f.attrs["complete"]
    # temporaries as a killed writer leaves them (per-process names, see stochclosure._io.temporary_name)
    stale = [temporary_name(out), temporary_name(parts / "batch_00007.h5"), temporary_name(parts / "manifest.json")]
    for p in stale:
        p.write_bytes(b"half-written")
    proc = _run_cli(out, cfg_path)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err.decode()
    assert f"{len(finished)} of 8 trajectories already done" in err.decode()
    assert not parts.exists() and not any(p.exists() for p in stale)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cfg.yaml", "ns.h5", "ns.h5.lock"]
    ref = generate("navier_stokes_2d", cfg, tmp_path / "ref.h5", progress=False)
    a, b = _contents(out), _contents(ref)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    # running again on the complete file is a no-op; another config is refused
    assert generate("navier_stokes_2d", cfg, out, progress=False) == out
    with pytest.raises(ConfigError, match="another configuration"):
        generate("navier_stokes_2d", {**cfg, "seed": 1}, out, progress=False)


def test_subgrid_dataset_has_one_closure_per_resolution(tmp_path):
    out = generate("navier_stokes_2d_subgrid", load_config(ROOT / "configs" / "ns2d_subgrid_tiny.yaml"),
                   tmp_path / "les.h5", progress=False)
    with h5py.File(out, "r") as f:
        assert json.loads(f.attrs["closures"]) == ["U"]
        assert f["res_32/U"].shape == (2, 3, 1, 32, 32) and f["res_16/U"].shape == (2, 3, 1, 16, 16)
        # each resolution has its own filter and closure: the 16^2 closure is not a subsample of the 32^2 one
        u16, u32 = f["res_16/U"][()], f["res_32/U"][..., ::2, ::2]
        assert np.abs(u16 - u32).max() > 1e-3 * np.abs(u32).max()
    ds = ClosureH5Dataset(out, split=None, resolution=16, system="navier_stokes_2d_subgrid")
    assert ds[0]["target"].shape == (1, 16, 16) and ds[0]["obs_values"].shape == (1, 256)


# -- one writer per output, validation before any work, stored statistics ---------------------------------------

L96_SMALL = {"system": {"K": 8, "J": 16}, "trajectories": 2, "batch_size": 1, "spinup_steps": 10, "record_every": 2,
             "records": 3, "obs_grid": 4}


def test_two_generate_processes_on_one_out_never_corrupt_it(tmp_path):
    # The second process is started first and imports everything, then waits on its standard
    # input; it is released once the first holds the lock (its manifest exists), so the two
    # really overlap whatever the machine's load. It must fail at once, naming the first's pid,
    # and the first's file must be exactly what a run on its own writes.
    cfg = {**L96_SMALL, "trajectories": 3, "spinup_steps": 600, "records": 10}
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "l96.h5"
    argv = ["generate", "--system", "lorenz96", "--config", str(cfg_path), "--out", str(out), "--no-progress",
            "--threads", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    waiting = ("import sys, time\nfrom stochclosure.cli import main\nimport stochclosure.data.generate\n"
               "print('ready', flush=True)\nsys.stdin.readline()\nt0 = time.perf_counter()\ncode = main(sys.argv[1:])\n"
               "print(f'{time.perf_counter() - t0:.3f}', flush=True)\nsys.exit(code)\n")
    second = subprocess.Popen([sys.executable, "-c", waiting, *argv], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env)
    first = None
    try:
        assert second.stdout.readline().strip() == "ready"
        first = subprocess.Popen([str(Path(sys.executable).parent / "stochclosure"), *argv],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        manifest = tmp_path / "l96.h5.parts" / "manifest.json"
        deadline = time.time() + 120
        while not manifest.exists() and first.poll() is None and time.time() < deadline:
            time.sleep(0.01)
        assert first.poll() is None, "the first run ended before the second could be started"
        out2, err2 = second.communicate("go\n", timeout=60)
        assert first.poll() is None, "the first run must still be running when the second gives up"
        _, err1 = first.communicate(timeout=300)
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
    assert second.returncode == 2
    lines = err2.strip().splitlines()
    assert len(lines) == 1 and "OutputError" in lines[0] and "'--out'" in lines[0], err2
    assert f"pid {first.pid}" in lines[0], (lines[0], first.pid)
    assert float(out2.strip()) < 5.0  # refused at once, before any simulation
    assert first.returncode == 0, err1.decode()
    solo = generate("lorenz96", cfg, tmp_path / "solo.h5", progress=False)
    a, b = _contents(out), _contents(solo)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cfg.yaml", "l96.h5", "l96.h5.lock", "solo.h5",
                                                          "solo.h5.lock"]


BAD_GENERATE = [
    ({"compression": "bogus"}, "config.compression", "unavailable"),
    ({"compression_level": 11}, "config.compression_level", "0 to 9"),
    ({"compression_level": "high"}, "config.compression_level", "0 to 9"),
    ({"compression": 3.5}, "config.compression", "filter name"),
    ({"compression": 32001}, "config.compression", "Unknown compression filter"),
    ({"closures": []}, "config.closures", "non-empty list"),
    ({"resolutions": []}, "config.resolutions", "non-empty list"),
    ({"resolutions": [0]}, "config.resolutions", "positive integers"),
    ({"resolutions": [8, 8]}, "config.resolutions", "distinct"),
    ({"closures": ["G"]}, "config.closures", "names among"),
    ({"resolutions": [16]}, "resolutions", "Lorenz-96 has one resolution"),
    ({"obs_grid": 3}, "config.obs_grid", "divisor of the finest resolution 8"),
    ({"trajectories": True}, "config.trajectories", "positive integer"),
    ({"records": 2**40}, "config.records", "positive integer"),
    ({"seed": 2**64}, "config.seed", "non-negative integer"),
    ({"spinup_steps": -1}, "config.spinup_steps", "non-negative integer"),
    ({"store_dtype": "int8"}, "config.store_dtype", "float32"),
    ({"device": "cuda:99"}, "config.device", "available"),
    ({"device": 3}, "config.device", "device name"),
    ({"split": {"train": float("nan")}}, "config.split", "summing to 1"),
]


@pytest.mark.parametrize("change,key,match", BAD_GENERATE, ids=[c[1] + ":" + repr(c[0])[:30] for c in BAD_GENERATE])
def test_bad_generate_config_is_refused_before_any_work(tmp_path, monkeypatch, change, key, match):
    from stochclosure.systems.lorenz96 import Lorenz96

    steps = {"n": 0}
    real = Lorenz96.full_step

    def counting(self, *a, **k):
        steps["n"] += 1
        return real(self, *a, **k)

    monkeypatch.setattr(Lorenz96, "full_step", counting)
    out = tmp_path / "d.h5"
    with pytest.raises(sc_errors.StochClosureError, match=rf"'{key}'.*expected.*{match}") as info:
        generate("lorenz96", {**L96_SMALL, **change}, out, progress=False)
    assert isinstance(info.value, (ConfigError, sc_errors.ShapeError))
    assert steps["n"] <= 1  # at most the one-record probe; the run needs 10 + 3 * 2 steps per trajectory
    assert not out.exists() and not (tmp_path / "d.h5.parts").exists()
    # nothing was written, so the corrected configuration is accepted on the same --out
    assert generate("lorenz96", L96_SMALL, out, progress=False) == out


def test_alias_bomb_is_refused_quickly_and_the_fixed_config_runs(tmp_path, capsys):
    bomb = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"] + [
        f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 10)]
    cfg = tmp_path / "g.yaml"
    # nine levels of nine aliases each (9**10 values once expanded) under one key of a valid config
    cfg.write_text(yaml.safe_dump(L96_SMALL) + "compression: [" + ", ".join(b.split(": ", 1)[1] for b in bomb) + "]\n")
    out = tmp_path / "g.h5"
    argv = ["generate", "--system", "lorenz96", "--config", str(cfg), "--out", str(out), "--no-progress"]
    t0 = time.perf_counter()
    assert main(argv) == 2
    assert time.perf_counter() - t0 < 10
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "ConfigError" in err[0] and "'--config'" in err[0] and "expanding to more" in err[0]
    assert not out.exists()
    cfg.write_text(yaml.safe_dump(L96_SMALL))
    assert main(argv) == 0 and out.exists()


def test_field_datasets_store_training_split_statistics(tmp_path):
    out = generate("lorenz96", {**L96_SMALL, "trajectories": 4, "split": {"train": 0.5, "val": 0.5}},
                   tmp_path / "s.h5", progress=False)
    with h5py.File(out, "r") as f:
        train = np.flatnonzero(f["split"][()] == 0)
        assert len(train) == 2
        for key in ("res_8/U", "res_8/state", "obs/U_step"):
            values = f[key][()][train].astype(np.float64)  # (n, T, C, ...)
            flat = np.moveaxis(values, 2, 0).reshape(values.shape[2], -1)
            assert f[key].attrs["statistics_of"] == "train split"
            assert_close(torch.as_tensor(f[key].attrs["mean"]), torch.as_tensor(flat.mean(1)), rtol=1e-12, what=key)
            assert_close(torch.as_tensor(f[key].attrs["std"]), torch.as_tensor(flat.std(1)), rtol=1e-12, what=key)
    ds = ClosureH5Dataset(out, split="val", closure="U")
    mean, std = ds.target_statistics()
    with h5py.File(out, "r") as f:
        assert_close(mean, torch.as_tensor(f["res_8/U"].attrs["mean"], dtype=torch.float32), rtol=0, what="mean")
        assert_close(std, torch.as_tensor(f["res_8/U"].attrs["std"], dtype=torch.float32), rtol=0, what="std")
