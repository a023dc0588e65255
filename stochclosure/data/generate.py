"""``stochclosure generate``: simulate a registered system and write a closure dataset (HDF5).

The YAML configuration (read by :func:`stochclosure.config.load_yaml_mapping`: plain data,
bounded in size, nesting and alias expansion) has a ``system`` block (constructor arguments of
the registered system) and the generation keys of :data:`DEFAULTS`. Everything is validated
before any work: an unknown key, a value of the wrong type or range, an unavailable
``compression`` filter or ``compression_level``, an empty ``closures``/``resolutions`` list, and,
through one probe record of one trajectory (no spin-up), whatever the system itself refuses
(closure names, resolutions, dtype, device, ``obs_grid`` not dividing the finest resolution)
raise :class:`~stochclosure.errors.ConfigError` (or the system's typed error) naming the key, and
nothing is written. Trajectories are simulated in batches of ``batch_size``; batch ``g`` draws all
its randomness from a generator seeded with ``SeedSequence([seed, g])``, so a batch is
reproducible on its own.

One writer per output: the job holds :func:`stochclosure._io.exclusive_lock` on ``--out`` from
before the first simulation to the end, so a second ``generate`` on the same ``--out`` stops at
once with a one-line :class:`~stochclosure.errors.OutputError` naming the holder's pid.

Records are streamed (``iter_records`` of the system, see :mod:`stochclosure.systems.records`)
into the batch's file, so memory holds one record per batch whatever the trajectory length.

Resumability (temporary file + atomic rename at every level): each finished batch is written to
``OUT.parts/batch_GGGGG.h5`` through a per-process temporary file
(:func:`stochclosure._io.temporary_name`) and ``os.replace``; a restarted run skips the batches
whose part exists, so a finished trajectory is never recomputed or lost. When all parts exist
they are assembled into a temporary file beside ``OUT`` which is renamed to ``OUT``, then the
parts are removed. Whenever it is killed, every file under its final name is a complete, valid
HDF5 file; the temporaries a killed run leaves are removed by the next run (which holds the lock,
so no other process can be writing them).

Normalisation statistics: every field dataset gets attributes ``mean`` and ``std`` (float64,
one value per channel) over the records of the training split (all trajectories when the
training split is empty; attribute ``statistics_of`` says which), for
:meth:`stochclosure.data.ClosureH5Dataset.target_statistics`.

Resolutions: ``resolutions`` lists the stored grid sizes. For Navier–Stokes (G, H) the simulation
grid ``system.n`` is coarse-grained by ``coarsen``: ``"stride"`` (point values, as the research
code; small scales alias) or ``"spectral"`` (Fourier truncation below the coarse Nyquist
wavenumber). For the subgrid system each resolution gets its own filter and closure; Lorenz-96
has the single resolution ``K``. Sparse measurements are point values of each closure at the
``obs_grid x obs_grid`` points ``(i / obs_grid, j / obs_grid)`` (``obs_grid`` points ``i / obs_grid``
in 1-D) taken from the finest stored resolution, which they must divide.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

from .._io import exclusive_lock, preflight_output, temporary_name
from ..cli import command
from ..config import check_config_keys, load_json_text, load_yaml_mapping
from ..errors import ConfigError, OutputError, format_error
from .hdf5 import FORMAT, FORMAT_VERSION, SPLITS, open_checked

__all__ = ["DEFAULTS", "MAX_COUNT", "MAX_SEED", "load_config", "normalise_config", "check_compression", "generate",
           "batch_seed"]

DEFAULTS: dict[str, Any] = {
    "trajectories": 8,        # number of trajectories N
    "batch_size": 4,          # trajectories simulated together (one resumable unit)
    "seed": 0,
    "spinup_steps": 0,        # full-model steps before the first record
    "record_every": 1,        # steps between records
    "records": 10,            # records T per trajectory
    "resolutions": None,      # stored grid sizes (default: the system's own)
    "coarsen": "stride",      # "stride" or "spectral" (Navier-Stokes G/H)
    "closures": None,         # closure names (default: all of the system's)
    "obs_grid": None,         # sparse points per side (default 16 in 2-D, none in 1-D; 0 = none)
    "split": {"train": 0.8, "val": 0.1, "test": 0.1},
    "dtype": "float64",       # simulation dtype
    "store_dtype": "float32",  # dtype on disk
    "device": "cpu",
    "compression": "gzip",    # h5py filter name ("gzip", "lzf", ...) or number, or null
    "compression_level": 4,   # gzip level 0-9 (ignored by the other filters), or null
}

MAX_COUNT = 2**31 - 1
"""Largest ``trajectories``, ``batch_size``, ``records``, ``record_every``, ``spinup_steps``, ``obs_grid``."""

MAX_SEED = 2**63 - 1
"""Largest ``seed`` (it is stored as a 64-bit HDF5 attribute)."""


def load_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a generation YAML file into ``{"system": {...}, **generation keys}`` (defaults filled)."""
    return normalise_config(load_yaml_mapping(path, empty_ok=True))


