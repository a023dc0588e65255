"""The records of an assimilation run and their files (safetensors + JSON, written atomically)."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .. import metrics
from .._io import temporary_name
from ..errors import CheckpointError, format_error

__all__ = ["AssimilationResult", "FORMAT", "FORMAT_VERSION"]

FORMAT = "stochclosure.assimilation"
FORMAT_VERSION = 1

SCORES = ("forecast_rmse", "analysis_rmse", "forecast_spread", "analysis_spread", "forecast_crps", "analysis_crps",
          "innovation_rms", "inflation", "forecast_seconds", "analysis_seconds", "times")
FIELDS = ("truth", "forecast_mean", "analysis_mean")


@dataclass
class AssimilationResult:
    """Per-cycle records of an assimilation run.

    Attributes:
        members: Ensemble size ``M``.
        spinup: Cycles left out of :meth:`summary` and :meth:`rank_histogram`.
        times: ``(cycles,)`` physical time of each analysis.
        forecast_rmse: ``(cycles,)`` RMSE of the forecast mean against the truth (state units).
        analysis_rmse: ``(cycles,)`` RMSE of the analysis mean.
        forecast_spread: ``(cycles,)`` root mean (unbiased) ensemble variance of the forecast.
        analysis_spread: ``(cycles,)`` the same for the analysis.
        forecast_crps: ``(cycles,)`` CRPS of the forecast, averaged over the state.
        analysis_crps: ``(cycles,)`` CRPS of the analysis.
        innovation_rms: ``(cycles,)`` RMS of ``y - H(forecast mean)``.
        inflation: ``(cycles,)`` multiplicative covariance factor applied in each cycle.
        forecast_seconds: ``(cycles,)`` wall-clock seconds of each forecast (all members).
        analysis_seconds: ``(cycles,)`` seconds of each analysis (inflation and filter).
        diverged: ``(cycles,)`` non-finite forecast or analysis RMSE above the divergence threshold.
        rank_counts: ``(cycles, M + 1)`` ranks of the truth's observed values among the forecast's.
        observations: ``(cycles, p)`` the observations assimilated.
        ensemble: ``(M, C, *grid)`` the last analysis ensemble.
        truth: ``(cycles, C, *grid)`` the truth at each analysis (``record_fields``), else ``None``.
        forecast_mean: ``(cycles, C, *grid)`` or ``None``.
        analysis_mean: ``(cycles, C, *grid)`` or ``None``.
        stopped: The run stopped early on a non-finite forecast.
        config: The run's settings (JSON).
    """

    members: int
    spinup: int
    times: Tensor
    forecast_rmse: Tensor
    analysis_rmse: Tensor
    forecast_spread: Tensor
    analysis_spread: Tensor
    forecast_crps: Tensor
    analysis_crps: Tensor
    innovation_rms: Tensor
    inflation: Tensor
    forecast_seconds: Tensor
    analysis_seconds: Tensor
    diverged: Tensor
    rank_counts: Tensor
    observations: Tensor
    ensemble: Tensor
    truth: Tensor | None = None
    forecast_mean: Tensor | None = None
    analysis_mean: Tensor | None = None
    stopped: bool = False
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def cycles(self) -> int:
        """Cycles recorded."""
        return int(self.times.shape[0])

    def rank_histogram(self) -> Tensor:
        """Counts ``(M + 1,)`` of the truth's observed ranks over the cycles after spin-up."""
        return self.rank_counts[self.spinup:].sum(0)

    def summary(self) -> dict[str, float]:
        """Means over the cycles after spin-up (RMSE, spread, CRPS, cost), divergences, rank-histogram p-value.

        ``spread_rmse`` is ``sqrt((M + 1) / M) * mean spread / mean RMSE`` (1 for a calibrated
        ensemble: the truth is statistically one more member).
        """
        s = slice(self.spinup, None)
        out: dict[str, float] = {"cycles": float(max(self.cycles - self.spinup, 0)), "members": float(self.members)}
        for name in ("forecast_rmse", "analysis_rmse", "forecast_spread", "analysis_spread", "forecast_crps",
                     "analysis_crps", "innovation_rms", "inflation", "forecast_seconds", "analysis_seconds"):
            v = getattr(self, name)[s]
            out[name] = float(v.mean()) if v.numel() else math.nan
        k = math.sqrt((self.members + 1) / self.members)
        for kind in ("forecast", "analysis"):
            out[f"{kind}_spread_rmse"] = k * out[f"{kind}_spread"] / out[f"{kind}_rmse"] \
                if out[f"{kind}_rmse"] > 0 else math.nan
        out["divergences"] = float(self.diverged[s].sum())
        hist = self.rank_histogram()
        out["rank_p_value"] = metrics.rank_histogram_chi2(hist)[1] if int(hist.sum()) > 0 else math.nan
        return out

    def _tensors(self) -> dict[str, Tensor]:
        t = {name: getattr(self, name) for name in SCORES}
        t.update(diverged=self.diverged.to(torch.uint8), rank_counts=self.rank_counts, observations=self.observations,
                 ensemble=self.ensemble)
        for name in FIELDS:
            if getattr(self, name) is not None:
                t[name] = getattr(self, name)
        return t

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the result atomically to a safetensors file (tensors + JSON metadata; no pickle)."""
        meta = {"format": FORMAT + "-result", "format_version": FORMAT_VERSION, "members": self.members,
                "spinup": self.spinup, "stopped": self.stopped, "config": self.config}
        return write_file(Path(path), self._tensors(), meta)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> AssimilationResult:
        """Read a file written by :meth:`save`."""
        t, meta = read_file(Path(path), FORMAT + "-result", "path")
        return cls._from(t, meta)

    @classmethod
    def _from(cls, t: dict[str, Tensor], meta: dict[str, Any]) -> AssimilationResult:
        return cls(members=int(meta["members"]), spinup=int(meta["spinup"]),
                   **{name: t[name] for name in SCORES}, diverged=t["diverged"].bool(), rank_counts=t["rank_counts"],
                   observations=t["observations"], ensemble=t["ensemble"],
                   **{name: t.get(name) for name in FIELDS}, stopped=bool(meta.get("stopped", False)),
                   config=meta.get("config", {}))


# -- files --------------------------------------------------------------------------------------------------
def write_file(path: Path, tensors: dict[str, Tensor], meta: dict[str, Any]) -> Path:
    from safetensors.torch import save

    data = save({k: v.detach().cpu().contiguous() for k, v in tensors.items()},
                metadata={"stochclosure": json.dumps(meta)})
    tmp = temporary_name(path)
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def read_file(path: Path, kind: str, argument: str) -> tuple[dict[str, Tensor], dict[str, Any]]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = json.loads((fh.metadata() or {}).get("stochclosure", "null"))
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    except Exception as exc:  # noqa: BLE001 - any parse failure is a bad file
        raise CheckpointError(format_error(argument, f"a readable {kind} file (safetensors)",
                                           f"{str(path)!r}, unreadable ({exc})", "delete it to start over")) from None
    if not isinstance(meta, dict) or meta.get("format") != kind or meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(format_error(argument, f"a {kind} file, version {FORMAT_VERSION}",
                                           f"{str(path)!r} of another kind or version",
                                           "delete it or choose another path"))
    return tensors, meta


class Records:
    """Per-cycle records of a run in progress, as lists, with the tensor form a checkpoint holds."""

    def __init__(self, record_fields: bool) -> None:
        self.values: dict[str, list[float]] = {k: [] for k in SCORES}
        self.diverged: list[bool] = []
        self.ranks: list[Tensor] = []
        self.obs: list[Tensor] = []
        self.fields: dict[str, list[Tensor]] | None = {k: [] for k in FIELDS} if record_fields else None

    def tensors(self) -> dict[str, Tensor]:
        t = {k: torch.tensor(v, dtype=torch.float64) for k, v in self.values.items()}
        t["diverged"] = torch.tensor(self.diverged, dtype=torch.uint8)
        if self.ranks:
            t["rank_counts"], t["observations"] = torch.stack(self.ranks), torch.stack(self.obs)
        if self.fields is not None and self.ranks:
            t.update({k: torch.stack(v) for k, v in self.fields.items()})
        return t

    @classmethod
    def from_tensors(cls, t: dict[str, Tensor], n: int, record_fields: bool) -> Records:
        r = cls(record_fields)
        r.values = {k: t[k][:n].tolist() for k in SCORES}
        r.diverged = [bool(v) for v in t["diverged"][:n].tolist()]
        if n:
            r.ranks, r.obs = list(t["rank_counts"][:n]), list(t["observations"][:n])
            if r.fields is not None:
                r.fields = {k: list(t[k][:n]) for k in FIELDS}
        return r

    def append(self, scores: dict[str, float], diverged: bool, ranks: Tensor, obs: Tensor,
               fields: dict[str, Tensor]) -> None:
        """Add one cycle."""
        for k in SCORES:
            self.values[k].append(float(scores[k]))
        self.diverged.append(bool(diverged))
        self.ranks.append(ranks.detach().cpu())
        self.obs.append(obs.detach().cpu())
        if self.fields is not None:
            for k in FIELDS:
                self.fields[k].append(fields[k].detach().cpu())

    def result(self, n: int, members: int, spinup: int, p: int, ensemble: Tensor, stopped: bool,
               config: dict[str, Any]) -> AssimilationResult:
        """The first ``n`` cycles as an :class:`AssimilationResult`."""
        t = self.tensors()
        return AssimilationResult(
            members=members, spinup=spinup, **{k: t[k][:n] for k in SCORES}, diverged=t["diverged"][:n].bool(),
            rank_counts=t["rank_counts"][:n] if "rank_counts" in t else torch.zeros(0, members + 1, dtype=torch.int64),
            observations=t["observations"][:n] if "observations" in t else torch.zeros(0, p, dtype=torch.float64),
            ensemble=ensemble, stopped=stopped, config=config, **{k: (t[k][:n] if k in t else None) for k in FIELDS})
