"""The bad-input battery: one table of predictable mistakes and the typed error each must raise.

Every row of :data:`CASES` names an entry point (Python API or command line), the bad input, the
error (or warning) class expected and the argument its message must name. The same table drives
``tests/test_reliability_battery.py`` (one test per row) and ``benchmarks/reliability.py``
(which writes ``benchmarks/results/reliability.md``), so the report and the tests cannot drift.

A Python row's ``run(ctx)`` makes the call that must fail. A command-line row's ``run(ctx)``
returns the arguments for :func:`stochclosure.cli.main`, which must exit non-zero with one line
on standard error naming the error class and the argument (no traceback).
"""

from __future__ import annotations

import contextlib
import io
import pickle
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
import yaml

from .. import errors as E
from .._types import Conditioning

__all__ = ["BadInput", "Outcome", "Context", "CASES", "run_case"]


@dataclass(frozen=True)
class BadInput:
    """One row of the battery.

    Attributes:
        name: Short identifier (test id).
        entry: The entry point exercised (``ClosureModel.sample``, ``stochclosure train``, ...).
        input: What is wrong with the input, in words.
        error: The exception (or warning) class expected.
        argument: Text the message must contain: the argument / key it names.
        run: ``run(ctx)``: the failing call (API rows) or the argv list (command-line rows).
        cli: A command-line row.
    """

    name: str
    entry: str
    input: str
    error: type
    argument: str
    run: Callable[[Context], Any]
    cli: bool = False


@dataclass
class Outcome:
    """What running a row gave: the class raised (``"none"`` if nothing), its message, and whether it passed."""

    case: BadInput
    got: str
    message: str
    ok: bool
    exit_code: int | None = None


class _Payload:
    """Unpickling this would create ``marker``: proof that nothing is unpickled."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (self.marker, "w"))


class Context:
    """Shared, lazily built inputs of the battery (small model, dataset, checkpoint) in ``folder``."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.marker = self.folder / "UNPICKLED"

    def path(self, name: str, text: str | bytes | None = None) -> Path:
        """``folder / name``, written with ``text`` when given."""
        p = self.folder / name
        if isinstance(text, bytes):
            p.write_bytes(text)
        elif text is not None:
            p.write_text(text)
        return p

    @cached_property
    def model(self) -> Any:
        """An exact (analytic) closure model: fields ``(B, 1, 16, 16)``."""
        from ..model import ClosureModel
        from ..scores.analytic import LinearGaussianScore

        return ClosureModel("vp", LinearGaussianScore("vp", smoothing_length=0.05, noise_std=0.1),
                            {"type": "euler_maruyama", "steps": 3})

    @cached_property
    def fno(self) -> Any:
        """A tiny FNO score (plugin ``fno``, modes 4, a field + sparse-interpolation encoder)."""
        from ..registry import resolve

        return resolve("score_operator", {"type": "fno", "sde": "vp", "width": 4, "modes": 4, "layers": 1,
                                          "embed_dim": 4, "encoder": {"type": "field", "channels": 1}})

    @cached_property
    def checkpoint(self) -> Path:
        """A valid single-file checkpoint of :attr:`model`."""
        return self.model.save(self.folder / "model.safetensors")

    @cached_property
    def dataset(self) -> Path:
        """A tiny generated Navier–Stokes closure dataset (16², closure H)."""
        from ..data.generate import generate

        cfg = {"system": {"n": 16, "closure": "H"}, "trajectories": 2, "batch_size": 2, "records": 2,
               "resolutions": [16], "closures": ["H"], "obs_grid": 4, "split": {"train": 0.5, "val": 0.5}}
        return generate("navier_stokes_2d", cfg, self.folder / "ns.h5", progress=False)

    def cond(self, b: int = 2, n: int = 16, **kw: Any) -> Conditioning:
        """A valid condition (fields + 16 sparse points) with some entries replaced by ``kw``."""
        g = torch.Generator().manual_seed(0)
        base = {"fields": torch.randn(b, 1, n, n, generator=g), "obs_values": torch.randn(b, 1, 16, generator=g),
                "obs_points": (torch.arange(16) / 16.0)[:, None].repeat(1, 2)}
        base.update(kw)
        return Conditioning(**base)

    def ns(self) -> Any:
        from ..systems import NavierStokes2D

        return NavierStokes2D(n=16)

    def train_config(self, name: str, **changes: Any) -> Path:
        """A training YAML over :attr:`dataset` with top-level/block entries replaced by ``changes``."""
        cfg: dict[str, Any] = {"data": {"path": str(self.dataset), "closure": "H", "resolution": 16},
                               "model": {"sde": "vp", "score": {"type": "fno", "sde": "vp", "width": 4, "modes": 4,
                                                                "layers": 1, "embed_dim": 4, "encoder": "field"}},
                               "trainer": {"batch_size": 2, "max_steps": 1}, "out": "run"}
        for key, value in changes.items():
            block, _, sub = key.partition(".")
            if sub:
                cfg[block][sub] = value
            else:
                cfg[block] = value
        return self.path(f"{name}.yaml", yaml.safe_dump(cfg))

    def rollout_config(self, name: str, **changes: Any) -> Path:
        cfg = {"model": str(self.checkpoint), "system": {"type": "linear_relaxation", "n": 16}, "n_steps": 2,
               "members": 2, "out": "ens.safetensors", **changes}
        return self.path(f"{name}.yaml", yaml.safe_dump(cfg))

    def h5(self, name: str, edit: Callable[[Any], None]) -> Path:
        """A copy of :attr:`dataset` changed by ``edit(h5py.File)``."""
        import shutil

        import h5py

        p = self.folder / name
        shutil.copy(self.dataset, p)
        with h5py.File(p, "a") as f:
            edit(f)
        return p