def _int_key(cfg: dict[str, Any], key: str, low: int, high: int, allow_none: bool = False) -> None:
    v = cfg[key]
    if allow_none and v is None:
        return
    if isinstance(v, bool) or not isinstance(v, int) or not low <= v <= high:
        what = "a positive integer" if low == 1 else "a non-negative integer"
        raise ConfigError(format_error(f"config.{key}", f"{'null or ' if allow_none else ''}{what} <= {high}",
                                       f"{type(v).__name__} {_short(v)}"))


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _check_device(device: Any) -> None:
    fix = "write device: cpu, or a device this machine has"
    if not isinstance(device, str):
        raise ConfigError(format_error("config.device", "a device name such as 'cpu' or 'cuda:0'",
                                       f"{type(device).__name__} {_short(device)}", fix))
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise ConfigError(format_error("config.device", "a device name such as 'cpu' or 'cuda:0'",
                                       _short(device), fix)) from None
    if dev.type == "cpu":
        return
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0 or (dev.index is not None and dev.index >= count):
            raise ConfigError(format_error("config.device", f"an available device ({count} CUDA device(s) here)",
                                           _short(device), fix))
        return
    if dev.type == "mps" and torch.backends.mps.is_available():
        return
    raise ConfigError(format_error("config.device", "'cpu', or an available 'cuda'/'mps' device", _short(device), fix))


def _compression_kwargs(cfg: dict[str, Any]) -> dict[str, Any]:
    """h5py keyword arguments for the configured compression (``{}`` for none)."""
    comp = cfg["compression"]
    if comp is None:
        return {}
    kw: dict[str, Any] = {"compression": comp}
    if comp == "gzip" and cfg["compression_level"] is not None:
        kw["compression_opts"] = int(cfg["compression_level"])
    return kw


