"""Safe checkpoints: configuration JSON + library versions + safetensors weights, written atomically.

A checkpoint never contains pickled code. It is either

* a **directory** holding ``config.json`` (format, versions, the registry specs of every
  component, normalisation statistics, SHA-256 of each tensor file, optional trainer state)
  and ``model.safetensors`` (plus ``ema.safetensors``, ``optimizer.safetensors``, ``rng.safetensors``
  for training checkpoints); or
* a **single file** ``*.safetensors`` whose metadata holds the same JSON (under
  ``"stochclosure"``) and a SHA-256 of the tensor data.

Everything is written to a per-process temporary name (:func:`stochclosure._io.temporary_name`)
in the target directory and moved into place with :func:`os.replace`, so a kill leaves either
the previous checkpoint or the new one, never half of one, and two writers never share a
temporary file.

Loading trusts nothing it reads. It checks the format name and version, the size and nesting of
the JSON (at most :data:`MAX_CONFIG_BYTES`, :data:`~stochclosure.config.MAX_NESTING` levels), the
checksums and the tensor names, and raises :class:`~stochclosure.errors.CheckpointError` for
anything missing, truncated, corrupt, foreign or written by an incompatible format version, and
also for

* a file of a checkpoint directory (``config.json``, a weight file) that is a symbolic link
  resolving outside the directory, or a ``files`` entry that is not a plain file name;
* normalisation statistics (``target_mean``, ``target_std``, in ``config.json`` or among the
  weights) that are not finite numbers, a ``target_std`` that is not positive, or config and
  weights that disagree;
* weights whose dtype the model cannot take without loss. **The dtype rule**: a stored tensor
  must have the dtype of the model's parameter or buffer, or one that converts to it exactly by
  type: float16/bfloat16 into float32 or float64, float32 into float64, complex64 into
  complex128. Integer or bool weights for floating parameters (a quantised or foreign file), and
  narrowing conversions (float64 into float32), are refused; non-floating buffers must match
  exactly.

The SDE the score was trained with travels with the weights: :func:`save_model` and
:func:`write_checkpoint_dir` record its spec in the safetensors metadata of the weight files
(key ``stochclosure.sde``), and :func:`load_model` refuses, with
:class:`~stochclosure.errors.IncompatibleComponentsError` naming both, a ``config.json`` whose
``model.sde`` differs (every recorded key must have the recorded value; keys added later with a
default are ignored). Checkpoints written before this record existed load as before.

``config.json`` also records the distribution that provides each component and its version
(``providers``, ``"kind:name" -> {"distribution": ..., "version": ...}``, looked up through the
registry; ``version`` is ``null`` for a component defined in a script or registered at run time)
and, in ``versions``, the version of every one of those distributions, third-party plugins included.
"""

from __future__ import annotations

import hashlib
import importlib.metadata as metadata
import json
import math
import os
import platform
import shutil
import struct
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ._io import temporary_name
from .config import load_json_text, to_jsonable
from .errors import CheckpointError, IncompatibleComponentsError, UnknownPluginError, format_error
from .model import ClosureModel
from .registry import get_registry, name_of

__all__ = [
    "hash_tensor",
    "FORMAT",
    "FORMAT_VERSION",
    "save_model",
    "load_model",
    "read_config",
    "model_config",
    "library_versions",
    "component_providers",
    "MAX_CONFIG_BYTES",
    "atomic_write_bytes",
    "save_tensors",
    "load_tensors",
    "write_checkpoint_dir",
    "is_diffusion_model",
    "law_spec",
]

FORMAT = "stochclosure.checkpoint"
FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
MODEL_FILE = "model.safetensors"
EMA_FILE = "ema.safetensors"
SDE_METADATA = "stochclosure.sde"
MAX_CONFIG_BYTES = 16 * 2**20
"""Largest checkpoint configuration read (``config.json`` or single-file metadata), 16 MiB."""


