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
gzip-compressed, so random access to one item reads one chunk.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from ..errors import DatasetError, format_error
from .base import collate_closure

__all__ = ["FORMAT", "FORMAT_VERSION", "SPLITS", "DatasetError", "ClosureH5Dataset", "open_checked"]

FORMAT = "stochclosure.closure-dataset"
FORMAT_VERSION = 1
SPLITS = ("train", "val", "test")


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

    Raises:
        DatasetError: the attribute is missing or is not valid JSON text.
    """
    if key not in f.attrs:
        raise DatasetError(format_error(key, f"attribute {key!r} in {path!r}", f"attributes {sorted(f.attrs)}",
                                        "regenerate the file with `stochclosure generate`"))
    raw = f.attrs[key]
    try:
        return json.loads(raw.decode() if isinstance(raw, bytes) else str(raw))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(format_error(key, f"JSON text in attribute {key!r} of {path!r}",
                                        f"unparsable data ({type(raw).__name__}, {exc})",
                                        "the file is corrupt or was not written by stochclosure")) from None


def _require(f: h5py.File, key: str, path: str) -> h5py.Dataset:
    if key not in f:
        have = []
        f.visit(lambda name: have.append(name) if isinstance(f[name], h5py.Dataset) else None)
        raise DatasetError(format_error(key, f"dataset {key!r} in {path!r}", f"datasets {sorted(have)}",
                                        "choose an available closure/resolution or regenerate the file"))
    return f[key]


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
            if not isinstance(closures, list) or not isinstance(resolutions, list):
                raise DatasetError(format_error("closures/resolutions", f"JSON lists in the attributes of {self.path!r}",
                                                f"{closures!r} and {resolutions!r}", "regenerate the file"))
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
            n_traj, n_t = _require(f, self._target_key, self.path).shape[:2]
            _require(f, self._state_key, self.path)
            split_arr = np.asarray(_require(f, "split", self.path))
            self.times = torch.as_tensor(np.asarray(_require(f, "time", self.path)))
            self._obs_key = f"obs/{self.closure}"
            self.obs = bool(obs) and self._obs_key in f
            if obs and self._obs_key not in f and f["obs_points"].shape[0] > 0:
                _require(f, self._obs_key, self.path)
            pts = np.asarray(_require(f, "obs_points", self.path))
            self.obs_points: Tensor | None = torch.as_tensor(pts, dtype=dtype) if self.obs else None
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

    def collate(self, items: Sequence[dict[str, Any]]) -> tuple[Tensor, Any]:
        """:func:`~stochclosure.data.base.collate_closure` with this dataset's ``obs_points``."""
        return collate_closure(items, self.obs_points)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_file"], state["_pid"] = None, None
        return state