def check_compression(cfg: dict[str, Any], chunk: tuple[int, ...] = (1, 1, 64, 64),
                      dtype: Any = "float32") -> None:
    """Refuse a ``compression``/``compression_level`` h5py cannot use, before any work.

    The check asks h5py itself: it creates (and writes) a small chunked dataset with these
    settings in an in-memory file, so an unknown or unavailable filter, a gzip level outside
    0-9 or a filter that cannot handle the chunk shape fails here, not after the simulation.

    Args:
        cfg: The configuration (keys ``compression``, ``compression_level``).
        chunk: The chunk shape to try (the real datasets' chunk when known).
        dtype: The stored dtype.

    Raises:
        ConfigError: naming ``config.compression`` (or ``config.compression_level``).
    """
    comp, level = cfg["compression"], cfg["compression_level"]
    if comp is not None and (isinstance(comp, bool) or not isinstance(comp, (str, int))):
        raise ConfigError(format_error("config.compression", "null, an h5py filter name ('gzip', 'lzf') or number",
                                       f"{type(comp).__name__} {_short(comp)}"))
    if level is not None and (isinstance(level, bool) or not isinstance(level, int) or not 0 <= level <= 9):
        raise ConfigError(format_error("config.compression_level", "null or an integer from 0 to 9 (gzip level)",
                                       f"{type(level).__name__} {_short(level)}"))
    if comp is None:
        return
    try:
        with h5py.File(f"probe-{os.getpid()}-{id(cfg)}.h5", "w", driver="core", backing_store=False) as f:
            d = f.create_dataset("x", shape=chunk, dtype=dtype, chunks=chunk, **_compression_kwargs(cfg))
            d[...] = np.ones(chunk, dtype=dtype)
    except (ValueError, TypeError, OSError, KeyError) as exc:
        avail = [n for n in ("gzip", "lzf", "szip") if n in h5py.filters.encode]
        raise ConfigError(format_error("config.compression", f"a compression h5py can use here (null, {avail}, "
                                                             "or an installed filter number)",
                                       f"{_short(comp)} with compression_level {_short(level)} "
                                       f"({str(exc).splitlines()[0][:120]})",
                                       "write compression: gzip (with compression_level 0-9) or null")) from None


def normalise_config(raw: dict[str, Any]) -> dict[str, Any]:
    """Check keys, types and ranges and fill defaults, before any work.

    Returns:
        The configuration with every key of :data:`DEFAULTS` (and ``system``).

    Raises:
        ConfigError: an unknown key, a value of the wrong type or range, an empty
            ``closures``/``resolutions`` list, or a compression h5py cannot use; the message
            names the key (``config.<key>``).
    """
    if not isinstance(raw, dict):
        raise ConfigError(format_error("--config", "a mapping of generation keys", type(raw).__name__))
    unknown = [str(k) for k in raw if k not in DEFAULTS and k != "system"]
    if unknown:
        raise ConfigError(format_error(f"config.{unknown[0]}", f"one of the keys {['system', *DEFAULTS]}",
                                       f"unknown key(s) {_short(unknown)}", "check the spelling (see configs/*.yaml)"))
    system = raw.get("system")
    if not isinstance(system or {}, dict) or not all(isinstance(k, str) for k in (system or {})):
        raise ConfigError(format_error("config.system", "a mapping of the system's constructor arguments",
                                       f"{type(system).__name__} {_short(system)}"))
    cfg = {**DEFAULTS, **{k: v for k, v in raw.items() if k != "system"}}
    cfg["system"] = dict(system or {})
    split = cfg["split"]
    if (not isinstance(split, dict) or set(split) - set(SPLITS)
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0 for v in split.values())
            or abs(sum(split.values()) - 1) > 1e-9):
        raise ConfigError(format_error("config.split", f"fractions for {SPLITS} summing to 1", _short(split)))
    for key in ("trajectories", "batch_size", "records", "record_every"):
        _int_key(cfg, key, 1, MAX_COUNT)
    _int_key(cfg, "seed", 0, MAX_SEED)
    _int_key(cfg, "spinup_steps", 0, MAX_COUNT)
    _int_key(cfg, "obs_grid", 0, MAX_COUNT, allow_none=True)
    for key in ("dtype", "store_dtype"):
        if cfg[key] not in ("float32", "float64"):
            raise ConfigError(format_error(f"config.{key}", "'float32' or 'float64'", _short(cfg[key])))
    for key, kind, example in (("resolutions", int, "[64, 32]"), ("closures", str, "[G, H]")):
        v = cfg[key]
        if v is not None and (not isinstance(v, list) or not v
                              or not all(isinstance(x, kind) and not isinstance(x, bool) for x in v)
                              or (kind is int and not all(1 <= x <= MAX_COUNT for x in v))
                              or (kind is str and not all(x for x in v))
                              or len(set(v)) != len(v)):
            what = "positive integers" if kind is int else "non-empty names"
            raise ConfigError(format_error(f"config.{key}", f"null (the system's own) or a non-empty list of "
                                                            f"distinct {what}",
                                           f"{type(v).__name__} {_short(v)}", f"write e.g. {key}: {example}"))
    if cfg["coarsen"] not in ("stride", "spectral"):
        raise ConfigError(format_error("config.coarsen", "'stride' or 'spectral'", _short(cfg["coarsen"])))
    _check_device(cfg["device"])
    check_compression(cfg, dtype=cfg["store_dtype"])
    return cfg