def _components(model: Any) -> Iterator[Any]:
    """Every component object of ``model`` (SDE, score, sampler, nested encoders, ...), once each."""
    seen: set[int] = set()
    parts = [getattr(model, a) for a in ("sde", "score", "sampler") if hasattr(model, a)]
    stack: list[Any] = [*parts, *model.modules()]
    while stack:
        obj = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, (list, tuple)):
            stack.extend(obj)
        elif isinstance(obj, dict):
            stack.extend(obj.values())
        elif getattr(type(obj), "component_kind", None) is not None:
            yield obj
            stack.extend((getattr(obj, "config", None) or {}).values())


def _distribution_of_module(module: str) -> str | None:
    """The installed distribution providing the top-level package of ``module``, if any."""
    top = module.split(".", 1)[0]
    dists = metadata.packages_distributions().get(top) or []
    return dists[0] if dists else None


def component_providers(model: Any) -> dict[str, str]:
    """The distribution that provides each component of ``model``.

    A component registered through an entry point is attributed to its distribution
    (:attr:`stochclosure.registry.RegisteredComponent.provider`); one registered at run time, or
    built from a class directly, to the distribution that installed its module (through
    ``importlib.metadata.packages_distributions``), or ``"unknown"`` (a script, a notebook).

    Returns:
        ``{"kind:name": distribution}``, e.g. ``{"score_operator:fno": "stochclosure-neuralop"}``;
        ``name`` is the registered name, or ``module:qualname`` for unregistered classes.
    """
    out: dict[str, str] = {}
    for obj in _components(model):
        kind = type(obj).component_kind
        registry = get_registry(kind)
        name = registry.name_of(obj)
        provider = None
        if name is not None:
            comp = registry.component(name)
            if comp.entry_point is not None:
                provider = comp.provider
        else:
            name = f"{type(obj).__module__}:{type(obj).__qualname__}"
        out[f"{kind}:{name}"] = provider or _distribution_of_module(type(obj).__module__) or "unknown"
    return dict(sorted(out.items()))


def library_versions(providers: Mapping[str, str] | None = None) -> dict[str, str]:
    """Versions of Python and of the installed distributions a checkpoint depends on.

    Args:
        providers: :func:`component_providers` of the model: the version of every distribution
            named there is recorded too (third-party plugins included).

    Returns:
        ``{"python": ..., distribution: version, ...}``: the core and its numerical
        dependencies, every installed ``stochclosure-*`` distribution and every provider.
    """
    out = {"python": platform.python_version()}
    names = ["stochclosure", "torch", "safetensors", "numpy", "neuraloperator"]
    for dist in metadata.distributions():
        name = (dist.metadata["Name"] or "").lower()
        if name.startswith("stochclosure-") and name not in names:
            names.append(name)
    for name in (providers or {}).values():
        if name not in names and name not in ("unknown", "register()"):
            names.append(name)
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (per-process temporary file beside it, fsync, rename)."""
    path = Path(path)
    tmp = temporary_name(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def hash_tensor(h: Any, t: Tensor) -> None:
    """Feed a tensor's dtype, shape and bytes to the hash object ``h`` (any rank, 0-d included)."""
    t = t.detach().cpu().contiguous()
    h.update(str(t.dtype).encode() + str(tuple(t.shape)).encode())
    h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")


def _tensor_digest(tensors: Mapping[str, Tensor]) -> str:
    h = hashlib.sha256()
    for k in sorted(tensors):
        h.update(k.encode())
        hash_tensor(h, tensors[k])
    return h.hexdigest()


def _prepare(tensors: Mapping[str, Tensor]) -> dict[str, Tensor]:
    # clones break storage sharing (safetensors refuses shared tensors) and detach from autograd
    return {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}


def save_tensors(path: str | os.PathLike[str], tensors: Mapping[str, Tensor],
                 metadata_: Mapping[str, str] | None = None) -> str:
    """Atomically save ``tensors`` as safetensors; returns the SHA-256 of the file bytes."""
    from safetensors.torch import save

    data = save(_prepare(tensors), metadata=dict(metadata_) if metadata_ else None)
    atomic_write_bytes(path, data)
    return hashlib.sha256(data).hexdigest()


