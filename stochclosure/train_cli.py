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
      # or any registered closure law by its name, e.g.
      # {type: gaussian, loss: crps, backbone: {type: fno, encoder: {type: field}}}
    trainer:                    # keyword arguments of stochclosure.train.Trainer
      batch_size: 32
      max_steps: 2000
      lr: 1.0e-3
    out: runs/ns2d_tiny         # checkpoint directory
    seed: 0                     # seeds the initial weights, the data order and the noise

``model.channels`` defaults to the data's. Every value is checked before any work. Each
checkpoint directory ``out/step-XXXXXXXX`` is loadable with
:func:`stochclosure.checkpoint.load_model`; ``out/latest`` names the newest.

``out`` is one run (:mod:`stochclosure.runs`): a second job on it stops at once (lock), a fresh
run refuses a folder that holds a run, and ``--resume`` continues from the latest checkpoint (or
starts fresh when there is none) only if the configuration (data, model, trainer, seed) is the
one stored with the run; ``trainer.max_steps`` may grow, anything else needs
``--allow-config-change`` and is recorded in ``out/run-history.jsonl``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from ._io import preflight_output, resolve_config_path
from .cli import command
from .config import check_config_keys, check_device, check_seed, load_yaml_mapping
from .errors import ConfigError, format_error
from .runs import check_run_folder, latest_checkpoint, run_lock

__all__ = ["load_train_config", "run_training", "check_law_block", "check_blocks", "resolve_paths", "check_trainer_block",
           "data_block", "open_datasets", "run_folder", "run_command", "add_run_args", "print_summary"]

_BLOCKS = {"data", "model", "trainer", "out", "seed", "root"}
_DATA_KEYS = {"path", "closure", "resolution", "history", "obs", "val_split"}
_MODEL_KEYS = {"sde", "score", "sampler", "channels"}
_DATA_DEFAULTS = {"closure": None, "resolution": None, "history": 0, "obs": True, "val_split": "val"}


def check_blocks(cfg: dict[str, Any], blocks: Iterable[tuple[str, set[str]]], command_name: str) -> None:
    """Refuse unknown keys (and blocks that are not mappings) in a ``--config`` file.

    Args:
        cfg: The parsed YAML mapping.
        blocks: ``(block, allowed keys)`` pairs; block ``""`` is the top level.
        command_name: The sub-command, for the fix (``"train"``, ``"distill"``).

    Raises:
        ConfigError: naming the first unknown key as ``block.key``.
    """
    for block, allowed in blocks:
        section = cfg if not block else cfg.get(block) or {}
        if not isinstance(section, dict):
            raise ConfigError(format_error(block, "a mapping", f"{type(section).__name__} {section!r}"))
        unknown = sorted(str(k) for k in set(section) - allowed)
        if unknown:
            where = f"{block}.{unknown[0]}" if block else unknown[0]
            raise ConfigError(format_error(where, f"one of the keys {sorted(allowed)}", f"unknown key(s) {unknown}",
                                           f"check the spelling against `stochclosure {command_name} --help`"))


def resolve_paths(cfg: dict[str, Any], config_path: str | Path, keys: Iterable[str]) -> None:
    """Resolve every path key of a config in place by the one config-path rule (:mod:`stochclosure._io`).

    Pops the optional top-level ``root`` key. Relative paths are relative to the config's folder
    and may not leave it (or ``root``); absolute paths are used as given.

    Args:
        cfg: The parsed config (changed in place).
        config_path: The YAML file.
        keys: Dotted keys of the paths (``"data.path"``, ``"out"``).

    Raises:
        ConfigError: a path that is not a string, or one leaving the allowed folder.
    """
    root = cfg.pop("root", None)
    for key in keys:
        block, _, name = key.rpartition(".")
        section = cfg[block] if block else cfg
        section[name] = resolve_config_path(section[name], key, config_path, root)


