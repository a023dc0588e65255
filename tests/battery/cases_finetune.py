"""Rows of the bad-input battery: a-posteriori fine-tuning by rollout scores (API and ``stochclosure finetune``)."""

from __future__ import annotations

from typing import Any

import torch
import yaml

from stochclosure import errors as E

from .base import BadInput, Context

C = BadInput


def _cfg(**kw: Any) -> Any:
    from stochclosure.training.finetune import FinetuneConfig

    return FinetuneConfig(**kw)


def _windows(n: int = 2, records: int = 2, **kw: Any) -> Any:
    from stochclosure.training.finetune import FinetuneWindows

    base = {"w0": torch.randn(n, 1, 16, 16), "truth": torch.randn(n, records, 1, 16, 16), "record_every": 2}
    base.update(kw)
    return FinetuneWindows(**base)


def _system() -> Any:
    from stochclosure.systems.subgrid import NavierStokes2DSubgrid

    return NavierStokes2DSubgrid(n=16, n_fine=32, nu=1e-3, dt=1e-3, sigma=0.0)


def _finetune(law: Any, windows: Any, **kw: Any) -> Any:
    from stochclosure.training.finetune import finetune

    return finetune(law, _system(), windows, _cfg(**{"steps": 1, "windows_per_step": 1, "records": 1, **kw}),
                    dt=1e-3, progress=False)


def _diffusion_law() -> Any:
    import stochclosure as sc

    return sc.ClosureModel("vp", {"type": "gaussian", "sde": "vp", "std": 1.0}, "euler_maruyama")


def _noise_law() -> Any:
    from stochclosure.closures import WhiteNoise

    return WhiteNoise(1.0)


def _cli(c: Context, name: str, **changes: Any) -> list[str]:
    cfg = {"law": "law.safetensors", "system": {"type": "navier_stokes_2d_subgrid", "n": 16, "n_fine": 32},
           "data": {"path": "w.pt", "record_every": 2}, "finetune": {"steps": 1}, "out": "ft"}
    for key, value in changes.items():
        block, _, sub = key.partition("__")
        if sub:
            cfg[block] = {**cfg[block], sub: value}
        else:
            cfg[block] = value
    return ["finetune", "--config", str(c.path(f"{name}.yaml", yaml.safe_dump(cfg))), "--no-progress"]


CASES: list[BadInput] = [
    C("finetune_one_member", "FinetuneConfig", "members=1 (the fair CRPS needs two)", E.ConfigError, "members",
      lambda c: _cfg(members=1)),
    C("finetune_bad_score", "FinetuneConfig", "score='brier'", E.ConfigError, "score", lambda c: _cfg(score="brier")),
    C("finetune_rho_one", "FinetuneConfig", "rho=1.0 (a frozen latent)", E.ConfigError, "rho", lambda c: _cfg(rho=1.0)),
    C("finetune_negative_lr", "FinetuneConfig", "lr=-1e-3", E.ConfigError, "lr", lambda c: _cfg(lr=-1e-3)),
    C("finetune_hold_zero", "FinetuneConfig", "hold=0", E.ConfigError, "hold", lambda c: _cfg(hold=0)),
    C("finetune_hold_physics_str", "FinetuneConfig", "hold_physics='no'", E.ConfigError, "hold_physics",
      lambda c: _cfg(hold_physics="no")),
    C("finetune_truth_shape", "FinetuneWindows", "truth of 3 windows for 2 initial states", E.ShapeError, "truth",
      lambda c: _windows(truth=torch.randn(3, 2, 1, 16, 16))),
    C("finetune_nan_truth", "FinetuneWindows", "NaN in the truth", E.NonFiniteError, "windows",
      lambda c: _windows(truth=torch.full((2, 2, 1, 16, 16), float("nan")))),
    C("finetune_not_reparameterised", "finetune", "a diffusion closure model (draws not reparameterised)",
      E.IncompatibleComponentsError, "law", lambda c: _finetune(_diffusion_law(), _windows())),
    C("finetune_too_many_records", "finetune", "records=5 of windows holding 2", E.ConfigError, "records",
      lambda c: _finetune(_noise_law(), _windows(), records=5)),
    C("finetune_too_many_windows", "finetune", "windows_per_step=3 of 2 windows", E.ConfigError, "windows_per_step",
      lambda c: _finetune(_noise_law(), _windows(), windows_per_step=3)),
    C("finetune_no_matching_params", "finetune", "params='nothing_named_so'", E.ConfigError, "params",
      lambda c: _finetune(_noise_law(), _windows(), params="nothing_named_so")),
    C("finetune_cli_unknown_key", "stochclosure finetune", "finetune.step (misspelt steps)", E.ConfigError, "step",
      lambda c: _cli(c, "ft_unknown", finetune={"step": 3}), cli=True),
    C("finetune_cli_one_member", "stochclosure finetune", "finetune.members: 1", E.ConfigError, "finetune.members",
      lambda c: _cli(c, "ft_members", finetune={"members": 1}), cli=True),
    C("finetune_cli_bad_record_every", "stochclosure finetune", "data.record_every: 0", E.ConfigError,
      "data.record_every", lambda c: _cli(c, "ft_every", data__record_every=0), cli=True),
    C("finetune_cli_no_law", "stochclosure finetune", "no law key", E.ConfigError, "law",
      lambda c: _cli_without(c, "ft_nolaw", "law"), cli=True),
]


def _cli_without(c: Context, name: str, key: str) -> list[str]:
    args = _cli(c, name)
    path = args[2]
    cfg = yaml.safe_load(open(path))
    cfg.pop(key)
    c.path(f"{name}.yaml", yaml.safe_dump(cfg))
    return args