def _inside(root: str | os.PathLike[str], path: str | os.PathLike[str], argument: str = "path") -> Path:
    """``path`` resolved, refusing one (a symbolic link) that resolves outside the folder ``root``."""
    real_root, real = Path(root).resolve(), Path(path).resolve()
    if real != real_root and real_root not in real.parents:
        raise CheckpointError(format_error(argument, f"a file inside the checkpoint folder {str(real_root)!r}",
                                           f"{str(path)!r}, a link resolving to {str(real)!r} outside it",
                                           "copy the file itself into the checkpoint folder"))
    return real


def _safetensors_metadata(data: bytes, where: str) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file's bytes (``{}`` when it has none)."""
    (size,) = struct.unpack("<Q", data[:8])
    header = load_json_text(data[8:8 + size], where, CheckpointError, max_chars=MAX_CONFIG_BYTES)
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    return meta if isinstance(meta, dict) else {}


def _read_tensor_file(path: str | os.PathLike[str], sha256: str | None = None,
                      root: str | os.PathLike[str] | None = None) -> tuple[dict[str, Tensor], dict[str, str]]:
    """:func:`load_tensors`, also returning the file's safetensors metadata."""
    from safetensors.torch import load

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(format_error("path", "an existing safetensors file", f"{str(path)!r} (missing)"))
    if root is not None:
        _inside(root, path, str(path))
    data = path.read_bytes()
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        raise CheckpointError(format_error(str(path), f"a file with SHA-256 {sha256[:12]}... as recorded in the config",
                                           "different bytes (corrupt or truncated)",
                                           "restore the file or use an earlier checkpoint"))
    try:
        tensors = load(data)
    except Exception as exc:  # noqa: BLE001 - any parse failure is a bad file
        raise CheckpointError(format_error(str(path), "a safetensors file", f"unreadable data ({exc})",
                                           "the file is truncated, corrupt or of another format")) from exc
    return tensors, _safetensors_metadata(data, str(path))


def load_tensors(path: str | os.PathLike[str], sha256: str | None = None, *,
                 root: str | os.PathLike[str] | None = None) -> dict[str, Tensor]:
    """Load a safetensors file (never unpickles); verify its SHA-256 when given.

    Args:
        path: The file.
        sha256: Expected SHA-256 of the file's bytes.
        root: When given, ``path`` must resolve inside this folder (a symbolic link leaving the
            checkpoint folder is refused).

    Raises:
        CheckpointError: missing, truncated, corrupt, not a safetensors file, or outside ``root``.
    """
    return _read_tensor_file(path, sha256, root)[0]


def is_diffusion_model(model: Any) -> bool:
    """``True`` for a :class:`~stochclosure.ClosureModel` (an SDE, a score operator and a sampler)."""
    return all(hasattr(model, a) for a in ("sde", "score", "sampler"))


def law_spec(law: Any) -> dict[str, Any]:
    """``{"type": registered name, **config}`` of a closure law, for a checkpoint.

    The name is the one the law's class is registered under in the ``closure`` kind (entry point
    or :func:`stochclosure.register`); the configuration is the law's :meth:`spec` (laws built on
    :class:`~stochclosure.config.Configurable`) or its ``config`` dict, else empty (the class is
    then rebuilt with its defaults).

    Raises:
        CheckpointError: the law's class is not registered (a checkpoint names registered
            components only, never an import path).
    """
    name = name_of("closure", law)
    if name is None:
        cls = type(law)
        raise CheckpointError(format_error(
            "model", "a closure law whose class is registered (kind 'closure')",
            f"{cls.__module__}.{cls.__qualname__}, not registered",
            f"register it first: stochclosure.register('closure', 'my_law', {cls.__name__})"))
    spec_fn = getattr(law, "spec", None)
    config = dict(spec_fn()) if callable(spec_fn) else dict(getattr(law, "config", None) or {})
    config.pop("type", None)
    return {"type": name, **{k: to_jsonable(v, k) for k, v in config.items()}}


def model_config(model: Any) -> dict[str, Any]:
    """The registry specs that rebuild a model (weights aside).

    A :class:`~stochclosure.ClosureModel` gives ``{"sde", "score", "sampler", "channels"}``; any
    other closure law ``{"closure": law_spec(law), "channels": C}`` (see :func:`law_spec`).
    """
    if not is_diffusion_model(model):
        return {"closure": law_spec(model), "channels": int(getattr(model, "channels", 1))}
    return {"sde": model.sde.spec(), "score": model.score.spec(), "sampler": model.sampler.spec(),
            "channels": int(model.channels)}