def _sample(ctx: Context, cond: Conditioning, **kw: Any) -> Any:
    return ctx.model.sample(cond, **kw)


def _nan_pixel(ctx: Context) -> Any:
    f = torch.randn(2, 1, 16, 16)
    f[1, 0, 7, 3] = float("nan")
    return _sample(ctx, ctx.cond(fields=f))


def _trainer(ctx: Context, target: torch.Tensor | None = None, **kw: Any) -> Any:
    from ..data import TensorClosureDataset
    from ..model import ClosureModel
    from ..train import Trainer

    model = ClosureModel("vp", ctx.fno, {"type": "euler_maruyama", "steps": 2})
    u = torch.randn(4, 1, 16, 16) if target is None else target
    data: Any = TensorClosureDataset(u, fields=torch.randn(u.shape[0], 1, 16, 16))
    if kw.pop("empty", False):
        data = torch.utils.data.Subset(data, [])
    return Trainer(model, data, **{"batch_size": 2, "max_steps": 1, "progress": False, **kw}).fit()


def _rollout(ctx: Context, state0: torch.Tensor, n_steps: int = 1, **kw: Any) -> Any:
    from ..rollout import rollout

    return rollout(ctx.ns(), None, state0, n_steps, **kw)


def _load(path: Path) -> Any:
    from ..checkpoint import load_model

    return load_model(path)


