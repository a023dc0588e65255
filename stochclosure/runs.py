"""Run folders of ``train`` and ``distill``: one writer, no overwrite, and a resume that checks what it finds.

A *run folder* (``out`` of ``stochclosure train`` / ``distill``, ``checkpoint_dir`` of the
:class:`~stochclosure.training.Trainer`) holds the checkpoints ``step-XXXXXXXX``, the pointer
``latest`` naming the newest, and, once a resume changed the configuration, ``run-history.jsonl``.
Four rules keep a run from being lost:

* **One writer.** A job holds an exclusive lock on ``<folder>.lock`` (beside the folder, see
  :func:`stochclosure._io.exclusive_lock`) from before any work until it ends (:func:`run_lock`);
  a second job on the same folder stops at once with an :class:`~stochclosure.errors.OutputError`
  naming the holder's pid.
* **No overwrite.** A fresh run refuses a folder that already holds a run (:func:`check_run_folder`):
  resume it, or choose another folder.
* **A pointer stays home.** ``latest`` must name a checkpoint directly inside the folder
  (:func:`latest_checkpoint`); anything else (another run's folder, ``..``, a symbolic link leaving
  the folder) is a :class:`~stochclosure.errors.CheckpointError`.
* **Resume compares.** Every checkpoint stores the run's whole configuration (model, trainer and
  the blocks the caller adds: data, seed); a resume compares it with the new one
  (:func:`config_changes`) and refuses any difference with a :class:`~stochclosure.errors.ConfigError`
  listing each key, old and new value, unless the change is accepted explicitly
  (``--allow-config-change``); accepted changes, and extensions of ``max_steps`` (the one change a
  resume makes routinely), are appended to ``run-history.jsonl`` once the checkpoint is loaded
  (:func:`check_resume_config`, :func:`record_changes`).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from ._io import exclusive_lock
from .checkpoint import atomic_write_bytes
from .errors import CheckpointError, ConfigError, OutputError, format_error

__all__ = ["LATEST", "HISTORY_FILE", "RESUMABLE_KEYS", "run_lock", "holds_run", "check_run_folder",
           "latest_checkpoint", "config_changes", "check_resume_config", "record_changes", "read_history", "teacher_run_folder",
           "check_separate_folders"]

LATEST = "latest"
"""Name of the pointer file holding the newest checkpoint's folder name."""
HISTORY_FILE = "run-history.jsonl"
"""Name of the file recording, one JSON object a line, every configuration change a resume accepted."""
RESUMABLE_KEYS = frozenset({"trainer.max_steps"})
"""Keys a resume may change without ``--allow-config-change`` (the change is still recorded)."""

_STEP = re.compile(r"^step-\d+$")
_HELD: dict[Path, int] = {}


@contextlib.contextmanager
def run_lock(folder: str | os.PathLike[str], argument: str = "out") -> Iterator[None]:
    """Hold the run folder's exclusive lock; re-entrant within one process.

    The command line takes the lock before building anything, and :meth:`Trainer.fit
    <stochclosure.training.Trainer.fit>` takes it again for callers of the Python API; the inner
    call of the same process is a no-op instead of a self-deadlock.

    Args:
        folder: The run folder.
        argument: Name of the argument for the message (``"out"``, ``"checkpoint_dir"``).

    Raises:
        OutputError: another process holds the lock (the message names its pid).
    """
    key = Path(folder).resolve()
    if key in _HELD:
        _HELD[key] += 1
        try:
            yield
        finally:
            _HELD[key] -= 1
        return
    with exclusive_lock(key, argument):
        _HELD[key] = 1
        try:
            yield
        finally:
            del _HELD[key]


def holds_run(folder: str | os.PathLike[str]) -> bool:
    """Whether ``folder`` holds a run: a ``latest`` pointer or a ``step-*`` checkpoint."""
    folder = Path(folder)
    if not folder.is_dir():
        return False
    return (folder / LATEST).exists() or (folder / LATEST).is_symlink() or \
        any(_STEP.match(p.name) for p in folder.iterdir())