def _header(model: Any, files: dict[str, str], extra: Mapping[str, Any] | None) -> dict[str, Any]:
    providers = component_providers(model)
    versions = library_versions(providers)
    cfg: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "versions": versions,
        "providers": {key: {"distribution": dist, "version": versions.get(dist)} for key, dist in providers.items()},
        "model": model_config(model),
        "files": files,
    }
    if hasattr(model, "target_mean") and hasattr(model, "target_std"):
        cfg["normalisation"] = {"target_mean": model.target_mean.tolist(), "target_std": model.target_std.tolist()}
    if extra:
        cfg.update(extra)
    return cfg


def _sde_metadata(model: Any) -> dict[str, str]:
    """Safetensors metadata recording the SDE the weights were trained with (none for other laws)."""
    if not is_diffusion_model(model):
        return {}
    return {SDE_METADATA: json.dumps(model.sde.spec(), sort_keys=True)}


def write_checkpoint_dir(path: str | os.PathLike[str], model: Any, tensor_files: Mapping[str, Mapping[str, Tensor]],
                         extra: Mapping[str, Any] | None = None) -> Path:
    """Write a checkpoint directory atomically (built under a per-process temporary name, then renamed).

    The weight files (``model.safetensors``, ``ema.safetensors``) record the model's SDE spec in
    their metadata, which :func:`load_model` compares with ``config.json``.

    Args:
        path: Target directory; an existing one is replaced.
        model: The :class:`~stochclosure.ClosureModel` whose config is recorded.
        tensor_files: ``{file name: {tensor name: tensor}}``; must include ``model.safetensors``.
        extra: More JSON entries for ``config.json`` (e.g. ``"trainer"``).

    Returns:
        The directory path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path)
    tmp.mkdir()
    try:
        files = {name: save_tensors(tmp / name, tensors, _sde_metadata(model) if name in (MODEL_FILE, EMA_FILE)
                                    else None)
                 for name, tensors in tensor_files.items()}
        cfg = _header(model, files, extra)
        atomic_write_bytes(tmp / CONFIG_NAME, json.dumps(cfg, indent=1, sort_keys=True).encode())
        if path.exists():
            old = temporary_name(path, ".old")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return path


def save_model(model: Any, path: str | os.PathLike[str], *, ema: Mapping[str, Tensor] | None = None,
               extra: Mapping[str, Any] | None = None) -> Path:
    """Save a :class:`~stochclosure.ClosureModel` as a directory or a single ``.safetensors`` file.

    Args:
        model: The model.
        path: A directory, or a file name ending in ``.safetensors`` for the single-file form.
        ema: EMA weights to store next to the raw ones (directory form) or instead of them
            (single-file form, which holds one set of weights).
        extra: More JSON entries for the configuration.

    Returns:
        The path written.
    """
    path = Path(path)
    state = dict(model.state_dict())
    if path.suffix == ".safetensors":
        weights = dict(state)
        if ema is not None:
            weights.update(ema)
        cfg = _header(model, {}, extra)
        cfg["tensor_sha256"] = _tensor_digest(weights)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_tensors(path, weights, {"stochclosure": json.dumps(cfg, sort_keys=True), **_sde_metadata(model)})
        return path
    files: dict[str, Mapping[str, Tensor]] = {MODEL_FILE: state}
    if ema is not None:
        files[EMA_FILE] = dict(ema)
    return write_checkpoint_dir(path, model, files, extra)


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _check_statistic(cfg: dict[str, Any], name: str, where: str) -> None:
    """``normalisation.<name>``: one finite number per channel (positive for the std)."""
    values = cfg["normalisation"].get(name)
    argument = f"normalisation.{name}"
    fix = "restore config.json from the original checkpoint, or retrain"
    if not (isinstance(values, list) and values
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)):
        raise CheckpointError(format_error(argument, "a list of numbers, one per channel",
                                           f"{_short(values)} in {where}", fix))
    channels = cfg["model"].get("channels")
    if isinstance(channels, int) and len(values) != channels:
        raise CheckpointError(format_error(argument, f"{channels} values (one per channel)",
                                           f"{len(values)} in {where}", fix))
    if not all(math.isfinite(v) for v in values):
        raise CheckpointError(format_error(argument, "finite numbers", f"{_short(values)} in {where}", fix))
    if name == "target_std" and not all(v > 0 for v in values):
        raise CheckpointError(format_error(argument, "positive numbers", f"{_short(values)} in {where}", fix))


def _check_header(cfg: Any, where: str) -> dict[str, Any]:
    if not isinstance(cfg, dict) or cfg.get("format") != FORMAT:
        raise CheckpointError(format_error(where, f"a stochclosure checkpoint (format {FORMAT!r})",
                                           "a file of another kind (no stochclosure header)",
                                           "pass a directory or .safetensors written by stochclosure.save_model"))
    version = cfg.get("format_version")
    if version != FORMAT_VERSION:
        versions = cfg.get("versions")
        written = versions.get("stochclosure", "unknown") if isinstance(versions, dict) else "unknown"
        raise CheckpointError(format_error(where, f"checkpoint format version {FORMAT_VERSION}",
                                           f"format version {_short(version)} (written by stochclosure "
                                           f"{_short(written)})", f"load it with stochclosure {_short(written)}, "
                                                                  "or retrain"))
    law = isinstance(cfg.get("model"), dict) and "closure" in cfg["model"]
    for key in ("model",) if law and "normalisation" not in cfg else ("model", "normalisation"):
        if not isinstance(cfg.get(key), dict):
            raise CheckpointError(format_error(where, f"a config with a {key!r} section", "none (corrupt config)"))
    if "normalisation" in cfg:
        for name in ("target_mean", "target_std"):
            _check_statistic(cfg, name, where)
    files = cfg.get("files", {})
    if not isinstance(files, dict) or not all(
            isinstance(k, str) and k not in ("", ".", "..") and Path(k).name == k and "\\" not in k
            and isinstance(v, str) for k, v in files.items()):
        raise CheckpointError(format_error(f"{where}: files", "plain file names of this folder with their SHA-256",
                                           _short(files), "restore config.json from the original checkpoint"))
    return cfg


def read_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and validate the configuration of a checkpoint (directory or single file).

    Raises:
        CheckpointError: missing, unreadable, oversized, too deeply nested, foreign or incompatible;
            a ``config.json`` that is a link leaving the directory; normalisation statistics that
            are not finite numbers (see the module docstring).
    """
    path = Path(path)
    if path.is_dir():
        cfg_path = path / CONFIG_NAME
        if not cfg_path.is_file():
            raise CheckpointError(format_error("path", f"a checkpoint directory containing {CONFIG_NAME}",
                                               f"{str(path)!r} without it", "point at a directory written by save_model"))
        _inside(path, cfg_path, str(cfg_path))
        size = cfg_path.stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise CheckpointError(format_error(str(cfg_path), f"at most {MAX_CONFIG_BYTES // 2**20} MiB of JSON",
                                               f"{size} bytes", "the file is not a checkpoint configuration"))
        cfg = load_json_text(cfg_path.read_bytes(), str(cfg_path), CheckpointError, max_chars=MAX_CONFIG_BYTES)
        return _check_header(cfg, str(cfg_path))
    if not path.is_file():
        raise CheckpointError(format_error("path", "an existing checkpoint directory or .safetensors file",
                                           f"{str(path)!r} (not found)"))
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(format_error(str(path), "a safetensors checkpoint", f"unreadable data ({exc})",
                                           "the file is truncated, corrupt or of another format")) from exc
    if "stochclosure" not in meta:
        raise CheckpointError(format_error(str(path), "a stochclosure checkpoint (safetensors metadata 'stochclosure')",
                                           f"a safetensors file with metadata keys {sorted(meta)[:10]}",
                                           "save models with stochclosure.save_model"))
    cfg = load_json_text(meta["stochclosure"], f"{path} (metadata)", CheckpointError, max_chars=MAX_CONFIG_BYTES)
    return _check_header(cfg, str(path))