def batch_seed(seed: int, batch_index: int) -> int:
    """Seed of batch ``batch_index``: independent streams from ``numpy.random.SeedSequence``."""
    return int(np.random.SeedSequence([int(seed), int(batch_index)]).generate_state(1, dtype=np.uint64)[0] >> 1)


def _versions() -> dict[str, str]:
    from .. import __version__

    return {"stochclosure": __version__, "torch": torch.__version__, "h5py": h5py.__version__,
            "numpy": np.__version__, "hdf5": h5py.version.hdf5_version, "python": platform.python_version()}


def _build_system(name: str, cfg: dict[str, Any]) -> Any:
    from ..registry import get, resolve

    cls = get("system", name)
    check_config_keys(cls, cfg["system"], where="config.system")
    return resolve("system", {"type": name, **cfg["system"]})


def _split_array(n: int, fractions: dict[str, float], seed: int) -> np.ndarray:
    counts = [int(round(fractions.get(s, 0.0) * n)) for s in SPLITS]
    counts[0] = n - counts[1] - counts[2]
    labels = np.repeat(np.arange(3, dtype=np.int8), counts)
    return labels[np.random.default_rng([int(seed), 7]).permutation(n)]


def _obs_points(grid: int, dims: int) -> np.ndarray:
    if grid == 0:
        return np.zeros((0, dims))
    c = np.arange(grid) / grid
    if dims == 1:
        return c[:, None]
    return np.stack(np.meshgrid(c, c, indexing="ij"), -1).reshape(-1, 2)


def _observe(field: torch.Tensor, grid: int) -> torch.Tensor:
    """Point values ``(B, C, P)`` of a ``(B, C, *spatial)`` field at the obs grid."""
    n = field.shape[-1]
    if n % grid:
        raise ConfigError(format_error("config.obs_grid", f"a divisor of the finest resolution {n}", repr(grid)))
    s = n // grid
    sub = field[..., ::s] if field.dim() == 3 else field[..., ::s, ::s]
    return sub.reshape(*field.shape[:2], -1)


def _write_part(path: Path, stream: Any, n_records: int, seed: int, obs_grid: int, store: np.dtype) -> None:
    """Write one batch's record stream to ``path`` (per-process temporary file, fsync, atomic rename)."""
    tmp = temporary_name(path)
    times = []
    try:
        with h5py.File(tmp, "w-") as f:
            f.attrs["seed"] = seed
            for r, (t, rec) in enumerate(stream):
                times.append(t)
                for key, v in _record_items(rec, obs_grid):
                    if key not in f:
                        f.create_dataset(key, shape=(v.shape[0], n_records, *v.shape[1:]), dtype=store,
                                         chunks=(1, 1, *v.shape[1:]))
                    f[key][:, r] = v.numpy().astype(store)
            f["time"] = np.asarray(times, dtype=np.float64)
            f.attrs["complete"] = True
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _record_items(rec: dict[int, dict[str, torch.Tensor]], obs_grid: int) -> list[tuple[str, torch.Tensor]]:
    """The datasets of one record: ``res_{n}/{name}`` and, with ``obs_grid``, ``obs/{closure}``."""
    items = [(f"res_{res}/{name}", v) for res, d in rec.items() for name, v in d.items()]
    if obs_grid:
        finest = max(rec)
        items += [(f"obs/{name}", _observe(v, obs_grid)) for name, v in rec[finest].items() if name != "state"]
    return items


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    """Write JSON to ``path`` atomically through a per-process temporary name."""
    tmp = temporary_name(path)
    try:
        tmp.write_text(json.dumps(payload, default=str))
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _remove_stale_temporaries(out: Path, parts: Path) -> None:
    """Delete the temporaries killed runs left (only called while holding the output's lock)."""
    stale = list(out.parent.glob(f".{out.name}.*.tmp"))
    if parts.is_dir():
        stale += list(parts.glob(".*.tmp"))
    for p in stale:
        try:
            p.unlink()
        except OSError:
            pass


