"""Safe checkpoints: configuration JSON + library versions + safetensors weights, written atomically.

A checkpoint never contains pickled code. It is either

* a **directory** holding ``config.json`` (format, versions, the registry specs of every
  component, normalisation statistics, SHA-256 of each tensor file, optional trainer state)
  and ``model.safetensors`` (plus ``ema.safetensors``, ``optimizer.safetensors``, ``rng.safetensors``
  for training checkpoints); or
* a **single file** ``*.safetensors`` whose metadata holds the same JSON (under
  ``"stochclosure"``) and a SHA-256 of the tensor data.

Everything is written to a temporary name in the target directory and moved into place with
:func:`os.replace`, so a kill leaves either the previous checkpoint or the new one, never half
of one. Loading checks the format name and version, the checksums and the tensor names, and
raises :class:`~stochclosure.errors.CheckpointError` for anything missing, truncated, corrupt,
foreign or written by an incompatible format version.
"""

from __future__ import annotations

import hashlib
import importlib.metadata as metadata
import json
import os
import platform
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .errors import CheckpointError, format_error

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "save_model",
    "load_model",
    "read_config",
    "model_config",
    "library_versions",
    "atomic_write_bytes",
    "save_tensors",
    "load_tensors",
    "write_checkpoint_dir",
]

FORMAT = "stochclosure.checkpoint"
FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
MODEL_FILE = "model.safetensors"
EMA_FILE = "ema.safetensors"


def library_versions() -> dict[str, str]:
    """Versions of Python and of the installed distributions a checkpoint depends on."""
    out = {"python": platform.python_version()}
    names = ["stochclosure", "torch", "safetensors", "numpy", "neuraloperator"]
    for dist in metadata.distributions():
        name = (dist.metadata["Name"] or "").lower()
        if name.startswith("stochclosure-") and name not in names:
            names.append(name)
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temporary file in the same directory, fsync, rename)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
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


def _tensor_digest(tensors: Mapping[str, Tensor]) -> str:
    h = hashlib.sha256()
    for k in sorted(tensors):
        t = tensors[k].detach().cpu().contiguous()
        h.update(k.encode())
        h.update(str(t.dtype).encode() + str(tuple(t.shape)).encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
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


def load_tensors(path: str | os.PathLike[str], sha256: str | None = None) -> dict[str, Tensor]:
    """Load a safetensors file (never unpickles); verify its SHA-256 when given.

    Raises:
        CheckpointError: missing, truncated, corrupt or not a safetensors file.
    """
    from safetensors.torch import load

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(format_error("path", "an existing safetensors file", f"{str(path)!r} (missing)"))
    data = path.read_bytes()
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        raise CheckpointError(format_error(str(path), f"a file with SHA-256 {sha256[:12]}... as recorded in the config",
                                           "different bytes (corrupt or truncated)",
                                           "restore the file or use an earlier checkpoint"))
    try:
        return load(data)
    except Exception as exc:  # noqa: BLE001 - any parse failure is a bad file
        raise CheckpointError(format_error(str(path), "a safetensors file", f"unreadable data ({exc})",
                                           "the file is truncated, corrupt or of another format")) from exc


def model_config(model: Any) -> dict[str, Any]:
    """The registry specs that rebuild a :class:`~stochclosure.ClosureModel` (weights aside)."""
    return {"sde": model.sde.spec(), "score": model.score.spec(), "sampler": model.sampler.spec(),
            "channels": int(model.channels)}


def _header(model: Any, files: dict[str, str], extra: Mapping[str, Any] | None) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "versions": library_versions(),
        "model": model_config(model),
        "normalisation": {"target_mean": model.target_mean.tolist(), "target_std": model.target_std.tolist()},
        "files": files,
    }
    if extra:
        cfg.update(extra)
    return cfg