def _load_weights(path: Path, cfg: dict[str, Any], weights: str) -> tuple[dict[str, Tensor], list[tuple[str, str]]]:
    """The state to load and the SDE specs recorded with it, as ``[(file, JSON spec), ...]``."""
    if path.is_dir():
        files = cfg.get("files", {})
        name = EMA_FILE if weights == "ema" and EMA_FILE in files else MODEL_FILE
        if name not in files:
            raise CheckpointError(format_error(str(path), f"a checkpoint listing {MODEL_FILE}",
                                               f"files {sorted(files)}"))
        state, meta = _read_tensor_file(path / name, files[name], root=path)
        recorded = [(str(path / name), meta[SDE_METADATA])] if SDE_METADATA in meta else []
        if name == EMA_FILE:  # EMA holds parameters; buffers come from the raw state
            full, raw_meta = _read_tensor_file(path / MODEL_FILE, files[MODEL_FILE], root=path)
            if SDE_METADATA in raw_meta:
                recorded.append((str(path / MODEL_FILE), raw_meta[SDE_METADATA]))
            full.update(state)
            state = full
        return state, recorded
    state, meta = _read_tensor_file(path)
    if _tensor_digest(state) != cfg.get("tensor_sha256"):
        raise CheckpointError(format_error(str(path), "tensor data matching the recorded SHA-256",
                                           "different data (corrupt file)", "use an intact copy"))
    return state, [(str(path), meta[SDE_METADATA])] if SDE_METADATA in meta else []