def check_run_folder(folder: str | os.PathLike[str], resume: bool, argument: str = "out",
                     resume_hint: str = "--resume") -> None:
    """Refuse to start a fresh run in a folder that holds one (and a folder that is a file).

    Args:
        folder: The run folder.
        resume: The job resumes (then a run in the folder is what it continues).
        argument: Name of the argument for the message.
        resume_hint: How the caller resumes (``"--resume"``, ``"fit(resume=True)"``).

    Raises:
        OutputError: ``folder`` is a file, or holds a run and ``resume`` is false.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OutputError(format_error(argument, "a folder for the run's checkpoints", f"the file {str(folder)!r}",
                                       "choose another location"))
    if not resume and holds_run(folder):
        raise OutputError(format_error(argument, "a folder without another run in it",
                                       f"{str(folder)!r}, which holds a run (checkpoints or {LATEST!r})",
                                       f"continue that run with {resume_hint}, or choose another {argument}"))


def latest_checkpoint(folder: str | os.PathLike[str]) -> Path | None:
    """The checkpoint ``folder/latest`` names, checked to be a checkpoint directly inside ``folder``.

    Returns:
        The checkpoint folder, or ``None`` when the folder holds no run.

    Raises:
        CheckpointError: ``latest`` names anything but a ``step-*`` folder inside ``folder`` (another
            run's folder, a path with ``..`` or ``/``, a symbolic link leaving the folder, a missing
            checkpoint), or checkpoints exist without a ``latest``.
    """
    folder = Path(folder)
    pointer = folder / LATEST
    if not pointer.exists() and not pointer.is_symlink():
        if holds_run(folder):
            steps = sorted(p.name for p in folder.iterdir() if _STEP.match(p.name))
            raise CheckpointError(format_error(str(pointer), f"a {LATEST!r} file naming the newest checkpoint",
                                               f"none, beside the checkpoints {steps}",
                                               f"write the newest name (e.g. {steps[-1]!r}) into {str(pointer)!r}, "
                                               "or start the run in another folder"))
        return None
    fix = f"write the name of a step-XXXXXXXX folder of {str(folder)!r} into it, or start a new run elsewhere"
    if pointer.is_symlink() or not pointer.is_file():
        raise CheckpointError(format_error(str(pointer), "a plain file naming a checkpoint of this run",
                                           "a symbolic link or a folder", fix))
    try:
        name = pointer.read_text().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise CheckpointError(format_error(str(pointer), "a readable checkpoint name", f"an unreadable file ({exc})",
                                           fix)) from None
    if not _STEP.match(name):
        raise CheckpointError(format_error(str(pointer), "the name of a step-XXXXXXXX folder inside the run folder",
                                           repr(name[:200]), fix))
    root = folder.resolve()
    target = (folder / name).resolve()
    if target.parent != root:
        raise CheckpointError(format_error(str(pointer), f"a checkpoint inside {str(root)!r}",
                                           f"{name!r}, which leads to {str(target)!r}", fix))
    if not target.is_dir():
        raise CheckpointError(format_error(str(pointer), "an existing checkpoint folder",
                                           f"{name!r}, which does not exist", fix))
    return folder / name


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, Mapping) and value:
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: value}


_ABSENT = "<absent>"


def config_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Every key whose value differs between two run configurations, as ``{dotted key: (old, new)}``.

    Both are compared as JSON (tuples equal lists). Only top-level blocks present in both, and
    keys present in ``old``, are compared: a checkpoint written before a block or key was
    recorded is not reported as changed.

    Example:
        >>> config_changes({"trainer": {"lr": 0.001, "seed": 1}}, {"trainer": {"lr": 0.002, "seed": 1}})
        {'trainer.lr': (0.001, 0.002)}
    """
    old = json.loads(json.dumps(dict(old), default=str))
    new = json.loads(json.dumps(dict(new), default=str))
    changes: dict[str, tuple[Any, Any]] = {}
    for block in sorted(set(old) & set(new)):
        a, b = _flatten(old[block], block), _flatten(new[block], block)
        for key in sorted(a):
            va, vb = a[key], b.get(key, _ABSENT)
            if va != vb:
                changes[key] = (va, vb)
    return changes


