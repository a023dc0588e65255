"""Checkpointed ensembles: a long rollout that survives a kill and resumes exactly.

:func:`resumable_ensemble` runs :func:`~stochclosure.rollouts.ensemble` and every
``checkpoint_every`` steps writes everything the rollout loop carries (state, the between-draws
policy state, history, the member keys, the records and closures so far) to one safetensors file,
atomically (temporary file, fsync, rename). A restarted call with the same arguments continues
from the last checkpoint. Because every random draw of member ``j`` at step ``s`` comes from a
generator keyed by ``(member_seed[j], site name)`` (``keyed=True``), the resumed run draws exactly
what the uninterrupted run would have drawn: the result is identical, with no step lost or done
twice. The checkpoint never holds code: safetensors tensors plus JSON metadata.

The pyro trace of a resumed result holds the sites of the resumed part only.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import deque
from pathlib import Path
from typing import Any

import torch
from pyro import poutine
from pyro.poutine.messenger import Messenger
from torch import Tensor

from .._io import preflight_output
from ..checkpoint import hash_tensor, load_tensors, save_tensors
from ..errors import CheckpointError, ConfigError, format_error
from .carry import PolicyState, RolloutCarry
from .core import rollout
from .result import RolloutResult

__all__ = ["resumable_ensemble", "run_fingerprint", "carry_to_tensors", "carry_from_tensors", "FORMAT",
           "FORMAT_VERSION"]

FORMAT = "stochclosure.rollout-checkpoint"
FORMAT_VERSION = 2


def run_fingerprint(system: Any, closure: Any, state0: Tensor, n_steps: int, members: int, seed: int,
                    kwargs: dict[str, Any]) -> str:
    """SHA-256 naming one ensemble run: system, closure (config and weights), state0, sizes, seed, options."""
    h = hashlib.sha256()
    spec = system.spec() if hasattr(system, "spec") else repr(system)
    h.update(json.dumps({"system": spec, "n_steps": n_steps, "members": members, "seed": seed,
                         "kwargs": {k: repr(v) for k, v in sorted(kwargs.items()) if k != "progress"}},
                        sort_keys=True, default=repr).encode())
    hash_tensor(h, state0)
    if isinstance(closure, torch.nn.Module):
        from ..checkpoint import model_config

        if hasattr(closure, "score"):
            h.update(json.dumps(model_config(closure), sort_keys=True, default=repr).encode())
        for k, v in sorted(closure.state_dict().items()):
            h.update(k.encode())
            hash_tensor(h, v)
    else:
        h.update(repr(closure).encode())
    return h.hexdigest()


def carry_to_tensors(carry: RolloutCarry, prefix: str = "") -> tuple[dict[str, Tensor], dict[str, Any]]:
    """A carry as named tensors and JSON metadata (the one serialiser of :class:`RolloutCarry`).

    Args:
        carry: The carry.
        prefix: Prefix of every tensor name (to store it beside other tensors).

    Returns:
        ``(tensors, meta)``; :func:`carry_from_tensors` inverts it.
    """
    t: dict[str, Tensor] = {"state": carry.state, "seconds": torch.tensor(carry.seconds, dtype=torch.float64)}
    if carry.policy.held is not None:
        t["held"] = carry.policy.held
    memory = sorted(k for k, v in carry.policy.memory.items() if v is not None)
    t.update({f"policy.{k}": carry.policy.memory[k] for k in memory})  # type: ignore[misc]
    t.update({f"past.{i}": p for i, p in enumerate(carry.past)})
    t.update({f"records.{i}": r for i, r in enumerate(carry.records)})
    t.update({f"closures.{s}": u for s, u in carry.closures.items()})
    if carry.finite is not None:
        t["finite"] = carry.finite.to(torch.uint8)
    meta = {"step": int(carry.step), "rec_steps": [int(r) for r in carry.rec_steps], "policy_memory": memory,
            "closure_steps": sorted(int(s) for s in carry.closures), "n_past": len(carry.past),
            "nonfinite_step": carry.nonfinite_step}
    # one storage per entry: the state is often also the last record, the held draw a closure
    return {prefix + k: v.detach().clone() for k, v in t.items()}, meta


def carry_from_tensors(tensors: dict[str, Tensor], meta: dict[str, Any], prefix: str = "") -> RolloutCarry:
    """The :class:`RolloutCarry` that :func:`carry_to_tensors` wrote."""
    t = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    try:
        finite = t.get("finite")
        return RolloutCarry(
            step=int(meta["step"]), state=t["state"], past=deque(t[f"past.{i}"] for i in range(int(meta["n_past"]))),
            policy=PolicyState(held=t.get("held"), memory={k: t[f"policy.{k}"] for k in meta["policy_memory"]}),
            records=[t[f"records.{i}"] for i in range(len(meta["rec_steps"]))],
            rec_steps=[int(r) for r in meta["rec_steps"]],
            closures={int(s): t[f"closures.{s}"] for s in meta["closure_steps"]},
            seconds=t["seconds"].tolist(), finite=None if finite is None else finite.bool(),
            nonfinite_step=meta.get("nonfinite_step"))
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(format_error("checkpoint", "a complete rollout carry", f"missing or bad entry {exc}",
                                           "delete the checkpoint to start over")) from None


def _save(path: Path, carry: RolloutCarry, seeds: Tensor | None, fingerprint: str) -> None:
    tensors, meta = carry_to_tensors(carry)
    if seeds is not None:
        tensors["seeds"] = seeds
    meta.update({"format": FORMAT, "format_version": FORMAT_VERSION, "fingerprint": fingerprint})
    save_tensors(path, tensors, {"stochclosure": json.dumps(meta)})


def _load(path: Path, fingerprint: str) -> tuple[RolloutCarry, Tensor | None]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = json.loads((fh.metadata() or {}).get("stochclosure", "null"))
    except Exception as exc:  # noqa: BLE001 - any parse failure is a bad file
        raise CheckpointError(format_error("checkpoint", "a rollout checkpoint (safetensors)",
                                           f"{str(path)!r}, unreadable ({exc})",
                                           "delete it to start the rollout over")) from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(format_error("checkpoint", f"a rollout checkpoint ({FORMAT} v{FORMAT_VERSION})",
                                           f"{str(path)!r} of another kind or version",
                                           "delete it or pass another checkpoint path"))
    if meta.get("fingerprint") != fingerprint:
        raise ConfigError(format_error("checkpoint", "the checkpoint of this same run (system, closure, state0, "
                                       "steps, members, seed and options)", f"{str(path)!r}, written by another run",
                                       "rerun with the original arguments, or delete the checkpoint"))
    t = load_tensors(path)
    return carry_from_tensors(t, meta), t.get("seeds")


def resumable_ensemble(system: Any, closure: Any, state0: Tensor, n_steps: int, members: int, *, seed: int,
                       checkpoint: str | os.PathLike[str], checkpoint_every: int = 50,
                       **kwargs: Any) -> RolloutResult:
    """:func:`~stochclosure.rollouts.ensemble` with periodic checkpoints; resumes after a kill.

    Args:
        system: The reduced solver.
        closure: The closure (see :func:`~stochclosure.rollouts.rollout`).
        state0: ``(C, *spatial)`` or ``(B, C, *spatial)`` initial state(s).
        n_steps: Solver steps.
        members: Ensemble size.
        seed: Seeds the ensemble (required: a resumed run must draw the same member keys).
        checkpoint: Checkpoint file (``.safetensors``); continued from when it exists. A checkpoint
            of another run raises :class:`~stochclosure.errors.ConfigError`.
        checkpoint_every: Solver steps between checkpoints (one is also written at the end).
        **kwargs: Other :func:`~stochclosure.rollouts.rollout` arguments; ``keyed`` must stay True.

    Returns:
        The :class:`~stochclosure.rollouts.RolloutResult` an uninterrupted
        ``ensemble(..., seed=seed)`` returns (same states and closures).

    Raises:
        ConfigError: bad ``checkpoint_every``, ``keyed=False`` or a checkpoint of another run.
        CheckpointError: an unreadable checkpoint file.
        OutputError: the checkpoint's folder cannot be written.
    """
    if isinstance(checkpoint_every, bool) or not isinstance(checkpoint_every, int) or checkpoint_every < 1:
        raise ConfigError(format_error("checkpoint_every", "a positive integer", repr(checkpoint_every)))
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(format_error("seed", "an integer (a resumed run must redraw the same member keys)",
                                       repr(seed)))
    if not kwargs.get("keyed", True):
        raise ConfigError(format_error("keyed", "True for a resumable rollout", "False",
                                       "per-member keyed streams make a resumed run draw what the original would"))
    for bad in ("start", "on_step", "members"):
        if bad in kwargs:
            raise ConfigError(format_error(bad, "not set (resumable_ensemble manages it)", repr(kwargs[bad])))
    path = Path(checkpoint)
    preflight_output(path, "checkpoint")
    fingerprint = run_fingerprint(system, closure, state0, n_steps, members, seed, kwargs)
    start, seeds = _load(path, fingerprint) if path.exists() else (None, None)
    got: dict[str, Tensor | None] = {"seeds": seeds}

    def on_step(carry: RolloutCarry) -> None:
        if carry.step % checkpoint_every == 0 or carry.step == n_steps:
            _save(path, carry, got["seeds"], fingerprint)

    def program() -> RolloutResult:
        return rollout(system, closure, state0, n_steps, members=members, start=start, on_step=on_step, **kwargs)

    site = kwargs.get("prefix", "") + "member_seed"
    run = program if seeds is None else poutine.condition(program, data={site: seeds})

    class _Grab(Messenger):  # the member keys, known once the first site ran, go into the checkpoints
        def _postprocess_message(self, msg: dict[str, Any]) -> None:
            if msg["name"] == site:
                got["seeds"] = msg["value"]

    with _Grab():
        result = poutine.seed(run, rng_seed=seed)()
    if start is None and n_steps == 0:
        _save(path, RolloutCarry.initial(result.states[-1]), got["seeds"], fingerprint)
    return result