def _check_sde(model: Any, recorded: list[tuple[str, str]]) -> None:
    """The SDE rebuilt from the config must be the one recorded with the weights."""
    if not recorded:
        return
    current = json.loads(json.dumps(model.sde.spec(), sort_keys=True))
    for where, text in recorded:
        spec = load_json_text(text, f"{where} (metadata {SDE_METADATA})", CheckpointError)
        if not isinstance(spec, dict) or "type" not in spec:
            raise CheckpointError(format_error(f"{where} (metadata {SDE_METADATA})", "an SDE spec {'type': ...}",
                                               _short(spec), "the file is corrupt"))
        if any(current.get(k, _MISSING) != v for k, v in spec.items()):
            raise IncompatibleComponentsError(format_error(
                "model.sde", f"the SDE the weights were trained with, {spec}",
                f"{current} in the checkpoint's configuration",
                "restore model.sde (and the score's sde) in config.json, or retrain the score for the new SDE"))


_MISSING = object()


def _lossless(stored: torch.dtype, wanted: torch.dtype) -> bool:
    """The dtype rule of the module docstring: equal, or an exact widening of the same kind."""
    if stored == wanted:
        return True
    if wanted.is_complex:
        return stored.is_complex and torch.promote_types(stored, wanted) == wanted
    if wanted.is_floating_point:
        return stored.is_floating_point and torch.promote_types(stored, wanted) == wanted
    return False


def _check_state(model: Any, state: Mapping[str, Tensor], cfg: dict[str, Any], where: str) -> None:
    """Weights of a dtype the model takes without loss; normalisation buffers finite and equal to the config's."""
    expected = model.state_dict()
    for key, value in state.items():
        want = expected.get(key)
        if want is not None and not _lossless(value.dtype, want.dtype):
            kind = "floating" if want.dtype.is_floating_point else "complex" if want.dtype.is_complex else "exact"
            raise CheckpointError(format_error(
                key, f"a {kind} tensor of dtype {str(want.dtype).replace('torch.', '')} (or one that converts to it "
                     "exactly)", f"{str(value.dtype).replace('torch.', '')} in {where}",
                "these weights were quantised or written by another program; load the original float weights"))
    for name in ("target_mean", "target_std"):
        value = state.get(name)
        if value is None or "normalisation" not in cfg:
            continue
        v = value.detach().double()
        if not bool(torch.isfinite(v).all()) or (name == "target_std" and not bool((v > 0).all())):
            what = "positive finite numbers" if name == "target_std" else "finite numbers"
            raise CheckpointError(format_error(name, f"{what} among the weights", f"{v.tolist()} in {where}",
                                               "restore the weight file from the original checkpoint"))
        stored = torch.tensor(cfg["normalisation"][name], dtype=value.dtype)
        if stored.shape != value.shape or not torch.equal(stored, value):
            raise CheckpointError(format_error(
                f"normalisation.{name}", f"the values stored with the weights, {value.tolist()}",
                f"{cfg['normalisation'][name]} in the configuration of {where}",
                "restore config.json from the original checkpoint"))