def write_checkpoint_dir(path: str | os.PathLike[str], model: Any, tensor_files: Mapping[str, Mapping[str, Tensor]],
                         extra: Mapping[str, Any] | None = None) -> Path:
    """Write a checkpoint directory atomically (built under a temporary name, then renamed).

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
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        files = {name: save_tensors(tmp / name, tensors) for name, tensors in tensor_files.items()}
        cfg = _header(model, files, extra)
        atomic_write_bytes(tmp / CONFIG_NAME, json.dumps(cfg, indent=1, sort_keys=True).encode())
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            os.replace(path, old / "x")
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
        save_tensors(path, weights, {"stochclosure": json.dumps(cfg, sort_keys=True)})
        return path
    files: dict[str, Mapping[str, Tensor]] = {MODEL_FILE: state}
    if ema is not None:
        files[EMA_FILE] = dict(ema)
    return write_checkpoint_dir(path, model, files, extra)


def _check_header(cfg: Any, where: str) -> dict[str, Any]:
    if not isinstance(cfg, dict) or cfg.get("format") != FORMAT:
        raise CheckpointError(format_error(where, f"a stochclosure checkpoint (format {FORMAT!r})",
                                           "a file of another kind (no stochclosure header)",
                                           "pass a directory or .safetensors written by stochclosure.save_model"))
    version = cfg.get("format_version")
    if version != FORMAT_VERSION:
        written = cfg.get("versions", {}).get("stochclosure", "unknown")
        raise CheckpointError(format_error(where, f"checkpoint format version {FORMAT_VERSION}",
                                           f"format version {version!r} (written by stochclosure {written})",
                                           f"load it with stochclosure {written}, or retrain"))
    for key in ("model", "normalisation"):
        if not isinstance(cfg.get(key), dict):
            raise CheckpointError(format_error(where, f"a config with a {key!r} section", "none (corrupt config)"))
    return cfg


def read_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and validate the configuration of a checkpoint (directory or single file).

    Raises:
        CheckpointError: missing, unreadable, foreign or incompatible.
    """
    path = Path(path)
    if path.is_dir():
        cfg_path = path / CONFIG_NAME
        if not cfg_path.is_file():
            raise CheckpointError(format_error("path", f"a checkpoint directory containing {CONFIG_NAME}",
                                               f"{str(path)!r} without it", "point at a directory written by save_model"))
        try:
            cfg = json.loads(cfg_path.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CheckpointError(format_error(str(cfg_path), "valid JSON", f"unparsable text ({exc})",
                                               "the file is corrupt or truncated")) from exc
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
                                           f"a safetensors file with metadata keys {sorted(meta)}",
                                           "save models with stochclosure.save_model"))
    try:
        cfg = json.loads(meta["stochclosure"])
    except json.JSONDecodeError as exc:
        raise CheckpointError(format_error(str(path), "JSON metadata", f"unparsable metadata ({exc})")) from exc
    return _check_header(cfg, str(path))


def _load_weights(path: Path, cfg: dict[str, Any], weights: str) -> dict[str, Tensor]:
    if path.is_dir():
        files = cfg.get("files", {})
        name = EMA_FILE if weights == "ema" and EMA_FILE in files else MODEL_FILE
        if name not in files:
            raise CheckpointError(format_error(str(path), f"a checkpoint listing {MODEL_FILE}",
                                               f"files {sorted(files)}"))
        state = load_tensors(path / name, files[name])
        if name == EMA_FILE:  # EMA holds parameters; buffers come from the raw state
            full = load_tensors(path / MODEL_FILE, files[MODEL_FILE])
            full.update(state)
            state = full
        return state
    state = load_tensors(path)
    if _tensor_digest(state) != cfg.get("tensor_sha256"):
        raise CheckpointError(format_error(str(path), "tensor data matching the recorded SHA-256",
                                           "different data (corrupt file)", "use an intact copy"))
    return state


def load_model(path: str | os.PathLike[str], *, weights: str = "ema", map_location: str | torch.device = "cpu",
               strict: bool = True) -> Any:
    """Rebuild a :class:`~stochclosure.ClosureModel` from a checkpoint through the registry.

    Args:
        path: Checkpoint directory or ``.safetensors`` file.
        weights: ``"ema"`` (the averaged weights when stored, else the raw ones) or ``"raw"``.
        map_location: Device of the returned model.
        strict: Require the stored tensors to match the model's exactly.

    Returns:
        The model in eval mode.

    Raises:
        CheckpointError: for a missing, truncated, corrupt, foreign or incompatible checkpoint,
            or weights that do not fit the rebuilt components.
    """
    from .model import ClosureModel

    if weights not in ("ema", "raw"):
        raise CheckpointError(format_error("weights", "'ema' or 'raw'", repr(weights)))
    path = Path(path)
    cfg = read_config(path)
    m = cfg["model"]
    try:
        model = ClosureModel(m["sde"], m["score"], m["sampler"], channels=m["channels"],
                             target_mean=torch.tensor(cfg["normalisation"]["target_mean"]),
                             target_std=torch.tensor(cfg["normalisation"]["target_std"]))
    except KeyError as exc:
        raise CheckpointError(format_error(str(path), "a config with sde, score, sampler and channels",
                                           f"missing {exc}")) from exc
    state = _load_weights(path, cfg, weights)
    try:
        model.load_state_dict(state, strict=strict)
    except RuntimeError as exc:
        raise CheckpointError(format_error(str(path), "weights matching the rebuilt model",
                                           f"a mismatch: {str(exc).splitlines()[0]}",
                                           "the components' code changed since the checkpoint was written")) from exc
    return model.to(map_location).eval()
