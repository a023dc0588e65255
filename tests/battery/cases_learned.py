"""Rows of the bad-input battery: learned closure laws (deterministic, Gaussian), their training and checkpoints."""

from __future__ import annotations

import json
from typing import Any

import torch

from stochclosure import errors as E

from .base import BadInput, Context, cli_train

_BACKBONE = {"type": "fno", "sde": "vp", "width": 4, "modes": 4, "layers": 1, "embed_dim": 4, "encoder": "field"}


def _gaussian(**kw: Any) -> Any:
    from stochclosure.closures.learned import GaussianClosure

    return GaussianClosure(_BACKBONE, **kw)


def _backbone_channels(channels: int) -> Any:
    from stochclosure.closures.learned import GaussianClosure

    return GaussianClosure({**_BACKBONE, "channels": channels})


def _nan_heads(ctx: Context) -> Any:
    law = _gaussian()
    with torch.no_grad():
        for p in law.backbone.projection.parameters():
            p.fill_(float("nan"))
    return law.sample(ctx.cond(), n=2)


def _wrong_target_channels(ctx: Context) -> Any:
    return _gaussian().loss(ctx.cond(), torch.randn(2, 3, 16, 16))


def _unknown_law_checkpoint(ctx: Context) -> Any:
    from stochclosure.checkpoint import load_model, save_model

    path = save_model(_gaussian(), ctx.folder / "gaussian_law_ck")
    cfg = json.loads((path / "config.json").read_text())
    cfg["model"]["closure"]["type"] = "no_such_law"
    (path / "config.json").write_text(json.dumps(cfg))
    return load_model(path)


def _unregistered_law(ctx: Context) -> Any:
    from stochclosure.checkpoint import save_model
    from stochclosure.closures.learned import DeterministicClosure

    class Mine(DeterministicClosure):
        pass

    return save_model(Mine(_BACKBONE), ctx.folder / "unregistered_ck")


def _unregistered_law_trainer(ctx: Context) -> Any:
    from stochclosure.closures.learned import DeterministicClosure
    from stochclosure.data import TensorClosureDataset
    from stochclosure.train import Trainer

    class Mine(DeterministicClosure):
        pass

    data = TensorClosureDataset(torch.randn(4, 1, 16, 16), fields=torch.randn(4, 1, 16, 16))
    return Trainer(Mine(_BACKBONE), data, checkpoint_dir=ctx.folder / "unregistered_run", progress=False)


def _law_with_t_range(ctx: Context) -> Any:
    from stochclosure.data import TensorClosureDataset
    from stochclosure.train import Trainer

    data = TensorClosureDataset(torch.randn(4, 1, 16, 16), fields=torch.randn(4, 1, 16, 16))
    return Trainer(_gaussian(), data, t_range=(0.01, 0.5), progress=False)


C = BadInput
CASES: list[BadInput] = [
    C("gaussian_bad_loss", "GaussianClosure", "loss='mse' (not a Gaussian loss)", E.ConfigError, "loss",
      lambda c: _gaussian(loss="mse")),
    C("gaussian_bad_noise", "GaussianClosure", "noise='pink'", E.ConfigError, "noise", lambda c: _gaussian(noise="pink")),
    C("gaussian_log_var_range_reversed", "GaussianClosure", "log_var_range=(5, -5)", E.ConfigError, "log_var_range",
      lambda c: _gaussian(log_var_range=(5.0, -5.0))),
    C("gaussian_log_var_range_nan", "GaussianClosure", "log_var_range=(nan, 8)", E.ConfigError, "log_var_range",
      lambda c: _gaussian(log_var_range=(float("nan"), 8.0))),
    C("gaussian_nan_log_variance", "GaussianClosure.sample", "a network giving NaN mean/log-variance heads",
      E.NonFiniteError, "log-variance", _nan_heads),
    C("gaussian_backbone_channels", "GaussianClosure", "backbone with channels=1 (the law needs 2C = 2)",
      E.ConfigError, "backbone.channels", lambda c: _backbone_channels(1)),
    C("gaussian_target_channels", "GaussianClosure.loss", "targets of 3 channels for a 1-channel law", E.ShapeError,
      "'u'", _wrong_target_channels),
    C("law_negative_std", "GaussianClosure", "target_std=[-1]", E.ConfigError, "target_std",
      lambda c: _gaussian(target_std=torch.tensor([-1.0]))),
    C("law_checkpoint_unknown_type", "load_model", "a checkpoint naming an unregistered closure law",
      E.UnknownPluginError, "model.closure.type", _unknown_law_checkpoint),
    C("law_checkpoint_unregistered", "save_model", "a closure law whose class is not registered", E.CheckpointError,
      "model", _unregistered_law),
    C("law_trainer_unregistered", "Trainer", "checkpoints of a closure law whose class is not registered",
      E.CheckpointError, "model", _unregistered_law_trainer),
    C("law_trainer_t_range", "Trainer", "t_range for a Gaussian law (a diffusion-only option)", E.ConfigError,
      "t_range", _law_with_t_range),
    C("cli_train_unknown_law", "stochclosure train", "model: {type: no_such_law}", E.UnknownPluginError,
      "model.type", lambda c: cli_train(c, "unknown_law", model={"type": "no_such_law"}), cli=True),
    C("cli_train_law_unknown_key", "stochclosure train", "model: {type: gaussian, los: crps}", E.ConfigError,
      "los", lambda c: cli_train(c, "law_bad_key", model={"type": "gaussian", "los": "crps", "backbone": _BACKBONE}),
      cli=True),
]