def load_model(path: str | os.PathLike[str], *, weights: str = "ema", map_location: str | torch.device = "cpu",
               strict: bool = True) -> Any:
    """Rebuild a :class:`~stochclosure.ClosureModel` or any registered closure law from a checkpoint.

    A closure law other than the diffusion model is rebuilt from ``model.closure`` of the
    configuration (:func:`law_spec`), a *registered* name of the ``closure`` kind only.

    Args:
        path: Checkpoint directory or ``.safetensors`` file.
        weights: ``"ema"`` (the averaged weights when stored, else the raw ones) or ``"raw"``.
        map_location: Device of the returned model.
        strict: Require the stored tensors to match the model's exactly.

    Returns:
        The model in eval mode.

    Raises:
        CheckpointError: for a missing, truncated, corrupt, foreign or incompatible checkpoint,
            weights that do not fit the rebuilt components or break the dtype rule, links leaving
            the checkpoint folder, or non-finite normalisation statistics (see the module docstring).
        IncompatibleComponentsError: ``config.json`` names another SDE than the one the weights
            were trained with.
        UnknownPluginError: ``model.closure`` names a closure law that is not registered here
            (also a :class:`LookupError`); an import path is refused the same way, never imported.
    """
    if weights not in ("ema", "raw"):
        raise CheckpointError(format_error("weights", "'ema' or 'raw'", repr(weights)))
    path = Path(path)
    cfg = read_config(path)
    model = _rebuild_law(cfg, path) if "closure" in cfg["model"] else _rebuild_diffusion(cfg, path)
    state, recorded = _load_weights(path, cfg, weights)
    _check_sde(model, recorded)
    _check_state(model, state, cfg, str(path))
    try:
        model.load_state_dict(state, strict=strict)
    except RuntimeError as exc:
        raise CheckpointError(format_error(str(path), "weights matching the rebuilt model",
                                           f"a mismatch: {str(exc).splitlines()[0]}",
                                           "the components' code changed since the checkpoint was written")) from exc
    return model.to(map_location).eval()


def _rebuild_diffusion(cfg: dict[str, Any], path: Path) -> Any:
    """The :class:`~stochclosure.ClosureModel` a configuration describes (weights not loaded)."""
    m = cfg["model"]
    try:
        return ClosureModel(m["sde"], m["score"], m["sampler"], channels=m["channels"],
                            target_mean=torch.tensor(cfg["normalisation"]["target_mean"]),
                            target_std=torch.tensor(cfg["normalisation"]["target_std"]))
    except KeyError as exc:
        raise CheckpointError(format_error(str(path), "a config with sde, score, sampler and channels",
                                           f"missing {exc}")) from exc


def _rebuild_law(cfg: dict[str, Any], path: Path) -> Any:
    """The closure law ``model.closure`` names (a registered name only), weights not loaded."""
    spec = cfg["model"]["closure"]
    if not isinstance(spec, dict) or not isinstance(spec.get("type"), str):
        raise CheckpointError(format_error(f"{path}: model.closure", "a closure spec {'type': name, ...}",
                                           _short(spec), "restore config.json from the original checkpoint"))
    registry = get_registry("closure")
    name = spec["type"]
    if name not in registry:  # a registered name or a 'dist:name' pin; a module path is never imported
        raise UnknownPluginError(format_error(
            f"{path}: model.closure.type", f"a registered closure law (installed: {', '.join(registry.names())})",
            repr(name), "install the distribution that provides it, or stochclosure.register('closure', "
                        f"{name.split(':')[-1]!r}, cls) before loading; import paths are never followed"))
    return registry.resolve(spec)
