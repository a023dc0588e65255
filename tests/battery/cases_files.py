"""Rows of the bad-input battery: files read and written (generate, HDF5 datasets, checkpoints, YAML/JSON bounds)."""

from __future__ import annotations

import atexit
import hashlib
import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from stochclosure import errors as E

from .base import BadInput, Context, gen_cli, h5_dataset, load

C = BadInput

L96 = "system: {K: 8, J: 16}\ntrajectories: 2\nbatch_size: 1\nrecords: 2\nspinup_steps: 2\nobs_grid: 4\n"


def laughs(levels: int = 9) -> str:
    """Nine levels of nine aliases (9**10 values once expanded), as one flow list of anchors."""
    items = ["&a0 [" + ", ".join(["lol"] * 9) + "]"]
    items += [f"&a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, levels + 1)]
    return "[" + ", ".join(items) + "]"


def gen_config(ctx: Context, name: str, text: str) -> Any:
    from stochclosure.data.generate import load_config

    return load_config(ctx.path(name, text))


def _release(proc: subprocess.Popen[str]) -> None:
    """Let a lock holder go: closing its standard input ends it."""
    if proc.stdin is not None:
        proc.stdin.close()
    proc.wait(timeout=30)


def locked_generate(ctx: Context) -> list[str]:
    """``generate`` argv on an ``--out`` whose lock a second, still running process holds."""
    out = ctx.folder / "locked.h5"
    lock = out.with_name(out.name + ".lock")
    holder = ("import fcntl, os, sys\n"
              f"fd = os.open({str(lock)!r}, os.O_RDWR | os.O_CREAT, 0o644)\n"
              "fcntl.flock(fd, fcntl.LOCK_EX)\nos.ftruncate(fd, 0)\nos.write(fd, f'{os.getpid()}\\n'.encode())\n"
              "print('held', flush=True)\nsys.stdin.read()\n")
    proc = subprocess.Popen([sys.executable, "-c", holder], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    proc.stdout.close()
    atexit.register(_release, proc)  # the holder keeps the lock until the battery's process ends
    return ["generate", "--system", "lorenz96", "--config", str(ctx.path("locked.yaml", L96)), "--out", str(out),
            "--no-progress"]


# -- HDF5 edits ---------------------------------------------------------------------------------------------------

def h5_edit(ctx: Context, name: str, edit: Callable[[Any], None]) -> Path:
    return ctx.h5(name, edit)


def set_item(key: str, index: int, value: Any) -> Callable[[Any], None]:
    def edit(f: Any) -> None:
        f[key][index] = value
    return edit


def replace(key: str, make: Callable[[np.ndarray], np.ndarray]) -> Callable[[Any], None]:
    def edit(f: Any) -> None:
        data = make(f[key][()])
        del f[key]
        f[key] = data
    return edit


def set_ds_attr(key: str, name: str, value: Any) -> Callable[[Any], None]:
    def edit(f: Any) -> None:
        f[key].attrs[name] = value
    return edit


def set_file_attr(name: str, value: Any) -> Callable[[Any], None]:
    def edit(f: Any) -> None:
        f.attrs[name] = value
    return edit


def drop(key: str) -> Callable[[Any], None]:
    def edit(f: Any) -> None:
        del f[key]
    return edit


def cli_train_on(ctx: Context, name: str, h5: Path) -> list[str]:
    cfg = {"data": {"path": str(h5), "closure": "H", "resolution": 16},
           "model": {"sde": "vp", "score": {"type": "fno", "sde": "vp", "width": 4, "modes": 4, "layers": 1,
                                            "embed_dim": 4, "encoder": "field"}},
           "trainer": {"batch_size": 2, "max_steps": 1}, "out": f"run-{name}"}
    return ["train", "--config", str(ctx.path(f"{name}.yaml", yaml.safe_dump(cfg))), "--no-progress"]


# -- checkpoint edits ---------------------------------------------------------------------------------------------

def fno_checkpoint(ctx: Context, name: str) -> Path:
    """A fresh directory checkpoint of a tiny FNO closure model (float32 and complex64 weights)."""
    from stochclosure.model import ClosureModel

    model = ClosureModel("vp", ctx.fno, {"type": "euler_maruyama", "steps": 2})
    return model.save(ctx.folder / name)


def edit_weights(d: Path, edit: Callable[[dict[str, torch.Tensor]], None]) -> Path:
    """Change ``model.safetensors`` of ``d`` (metadata kept) and record its new SHA-256, as a forger would."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    path = d / "model.safetensors"
    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata()
    tensors = load_file(str(path))
    edit(tensors)
    save_file(tensors, str(path), metadata=meta)
    return edit_config(d, lambda c: c["files"].__setitem__("model.safetensors",
                                                           hashlib.sha256(path.read_bytes()).hexdigest()))


def edit_config(d: Path, edit: Callable[[dict[str, Any]], None]) -> Path:
    cfg = json.loads((d / "config.json").read_text())
    edit(cfg)
    (d / "config.json").write_text(json.dumps(cfg))
    return d


def set_tensor(key: str, value: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[dict[str, torch.Tensor]], None]:
    def edit(t: dict[str, torch.Tensor]) -> None:
        t[key] = value(t[key])
    return edit


def set_stat(name: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(c: dict[str, Any]) -> None:
        c["normalisation"][name] = value
    return edit


def swap_sde(c: dict[str, Any]) -> None:
    """The model's SDE and the score's, swapped consistently (ClosureModel alone cannot tell)."""
    c["model"]["sde"], c["model"]["score"]["sde"] = "ve", "ve"


def link_outside(ctx: Context, name: str) -> Path:
    d = fno_checkpoint(ctx, name)
    outside = ctx.folder / f"{name}-outside.safetensors"
    shutil.move(d / "model.safetensors", outside)
    (d / "model.safetensors").symlink_to(outside)
    return d


def deep_config(ctx: Context, name: str) -> Path:
    d = fno_checkpoint(ctx, name)
    text = (d / "config.json").read_text().rstrip().rstrip("}") + ', "x": ' + "[" * 100_000 + "]" * 100_000 + "}"
    (d / "config.json").write_text(text)
    return d


def huge_config(ctx: Context, name: str) -> Path:
    d = fno_checkpoint(ctx, name)
    text = (d / "config.json").read_text().rstrip().rstrip("}") + ', "x": "' + " " * (16 * 2**20) + '"}'
    (d / "config.json").write_text(text)
    return d


def rollout_with(ctx: Context, name: str, model: Path) -> list[str]:
    cfg = {"model": str(model), "system": {"type": "linear_relaxation", "n": 16}, "n_steps": 2, "members": 2,
           "out": f"{name}.safetensors"}
    return ["rollout", "--config", str(ctx.path(f"{name}.yaml", yaml.safe_dump(cfg))), "--no-progress"]


def int8(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.int8)


CASES: list[BadInput] = [
    # -- generate: configuration checked before any work, one writer per output -------------------------------
    C("gen_bad_compression", "generate.load_config", "compression: bogus (no such h5py filter)", E.ConfigError,
      "config.compression", lambda c: gen_config(c, "gc1.yaml", "compression: bogus\n")),
    C("gen_bad_compression_level", "generate.load_config", "compression_level: 11 (gzip takes 0-9)", E.ConfigError,
      "config.compression_level", lambda c: gen_config(c, "gc2.yaml", "compression_level: 11\n")),
    C("gen_empty_closures", "generate.load_config", "closures: []", E.ConfigError, "config.closures",
      lambda c: gen_config(c, "gc3.yaml", "closures: []\n")),
    C("gen_empty_resolutions", "generate.load_config", "resolutions: []", E.ConfigError, "config.resolutions",
      lambda c: gen_config(c, "gc4.yaml", "resolutions: []\n")),
    C("gen_seed_overflow", "generate.load_config", "seed: 2**64 (above the 64-bit attribute)", E.ConfigError,
      "config.seed", lambda c: gen_config(c, "gc5.yaml", f"seed: {2**64}\n")),
    C("gen_store_dtype", "generate.load_config", "store_dtype: int8", E.ConfigError, "config.store_dtype",
      lambda c: gen_config(c, "gc6.yaml", "store_dtype: int8\n")),
    C("gen_alias_bomb", "generate.load_config", "a YAML alias bomb (9**10 values) under compression",
      E.ConfigError, "--config", lambda c: gen_config(c, "gc7.yaml", f"compression: {laughs()}\n")),
    C("cli_generate_bad_compression", "stochclosure generate", "compression: bogus", E.ConfigError,
      "config.compression", lambda c: gen_cli(c, "cgf1.yaml", L96 + "compression: bogus\n"), cli=True),
    C("cli_generate_empty_closures", "stochclosure generate", "closures: []", E.ConfigError, "config.closures",
      lambda c: gen_cli(c, "cgf2.yaml", L96 + "closures: []\n"), cli=True),
    C("cli_generate_obs_grid", "stochclosure generate", "obs_grid: 3, not dividing K = 8 (found by the probe)",
      E.ConfigError, "config.obs_grid", lambda c: gen_cli(c, "cgf3.yaml", L96.replace("obs_grid: 4", "obs_grid: 3")),
      cli=True),
    C("cli_generate_alias_bomb", "stochclosure generate", "a YAML alias bomb under system", E.ConfigError,
      "--config", lambda c: gen_cli(c, "cgf4.yaml", f"system: {{K: 8, J: {laughs()}}}\n"), cli=True),
    C("cli_generate_locked", "stochclosure generate", "an --out another running process is writing (locked)",
      E.OutputError, "--out", locked_generate, cli=True),
    C("cli_train_alias_bomb", "stochclosure train", "a YAML alias bomb in the training config", E.ConfigError,
      "--config", lambda c: ["train", "--config", str(c.path("ctf1.yaml", f"data: {laughs()}\n"))], cli=True),
    # -- HDF5 datasets ------------------------------------------------------------------------------------------
    C("h5_split_out_of_range", "ClosureH5Dataset", "split label 5 (labels are 0, 1, 2)", E.DatasetError, "split",
      lambda c: h5_dataset(h5_edit(c, "split5.h5", set_item("split", 0, 5)))),
    C("h5_split_wrong_length", "ClosureH5Dataset", "a split of 3 labels for 2 trajectories", E.DatasetError,
      "split", lambda c: h5_dataset(h5_edit(c, "split3.h5", replace("split", lambda s: np.zeros(3, s.dtype))))),
    C("h5_target_shorter", "ClosureH5Dataset", "res_16/H with 1 record, the state with 2", E.DatasetError,
      "res_16/H", lambda c: h5_dataset(h5_edit(c, "short.h5", replace("res_16/H", lambda a: a[:, :1])))),
    C("h5_fewer_states", "ClosureH5Dataset", "res_16/state with 1 trajectory, res_16/H with 2", E.DatasetError,
      "res_16/state", lambda c: h5_dataset(h5_edit(c, "fewer.h5", replace("res_16/state", lambda a: a[:1])))),
    C("h5_missing_obs_points", "ClosureH5Dataset", "no obs_points dataset, measurements requested", E.DatasetError,
      "obs_points", lambda c: h5_dataset(h5_edit(c, "nopoints.h5", drop("obs_points")))),
    C("h5_deep_json", "ClosureH5Dataset", "attribute closures nested 50000 levels deep", E.DatasetError, "closures",
      lambda c: h5_dataset(h5_edit(c, "deep.h5", set_file_attr("closures", "[" * 50_000 + "]" * 50_000)))),
    C("h5_huge_json", "ClosureH5Dataset", "attribute system_config of 16 MiB + 3 characters", E.DatasetError,
      "system_config", lambda c: h5_dataset(h5_edit(c, "huge.h5", set_file_attr(
          "system_config", '"' + "x" * (16 * 2**20 + 1) + '"')))),
    C("h5_nan_statistics", "ClosureH5Dataset", "stored mean [nan] of res_16/H", E.DatasetError,
      "res_16/H.attrs['mean']", lambda c: h5_dataset(h5_edit(c, "nanstat.h5", set_ds_attr(
          "res_16/H", "mean", np.array([np.nan]))))),
    C("h5_string_statistics", "ClosureH5Dataset", "stored std 'large' of res_16/H", E.DatasetError,
      "res_16/H.attrs['std']", lambda c: h5_dataset(h5_edit(c, "strstat.h5", set_ds_attr(
          "res_16/H", "std", "large")))),
    C("cli_train_split_out_of_range", "stochclosure train", "data.path with split label 7", E.DatasetError,
      "split", lambda c: cli_train_on(c, "ctf2", h5_edit(c, "split7.h5", set_item("split", 1, 7))), cli=True),
    # -- checkpoints ------------------------------------------------------------------------------------------
    C("ckpt_link_outside", "load_model", "model.safetensors: a link to a file outside the folder",
      E.CheckpointError, "model.safetensors", lambda c: load(link_outside(c, "linked"))),
    C("ckpt_int8_weights", "load_model", "int8 score.film.weight for a float32 parameter", E.CheckpointError,
      "score.film.weight", lambda c: load(edit_weights(fno_checkpoint(c, "int8"),
                                                       set_tensor("score.film.weight", int8)))),
    C("ckpt_float64_weights", "load_model", "float64 weights for float32 parameters (would be rounded)",
      E.CheckpointError, "score.film.weight", lambda c: load(edit_weights(fno_checkpoint(c, "f64"), set_tensor(
          "score.film.weight", lambda t: t.double())))),
    C("ckpt_nan_mean", "load_model", "normalisation.target_mean: [NaN] in config.json", E.CheckpointError,
      "normalisation.target_mean", lambda c: load(edit_config(fno_checkpoint(c, "nanmean"),
                                                              set_stat("target_mean", [float("nan")])))),
    C("ckpt_inf_std", "load_model", "normalisation.target_std: [Infinity] in config.json", E.CheckpointError,
      "normalisation.target_std", lambda c: load(edit_config(fno_checkpoint(c, "infstd"),
                                                             set_stat("target_std", [float("inf")])))),
    C("ckpt_string_std", "load_model", "normalisation.target_std: ['big']", E.CheckpointError,
      "normalisation.target_std", lambda c: load(edit_config(fno_checkpoint(c, "strstd"),
                                                             set_stat("target_std", ["big"])))),
    C("ckpt_null_mean", "load_model", "normalisation.target_mean: null", E.CheckpointError,
      "normalisation.target_mean", lambda c: load(edit_config(fno_checkpoint(c, "nullmean"),
                                                              set_stat("target_mean", None)))),
    C("ckpt_weights_inf_std", "load_model", "target_std = inf among the weights (config intact)", E.CheckpointError,
      "target_std", lambda c: load(edit_weights(fno_checkpoint(c, "winf"), set_tensor(
          "target_std", lambda t: torch.full_like(t, float("inf")))))),
    C("ckpt_deep_json", "load_model", "config.json nested 100000 levels deep", E.CheckpointError, "config.json",
      lambda c: load(deep_config(c, "deepjson"))),
    C("ckpt_huge_config", "load_model", "a 16 MiB config.json", E.CheckpointError, "config.json",
      lambda c: load(huge_config(c, "hugejson"))),
    C("ckpt_swapped_sde", "load_model", "model.sde and score.sde swapped to 've' in config.json (trained with 'vp')",
      E.IncompatibleComponentsError, "model.sde", lambda c: load(edit_config(fno_checkpoint(c, "swapped"),
                                                                            swap_sde))),
    C("cli_rollout_int8_weights", "stochclosure rollout", "model: a checkpoint with int8 weights",
      E.CheckpointError, "score.film.weight", lambda c: rollout_with(c, "crf1", edit_weights(
          fno_checkpoint(c, "int8cli"), set_tensor("score.film.weight", int8))), cli=True),
    C("cli_rollout_swapped_sde", "stochclosure rollout", "model: a checkpoint whose SDE was swapped",
      E.IncompatibleComponentsError, "model.sde", lambda c: rollout_with(c, "crf2", edit_config(
          fno_checkpoint(c, "swappedcli"), swap_sde)), cli=True),
]
