"""Rows of the battery for plugins and specs read from files: names only, clashes, groups, init.

A spec naming a ``module:attr`` path (a checkpoint's ``config.json``, a rollout YAML) must be refused
without importing it: the payload module written into the battery's folder would create the
battery's marker file on import, which the battery checks after every row.
"""

from __future__ import annotations

import contextlib
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from stochclosure import errors as E
from stochclosure.registry import PluginWarning

from .base import BadInput, Context, load
from .cases_files import edit_config

C = BadInput


@contextlib.contextmanager
def _on_path(folder: Path) -> Iterator[None]:
    """``folder`` first on ``sys.path`` with the registries re-read; both undone afterwards."""
    from stochclosure import registry

    def refresh() -> None:
        with warnings.catch_warnings():  # the row itself triggers (and judges) the warnings
            warnings.simplefilter("ignore", PluginWarning)
            registry.refresh()

    sys.path.insert(0, str(folder))
    refresh()
    try:
        yield
    finally:
        sys.path.remove(str(folder))
        refresh()


def _payload(ctx: Context) -> Path:
    """``payload.py`` in the battery's folder: importing it creates the battery's marker file."""
    ctx.path("payload.py", f"open({str(ctx.marker)!r}, 'w').close()\n\n\nclass X:\n    pass\n")
    sys.modules.pop("payload", None)
    return ctx.folder


def _site(ctx: Context, name: str, dists: dict[str, dict[str, list[str]]], modules: dict[str, str]) -> Path:
    """A folder of unzipped distributions (``*.dist-info`` with entry points) and their modules."""
    site = ctx.folder / name
    for dist, groups in dists.items():
        info = site / f"{dist.replace('-', '_')}-0.1.dist-info"
        info.mkdir(parents=True, exist_ok=True)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
        (info / "entry_points.txt").write_text("".join(f"[{g}]\n" + "\n".join(lines) + "\n" for g, lines in groups.items()))
    for module, src in modules.items():
        (site / f"{module}.py").write_text(src)
    return site


_EM = "from stochclosure.samplers import EulerMaruyama\n\n\nclass {0}(EulerMaruyama):\n    pass\n"


def ckpt_module_path(ctx: Context) -> Any:
    d = edit_config(ctx.model.save(ctx.folder / "payload_ckpt"),
                    lambda c: c["model"]["sde"].__setitem__("type", "payload:X"))
    with _on_path(_payload(ctx)):
        return load(d)


def rollout_module_path(ctx: Context) -> Any:
    from stochclosure.rollout_cli import load_rollout_config, run_rollout

    cfg = ctx.path("payload_rollout.yaml", "model: none\nsystem: {type: 'payload:X'}\nout: payload.h5\n"
                                           "n_steps: 1\nmembers: 1\n")
    with _on_path(_payload(ctx)):
        return run_rollout(load_rollout_config(cfg), progress=False)


def ambiguous_name(ctx: Context) -> Any:
    from stochclosure.registry import resolve

    site = _site(ctx, "clash_site", {
        "battery-acme": {"stochclosure.samplers": ["battery_em = battery_acme:AcmeEM"]},
        "battery-zeta": {"stochclosure.samplers": ["battery_em = battery_zeta:ZetaEM"]},
    }, {"battery_acme": _EM.format("AcmeEM"), "battery_zeta": _EM.format("ZetaEM")})
    with _on_path(site):
        return resolve("sampler", {"type": "battery_em", "steps": 3})


def unknown_pin(ctx: Context) -> Any:
    from stochclosure.registry import resolve

    return resolve("sampler", {"type": "nobody:euler_maruyama"})


def misspelt_group(ctx: Context) -> Any:
    from stochclosure.registry import Registry

    site = _site(ctx, "typo_site", {"battery-typo": {"stochclosure.sampler": ["typo_em = battery_typo:TypoEM"]}},
                 {"battery_typo": _EM.format("TypoEM")})
    with _on_path(site):
        return Registry("sampler").names()


def forgotten_super_init(ctx: Context) -> Any:
    from stochclosure.registry import resolve
    from stochclosure.scores.analytic import GaussianScore

    class NoInit(GaussianScore):
        def __init__(self) -> None:
            self.layer = torch.nn.Linear(2, 2)

    return resolve("score_operator", NoInit)


def score_wrong_rank(ctx: Context) -> Any:
    import stochclosure as sc

    score = sc.resolve("score_operator", {"type": "fno", "sde": "vp", "spatial_dims": 1, "width": 4, "modes": 2,
                                          "layers": 1, "embed_dim": 4})
    model = sc.ClosureModel("vp", score, {"type": "euler_maruyama", "steps": 2})
    return model.sample(sc.Conditioning(), n=1, grid=(8, 8))


CASES: list[BadInput] = [
    C("ckpt_module_path_type", "load_model", "config.json sde type 'payload:X' (a module in the working folder)",
      E.UnknownPluginError, "'payload:X'", ckpt_module_path),
    C("rollout_yaml_module_path", "stochclosure rollout", "system: {type: 'payload:X'} in the rollout YAML",
      E.UnknownPluginError, "'payload:X'", rollout_module_path),
    C("plugin_name_clash", "resolve", "two third-party distributions both provide sampler 'battery_em'",
      E.AmbiguousPluginError, "battery-acme:battery_em", ambiguous_name),
    C("plugin_unknown_pin", "resolve", "'nobody:euler_maruyama' (no such distribution)", E.UnknownPluginError,
      "'nobody:euler_maruyama'", unknown_pin),
    C("plugin_misspelt_group", "entry points", "a distribution declaring group 'stochclosure.sampler'",
      PluginWarning, "'stochclosure.samplers'", misspelt_group),
    C("plugin_forgot_super_init", "resolve", "an nn.Module score whose __init__ skips super().__init__()",
      E.PluginValidationError, "super().__init__()", forgotten_super_init),
    C("score_spatial_rank", "ClosureModel.sample", "a ring (spatial_dims=1) FNO asked for an 8x8 torus",
      E.ShapeError, "spatial rank 2", score_wrong_rank),
]
"""Plugin and spec rows: module paths in files, name clashes, pins, misspelt groups, forgotten init."""