def _probe(system: Any, cfg: dict[str, Any], closures: list[str], obs_grid: int, store: np.dtype) -> None:
    """One record of one trajectory, no spin-up: what the system refuses fails here, before any work.

    Also checks that ``obs_grid`` divides the finest stored resolution and that the compression
    filter takes the real datasets' chunk shape.
    """
    stream = system.iter_records(1, generator=torch.Generator().manual_seed(0), spinup_steps=0, record_every=1,
                                 n_records=1, resolutions=cfg["resolutions"], closures=closures,
                                 coarsen_method=cfg["coarsen"], dtype=getattr(torch, cfg["dtype"]),
                                 device=cfg["device"])
    try:
        _, rec = next(iter(stream))
    finally:
        close = getattr(stream, "close", None)
        if close is not None:
            close()
    for chunk in {(1, 1, *v.shape[1:]) for _, v in _record_items(rec, obs_grid)}:
        check_compression(cfg, chunk, store)
    _check_batch_memory(cfg, sum(int(v.numel()) for _, v in _record_items(rec, obs_grid)))


def _check_batch_memory(cfg: dict[str, Any], values_per_record: int) -> None:
    """Refuse a ``batch_size`` whose one record (all resolutions and closures) cannot fit in memory.

    A batch of ``min(batch_size, trajectories)`` trajectories holds at least one record of each
    at once: a lower bound, so nothing that fits is refused (see :mod:`stochclosure._memory`).
    """
    from .._memory import check_allocation

    batch = min(cfg["batch_size"], cfg["trajectories"])
    check_allocation("config.batch_size", (batch, values_per_record), getattr(torch, cfg["dtype"]), cfg["device"],
                     value=cfg["batch_size"], fix="use a smaller batch_size (trajectories are simulated batch_size "
                                                  "at a time)")


