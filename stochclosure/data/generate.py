"""``stochclosure generate``: simulate a registered system and write a closure dataset (HDF5).

The YAML configuration (loaded with ``yaml.safe_load``) has a ``system`` block (constructor
arguments of the registered system) and the generation keys of :data:`DEFAULTS`; an unknown key
raises :class:`~stochclosure.errors.ConfigError` naming it. Trajectories are simulated in batches
of ``batch_size``; batch ``g`` draws all its randomness from a generator seeded with
``SeedSequence([seed, g])``, so a batch is reproducible on its own.

Records are streamed (``iter_records`` of the system, see :mod:`stochclosure.systems.records`)
into the batch's file, so memory holds one record per batch whatever the trajectory length.

Resumability (temporary file + atomic rename at every level): each finished batch is written to
``OUT.parts/batch_GGGGG.h5`` through a temporary file and ``os.replace``; a restarted run skips
the batches whose part exists, so a finished trajectory is never recomputed or lost. When all
parts exist they are assembled into ``OUT.tmp`` which is renamed to ``OUT``, then the parts are
removed. Whenever it is killed, every file under its final name is a complete, valid HDF5 file.

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

from .._io import preflight_output
from ..cli import command
from ..config import check_config_keys, load_yaml_mapping
from ..errors import ConfigError, format_error
from .hdf5 import FORMAT, FORMAT_VERSION, SPLITS, open_checked

__all__ = ["DEFAULTS", "load_config", "generate", "batch_seed"]

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
    "compression": "gzip",    # h5py filter name, or null
    "compression_level": 4,
}


def load_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a generation YAML file into ``{"system": {...}, **generation keys}`` (defaults filled)."""
    return normalise_config(load_yaml_mapping(path, empty_ok=True))


