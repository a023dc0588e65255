"""The HDF5 closure-dataset format and a lazy dataset reading it.

Layout of a file written by ``stochclosure generate`` (format version 1)::

    /                       attrs: format, format_version, system, system_config (JSON),
                                   generate_config (JSON), seed, batch_seeds (JSON), versions (JSON),
                                   closures (JSON), resolutions (JSON), coarsen, config_hash
    /time                   (T,)                 physical time of each record
    /split                  (N,) int8            0 train, 1 val, 2 test (attr names)
    /obs_points             (P, d)               physical measurement points in [0, 1)^d
    /res_{n}/state          (N, T, C, *grid_n)   coarse state at resolution n
    /res_{n}/{closure}      (N, T, C, *grid_n)   closure term(s) at resolution n
    /obs/{closure}          (N, T, C, P)         closure values at obs_points (absent if P = 0)

``N`` trajectories, ``T`` records each. Field datasets are chunked one snapshot per chunk and
gzip-compressed, so random access to one item reads one chunk. Each field dataset carries the
attributes ``mean`` and ``std`` ``(C,)`` (float64, over the training split; files written before
they existed lack them) and ``statistics_of``.

Reading trusts nothing: :class:`ClosureH5Dataset` checks, before serving any item, that the
state, closure and measurement datasets agree with ``/split`` (``N``) and ``/time`` (``T``),
that the split labels are integers among 0, 1, 2, that ``/obs_points`` exists when measurements
are requested, that JSON attributes are bounded in size and nesting, and that stored
normalisation statistics are finite numbers; each failure is a
:class:`~stochclosure.errors.DatasetError` naming the dataset or attribute, expected vs found.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from ..config import load_json_text
from ..errors import DatasetError, format_error
from .base import collate_closure

__all__ = ["FORMAT", "FORMAT_VERSION", "SPLITS", "DatasetError", "ClosureH5Dataset", "open_checked"]

FORMAT = "stochclosure.closure-dataset"
FORMAT_VERSION = 1
SPLITS = ("train", "val", "test")
MAX_ATTRIBUTE_CHARS = 16 * 2**20
"""Longest JSON attribute read (16 MiB)."""


def open_checked(path: str | os.PathLike[str], system: str | None = None) -> h5py.File:
    """Open a closure-dataset file read-only and check its format (and system, if given).

    Raises:
        DatasetError: naming the file, what was expected and what was found.
    """
    p = Path(path)
    if not p.is_file():
        raise DatasetError(format_error("path", "an existing HDF5 closure dataset", f"no file at {str(p)!r}",
                                        "run `stochclosure generate --system NAME --config FILE --out FILE.h5`"))
    try:
        f = h5py.File(p, "r")
    except OSError as exc:
        raise DatasetError(format_error("path", "a readable HDF5 file", f"{str(p)!r} ({exc})",
                                        "regenerate the file")) from None
    fmt = f.attrs.get("format")
    if fmt != FORMAT:
        f.close()
        raise DatasetError(format_error("path", f"a file with attribute format={FORMAT!r}",
                                        f"{str(p)!r} with format={fmt!r}",
                                        "this file was not written by `stochclosure generate`"))
    raw_version = f.attrs.get("format_version", -1)
    try:
        version = int(raw_version)
    except (TypeError, ValueError):
        f.close()
        raise DatasetError(format_error("path", "an integer attribute format_version",
                                        f"{str(p)!r} with format_version={raw_version!r}"[:300],
                                        "the file is corrupt or was not written by `stochclosure generate`")) from None
    if version > FORMAT_VERSION:
        f.close()
        raise DatasetError(format_error("path", f"format_version <= {FORMAT_VERSION}", f"version {version}",
                                        "upgrade stochclosure"))
    if system is not None and f.attrs.get("system") != system:
        found = f.attrs.get("system")
        f.close()
        raise DatasetError(format_error("system", f"a dataset of system {system!r}",
                                        f"{str(p)!r} of system {found!r}", "pass the matching file or system"))
    return f


def json_attr(f: h5py.File, key: str, path: str) -> Any:
    """Read attribute ``key`` as JSON (attributes are only ever parsed as JSON, never unpickled).

    The text is bounded: at most :data:`MAX_ATTRIBUTE_CHARS` characters and
    :data:`~stochclosure.config.MAX_NESTING` levels of nesting.

    Raises:
        DatasetError: the attribute is missing, is not text, or is not valid, bounded JSON.
    """
    if key not in f.attrs:
        raise DatasetError(format_error(key, f"attribute {key!r} in {path!r}", f"attributes {sorted(f.attrs)[:20]}",
                                        "regenerate the file with `stochclosure generate`"))
    try:
        raw = f.attrs[key]
    except (OSError, TypeError, ValueError) as exc:
        raise DatasetError(format_error(key, f"JSON text in attribute {key!r} of {path!r}",
                                        f"an unreadable attribute ({exc})", "regenerate the file")) from None
    if isinstance(raw, np.ndarray) and raw.shape == () and raw.dtype.kind in "OSU":
        raw = raw.item()
    if not isinstance(raw, (str, bytes)):
        raise DatasetError(format_error(key, f"JSON text in attribute {key!r} of {path!r}",
                                        f"{type(raw).__name__} data", "the file is corrupt or was not written by "
                                                                      "stochclosure"))
    return load_json_text(raw, key, DatasetError, max_chars=MAX_ATTRIBUTE_CHARS, source=path)


def _require(f: h5py.File, key: str, path: str) -> h5py.Dataset:
    if key not in f:
        have = []
        f.visit(lambda name: have.append(name) if isinstance(f[name], h5py.Dataset) else None)
        raise DatasetError(format_error(key, f"dataset {key!r} in {path!r}", f"datasets {sorted(have)}",
                                        "choose an available closure/resolution or regenerate the file"))
    return f[key]


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _check_layout(f: h5py.File, path: str, target: h5py.Dataset, state: h5py.Dataset, split: h5py.Dataset,
                  time: h5py.Dataset) -> tuple[int, int]:
    """``(N, T)`` after checking that target, state, split and time agree (raises ``DatasetError``)."""
    for key, ds in ((target.name, target), (state.name, state)):
        if not isinstance(ds, h5py.Dataset) or ds.ndim < 3:
            raise DatasetError(format_error(key.lstrip("/"), "a field dataset (N, T, C, *grid)",
                                            f"shape {getattr(ds, 'shape', None)} in {path!r}", "regenerate the file"))
    if not isinstance(split, h5py.Dataset) or split.ndim != 1:
        raise DatasetError(format_error("split", "a 1-D dataset of labels, one per trajectory",
                                        f"shape {getattr(split, 'shape', 'none (a group)')} in {path!r}",
                                        "regenerate the file"))
    if not isinstance(time, h5py.Dataset) or time.ndim != 1:
        raise DatasetError(format_error("time", "a 1-D dataset of record times",
                                        f"shape {getattr(time, 'shape', 'none (a group)')} in {path!r}",
                                        "regenerate the file"))
    n_traj, n_t = len(split), len(time)
    t_key, s_key = target.name.lstrip("/"), state.name.lstrip("/")
    both = f"(target {t_key} has {target.shape[:2]}, state {s_key} has {state.shape[:2]}) in {path!r}"
    fix = "the file is truncated or was edited; regenerate it"
    if target.shape[:2] == state.shape[:2]:  # the fields agree: /split or /time is the odd one out
        if target.shape[0] != n_traj:
            raise DatasetError(format_error("split", f"{target.shape[0]} labels, one per trajectory", f"{n_traj} {both}",
                                            fix))
        if target.shape[1] != n_t:
            raise DatasetError(format_error("time", f"{target.shape[1]} record times", f"{n_t} {both}", fix))
    for key, ds in ((t_key, target), (s_key, state)):
        if ds.shape[:2] != (n_traj, n_t):
            raise DatasetError(format_error(
                key, f"{n_traj} trajectories x {n_t} records (the lengths of /split and /time)",
                f"{ds.shape[0]} x {ds.shape[1]} {both}", fix))
    if target.shape[3:] != state.shape[3:]:
        raise DatasetError(format_error(target.name.lstrip("/"), f"the grid {state.shape[3:]} of the state",
                                        f"grid {target.shape[3:]} in {path!r}", "regenerate the file"))
    return n_traj, n_t


def _obs_points(f: h5py.File, obs_key: str, path: str, n_traj: int, n_t: int, dtype: torch.dtype) -> Tensor | None:
    """The checked ``(P, d)`` measurement points, or ``None`` for a file generated without measurements."""
    pts_ds = _require(f, "obs_points", path)
    if not isinstance(pts_ds, h5py.Dataset) or pts_ds.ndim != 2:
        raise DatasetError(format_error("obs_points", "a (P, d) dataset of measurement points",
                                        f"shape {getattr(pts_ds, 'shape', None)} in {path!r}", "regenerate the file"))
    if pts_ds.shape[0] == 0:
        return None  # generated with obs_grid: 0
    obs_ds = _require(f, obs_key, path)
    pts = np.asarray(pts_ds)
    if pts.dtype.kind not in "fiu" or not np.isfinite(pts).all():
        raise DatasetError(format_error("obs_points", "finite numeric coordinates",
                                        f"dtype {pts.dtype} with non-finite or non-numeric values in {path!r}",
                                        "regenerate the file"))
    shape = getattr(obs_ds, "shape", None)
    if not isinstance(obs_ds, h5py.Dataset) or obs_ds.ndim != 4 or shape[:2] != (n_traj, n_t) \
            or shape[3] != pts.shape[0]:
        raise DatasetError(format_error(obs_key, f"shape (N, T, C, P) with N={n_traj} trajectories (/split), "
                                                 f"T={n_t} records (/time), P={pts.shape[0]} points (/obs_points)",
                                        f"shape {shape} in {path!r}", "regenerate the file"))
    return torch.as_tensor(pts, dtype=dtype)


def _split_labels(split: h5py.Dataset, path: str) -> np.ndarray:
    """The split labels, checked to be integers among ``0, 1, 2`` (train, val, test)."""
    labels = np.asarray(split)
    if labels.dtype.kind not in "iu":
        raise DatasetError(format_error("split", "integer labels 0 (train), 1 (val), 2 (test)",
                                        f"dtype {labels.dtype} in {path!r}", "regenerate the file"))
    bad = ~np.isin(labels, np.arange(len(SPLITS)))
    if bad.any():
        raise DatasetError(format_error("split", "labels 0 (train), 1 (val), 2 (test)",
                                        f"values {_short(sorted(set(labels[bad].tolist())))} at {int(bad.sum())} of "
                                        f"{len(labels)} trajectories in {path!r}", "regenerate the file"))
    return labels


def _read_statistics(ds: h5py.Dataset, key: str, path: str) -> tuple[np.ndarray, np.ndarray] | None:
    """The dataset's stored ``(mean, std)`` per channel, checked; ``None`` when it has none."""
    if "mean" not in ds.attrs and "std" not in ds.attrs:
        return None
    channels = ds.shape[2]
    out = []
    for name in ("mean", "std"):
        argument = f"{key}.attrs[{name!r}]"
        if name not in ds.attrs:
            raise DatasetError(format_error(argument, "both attributes 'mean' and 'std'", f"only the other in {path!r}",
                                            "regenerate the file"))
        try:
            raw = np.asarray(ds.attrs[name])
        except (OSError, TypeError, ValueError) as exc:
            raise DatasetError(format_error(argument, f"{channels} finite numbers", f"unreadable data ({exc})",
                                            "regenerate the file")) from None
        if raw.dtype.kind not in "fiu" or raw.shape not in ((channels,), () if channels == 1 else (channels,)):
            raise DatasetError(format_error(argument, f"{channels} number(s), one per channel",
                                            f"dtype {raw.dtype}, shape {raw.shape}: {_short(raw.tolist())} in {path!r}",
                                            "regenerate the file"))
        values = raw.astype(np.float64).reshape(channels)
        if not np.isfinite(values).all() or (name == "std" and (values < 0).any()):
            what = "non-negative finite numbers" if name == "std" else "finite numbers"
            raise DatasetError(format_error(argument, what, f"{values.tolist()} in {path!r}", "regenerate the file"))
        out.append(values)
    return out[0], out[1]