def _config_hash(system_name: str, spec: dict[str, Any], cfg: dict[str, Any]) -> str:
    payload = json.dumps({"system": system_name, "spec": spec, "cfg": cfg}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def generate(system_name: str, config: dict[str, Any], out: str | os.PathLike[str], *, progress: bool = True) -> Path:
    """Generate (or resume) a closure dataset.

    The configuration is validated (and the system probed with one record) before anything is
    written, and the job holds an exclusive lock on ``out`` throughout (see the module docstring).

    Args:
        system_name: Registered system (``navier_stokes_2d``, ``navier_stokes_2d_subgrid``, ``lorenz96``).
        config: Raw or normalised configuration (see :data:`DEFAULTS`).
        out: Output ``.h5`` path.
        progress: Show a tqdm bar (trajectories/s).

    Returns:
        The path of the complete file.

    Raises:
        ConfigError: an invalid configuration, or ``out`` made with another configuration.
        OutputError: ``out`` cannot be written, or another process is writing it.
    """
    from tqdm.auto import tqdm

    cfg = normalise_config(config)
    system = _build_system(system_name, cfg)
    spec = system.spec()
    dims = system.spatial_dims
    resolutions = cfg["resolutions"] or [getattr(system, "n", getattr(system, "K", None))]
    closures = cfg["closures"] or list(system.closure_names)
    unknown = [c for c in closures if c not in system.closure_names]
    if unknown:
        raise ConfigError(format_error("config.closures", f"names among {list(system.closure_names)} "
                                                          f"(the closures of {system_name})", _short(unknown)))
    obs_grid = cfg["obs_grid"] if cfg["obs_grid"] is not None else (16 if dims == 2 else 0)
    cfg = {**cfg, "resolutions": [int(r) for r in resolutions], "closures": closures, "obs_grid": int(obs_grid)}
    chash = _config_hash(system_name, spec, cfg)
    store = np.dtype(cfg["store_dtype"])
    out = Path(out)
    preflight_output(out, "--out")
    parts = out.with_name(out.name + ".parts")
    with exclusive_lock(out, "--out"):
        if out.exists():
            with open_checked(out, system_name) as f:
                if f.attrs.get("config_hash") != chash:
                    raise ConfigError(format_error("--out", "a new path or a file made with this same configuration",
                                                   f"{str(out)!r}, made with another configuration",
                                                   "choose another --out or delete the file"))
            shutil.rmtree(parts, ignore_errors=True)
            _remove_stale_temporaries(out, parts)
            return out
        manifest = parts / "manifest.json"
        if manifest.exists():
            old = load_json_text(manifest.read_bytes(), str(manifest), OutputError)
            if not isinstance(old, dict) or old.get("config_hash") != chash:
                raise ConfigError(format_error("--config", f"the configuration of the unfinished run in {str(parts)!r}",
                                               "a different configuration",
                                               f"rerun with the same configuration, or delete {str(parts)!r}"))
        _probe(system, cfg, closures, int(obs_grid), store)
        _remove_stale_temporaries(out, parts)
        parts.mkdir(parents=True, exist_ok=True)
        if not manifest.exists():
            _write_json(manifest, {"config_hash": chash, "system": system_name, "config": cfg})
        dtype = getattr(torch, cfg["dtype"])
        n_traj, bsz = cfg["trajectories"], cfg["batch_size"]
        n_batches = -(-n_traj // bsz)
        done = {g for g in range(n_batches) if (parts / f"batch_{g:05d}.h5").exists()}
        sizes = [min(bsz, n_traj - g * bsz) for g in range(n_batches)]
        if done:
            print(f"resuming {str(parts)!r}: {sum(sizes[g] for g in done)} of {n_traj} trajectories already done",
                  file=sys.stderr)
        bar = tqdm(total=n_traj, initial=sum(sizes[g] for g in done), unit="traj", disable=not progress,
                   desc=f"generate {system_name}", dynamic_ncols=True)
        for g in range(n_batches):
            if g in done:
                continue
            seed = batch_seed(cfg["seed"], g)
            gen = torch.Generator().manual_seed(seed)
            stream = system.iter_records(sizes[g], generator=gen, spinup_steps=cfg["spinup_steps"],
                                         record_every=cfg["record_every"], n_records=cfg["records"],
                                         resolutions=cfg["resolutions"], closures=closures,
                                         coarsen_method=cfg["coarsen"], dtype=dtype, device=cfg["device"])
            _write_part(parts / f"batch_{g:05d}.h5", stream, cfg["records"], seed, obs_grid, store)
            bar.update(sizes[g])
        bar.close()
        _assemble(out, parts, system_name, spec, cfg, chash, n_batches, sizes, obs_grid, dims, store)
        shutil.rmtree(parts, ignore_errors=True)
    return out


class _Moments:
    """Per-channel count, mean and sum of squared deviations, merged chunk by chunk (Chan et al.)."""

    def __init__(self) -> None:
        self.n = 0
        self.mean: np.ndarray | None = None
        self.m2: np.ndarray | None = None

    def add(self, x: np.ndarray) -> None:
        """Add one trajectory ``(T, C, *grid)``."""
        flat = np.moveaxis(np.asarray(x, dtype=np.float64), 1, 0).reshape(x.shape[1], -1)
        n_b = flat.shape[1]
        mean_b = flat.mean(1)
        m2_b = ((flat - mean_b[:, None]) ** 2).sum(1)
        if self.mean is None or self.m2 is None:
            self.n, self.mean, self.m2 = n_b, mean_b, m2_b
            return
        n = self.n + n_b
        delta = mean_b - self.mean
        self.mean = self.mean + delta * n_b / n
        self.m2 = self.m2 + m2_b + delta**2 * self.n * n_b / n
        self.n = n

    def std(self) -> np.ndarray:
        """Population standard deviation per channel."""
        assert self.m2 is not None
        return np.sqrt(self.m2 / max(self.n, 1))


def _assemble(out: Path, parts: Path, system_name: str, spec: dict[str, Any], cfg: dict[str, Any], chash: str,
              n_batches: int, sizes: list[int], obs_grid: int, dims: int, store: np.dtype) -> None:
    n_traj = sum(sizes)
    tmp = temporary_name(out)
    kw = _compression_kwargs(cfg)
    seeds = []
    labels = _split_array(n_traj, cfg["split"], cfg["seed"])
    in_stats = labels == 0 if bool((labels == 0).any()) else np.ones(n_traj, dtype=bool)
    moments: dict[str, _Moments] = {}
    try:
        with h5py.File(tmp, "w-") as f:
            f.attrs.update({
                "format": FORMAT, "format_version": FORMAT_VERSION, "system": system_name,
                "system_config": json.dumps(spec, sort_keys=True), "generate_config": json.dumps(cfg, sort_keys=True),
                "seed": int(cfg["seed"]), "versions": json.dumps(_versions(), sort_keys=True),
                "closures": json.dumps(cfg["closures"]), "resolutions": json.dumps(cfg["resolutions"]),
                "coarsen": cfg["coarsen"], "config_hash": chash, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            })
            split = f.create_dataset("split", data=labels)
            split.attrs["names"] = json.dumps(list(SPLITS))
            f["obs_points"] = _obs_points(obs_grid, dims)
            start = 0
            for g in range(n_batches):
                with h5py.File(parts / f"batch_{g:05d}.h5", "r") as p:
                    seeds.append(int(p.attrs["seed"]))
                    if g == 0:
                        f["time"] = p["time"][()]
                    names: list[str] = []
                    p.visit(lambda n, p=p, names=names: names.append(n) if isinstance(p[n], h5py.Dataset) else None)
                    for name in names:
                        if name == "time":
                            continue
                        src = p[name]
                        if name not in f:
                            shape = (n_traj, *src.shape[1:])
                            chunk = (1, 1, *src.shape[2:])
                            f.create_dataset(name, shape=shape, dtype=store, chunks=chunk, **kw)
                        for i in range(sizes[g]):  # one trajectory at a time: bounded memory
                            row = src[i]
                            f[name][start + i] = row
                            if in_stats[start + i]:
                                moments.setdefault(name, _Moments()).add(row.astype(store))
                start += sizes[g]
            for name, mom in moments.items():
                assert mom.mean is not None
                f[name].attrs["mean"] = mom.mean
                f[name].attrs["std"] = mom.std()
                f[name].attrs["statistics_of"] = "train split" if bool((labels == 0).any()) else "all trajectories"
            f.attrs["batch_seeds"] = json.dumps(seeds)
            f.attrs["batch_size"] = int(cfg["batch_size"])
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()


def _run(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_config(args.config)
    t0 = time.perf_counter()
    path = generate(args.system, cfg, args.out, progress=not args.no_progress)
    dt = time.perf_counter() - t0
    print(f"wrote {path} ({cfg['trajectories']} trajectories, {dt:.1f} s)", file=sys.stderr)
    return 0


def _add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--system", required=True, help="registered system name (see `stochclosure plugins`)")
    p.add_argument("--config", required=True, help="YAML file: a `system` block and generation keys")
    p.add_argument("--out", required=True, help="output .h5 file (resumes an unfinished run of the same config)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")


_run.add_args = _add_args  # type: ignore[attr-defined]
command("generate", "simulate a system and write a resumable HDF5 closure dataset")(_run)
