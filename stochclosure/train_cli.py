"""``stochclosure train --config FILE.yaml [--resume]``: train a closure model on an HDF5 dataset.

Data-parallel on several processes: ``torchrun --standalone --nproc_per_node N -m stochclosure
train --config FILE.yaml`` (see :class:`~stochclosure.train.Trainer`).

The YAML file (read with ``yaml.safe_load``) has four blocks. Relative paths are relative to
the YAML file and must stay inside its folder, or inside the folder named by an optional
top-level ``root`` key (see :mod:`stochclosure._io`); absolute paths are used as given::

    data:                       # a file written by `stochclosure generate`
      path: ns2d_tiny.h5
      closure: H                # default: the file's first closure
      resolution: 32            # default: the finest stored
      history: 0                # earlier states in the condition
      obs: true                 # include the sparse measurements
      val_split: val            # validation split (null: none)
    model:
      sde: ve_exp
      sampler: {type: truncated_karras_em}
      score: {type: fno, encoder: {type: composite, encoders: [field, sparse_interp]}}
    trainer:                    # keyword arguments of stochclosure.train.Trainer
      batch_size: 32
      max_steps: 2000
      lr: 1.0e-3
    out: runs/ns2d_tiny         # checkpoint directory
    seed: 0                     # seeds the initial weights, the data order and the noise

``model.channels`` defaults to the data's. With ``--resume`` the run continues from the latest
checkpoint in ``out`` (and starts fresh when there is none). Each checkpoint directory
``out/step-XXXXXXXX`` is loadable with :func:`stochclosure.checkpoint.load_model`; ``out/latest``
names the newest.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ._io import resolve_config_path
from .cli import command
from .config import load_yaml_mapping
from .errors import ConfigError, format_error

__all__ = ["load_train_config", "run_training"]

_BLOCKS = {"data", "model", "trainer", "out", "seed", "root"}
_DATA_KEYS = {"path", "closure", "resolution", "history", "obs", "val_split"}
_MODEL_KEYS = {"sde", "score", "sampler", "channels"}


def load_train_config(path: str | Path) -> dict[str, Any]:
    """Read and check a training YAML file (unknown keys raise :class:`ConfigError` naming them)."""
    path = Path(path)
    cfg = load_yaml_mapping(path, "a mapping with blocks data, model, trainer, out")
    for block, allowed in (("", _BLOCKS), ("data", _DATA_KEYS), ("model", _MODEL_KEYS)):
        section = cfg if not block else cfg.get(block) or {}
        if not isinstance(section, dict):
            raise ConfigError(format_error(block, "a mapping", type(section).__name__))
        unknown = sorted(str(k) for k in set(section) - allowed)
        if unknown:
            where = f"{block}.{unknown[0]}" if block else unknown[0]
            raise ConfigError(format_error(where, f"one of the keys {sorted(allowed)}", f"unknown key(s) {unknown}",
                                           "check the spelling against `stochclosure train --help`"))
    for key in ("data", "model", "out"):
        if key not in cfg:
            raise ConfigError(format_error(key, f"a {key!r} entry in the config", "nothing"))
        if key != "out" and not isinstance(cfg[key], dict):
            raise ConfigError(format_error(key, "a mapping", f"{type(cfg[key]).__name__} {cfg[key]!r}"))
    if "path" not in cfg["data"] or "score" not in cfg["model"]:
        raise ConfigError(format_error("data.path / model.score", "both set", "missing"))
    _check_types(cfg)
    root = cfg.pop("root", None)
    cfg["data"]["path"] = resolve_config_path(cfg["data"]["path"], "data.path", path, root)
    cfg["out"] = resolve_config_path(cfg["out"], "out", path, root)
    return cfg


# key -> (accepted types, description); None is accepted where the default is None
_TYPES: dict[str, tuple[tuple[type, ...], str]] = {
    "seed": ((int,), "an integer"),
    "data.closure": ((str, type(None)), "a closure name"),
    "data.resolution": ((int, type(None)), "an integer grid size"),
    "data.history": ((int,), "a non-negative integer"),
    "data.obs": ((bool,), "true or false"),
    "data.val_split": ((str, type(None)), "a split name or null"),
    "model.sde": ((str, dict), "an SDE name or {type: ...}"),
    "model.score": ((str, dict), "a score-operator name or {type: ...}"),
    "model.sampler": ((str, dict), "a sampler name or {type: ...}"),
    "model.channels": ((int, type(None)), "a positive integer"),
    "trainer": ((dict, type(None)), "a mapping of Trainer arguments"),
}


def _check_types(cfg: dict[str, Any]) -> None:
    for key, (types, what) in _TYPES.items():
        block, _, name = key.partition(".")
        section = cfg if not name else cfg.get(block) or {}
        name = name or block
        if name not in section:
            continue
        v = section[name]
        bad = not isinstance(v, types) or (isinstance(v, bool) and bool not in types)
        if not bad and key in ("data.history", "data.resolution", "model.channels") and v is not None:
            bad = v < (0 if key == "data.history" else 1)
        if bad:
            raise ConfigError(format_error(key, what, f"{type(v).__name__} {v!r}", "fix the value in the YAML file"))


def run_training(cfg: dict[str, Any], resume: bool = False, progress: bool = True) -> Any:
    """Build the datasets, the model and the :class:`~stochclosure.train.Trainer` from ``cfg`` and train.

    Returns:
        The :class:`~stochclosure.train.TrainResult`.
    """
    import torch

    from .config import check_config_keys
    from .data.hdf5 import ClosureH5Dataset
    from .model import ClosureModel
    from .train import Trainer

    d = cfg["data"]
    common = {"closure": d.get("closure"), "resolution": d.get("resolution"), "history": int(d.get("history", 0)),
              "obs": bool(d.get("obs", True))}
    train = ClosureH5Dataset(d["path"], split="train", **common)
    val_split = d.get("val_split", "val")
    val = ClosureH5Dataset(d["path"], split=val_split, **common) if val_split else None
    if val is not None and len(val) == 0:
        val = None
    m = dict(cfg["model"])
    channels = int(m.pop("channels", 0) or train[0]["target"].shape[0])
    seed = int(cfg.get("seed", 0))
    torch.manual_seed(seed)
    model = ClosureModel(m.get("sde", "ve_exp"), m["score"], m.get("sampler", "euler_maruyama"), channels=channels)
    kw = dict(cfg.get("trainer") or {})
    check_config_keys(Trainer, {"model": None, "train_data": None, **kw}, where="trainer")
    kw.setdefault("seed", seed)
    kw.setdefault("progress", progress)
    trainer = Trainer(model, train, val, checkpoint_dir=cfg["out"], **kw)
    return trainer.fit(resume=resume)


def _run(args: argparse.Namespace) -> int:
    import os

    cfg = load_train_config(args.config)
    try:
        result = run_training(cfg, resume=args.resume, progress=not args.no_progress)
    finally:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():  # launched by torchrun
            dist.destroy_process_group()
    if int(os.environ.get("RANK", "0")) > 0:
        return 0  # rank 0 reports for everyone
    print_summary(result, "trained", args.json)
    return 0


def print_summary(result: Any, verb: str, as_json: bool) -> None:
    """Print a training-like run's one-line summary and checkpoint (and a JSON line with ``as_json``).

    Args:
        result: A :class:`~stochclosure.train.TrainResult`.
        verb: ``"trained"``, ``"distilled"``, ...
        as_json: Also print the summary as one JSON line.
    """
    summary = {"steps": result.steps, "resumed_from": result.resumed_from, "train_loss": result.train_loss,
               "val_loss": result.val_loss, "seconds": round(result.seconds, 2),
               "checkpoint": str(result.checkpoint) if result.checkpoint else None}
    print(f"{verb} {result.steps} steps"
          + (f" (resumed from step {result.resumed_from})" if result.resumed_from else "")
          + f" in {result.seconds:.1f} s: train loss {result.train_loss:.4g}"
          + (f", validation loss {result.val_loss:.4g}" if result.val_loss is not None else ""))
    print(f"checkpoint: {summary['checkpoint']}")
    if as_json:
        print(json.dumps(summary))


def _add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="training YAML (blocks data, model, trainer, out, seed)")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in `out`")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument("--json", action="store_true", help="also print the summary as one JSON line")


_run.add_args = _add_args  # type: ignore[attr-defined]
command("train", "train a closure model on an HDF5 closure dataset (resumable)")(_run)
