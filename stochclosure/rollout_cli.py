"""``stochclosure rollout --config FILE.yaml``: a resumable ensemble rollout from a checkpoint.

The YAML file (read with ``yaml.safe_load``; relative paths follow the rule of
:mod:`stochclosure._io`: inside the config's folder, or inside its ``root``)::

    model: runs/ns2d/step-00002000   # a checkpoint (directory or .safetensors), or `none` (no closure)
    system: {type: navier_stokes_2d, n: 32}
    initial: {seed: 0}               # system.initial_state(1) seeded so; or {path: state.safetensors}
    n_steps: 500
    members: 16
    seed: 0                          # seeds the member keys, in [0, 2**32)
    checkpoint_every: 50
    record_every: 10
    resample_every: 1
    sampler_steps: null              # override of the model's sampler steps
    out: ensemble.safetensors

The output is one safetensors file (``states`` ``(time, members, ...)``, ``times``, ``steps``,
JSON metadata), written atomically. While running, ``OUT.ckpt`` holds the rollout checkpoint
(:mod:`stochclosure.rollouts.resume`); a killed run started again with the same config continues
from it and writes exactly the file an uninterrupted run writes. A finished ``out`` of the same
configuration is left as it is; one of another configuration is refused.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from ._io import preflight_output, resolve_config_path
from .cli import command
from .config import ENSEMBLE_SEED_LIMIT, check_seed, load_yaml_mapping
from .errors import ConfigError, format_error

__all__ = ["load_rollout_config", "run_rollout", "ROLLOUT_DEFAULTS"]

ROLLOUT_DEFAULTS: dict[str, Any] = {"initial": {"seed": 0}, "n_steps": 100, "members": 8, "seed": 0,
                                    "checkpoint_every": 50, "record_every": 1, "resample_every": 1,
                                    "sampler_steps": None}
_REQUIRED = ("model", "system", "out")


def load_rollout_config(path: str | Path) -> dict[str, Any]:
    """Read and check a rollout YAML file (unknown keys and wrong types raise :class:`ConfigError`)."""
    path = Path(path)
    raw = load_yaml_mapping(path, "a mapping with keys model, system, out")
    allowed = {*ROLLOUT_DEFAULTS, *_REQUIRED, "root"}
    unknown = sorted(str(k) for k in set(raw) - allowed)
    if unknown:
        raise ConfigError(format_error(unknown[0], f"one of the keys {sorted(allowed)}", f"unknown key(s) {unknown}",
                                       "check the spelling against `stochclosure rollout --help`"))
    for key in _REQUIRED:
        if key not in raw:
            raise ConfigError(format_error(key, f"a {key!r} entry in the config", "nothing"))
    cfg = {**ROLLOUT_DEFAULTS, **raw}
    for key, minimum in (("n_steps", 0), ("members", 1), ("checkpoint_every", 1), ("record_every", 1),
                         ("resample_every", 1)):
        v = cfg[key]
        if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
            raise ConfigError(format_error(key, f"an integer >= {minimum}", f"{type(v).__name__} {v!r}"))
    cfg["seed"] = check_seed(cfg["seed"], "seed", limit=ENSEMBLE_SEED_LIMIT)  # it seeds the ensemble
    if cfg["sampler_steps"] is not None and (not isinstance(cfg["sampler_steps"], int) or cfg["sampler_steps"] < 1):
        raise ConfigError(format_error("sampler_steps", "null or a positive integer", repr(cfg["sampler_steps"])))
    if not isinstance(cfg["system"], (str, dict)):
        raise ConfigError(format_error("system", "a system name or {type: NAME, ...}", repr(cfg["system"])))
    init = cfg["initial"]
    if not isinstance(init, dict) or len(init) != 1 or not ({"seed", "path"} & set(init)):
        raise ConfigError(format_error("initial", "{seed: INT} or {path: FILE.safetensors}", repr(init)))
    root = cfg.pop("root", None)
    if "path" in init:
        cfg["initial"] = {"path": resolve_config_path(init["path"], "initial.path", path, root)}
    else:
        check_seed(init["seed"], "initial.seed")
    if cfg["model"] not in (None, "none"):
        cfg["model"] = resolve_config_path(cfg["model"], "model", path, root)
    else:
        cfg["model"] = None
    cfg["out"] = resolve_config_path(cfg["out"], "out", path, root)
    return cfg


def _initial_state(system: Any, init: dict[str, Any]) -> Any:
    import torch

    from .checkpoint import load_tensors

    if "path" in init:
        tensors = load_tensors(init["path"])
        if "state" not in tensors:
            raise ConfigError(format_error("initial.path", "a safetensors file with a tensor named 'state'",
                                           f"tensors {sorted(tensors)}"))
        return tensors["state"]
    return system.initial_state(1, generator=torch.Generator().manual_seed(int(init["seed"])))[0]


def run_rollout(cfg: dict[str, Any], progress: bool = True) -> Path:
    """Run (or resume) the ensemble of ``cfg`` and write ``cfg["out"]``; returns the output path."""
    import torch

    from ._memory import check_ensemble_memory
    from .checkpoint import load_model, save_tensors
    from .registry import resolve
    from .rollouts.resume import resumable_ensemble, run_fingerprint

    out = Path(cfg["out"])
    ckpt = out.with_name(out.name + ".ckpt")
    preflight_output(out, "out")
    system = resolve("system", cfg["system"])
    model = None if cfg["model"] is None else load_model(cfg["model"])
    state0 = _initial_state(system, cfg["initial"])
    check_ensemble_memory(cfg["members"], cfg["n_steps"], cfg["record_every"], tuple(state0.shape), state0.dtype,
                          state0.device)
    kw = {"record_every": cfg["record_every"], "resample_every": cfg["resample_every"],
          "sampler_steps": cfg["sampler_steps"]}
    fingerprint = run_fingerprint(system, model, state0, cfg["n_steps"], cfg["members"], cfg["seed"], kw)
    if out.exists():
        try:
            done = json.loads(_metadata(out).get("stochclosure", "{}"))
        except Exception:  # noqa: BLE001
            done = {}
        if done.get("fingerprint") != fingerprint:
            raise ConfigError(format_error("out", "a new path or the output of this same configuration",
                                           f"{str(out)!r}, written by another run", "choose another out or delete it"))
        ckpt.unlink(missing_ok=True)
        return out
    res = resumable_ensemble(system, model, state0, cfg["n_steps"], cfg["members"], seed=cfg["seed"],
                             checkpoint=ckpt, checkpoint_every=cfg["checkpoint_every"], progress=progress, **kw)
    meta = {"format": "stochclosure.ensemble", "fingerprint": fingerprint, "dims": list(res.dims),
            "member_dim": res.member_dim, "config": {k: v for k, v in cfg.items()}}
    save_tensors(out, {"states": res.states, "times": res.times, "steps": res.steps,
                       "step_seconds": torch.as_tensor(res.step_seconds)},
                 {"stochclosure": json.dumps(meta, default=str)})
    ckpt.unlink(missing_ok=True)
    return out


def _metadata(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        return fh.metadata() or {}


def _run(args: argparse.Namespace) -> int:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_rollout_config(args.config)
    t0 = time.perf_counter()
    path = run_rollout(cfg, progress=not args.no_progress)
    print(f"wrote {path} ({cfg['members']} members, {cfg['n_steps']} steps, {time.perf_counter() - t0:.1f} s)",
          file=sys.stderr)
    return 0


def _add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="rollout YAML (model, system, initial, n_steps, members, out)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")


_run.add_args = _add_args  # type: ignore[attr-defined]
command("rollout", "run a resumable, checkpointed ensemble rollout from a trained closure")(_run)