class ClosureH5Dataset(Dataset):
    """Lazy dataset of ``(U, y)`` items from a closure-dataset file (see the module docstring).

    The file is opened on first access in each process (DataLoader workers get their own handle)
    and only the requested snapshot chunks are read. Items follow the protocol of
    :mod:`stochclosure.data.base`: ``target`` ``(C, *grid)``, ``fields`` (the state, ``(C, *grid)``),
    ``history`` (``(k, C, *grid)`` earlier states, oldest first, when ``history > 0``) and
    ``obs_values`` ``(C, P)`` with :attr:`obs_points` ``(P, d)``.

    Args:
        path: The ``.h5`` file.
        split: ``"train"``, ``"val"``, ``"test"`` or ``None`` (all trajectories).
        closure: Closure name (default: the first one in the file).
        resolution: Grid size (default: the finest stored).
        obs: Include the sparse measurements (files generated with ``obs_grid: 0`` have none;
            then items carry no ``obs_values`` and :attr:`obs_points` is ``None``).
        history: Number ``k`` of earlier states; items start at record ``k`` of each trajectory.
        fields: Include the current state as ``fields``.
        system: If given, the file must come from this system.
        dtype: dtype of the returned tensors.
        in_memory: Read the split's arrays into memory once instead of chunk by chunk per item;
            ``None`` (default) does so when they take at most :attr:`IN_MEMORY_BYTES`. Items are
            identical either way; small items (e.g. Lorenz-96 rings) load many times faster.
    """

    IN_MEMORY_BYTES: int = 256 * 2**20

    def __init__(self, path: str | os.PathLike[str], split: str | None = "train", closure: str | None = None,
                 resolution: int | None = None, obs: bool = True, history: int = 0, fields: bool = True,
                 system: str | None = None, dtype: torch.dtype = torch.float32,
                 in_memory: bool | None = None) -> None:
        if split is not None and split not in SPLITS:
            raise DatasetError(format_error("split", f"one of {SPLITS} or None", repr(split)))
        if history < 0:
            raise DatasetError(format_error("history", "a non-negative integer", repr(history)))
        self.path, self.dtype, self.history, self.with_fields = str(path), dtype, int(history), fields
        with open_checked(path, system) as f:
            closures = json_attr(f, "closures", self.path)
            resolutions = json_attr(f, "resolutions", self.path)
            if not (isinstance(closures, list) and closures and all(isinstance(c, str) for c in closures)
                    and isinstance(resolutions, list) and resolutions
                    and all(isinstance(r, int) and not isinstance(r, bool) for r in resolutions)):
                raise DatasetError(format_error("closures/resolutions", f"JSON lists of names and of grid sizes in the "
                                                f"attributes of {self.path!r}",
                                                f"{_short(closures)} and {_short(resolutions)}", "regenerate the file"))
            self.closure = closures[0] if closure is None else closure
            if self.closure not in closures:
                raise DatasetError(format_error("closure", f"one of {closures} stored in {self.path!r}",
                                                repr(closure)))
            self.resolution = max(resolutions) if resolution is None else int(resolution)
            if self.resolution not in resolutions:
                raise DatasetError(format_error("resolution", f"one of {resolutions} stored in {self.path!r}",
                                                repr(resolution), "or regenerate with that resolution"))
            self._target_key = f"res_{self.resolution}/{self.closure}"
            self._state_key = f"res_{self.resolution}/state"
            self._obs_key = f"obs/{self.closure}"
            target = _require(f, self._target_key, self.path)
            state = _require(f, self._state_key, self.path)
            split_ds = _require(f, "split", self.path)
            time_ds = _require(f, "time", self.path)
            n_traj, n_t = _check_layout(f, self.path, target, state, split_ds, time_ds)
            split_arr = _split_labels(split_ds, self.path)
            self.times = torch.as_tensor(np.asarray(time_ds))
            self.obs = False
            self.obs_points: Tensor | None = None
            if obs:
                self.obs_points = _obs_points(f, self._obs_key, self.path, n_traj, n_t, dtype)
                self.obs = self.obs_points is not None
            self._statistics = _read_statistics(target, self._target_key, self.path)
            self.system = str(f.attrs.get("system"))
            self.system_config = json_attr(f, "system_config", self.path)
        if self.history >= n_t:
            raise DatasetError(format_error("history", f"fewer than the {n_t} records per trajectory", repr(history)))
        idx = np.arange(n_traj) if split is None else np.flatnonzero(split_arr == SPLITS.index(split))
        self.trajectories = idx
        self._per_traj = n_t - self.history
        self._file: h5py.File | None = None
        self._pid: int | None = None
        self._memory: dict[str, np.ndarray] | None = None
        keys = [self._target_key] + [self._state_key] * (self.with_fields or self.history > 0) \
            + [self._obs_key] * self.obs
        if in_memory is None:
            with h5py.File(self.path, "r") as f:
                size = sum(f[k].dtype.itemsize * int(np.prod(f[k].shape[1:])) for k in set(keys)) * len(idx)
            in_memory = size <= self.IN_MEMORY_BYTES
        if in_memory and len(idx):
            with h5py.File(self.path, "r") as f:
                self._memory = {k: np.asarray(f[k][np.sort(idx).tolist()]) for k in set(keys)}
            self._row = {int(tr): r for r, tr in enumerate(np.sort(idx))}

    def _h5(self) -> h5py.File:
        if self._file is None or self._pid != os.getpid():
            self._file = h5py.File(self.path, "r")
            self._pid = os.getpid()
        return self._file

    def __len__(self) -> int:
        return int(len(self.trajectories) * self._per_traj)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for a dataset of {len(self)} items")
        i = i % len(self)
        traj = int(self.trajectories[i // self._per_traj])
        t = self.history + i % self._per_traj
        memory = self._memory
        if memory is not None:
            row = self._row[traj]

            def read(key: str, sl: Any) -> Tensor:
                return torch.as_tensor(np.array(memory[key][(row, *sl[1:])])).to(self.dtype)
        else:
            f = self._h5()

            def read(key: str, sl: Any) -> Tensor:
                return torch.as_tensor(np.asarray(f[key][sl])).to(self.dtype)

        item = {"target": read(self._target_key, (traj, t))}
        if self.with_fields:
            item["fields"] = read(self._state_key, (traj, t))
        if self.history:
            item["history"] = read(self._state_key, (traj, slice(t - self.history, t)))
        if self.obs:
            item["obs_values"] = read(self._obs_key, (traj, t))
        return item

    def target_statistics(self, min_std: float = 1e-8) -> tuple[Tensor, Tensor] | None:
        """The per-channel ``(mean, std)`` of the target stored in the file, or ``None``.

        They are computed by ``stochclosure generate`` over every record of the training split
        (attribute ``statistics_of``), whatever split this dataset reads, and checked finite when
        the dataset is opened.

        Args:
            min_std: Floor of the returned std (a constant closure has std 0).

        Returns:
            ``(mean, std)``, each ``(C,)`` float32, or ``None`` for files without statistics.
        """
        if self._statistics is None:
            return None
        mean, std = self._statistics
        return (torch.as_tensor(mean, dtype=torch.float32),
                torch.as_tensor(np.maximum(std, min_std), dtype=torch.float32))

    def collate(self, items: Sequence[dict[str, Any]]) -> tuple[Tensor, Any]:
        """:func:`~stochclosure.data.base.collate_closure` with this dataset's ``obs_points``."""
        return collate_closure(items, self.obs_points)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_file"], state["_pid"] = None, None
        return state