def _truncated(ctx: Context) -> Path:
    data = ctx.checkpoint.read_bytes()
    return ctx.path("truncated.safetensors", data[: len(data) // 2])


def _other_version(ctx: Context) -> Path:
    import json

    from ..checkpoint import FORMAT_VERSION

    d = ctx.model.save(ctx.folder / "v_next")
    cfg = json.loads((d / "config.json").read_text())
    cfg["format_version"] = FORMAT_VERSION + 1
    (d / "config.json").write_text(json.dumps(cfg))
    return d


def _h5_dataset(path: Path, **kw: Any) -> Any:
    from ..data import ClosureH5Dataset

    return ClosureH5Dataset(path, **kw)


def _foreign_h5(ctx: Context) -> Path:
    import h5py

    p = ctx.folder / "foreign.h5"
    with h5py.File(p, "w") as f:
        f["x"] = [1.0, 2.0]
    return p


def _del(key: str) -> Callable[[Any], None]:
    def edit(f: Any) -> None:
        del f[key]
    return edit


def _set_attr(key: str, value: Any) -> Callable[[Any], None]:
    def edit(f: Any) -> None:
        f.attrs[key] = value
    return edit


def _cli_train(ctx: Context, name: str, **changes: Any) -> list[str]:
    return ["train", "--config", str(ctx.train_config(name, **changes)), "--no-progress"]


def _gen_cli(ctx: Context, name: str, text: str, system: str = "lorenz96") -> list[str]:
    return ["generate", "--system", system, "--config", str(ctx.path(name, text)), "--out",
            str(ctx.folder / f"{name}.h5"), "--no-progress"]


_PICKLE_TAG = "data: !!python/object/apply:os.system ['touch UNPICKLED']\n"

C = BadInput
CASES: list[BadInput] = [
    # -- ClosureModel.sample / Conditioning ----------------------------------------------------------------
    C("nan_pixel", "ClosureModel.sample", "one NaN pixel in cond.fields", E.NonFiniteError, "cond.fields", _nan_pixel),
    C("inf_obs", "ClosureModel.sample", "an inf in cond.obs_values", E.NonFiniteError, "cond.obs_values",
      lambda c: _sample(c, c.cond(obs_values=torch.full((2, 1, 16), float("inf"))))),
    C("nan_points", "ClosureModel.sample", "a NaN coordinate in cond.obs_points", E.NonFiniteError,
      "cond.obs_points", lambda c: _sample(c, c.cond(obs_points=torch.full((16, 2), float("nan"))))),
    C("wrong_rank", "ClosureModel.sample", "cond.fields of rank 2 (16, 16)", E.ShapeError, "cond.fields",
      lambda c: _sample(c, Conditioning(fields=torch.randn(16, 16)))),
    C("batch_mismatch", "ClosureModel.sample", "fields batch 2, obs_values batch 3", E.ShapeError, "cond",
      lambda c: _sample(c, c.cond(obs_values=torch.randn(3, 1, 16)))),
    C("empty_batch", "ClosureModel.sample", "a condition with batch 0", E.ShapeError, "cond.fields",
      lambda c: _sample(c, c.cond(b=0))),
    C("resolution_mismatch", "ClosureModel.sample", "condition on 16^2, sample grid 32^2", E.ShapeError,
      "cond.fields", lambda c: _sample(c, c.cond(), grid=(32, 32))),
    C("channels_last", "ClosureModel.sample", "cond.fields laid out (B, H, W, C)", E.ShapeError, "cond.fields",
      lambda c: _sample(c, c.cond(fields=torch.randn(2, 16, 16, 1)))),
    C("int_dtype", "ClosureModel.sample", "int64 cond.fields", E.DTypeError, "cond.fields",
      lambda c: _sample(c, c.cond(fields=torch.zeros(2, 1, 16, 16, dtype=torch.long)))),
    C("mixed_dtype", "ClosureModel.sample", "float64 fields with float32 obs_values", E.DTypeError, "cond",
      lambda c: _sample(c, c.cond(fields=torch.randn(2, 1, 16, 16, dtype=torch.float64)))),
    C("other_device", "ClosureModel.sample", "condition on device 'meta', model on cpu", E.DeviceError, "cond",
      lambda c: _sample(c, Conditioning(fields=torch.empty(2, 1, 16, 16, device="meta")))),
    C("points_outside", "ClosureModel.sample", "a sparse point at x = 1.0 (outside [0, 1))", E.ShapeError,
      "cond.obs_points", lambda c: _sample(c, c.cond(obs_points=torch.full((16, 2), 0.5).index_fill(0, torch.tensor(
          [3]), 1.0) + torch.arange(16)[:, None] * 1e-3))),
    C("points_duplicated", "ClosureModel.sample", "the same sparse point twice", E.ShapeError, "cond.obs_points",
      lambda c: _sample(c, c.cond(obs_points=torch.cat([torch.rand(15, 2), torch.rand(15, 2)[:1] * 0 + 0.25])
                                  .index_copy(0, torch.tensor([0]), torch.tensor([[0.25, 0.25]]))))),
    C("values_without_points", "ClosureModel.sample", "obs_values without obs_points", E.ShapeError,
      "cond.obs_points", lambda c: _sample(c, Conditioning(fields=torch.randn(2, 1, 16, 16),
                                                            obs_values=torch.randn(2, 1, 16)))),
    C("zero_samples", "ClosureModel.sample", "n=0 samples", E.ConfigError, "'n'", lambda c: _sample(c, c.cond(), n=0)),
    C("negative_steps", "ClosureModel.sample", "steps=-1", E.ConfigError, "steps",
      lambda c: _sample(c, c.cond(), steps=-1)),
    C("zero_steps", "ClosureModel.sample", "steps=0", E.ConfigError, "steps", lambda c: _sample(c, c.cond(), steps=0)),
    # -- score operator and encoders --------------------------------------------------------------------------
    C("fno_channels", "FNOScore.forward", "x with 3 channels for a 1-channel operator", E.ShapeError, "'x'",
      lambda c: c.fno(torch.randn(2, 3, 16, 16), torch.full((2,), 0.5), c.cond())),
    C("fno_time_batch", "FNOScore.forward", "t of batch 3 for x of batch 2", E.ShapeError, "'t'",
      lambda c: c.fno(torch.randn(2, 1, 16, 16), torch.full((3,), 0.5), c.cond())),
    C("grid_below_modes", "FNOScore.forward", "a 4^2 grid for modes=4 (needs 7 points per axis)",
      E.ResolutionWarning, "'x'", lambda c: c.fno(torch.randn(2, 1, 4, 4), torch.full((2,), 0.5), c.cond(n=4))),
    C("encoder_channels", "FieldEncoder", "2-channel fields for a 1-channel encoder", E.ShapeError, "cond.fields",
      lambda c: c.fno.encoder(Conditioning(fields=torch.randn(2, 2, 16, 16)), (16, 16))),
    C("encoder_grid_dims", "SparseInterpEncoder", "a 1-D target grid for 2-D points", E.ShapeError, "grid",
      lambda c: __import__("stochclosure").resolve("encoder", "sparse_interp")(c.cond(), (16,))),
    # -- components --------------------------------------------------------------------------------------------
    C("unknown_sde", "ClosureModel", "sde 'vpp'", E.UnknownPluginError, "'vpp'",
      lambda c: __import__("stochclosure").ClosureModel("vpp", "gaussian")),
    C("unknown_sampler", "ClosureModel.sample", "sampler 'fast'", E.UnknownPluginError, "'fast'",
      lambda c: _sample(c, c.cond(), sampler="fast")),
    C("unknown_spec_key", "resolve", "sampler spec key 'stepz'", E.ConfigError, "sampler.stepz",
      lambda c: __import__("stochclosure").resolve("sampler", {"type": "euler_maruyama", "stepz": 3})),
    C("sde_mismatch", "ClosureModel", "a score built for 've' in a 'vp' model", E.IncompatibleComponentsError,
      "SDE", lambda c: __import__("stochclosure").ClosureModel("vp", {"type": "gaussian", "sde": "ve"})),
    # -- rollouts ------------------------------------------------------------------------------------------------
    C("rollout_negative_steps", "rollout", "n_steps=-1", E.ConfigError, "n_steps",
      lambda c: _rollout(c, torch.randn(1, 16, 16), -1)),
    C("empty_ensemble", "rollout", "members=0", E.ConfigError, "members",
      lambda c: _rollout(c, torch.randn(1, 16, 16), members=0)),
    C("rollout_nan_pixel", "rollout", "one NaN pixel in state0", E.NonFiniteError, "state0",
      lambda c: _rollout(c, torch.randn(1, 16, 16).index_fill(2, torch.tensor([5]), float("nan")))),
    C("non_square_grid", "rollout (navier_stokes_2d)", "a 16x24 state for the square 16^2 solver", E.ShapeError,
      "state", lambda c: _rollout(c, torch.randn(1, 16, 24))),
    C("state_resolution", "rollout (navier_stokes_2d)", "a 32^2 state for the 16^2 solver", E.ShapeError, "state",
      lambda c: _rollout(c, torch.randn(1, 32, 32))),
    C("state_channels_last", "rollout", "state0 laid out (H, W, C)", E.ShapeError, "state0",
      lambda c: _rollout(c, torch.randn(16, 16, 1))),
    C("empty_cases", "rollout", "state0 with 0 cases", E.ShapeError, "state0",
      lambda c: _rollout(c, torch.randn(0, 1, 16, 16))),
    C("resample_zero", "rollout", "resample_every=0", E.ConfigError, "resample_every",
      lambda c: _rollout(c, torch.randn(1, 16, 16), resample_every=0)),
    C("unkeyed_resume", "resumable_ensemble", "keyed=False (no per-member streams)", E.ConfigError, "keyed",
      lambda c: __import__("stochclosure.rollout", fromlist=["x"]).resumable_ensemble(
          c.ns(), None, torch.randn(1, 16, 16), 1, 2, seed=0, checkpoint=c.folder / "r.ckpt", keyed=False)),
    # -- training ------------------------------------------------------------------------------------------------
    C("train_batch_zero", "Trainer", "batch_size=0", E.ConfigError, "batch_size", lambda c: _trainer(c, batch_size=0)),
    C("train_lr_string", "Trainer", "lr='fast'", E.ConfigError, "'lr'", lambda c: _trainer(c, lr="fast")),
    C("train_nan_target", "Trainer.fit", "a NaN pixel in the training targets", E.NonFiniteError, "target",
      lambda c: _trainer(c, torch.randn(4, 1, 16, 16).index_fill(3, torch.tensor([2]), float("nan")),
                         normalise_targets=False)),
    C("train_empty", "Trainer", "an empty training set", E.ConfigError, "train_data",
      lambda c: _trainer(c, empty=True)),
    # -- HDF5 datasets -------------------------------------------------------------------------------------------
    C("h5_missing_file", "ClosureH5Dataset", "a path with no file", E.DatasetError, "path",
      lambda c: _h5_dataset(c.folder / "nope.h5")),
    C("h5_foreign", "ClosureH5Dataset", "an HDF5 file not written by stochclosure", E.DatasetError, "path",
      lambda c: _h5_dataset(_foreign_h5(c))),
    C("h5_other_system", "ClosureH5Dataset", "a navier_stokes_2d file read as lorenz96", E.DatasetError, "system",
      lambda c: _h5_dataset(c.dataset, system="lorenz96")),
    C("h5_missing_dataset", "ClosureH5Dataset", "the file lacks res_16/H", E.DatasetError, "res_16/H",
      lambda c: _h5_dataset(c.h5("nodata.h5", _del("res_16/H")))),
    C("h5_pickled_attribute", "ClosureH5Dataset", "a pickle payload in the 'closures' attribute", E.DatasetError,
      "closures", lambda c: _h5_dataset(c.h5("evil.h5", _set_attr("closures", __import__("numpy").void(
          pickle.dumps(_Payload(str(c.marker)))))))),
    C("h5_unknown_closure", "ClosureH5Dataset", "closure 'U' not in the file", E.DatasetError, "closure",
      lambda c: _h5_dataset(c.dataset, closure="U")),
    # -- checkpoints -------------------------------------------------------------------------------------------
    C("ckpt_garbage", "load_model", "a file that is not a checkpoint", E.CheckpointError, "garbage.safetensors",
      lambda c: _load(c.path("garbage.safetensors", b"\x00not a checkpoint" * 8))),
    C("ckpt_truncated", "load_model", "half of a checkpoint file", E.CheckpointError, "truncated.safetensors",
      lambda c: _load(_truncated(c))),
    C("ckpt_other_version", "load_model", "format_version + 1", E.CheckpointError, "config.json",
      lambda c: _load(_other_version(c))),
    C("ckpt_pickle", "load_model", "a pickle whose __reduce__ writes a file", E.CheckpointError, "evil.pt",
      lambda c: _load(c.path("evil.pt", pickle.dumps(_Payload(str(c.marker)))))),
    C("ckpt_empty_dir", "load_model", "a folder without config.json", E.CheckpointError, "path",
      lambda c: (c.folder / "emptydir").mkdir(exist_ok=True) or _load(c.folder / "emptydir")),
    # -- configuration files (API) ---------------------------------------------------------------------------
    C("train_unknown_key", "load_train_config", "data.resolutoin (typo)", E.ConfigError, "data.resolutoin",
      lambda c: __import__("stochclosure.train_cli", fromlist=["x"]).load_train_config(
          c.train_config("typo", **{"data.resolutoin": 16}))),
    C("train_wrong_type", "load_train_config", "data.history: 'two'", E.ConfigError, "data.history",
      lambda c: __import__("stochclosure.train_cli", fromlist=["x"]).load_train_config(
          c.train_config("type", **{"data.history": "two"}))),
    C("train_path_escape", "load_train_config", "out: ../../escaped (leaves the config's folder)", E.ConfigError,
      "out", lambda c: __import__("stochclosure.train_cli", fromlist=["x"]).load_train_config(
          c.train_config("escape", out="../../escaped"))),
    C("yaml_python_tag", "load_train_config", "a !!python/object/apply tag", E.ConfigError, "--config",
      lambda c: __import__("stochclosure.train_cli", fromlist=["x"]).load_train_config(
          c.path("tag.yaml", _PICKLE_TAG))),
    C("generate_unknown_key", "generate.load_config", "trajectorys (typo)", E.ConfigError, "config.trajectorys",
      lambda c: __import__("stochclosure.data.generate", fromlist=["x"]).load_config(
          c.path("g1.yaml", "trajectorys: 3\n"))),
    C("generate_wrong_type", "generate.load_config", "resolutions: 32 (not a list)", E.ConfigError,
      "config.resolutions", lambda c: __import__("stochclosure.data.generate", fromlist=["x"]).load_config(
          c.path("g2.yaml", "resolutions: 32\n"))),
    C("rollout_unknown_key", "load_rollout_config", "member: 4 (typo)", E.ConfigError, "member",
      lambda c: __import__("stochclosure.rollout_cli", fromlist=["x"]).load_rollout_config(
          c.rollout_config("r1", member=4))),
    # -- command line ----------------------------------------------------------------------------------------
    C("cli_generate_unknown_key", "stochclosure generate", "trajectorys: 3", E.ConfigError, "config.trajectorys",
      lambda c: _gen_cli(c, "cg1.yaml", "trajectorys: 3\n"), cli=True),
    C("cli_generate_unknown_system", "stochclosure generate", "--system nss", E.UnknownPluginError, "'nss'",
      lambda c: _gen_cli(c, "cg2.yaml", "{}\n", system="nss"), cli=True),
    C("cli_generate_system_key", "stochclosure generate", "system: {n: 8} for lorenz96", E.ConfigError,
      "config.system.n", lambda c: _gen_cli(c, "cg3.yaml", "system: {n: 8}\n"), cli=True),
    C("cli_train_missing_config", "stochclosure train", "--config of a missing file", E.ConfigError, "--config",
      lambda c: ["train", "--config", str(c.folder / "missing.yaml")], cli=True),
    C("cli_train_wrong_type", "stochclosure train", "seed: 'zero'", E.ConfigError, "seed",
      lambda c: _cli_train(c, "ct1", seed="zero"), cli=True),
    C("cli_train_trainer_key", "stochclosure train", "trainer.max_step (typo)", E.ConfigError, "trainer.max_step",
      lambda c: _cli_train(c, "ct2", trainer={"max_step": 3}), cli=True),
    C("cli_train_missing_h5", "stochclosure train", "data.path of a missing file", E.DatasetError, "path",
      lambda c: _cli_train(c, "ct3", **{"data.path": str(c.folder / "none.h5")}), cli=True),
    C("cli_train_python_tag", "stochclosure train", "a !!python/object/apply tag", E.ConfigError, "--config",
      lambda c: ["train", "--config", str(c.path("ctag.yaml", _PICKLE_TAG))], cli=True),
    C("cli_rollout_bad_checkpoint", "stochclosure rollout", "model: a file that is not a checkpoint",
      E.CheckpointError, "junk.safetensors",
      lambda c: ["rollout", "--config", str(c.rollout_config(
          "cr1", model=str(c.path("junk.safetensors", b"junk" * 20)))), "--no-progress"], cli=True),
    C("cli_rollout_negative_steps", "stochclosure rollout", "n_steps: -1", E.ConfigError, "n_steps",
      lambda c: ["rollout", "--config", str(c.rollout_config("cr2", n_steps=-1)), "--no-progress"], cli=True),
    C("cli_rollout_zero_members", "stochclosure rollout", "members: 0", E.ConfigError, "members",
      lambda c: ["rollout", "--config", str(c.rollout_config("cr3", members=0)), "--no-progress"], cli=True),
]


def run_case(case: BadInput, ctx: Context) -> Outcome:
    """Run one row and judge it (type, argument named, one line and non-zero exit for the CLI)."""
    if case.cli:
        from ..cli import main

        argv = case.run(ctx)
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = main(argv)
        lines = [ln for ln in err.getvalue().splitlines() if ln.strip()]
        line = lines[-1] if lines else ""
        got = line.split("error: ", 1)[-1].split(":", 1)[0] if "error: " in line else "none"
        ok = (code != 0 and len(lines) == 1 and got == case.error.__name__ and case.argument in line
              and "Traceback" not in err.getvalue())
        return Outcome(case, got, line.split("error: ", 1)[-1], ok, code)
    if issubclass(case.error, Warning):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                case.run(ctx)
            except Exception as exc:  # noqa: BLE001 - reported as the outcome
                return Outcome(case, type(exc).__name__, str(exc), False)
        hits = [w for w in caught if issubclass(w.category, case.error)]
        if not hits:
            return Outcome(case, "none", "", False)
        msg = str(hits[0].message)
        return Outcome(case, hits[0].category.__name__, msg, case.argument in msg)
    try:
        case.run(ctx)
    except Exception as exc:  # noqa: BLE001 - reported as the outcome
        msg = str(exc)
        ok = isinstance(exc, case.error) and isinstance(exc, E.StochClosureError) and case.argument in msg
        return Outcome(case, type(exc).__name__, msg, ok)
    return Outcome(case, "none", "", False)
