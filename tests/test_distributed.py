"""Two-process runs under torchrun (gloo on CPU) match one process.

* ``torchrun --nproc_per_node 2 -m stochclosure train``: DistributedDataParallel over slices of the
  same global batch gives the single-process weights up to float rounding. Tolerance: 1e-5 of
  each weight, EMA and optimizer tensor's magnitude (observed: at most 1.2e-6, on the small FiLM
  weights; the rounding of averaging two half-batch gradients instead of one full-batch mean).
* :func:`~stochclosure.rollouts.distributed_ensemble` gathers exactly the members of a
  single-process ``ensemble`` with the same seed (observed: bitwise equal on CPU; asserted to
  1e-6 of the magnitude since batched kernels may round differently for another batch size).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from stochclosure.cli import main
from stochclosure.testing import assert_close

pytest.importorskip("torch.distributed")
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
RTOL_TRAIN = 1e-5  # of each tensor's magnitude
RTOL_ENSEMBLE = 1e-6


def _torchrun(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    done = subprocess.run(TORCHRUN + args, cwd=cwd, env=ENV, capture_output=True, timeout=180)
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    return done


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from stochclosure.data.generate import generate

    out = tmp_path_factory.mktemp("ddp") / "ns.h5"
    cfg = {"system": {"n": 32, "closure": "H"}, "trajectories": 4, "batch_size": 2, "spinup_steps": 2,
           "record_every": 1, "records": 3, "resolutions": [16], "closures": ["H"], "obs_grid": 8,
           "split": {"train": 0.5, "val": 0.25, "test": 0.25}}
    generate("navier_stokes_2d", cfg, out, progress=False)
    return out


def _train_config(folder: Path, data: Path, out: str) -> Path:
    cfg = {"data": {"path": str(data), "closure": "H", "resolution": 16, "val_split": "val"},
           "model": {"sde": "ve_exp", "sampler": {"type": "truncated_karras_em"},
                     "score": {"type": "fno", "width": 8, "modes": 4, "layers": 2, "embed_dim": 16,
                               "encoder": {"type": "composite", "encoders": ["field", "sparse_interp"]}}},
           "trainer": {"batch_size": 4, "max_steps": 8, "checkpoint_every": 4, "val_every": 4},
           "out": out, "seed": 3}
    path = folder / f"{out}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_two_process_ddp_training_matches_one_process(tmp_path, dataset, capsys):
    pytest.importorskip("stochclosure_neuralop")
    assert main(["train", "--config", str(_train_config(tmp_path, dataset, "one")), "--no-progress"]) == 0
    done = _torchrun(["-m", "stochclosure", "train", "--config", str(_train_config(tmp_path, dataset, "two")),
                      "--no-progress"], tmp_path)
    assert done.stdout.decode().count("trained 8 steps") == 1  # rank 0 reports, once
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["latest", "step-00000004", "step-00000008"]
    for name in ("model", "ema", "optimizer"):
        a = load_file(str(tmp_path / "one" / "step-00000008" / f"{name}.safetensors"))
        b = load_file(str(tmp_path / "two" / "step-00000008" / f"{name}.safetensors"))
        assert a.keys() == b.keys()
        for k in a:
            real = [torch.view_as_real(x) if x.is_complex() else x for x in (b[k], a[k])]
            assert_close(*real, rtol=RTOL_TRAIN, what=f"{name} {k}, two processes vs one")
    a = load_file(str(tmp_path / "one" / "step-00000008" / "model.safetensors"))
    assert any(float(v.abs().max()) > 0.1 for v in a.values())  # the weights are not trivially equal


def test_batch_that_does_not_split_across_ranks_is_a_config_error(tmp_path, dataset):
    pytest.importorskip("stochclosure_neuralop")
    cfg = _train_config(tmp_path, dataset, "odd")
    text = yaml.safe_load(cfg.read_text())
    text["trainer"]["batch_size"] = 3
    cfg.write_text(yaml.safe_dump(text))
    done = subprocess.run(TORCHRUN + ["-m", "stochclosure", "train", "--config", str(cfg), "--no-progress"],
                          cwd=tmp_path, env=ENV, capture_output=True, timeout=180)
    err = done.stderr.decode()
    assert done.returncode != 0 and "ConfigError: argument 'batch_size': expected a multiple of the 2" in err
    assert "Traceback" not in err.split("ConfigError")[0].splitlines()[-1]


ENSEMBLE = textwrap.dedent('''
    import sys, torch, torch.distributed as dist
    from safetensors.torch import save_file
    sys.path.insert(0, {tests!r})
    from test_rollout import exact_closure
    from stochclosure.systems import LinearRelaxation
    from stochclosure.rollouts import ClosureAR1, distributed_ensemble
    torch.set_num_threads(1)
    system = LinearRelaxation(n=8, forcing_mean=0.3)
    model = exact_closure(system, {{"type": "euler_maruyama", "steps": 8}})
    v0 = system.initial_state(3, generator=torch.Generator().manual_seed(0))
    res = distributed_ensemble(system, model, v0, 12, 7, seed=5, resample_every=2, between=ClosureAR1(0.9, 0.3),
                               init_perturbation=0.05)
    if dist.get_rank() == 0:
        save_file({{"states": res.states, **{{f"closure.{{s}}": u for s, u in res.closures.items()}}}}, {out!r})
    dist.destroy_process_group()
''')


def test_two_process_ensemble_has_the_single_process_members(tmp_path):
    import test_rollout

    from stochclosure.rollouts import ClosureAR1, ensemble
    from stochclosure.systems import LinearRelaxation

    out = tmp_path / "ens.safetensors"
    script = tmp_path / "ens.py"
    script.write_text(ENSEMBLE.format(tests=str(Path(__file__).parent), out=str(out)))
    _torchrun([str(script)], tmp_path)
    got = load_file(str(out))
    system = LinearRelaxation(n=8, forcing_mean=0.3)
    model = test_rollout.exact_closure(system, {"type": "euler_maruyama", "steps": 8})
    v0 = system.initial_state(3, generator=torch.Generator().manual_seed(0))
    ref = ensemble(system, model, v0, 12, members=7, seed=5, resample_every=2, between=ClosureAR1(0.9, 0.3),
                   init_perturbation=0.05)
    assert got["states"].shape == ref.states.shape == (13, 7, 3, 1, 8, 8)  # 7 members: 4 on rank 0, 3 on rank 1
    assert_close(got["states"], ref.states, rtol=RTOL_ENSEMBLE, what="gathered states")
    assert sorted(int(k.split(".")[1]) for k in got if k.startswith("closure.")) == sorted(ref.closures)
    for s, u in ref.closures.items():
        assert_close(got[f"closure.{s}"], u, rtol=RTOL_ENSEMBLE, what=f"gathered closure {s}")


def test_member_slices_cover_the_ensemble_once():
    from stochclosure.rollouts.distributed import member_slice

    for members in (2, 7, 16):
        for world in (1, 2, 3):
            if members < world:
                continue
            cuts = [member_slice(members, world, r) for r in range(world)]
            assert cuts[0][0] == 0 and cuts[-1][1] == members
            assert all(a[1] == b[0] for a, b in zip(cuts, cuts[1:]))
            assert max(b - a for a, b in cuts) - min(b - a for a, b in cuts) <= 1
