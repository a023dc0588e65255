"""The bad-input battery's machinery: a row type, the shared context and the judge.

Every row (:class:`BadInput`) names an entry point (Python API or command line), the bad input,
the error (or warning) class expected and the argument its message must name. The rows live in
the ``cases_*`` modules of this package, by area, and :data:`battery.CASES` joins them; the same
table drives ``tests/test_reliability_battery.py`` (one test per row) and
``benchmarks/reliability.py`` (which writes ``benchmarks/results/reliability.md``), so the
report and the tests cannot drift. It is test code: nothing here ships in the package.

A Python row's ``run(ctx)`` makes the call that must fail. A command-line row's ``run(ctx)``
returns the arguments for :func:`stochclosure.cli.main`, which must exit non-zero with one line
on standard error naming the error class and the argument (no traceback).
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
import yaml

from stochclosure import errors as E
from stochclosure._types import Conditioning

__all__ = ["BadInput", "Outcome", "Context", "run_case"]


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


class Payload:
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
        from stochclosure.model import ClosureModel
        from stochclosure.scores.analytic import LinearGaussianScore

        return ClosureModel("vp", LinearGaussianScore("vp", smoothing_length=0.05, noise_std=0.1),
                            {"type": "euler_maruyama", "steps": 3})

    @cached_property
    def fno(self) -> Any:
        """A tiny FNO score (plugin ``fno``, modes 4, a field + sparse-interpolation encoder)."""
        from stochclosure.registry import resolve

        return resolve("score_operator", {"type": "fno", "sde": "vp", "width": 4, "modes": 4, "layers": 1,
                                          "embed_dim": 4, "encoder": {"type": "field", "channels": 1}})

    @cached_property
    def checkpoint(self) -> Path:
        """A valid single-file checkpoint of :attr:`model`."""
        return self.model.save(self.folder / "model.safetensors")

    @cached_property
    def dataset(self) -> Path:
        """A tiny generated Navier–Stokes closure dataset (16², closure H)."""
        from stochclosure.data.generate import generate

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
        from stochclosure.systems import NavierStokes2D

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


def sample(ctx: Context, cond: Conditioning, **kw: Any) -> Any:
    return ctx.model.sample(cond, **kw)


def nan_pixel(ctx: Context) -> Any:
    f = torch.randn(2, 1, 16, 16)
    f[1, 0, 7, 3] = float("nan")
    return sample(ctx, ctx.cond(fields=f))


def trainer(ctx: Context, target: torch.Tensor | None = None, **kw: Any) -> Any:
    from stochclosure.data import TensorClosureDataset
    from stochclosure.model import ClosureModel
    from stochclosure.train import Trainer

    model = ClosureModel("vp", ctx.fno, {"type": "euler_maruyama", "steps": 2})
    u = torch.randn(4, 1, 16, 16) if target is None else target
    data: Any = TensorClosureDataset(u, fields=torch.randn(u.shape[0], 1, 16, 16))
    if kw.pop("empty", False):
        data = torch.utils.data.Subset(data, [])
    return Trainer(model, data, **{"batch_size": 2, "max_steps": 1, "progress": False, **kw}).fit()


def rollout(ctx: Context, state0: torch.Tensor, n_steps: int = 1, **kw: Any) -> Any:
    from stochclosure.rollouts import rollout

    return rollout(ctx.ns(), None, state0, n_steps, **kw)


def load(path: Path) -> Any:
    from stochclosure.checkpoint import load_model

    return load_model(path)


def truncated(ctx: Context) -> Path:
    data = ctx.checkpoint.read_bytes()
    return ctx.path("truncated.safetensors", data[: len(data) // 2])


def other_version(ctx: Context) -> Path:
    import json

    from stochclosure.checkpoint import FORMAT_VERSION

    d = ctx.model.save(ctx.folder / "v_next")
    cfg = json.loads((d / "config.json").read_text())
    cfg["format_version"] = FORMAT_VERSION + 1
    (d / "config.json").write_text(json.dumps(cfg))
    return d


def h5_dataset(path: Path, **kw: Any) -> Any:
    from stochclosure.data import ClosureH5Dataset

    return ClosureH5Dataset(path, **kw)


def foreign_h5(ctx: Context) -> Path:
    import h5py

    p = ctx.folder / "foreign.h5"
    with h5py.File(p, "w") as f:
        f["x"] = [1.0, 2.0]
    return p


def delete(key: str) -> Callable[[Any], None]:
    def edit(f: Any) -> None:
        del f[key]
    return edit


def set_attr(key: str, value: Any) -> Callable[[Any], None]:
    def edit(f: Any) -> None:
        f.attrs[key] = value
    return edit


def cli_train(ctx: Context, name: str, **changes: Any) -> list[str]:
    return ["train", "--config", str(ctx.train_config(name, **changes)), "--no-progress"]


def gen_cli(ctx: Context, name: str, text: str, system: str = "lorenz96") -> list[str]:
    return ["generate", "--system", system, "--config", str(ctx.path(name, text)), "--out",
            str(ctx.folder / f"{name}.h5"), "--no-progress"]


def run_case(case: BadInput, ctx: Context) -> Outcome:
    """Run one row and judge it (type, argument named, one line and non-zero exit for the CLI)."""
    if case.cli:
        from stochclosure.cli import main

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