def _describe(changes: Mapping[str, tuple[Any, Any]]) -> str:
    return "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changes.items())


def check_resume_config(folder: str | os.PathLike[str], old: Mapping[str, Any], new: Mapping[str, Any], *,
                        allow_change: bool = False, flag: str = "--allow-config-change") -> dict[str, tuple[Any, Any]]:
    """Compare a resumed run's stored configuration with the new one; refuse a change unless allowed.

    Args:
        folder: The run folder (for the message).
        old: The configuration stored in the checkpoint resumed from.
        new: The configuration of this job.
        allow_change: Accept changes of any key (the caller records them with :func:`record_changes`).
        flag: How the caller accepts a change, for the message.

    Returns:
        The changes to record (``{}`` when nothing changed).

    Raises:
        ConfigError: a key outside :data:`RESUMABLE_KEYS` changed and ``allow_change`` is false; the
            message lists every changed key with its old and new value.
    """
    changes = config_changes(old, new)
    strict = {k: v for k, v in changes.items() if k not in RESUMABLE_KEYS}
    if strict and not allow_change:
        raise ConfigError(format_error(
            ", ".join(strict), f"the configuration the run in {str(folder)!r} was trained with",
            f"changes ({_describe(strict)})",
            f"resume with the stored values, start a new run in another folder, or accept the change with "
            f"{flag} (recorded in {HISTORY_FILE})"))
    return changes


def record_changes(folder: str | os.PathLike[str], checkpoint: str | os.PathLike[str],
                   changes: Mapping[str, tuple[Any, Any]], step: int | None = None) -> None:
    """Append one entry for a resume that changed the configuration to ``folder/run-history.jsonl``.

    The entry holds the time, the checkpoint resumed from, its step, whether any change needed the
    explicit acceptance (a key outside :data:`RESUMABLE_KEYS`) and every change as ``[old, new]``.
    The file is rewritten atomically. Nothing is written when ``changes`` is empty.
    """
    if not changes:
        return
    entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "checkpoint": Path(checkpoint).name, "step": step,
             "accepted_explicitly": any(k not in RESUMABLE_KEYS for k in changes),
             "changes": {k: [a, b] for k, (a, b) in changes.items()}}
    path = Path(folder) / HISTORY_FILE
    previous = path.read_bytes() if path.is_file() else b""
    if previous and not previous.endswith(b"\n"):
        previous += b"\n"
    atomic_write_bytes(path, previous + (json.dumps(entry, default=str) + "\n").encode())


def read_history(folder: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The configuration changes recorded in ``folder`` (oldest first; ``[]`` when none)."""
    path = Path(folder) / HISTORY_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def teacher_run_folder(teacher: str | os.PathLike[str]) -> Path:
    """The folder a teacher checkpoint belongs to (resolved).

    A ``step-*`` checkpoint folder belongs to its run folder (the parent); another checkpoint folder
    is its own; a single-file checkpoint is protected as itself.
    """
    p = Path(teacher).resolve()
    if p.is_dir() and _STEP.match(p.name):
        return p.parent
    return p


def check_separate_folders(out: str | os.PathLike[str], protected: str | os.PathLike[str], argument: str = "out",
                           what: str = "the teacher's run folder") -> None:
    """Refuse an output folder equal to, inside, or containing a folder (or file) that must not be written.

    Raises:
        OutputError: the two overlap.
    """
    o, p = Path(out).resolve(), Path(protected).resolve()
    if o == p or p in o.parents or o in p.parents:
        relation = "is" if o == p else ("lies inside" if p in o.parents else "contains")
        raise OutputError(format_error(argument, f"a folder apart from {what} {str(p)!r}",
                                       f"{str(o)!r}, which {relation} it",
                                       f"choose an {argument} outside {str(p)!r} (e.g. a sibling folder)"))