# key -> (accepted types, description); None is accepted where the default is None
_TYPES: dict[str, tuple[tuple[type, ...], str]] = {
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
    if "seed" in cfg:
        check_seed(cfg["seed"], "seed")
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


def check_trainer_block(cfg: dict[str, Any]) -> dict[str, Any]:
    """Check the ``trainer:`` block (known keys, every value) before any work; returns a copy of it."""
    from .train import Trainer, check_trainer_options

    kw = dict(cfg.get("trainer") or {})
    check_config_keys(Trainer, {"model": None, "train_data": None, **kw}, where="trainer")
    check_trainer_options(kw, where="trainer.")
    return kw


def load_train_config(path: str | Path) -> dict[str, Any]:
    """Read and check a training YAML file before any work.

    Unknown keys, wrong types and out-of-range values (every ``trainer`` option, the seed) raise
    :class:`ConfigError` naming them; paths follow the config-path rule.
    """
    path = Path(path)
    cfg = load_yaml_mapping(path, "a mapping with blocks data, model, trainer, out")
    law = isinstance(cfg.get("model"), dict) and "type" in cfg["model"]
    check_blocks(cfg, (("", _BLOCKS), ("data", _DATA_KEYS)) + ((("model", _MODEL_KEYS),) if not law else ()),
                 "train")
    for key in ("data", "model", "out"):
        if key not in cfg:
            raise ConfigError(format_error(key, f"a {key!r} entry in the config", "nothing"))
        if key != "out" and not isinstance(cfg[key], dict):
            raise ConfigError(format_error(key, "a mapping", f"{type(cfg[key]).__name__} {cfg[key]!r}"))
    if "path" not in cfg["data"] or not ({"score", "type"} & set(cfg["model"])):
        raise ConfigError(format_error("data.path / model.score", "both set (or model.type naming a closure law)",
                                       "missing"))
    _check_types(cfg)
    if law:
        check_law_block(cfg["model"])
    check_trainer_block(cfg)
    resolve_paths(cfg, path, ("data.path", "out"))
    return cfg


def check_law_block(m: dict[str, Any]) -> None:
    """A ``model:`` block naming a closure law: a registered name and the law's constructor keys.

    Raises:
        UnknownPluginError: ``model.type`` is not a registered closure law (import paths included).
        ConfigError: an unknown key for that law.
    """
    from .errors import UnknownPluginError
    from .registry import get_registry

    registry = get_registry("closure")
    name = m["type"]
    if not isinstance(name, str) or name not in registry:  # names and 'dist:name' pins only, never module paths
        raise UnknownPluginError(format_error("model.type", f"a registered closure law ({', '.join(registry.names())})",
                                              repr(name), "or give model.score for a diffusion model"))
    check_config_keys(registry.get(name), {k: v for k, v in m.items() if k != "type"}, where="model")


def data_block(d: dict[str, Any]) -> dict[str, Any]:
    """The ``data`` block with its defaults filled in (the form recorded in the run's checkpoints)."""
    return {"path": d["path"], **{k: d.get(k, v) for k, v in _DATA_DEFAULTS.items()}}


def open_datasets(d: dict[str, Any]) -> tuple[Any, Any]:
    """``(train, validation or None)`` :class:`~stochclosure.data.hdf5.ClosureH5Dataset` of a ``data`` block."""
    from .data.hdf5 import ClosureH5Dataset

    d = data_block(d)
    common = {"closure": d["closure"], "resolution": d["resolution"], "history": int(d["history"]),
              "obs": bool(d["obs"])}
    train = ClosureH5Dataset(d["path"], split="train", **common)
    val = ClosureH5Dataset(d["path"], split=d["val_split"], **common) if d["val_split"] else None
    if val is not None and len(val) == 0:
        val = None
    return train, val


@contextlib.contextmanager
def run_folder(out: str | Path, resume: bool) -> Iterator[None]:
    """Before any work: check ``out`` can be written, lock it (on rank 0), refuse to overwrite a run.

    With ``resume`` the ``latest`` pointer is checked too. Under torchrun only rank 0 (``RANK``)
    takes the lock: the ranks of one job write one folder together.
    """
    preflight_output(out, "out", is_dir=True)
    rank0 = int(os.environ.get("RANK", "0")) == 0
    with run_lock(out, "out") if rank0 else contextlib.nullcontext():
        check_run_folder(out, resume, "out", "--resume")
        if resume:
            latest_checkpoint(out)
        yield


def run_training(cfg: dict[str, Any], resume: bool = False, progress: bool = True, *,
                 allow_config_change: bool = False, device: str | None = None) -> Any:
    """Build the datasets, the model and the :class:`~stochclosure.train.Trainer` from ``cfg`` and train.

    ``out`` is locked and checked (:func:`run_folder`) before anything is built; the data block
    and the seed are recorded with the run (compared on resume, see :mod:`stochclosure.runs`).

    Args:
        cfg: From :func:`load_train_config`.
        resume: Continue the run in ``out``.
        progress: Show a progress bar.
        allow_config_change: Resume although the configuration changed (recorded in the run folder).
        device: Overrides ``trainer.device``.

    Returns:
        The :class:`~stochclosure.train.TrainResult`.
    """
    import torch

    from .model import ClosureModel
    from .registry import resolve
    from .train import Trainer

    kw = check_trainer_block(cfg)
    seed = check_seed(cfg.get("seed", 0), "seed")
    if device is not None:
        kw["device"] = device
    with run_folder(cfg["out"], resume):
        train, val = open_datasets(cfg["data"])
        m = dict(cfg["model"])
        channels = int(m.pop("channels", 0) or train[0]["target"].shape[0])
        torch.manual_seed(seed)
        if "type" in m:  # any registered closure law: {type: gaussian, backbone: {...}, ...}
            model = resolve("closure", {**m, "channels": channels})
        else:
            model = ClosureModel(m.get("sde", "ve_exp"), m["score"], m.get("sampler", "euler_maruyama"),
                                 channels=channels)
        kw.setdefault("seed", seed)
        kw.setdefault("progress", progress)
        trainer = Trainer(model, train, val, checkpoint_dir=cfg["out"], **kw)
        trainer.run_config = {"data": data_block(cfg["data"]), "seed": seed}
        trainer._allow_flag = "--allow-config-change"
        return trainer.fit(resume=resume, allow_config_change=allow_config_change)


def run_command(args: argparse.Namespace, load: Callable[[str], dict[str, Any]],
                run: Callable[..., Any], verb: str) -> int:
    """The body of ``train`` and ``distill``: check the flags, load the config, run, report on rank 0."""
    if args.device is not None:
        check_device(args.device, "--device")
    cfg = load(args.config)
    try:
        result = run(cfg, resume=args.resume, progress=not args.no_progress,
                     allow_config_change=args.allow_config_change, device=args.device)
    finally:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():  # launched by torchrun
            dist.destroy_process_group()
    if int(os.environ.get("RANK", "0")) > 0:
        return 0  # rank 0 reports for everyone
    print_summary(result, verb, args.json)
    return 0


def _run(args: argparse.Namespace) -> int:
    return run_command(args, load_train_config, run_training, "trained")


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


def add_run_args(p: argparse.ArgumentParser) -> None:
    """The flags ``train`` and ``distill`` share (``--resume``, ``--allow-config-change``, ``--device``, ...)."""
    p.add_argument("--resume", action="store_true", help="continue the run in `out` from its latest checkpoint")
    p.add_argument("--allow-config-change", action="store_true",
                   help="with --resume: continue although the configuration changed (recorded in "
                        "out/run-history.jsonl)")
    p.add_argument("--device", default=None, help="training device (cpu, cuda, cuda:N); overrides trainer.device")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument("--json", action="store_true", help="also print the summary as one JSON line")


def _add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="training YAML (blocks data, model, trainer, out, seed)")
    add_run_args(p)


_run.add_args = _add_args  # type: ignore[attr-defined]
command("train", "train a closure model on an HDF5 closure dataset (resumable)")(_run)
