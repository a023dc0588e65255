"""A stable description of a run's components: what its checkpoint's fingerprint is made of."""

from __future__ import annotations

import hashlib
import inspect
from typing import Any

import torch
from torch import Tensor

from ..checkpoint import hash_tensor, model_config

__all__ = ["describe"]


def _digest(t: Tensor) -> str:
    h = hashlib.sha256()
    hash_tensor(h, t)
    return h.hexdigest()


def describe(obj: Any, depth: int = 0) -> Any:
    """A stable, JSON-ready description of a component (no memory addresses)."""
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if depth > 6:
        return type(obj).__qualname__
    if isinstance(obj, Tensor):
        return {"tensor": _digest(obj)}
    if isinstance(obj, (list, tuple)):
        return [describe(v, depth + 1) for v in obj]
    if isinstance(obj, dict):
        return {str(k): describe(v, depth + 1) for k, v in sorted(obj.items(), key=lambda kv: str(kv[0]))}
    if isinstance(obj, torch.nn.Module):
        cfg = model_config(obj) if hasattr(obj, "score") and hasattr(obj, "sampler") else type(obj).__qualname__
        return {"module": describe(cfg, depth + 1),
                "weights": {k: _digest(v) for k, v in sorted(obj.state_dict().items())}}
    spec = getattr(obj, "spec", None)
    if callable(spec) and not inspect.isclass(obj):
        try:
            return describe(spec(), depth + 1)
        except Exception:  # noqa: BLE001 - fall back to the object's attributes
            pass
    if inspect.ismethod(obj):
        return {"method": obj.__func__.__qualname__, "self": describe(obj.__self__, depth + 1)}
    if inspect.isfunction(obj):
        cells = [c.cell_contents for c in (obj.__closure__ or ()) if _has_contents(c)]
        names = {n: obj.__globals__[n] for n in obj.__code__.co_names if n in obj.__globals__}
        used = {n: v for n, v in names.items() if not (inspect.ismodule(v) or inspect.isclass(v)
                                                        or inspect.isbuiltin(v) or v is obj)}
        return {"function": f"{obj.__module__}.{obj.__qualname__}", "closure": describe(cells, depth + 1),
                "globals": describe(used, depth + 1), "defaults": describe(obj.__defaults__, depth + 1)}
    if hasattr(obj, "__dict__"):
        return {"type": f"{type(obj).__module__}.{type(obj).__qualname__}",
                "vars": {k: describe(v, depth + 1) for k, v in sorted(vars(obj).items()) if not callable(v)
                         or isinstance(v, torch.nn.Module)}}
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


def _has_contents(cell: Any) -> bool:
    try:
        cell.cell_contents  # noqa: B018 - an empty cell raises
    except ValueError:
        return False
    return True