def normalise_config(raw: dict[str, Any]) -> dict[str, Any]:
    """Check keys and fill defaults; unknown keys raise :class:`ConfigError` naming them."""
    unknown = [str(k) for k in raw if k not in DEFAULTS and k != "system"]
    if unknown:
        raise ConfigError(format_error(f"config.{unknown[0]}", f"one of the keys {['system', *DEFAULTS]}",
                                       f"unknown key(s) {unknown}", "check the spelling (see configs/*.yaml)"))
    if not isinstance(raw.get("system") or {}, dict):
        raise ConfigError(format_error("config.system", "a mapping of the system's constructor arguments",
                                       f"{type(raw['system']).__name__} {raw['system']!r}"))
    cfg = {**DEFAULTS, **{k: v for k, v in raw.items() if k != "system"}}
    cfg["system"] = dict(raw.get("system") or {})
    split = cfg["split"]
    if (not isinstance(split, dict) or set(split) - set(SPLITS)
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0 for v in split.values())
            or abs(sum(split.values()) - 1) > 1e-9):
        raise ConfigError(format_error("config.split", f"fractions for {SPLITS} summing to 1", repr(split)))
    for key in ("trajectories", "batch_size", "records", "record_every"):
        if not (isinstance(cfg[key], int) and cfg[key] >= 1):
            raise ConfigError(format_error(f"config.{key}", "a positive integer", repr(cfg[key])))
    if cfg["dtype"] not in ("float32", "float64") or cfg["store_dtype"] not in ("float32", "float64"):
        raise ConfigError(format_error("config.dtype", "'float32' or 'float64'", repr(cfg["dtype"])))
    for key in ("seed", "spinup_steps"):
        v = cfg[key]
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ConfigError(format_error(f"config.{key}", "a non-negative integer", f"{type(v).__name__} {v!r}"))
    for key, kind, example in (("resolutions", int, "[64, 32]"), ("closures", str, "[G, H]")):
        v = cfg[key]
        if v is not None and (not isinstance(v, list) or not v
                              or not all(isinstance(x, kind) and not isinstance(x, bool) for x in v)):
            raise ConfigError(format_error(f"config.{key}", f"null or a non-empty list of {kind.__name__}",
                                           f"{type(v).__name__} {v!r}", f"write e.g. {key}: {example}"))
    v = cfg["obs_grid"]
    if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
        raise ConfigError(format_error("config.obs_grid", "null or a non-negative integer", f"{type(v).__name__} {v!r}"))
    if cfg["coarsen"] not in ("stride", "spectral"):
        raise ConfigError(format_error("config.coarsen", "'stride' or 'spectral'", repr(cfg["coarsen"])))
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
    """Write one batch's record stream to ``path`` (temporary file, fsync, atomic rename)."""
    tmp = path.with_suffix(".h5.tmp")
    times = []
    with h5py.File(tmp, "w") as f:
        f.attrs["seed"] = seed
        for r, (t, rec) in enumerate(stream):
            times.append(t)
            finest = max(rec)
            items = [(f"res_{res}/{name}", v) for res, d in rec.items() for name, v in d.items()]
            if obs_grid:
                items += [(f"obs/{name}", _observe(v, obs_grid)) for name, v in rec[finest].items() if name != "state"]
            for key, v in items:
                if key not in f:
                    f.create_dataset(key, shape=(v.shape[0], n_records, *v.shape[1:]), dtype=store,
                                     chunks=(1, 1, *v.shape[1:]))
                f[key][:, r] = v.numpy().astype(store)
        f["time"] = np.asarray(times, dtype=np.float64)
        f.attrs["complete"] = True
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _config_hash(system_name: str, spec: dict[str, Any], cfg: dict[str, Any]) -> str:
    payload = json.dumps({"system": system_name, "spec": spec, "cfg": cfg}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def generate(system_name: str, config: dict[str, Any], out: str | os.PathLike[str], *, progress: bool = True) -> Path:
    """Generate (or resume) a closure dataset.

    Args:
        system_name: Registered system (``navier_stokes_2d``, ``navier_stokes_2d_subgrid``, ``lorenz96``).
        config: Raw or normalised configuration (see :data:`DEFAULTS`).
        out: Output ``.h5`` path.
        progress: Show a tqdm bar (trajectories/s).

    Returns:
        The path of the complete file.
    """
    from tqdm.auto import tqdm

    cfg = normalise_config(config)
    system = _build_system(system_name, cfg)
    spec = system.spec()
    dims = system.spatial_dims
    resolutions = cfg["resolutions"] or [getattr(system, "n", getattr(system, "K", None))]
    closures = cfg["closures"] or list(system.closure_names)
    obs_grid = cfg["obs_grid"] if cfg["obs_grid"] is not None else (16 if dims == 2 else 0)
    cfg = {**cfg, "resolutions": [int(r) for r in resolutions], "closures": closures, "obs_grid": int(obs_grid)}
    chash = _config_hash(system_name, spec, cfg)
    out = Path(out)
    preflight_output(out, "--out")
    if out.exists():
        with open_checked(out, system_name) as f:
            if f.attrs.get("config_hash") != chash:
                raise ConfigError(format_error("--out", "a new path or a file made with this same configuration",
                                               f"{str(out)!r}, made with another configuration",
                                               "choose another --out or delete the file"))
        shutil.rmtree(out.with_name(out.name + ".parts"), ignore_errors=True)
        return out
    parts = out.with_name(out.name + ".parts")
    parts.mkdir(parents=True, exist_ok=True)
    manifest = parts / "manifest.json"
    if manifest.exists():
        old = json.loads(manifest.read_text())
        if old.get("config_hash") != chash:
            raise ConfigError(format_error("--config", f"the configuration of the unfinished run in {str(parts)!r}",
                                           "a different configuration",
                                           f"rerun with the same configuration, or delete {str(parts)!r}"))
    else:
        tmp = manifest.with_suffix(".tmp")
        tmp.write_text(json.dumps({"config_hash": chash, "system": system_name, "config": cfg}, default=str))
        os.replace(tmp, manifest)
    dtype = getattr(torch, cfg["dtype"])
    store = np.dtype(cfg["store_dtype"])
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


def _assemble(out: Path, parts: Path, system_name: str, spec: dict[str, Any], cfg: dict[str, Any], chash: str,
              n_batches: int, sizes: list[int], obs_grid: int, dims: int, store: np.dtype) -> None:
    n_traj = sum(sizes)
    tmp = out.with_name(out.name + ".tmp")
    comp = cfg["compression"]
    kw = {} if comp is None else {"compression": comp}
    if comp == "gzip":
        kw["compression_opts"] = int(cfg["compression_level"])
    seeds = []
    with h5py.File(tmp, "w") as f:
        f.attrs.update({
            "format": FORMAT, "format_version": FORMAT_VERSION, "system": system_name,
            "system_config": json.dumps(spec, sort_keys=True), "generate_config": json.dumps(cfg, sort_keys=True),
            "seed": int(cfg["seed"]), "versions": json.dumps(_versions(), sort_keys=True),
            "closures": json.dumps(cfg["closures"]), "resolutions": json.dumps(cfg["resolutions"]),
            "coarsen": cfg["coarsen"], "config_hash": chash, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        })
        split = f.create_dataset("split", data=_split_array(n_traj, cfg["split"], cfg["seed"]))
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
                        f[name][start + i] = src[i]
            start += sizes[g]
        f.attrs["batch_seeds"] = json.dumps(seeds)
        f.attrs["batch_size"] = int(cfg["batch_size"])
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, out)


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
