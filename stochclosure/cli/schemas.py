"""Typed schemas of the command line's YAML files, and the one checker that reads them.

Every ``--config`` file (``train``, ``distill``, ``rollout``, ``generate``) is a mapping whose
blocks map onto the dataclasses below. :func:`parse` is the only checker: it walks a schema's
fields and, for each block,

* refuses unknown keys, naming ``block.key`` and suggesting the nearest known key;
* refuses missing required keys;
* checks each value's type from the field's annotation (``int``, ``float``, ``bool``, ``str``,
  ``dict``, ``list``, ``None``, nested schemas; booleans are never numbers) and its range from
  the field's metadata, and runs the field's own check (seeds, distillation levels, ...);
* resolves every :data:`ConfigPath` field by the one path rule of :mod:`stochclosure._io`:
  a relative path is relative to the config file's folder and may not leave it (nor the folder
  named by the optional top-level ``root`` key); an absolute path is used as given.

Messages follow :func:`~stochclosure.errors.format_error` and name the key as written in the
file (``data.history``, ``student.levels``).
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NewType, TypeVar

from .._io import resolve_config_path
from ..config import ENSEMBLE_SEED_LIMIT, check_seed
from ..errors import ConfigError, format_error
from ..training.distill import check_levels

__all__ = ["ConfigPath", "DataBlock", "ModelBlock", "TrainConfig", "TrainLawConfig", "StudentBlock", "DistillConfig", "RolloutConfig",
           "GenerateConfig", "FinetuneDataBlock", "FinetuneFileConfig", "parse", "to_dict", "spec"]

ConfigPath = NewType("ConfigPath", str)
"""A path written in a config file, resolved by the config-path rule (absolute after :func:`parse`)."""

S = TypeVar("S")
_REQUIRED = dataclasses.MISSING


def spec(what: str | None = None, *, default: Any = _REQUIRED, minimum: int | None = None,
         check: Callable[[Any, str], Any] | None = None, fix: str = "fix the value in the YAML file") -> Any:
    """A schema field: its default, the expected value in words, an integer minimum and an extra check.

    Args:
        what: The expected value as the message says it (default: from the annotation).
        default: The value of a missing key (no default: the key is required). Mutable defaults
            (dicts) are copied per instance.
        minimum: Smallest integer accepted.
        check: ``check(value, key) -> value``, run after the type check (may normalise the value).
        fix: The message's fix for a wrong type or range.
    """
    meta = {"what": what, "minimum": minimum, "check": check, "fix": fix}
    if default is _REQUIRED:
        return field(metadata=meta)
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


def _non_negative_int(what: str = "a non-negative integer") -> Any:
    return spec(what, default=0, minimum=0)


# -- schemas -----------------------------------------------------------------------------------------------
@dataclass
class DataBlock:
    """``data:`` of ``train`` and ``distill``: a dataset written by ``stochclosure generate``."""

    path: ConfigPath = spec()
    closure: str | None = spec("a closure name", default=None)
    resolution: int | None = spec("an integer grid size", default=None, minimum=1)
    history: int = _non_negative_int()
    obs: bool = spec("true or false", default=True)
    val_split: str | None = spec("a split name or null", default="val")


@dataclass
class ModelBlock:
    """``model:`` of ``train``: the components of a :class:`~stochclosure.ClosureModel`."""

    score: str | dict = spec("a score-operator name or {type: ...}")
    sde: str | dict = spec("an SDE name or {type: ...}", default="ve_exp")
    sampler: str | dict = spec("a sampler name or {type: ...}", default="euler_maruyama")
    channels: int | None = spec("a positive integer", default=None, minimum=1)


def _seed(value: Any, key: str) -> int:
    return check_seed(value, key)


@dataclass
class TrainConfig:
    """A ``stochclosure train`` file. ``trainer`` holds :class:`~stochclosure.training.Trainer` keyword arguments."""

    data: DataBlock = spec()
    model: ModelBlock = spec()
    out: ConfigPath = spec()
    trainer: dict | None = spec("a mapping of Trainer arguments", default=None)
    seed: int = spec(default=0, check=_seed)
    root: str | None = spec("a folder (path string) or null", default=None)


@dataclass
class TrainLawConfig(TrainConfig):
    """A ``stochclosure train`` file whose ``model:`` names a registered closure law (``{type: NAME, ...}``).

    The law's own keys are checked against its constructor by
    :func:`stochclosure.cli.train.check_law_block`.
    """

    model: dict = spec("a closure-law spec {type: NAME, ...}")  # type: ignore[assignment]


def _levels(value: Any, key: str) -> list[float] | None:
    return None if value is None else check_levels(value, argument=key)


@dataclass
class StudentBlock:
    """``student:`` of ``distill``: the consistency student."""

    levels: list | None = spec("a non-empty list of strictly decreasing diffusion times in (0, T]", default=None,
                               check=_levels)
    teacher_sampler: str | dict | None = spec("a sampler name or {type: ...}", default=None)
    steps: int = spec(default=1, minimum=1, fix="one evaluation per level at most")


@dataclass
class DistillConfig:
    """A ``stochclosure distill`` file: the teacher checkpoint, its data, the student and the trainer."""

    teacher: ConfigPath = spec()
    data: DataBlock = spec()
    out: ConfigPath = spec()
    student: StudentBlock | None = spec(default=None)
    trainer: dict | None = spec("a mapping of Trainer arguments", default=None)
    seed: int = spec(default=0, check=_seed)
    root: str | None = spec("a folder (path string) or null", default=None)


def _ensemble_seed(value: Any, key: str) -> int:
    return check_seed(value, key, limit=ENSEMBLE_SEED_LIMIT)  # it seeds the ensemble (NumPy too)


def _initial(value: Any, key: str) -> dict[str, Any]:
    if not isinstance(value, dict) or len(value) != 1 or not ({"seed", "path"} & set(value)):
        raise ConfigError(format_error(key, "{seed: INT} or {path: FILE.safetensors}", repr(value)))
    if "seed" in value:
        check_seed(value["seed"], f"{key}.seed")
    return value


@dataclass
class RolloutConfig:
    """A ``stochclosure rollout`` file (``model: none`` runs without a closure)."""

    model: ConfigPath | None = spec("a checkpoint path, or none")
    system: str | dict = spec("a system name or {type: NAME, ...}")
    out: ConfigPath = spec()
    initial: dict = spec("{seed: INT} or {path: FILE.safetensors}", default={"seed": 0}, check=_initial)
    n_steps: int = spec("an integer >= 0", default=100, minimum=0)
    members: int = spec("an integer >= 1", default=8, minimum=1)
    seed: int = spec(default=0, check=_ensemble_seed)
    checkpoint_every: int = spec("an integer >= 1", default=50, minimum=1)
    record_every: int = spec("an integer >= 1", default=1, minimum=1)
    resample_every: int = spec("an integer >= 1", default=1, minimum=1)
    sampler_steps: int | None = spec("null or a positive integer", default=None, minimum=1)
    root: str | None = spec("a folder (path string) or null", default=None)


@dataclass
class GenerateConfig:
    """A ``stochclosure generate`` file: the system's constructor arguments and the generation keys.

    Ranges, dtypes, devices and compression are checked by
    :func:`stochclosure.data.generate.normalise_config` (the library's own check, also used by
    :func:`~stochclosure.data.generate.generate`); this schema gives the file its keys and types.
    """

    system: dict | None = spec("a mapping of the system's constructor arguments", default=None)
    trajectories: int = spec("a positive integer", default=8, minimum=1)
    batch_size: int = spec("a positive integer", default=4, minimum=1)
    seed: int = spec("a non-negative integer", default=0, minimum=0)
    spinup_steps: int = _non_negative_int()
    record_every: int = spec("a positive integer", default=1, minimum=1)
    records: int = spec("a positive integer", default=10, minimum=1)
    resolutions: list | None = spec("null (the system's own) or a non-empty list of distinct positive integers",
                                    default=None, fix="write e.g. resolutions: [64, 32]")
    coarsen: str = spec("'stride' or 'spectral'", default="stride")
    closures: list | None = spec("null (the system's own) or a non-empty list of distinct non-empty names",
                                 default=None, fix="write e.g. closures: [G, H]")
    obs_grid: int | None = spec("null or a non-negative integer", default=None, minimum=0)
    split: dict = spec("fractions for the splits summing to 1", default={"train": 0.8, "val": 0.1, "test": 0.1})
    dtype: str = spec("'float32' or 'float64'", default="float64")
    store_dtype: str = spec("'float32' or 'float64'", default="float32")
    device: str = spec("a device name such as 'cpu' or 'cuda:0'", default="cpu")
    compression: str | int | None = spec("null, an h5py filter name ('gzip', 'lzf') or number", default="gzip")
    compression_level: int | None = spec("null or an integer from 0 to 9 (gzip level)", default=4)


@dataclass
class FinetuneDataBlock:
    """``data:`` of ``finetune``: filtered-truth coarse trajectories and their record spacing."""

    path: ConfigPath = spec()
    record_every: int | None = spec("null (the file's) or a positive integer (coarse steps between states)",
                                    default=None, minimum=1)
    resolution: int | None = spec("null (the system's n) or a stored grid size", default=None, minimum=1)
    val_trajectories: int = spec("a positive integer (the last trajectories of a tensor file)", default=1, minimum=1)


@dataclass
class FinetuneFileConfig:
    """A ``stochclosure finetune`` file. ``finetune`` holds :class:`~stochclosure.training.finetune.FinetuneConfig` fields."""

    law: ConfigPath = spec()
    system: str | dict = spec("a system name or {type: NAME, ...}")
    data: FinetuneDataBlock = spec()
    out: ConfigPath = spec()
    finetune: dict = spec("a mapping of FinetuneConfig fields", default={})
    dt: float | None = spec("null (the system's dt) or a positive number", default=None,
                            check=lambda v, k: _positive_or_none(v, k))
    root: str | None = spec("a folder (path string) or null", default=None)


def _positive_or_none(value: Any, key: str) -> Any:
    if value is not None and not value > 0:
        raise ConfigError(format_error(key, "null or a positive number", repr(value)))
    return value


# -- the checker -------------------------------------------------------------------------------------------
_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string", dict: "a mapping",
          list: "a list", type(None): "null"}


def _options(hint: Any) -> tuple[Any, ...]:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return typing.get_args(hint)
    return (hint,)


def _accepts(option: Any, value: Any) -> bool:
    if option is ConfigPath:
        option = str
    if dataclasses.is_dataclass(option):
        return isinstance(value, dict)
    if option is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if option is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, option)


def _key(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name


def _unknown_keys(raw: Mapping[str, Any], allowed: list[str], where: str, command: str) -> None:
    unknown = sorted(str(k) for k in set(raw) - set(allowed))
    if not unknown:
        return
    near = difflib.get_close_matches(unknown[0], allowed, n=1)
    hint = f"did you mean {near[0]!r}? " if near else ""
    raise ConfigError(format_error(_key(where, unknown[0]), f"one of the keys {sorted(allowed)}",
                                   f"unknown key(s) {unknown}",
                                   f"{hint}check the spelling against `stochclosure {command} --help`"))


def _check_value(f: dataclasses.Field, hint: Any, value: Any, key: str, command: str) -> Any:
    meta = f.metadata
    options = _options(hint)
    what = meta["what"] or " or ".join(_NAMES.get(o, getattr(o, "__name__", str(o))) for o in options)
    if not any(_accepts(o, value) for o in options):
        if value is not None and any(dataclasses.is_dataclass(o) for o in options):
            raise ConfigError(format_error(key, "a mapping", f"{type(value).__name__} {value!r}"))
        raise ConfigError(format_error(key, what, f"{type(value).__name__} {value!r}", meta["fix"]))
    if meta["minimum"] is not None and isinstance(value, int) and not isinstance(value, bool) \
            and value < meta["minimum"]:
        raise ConfigError(format_error(key, what, f"{type(value).__name__} {value!r}", meta["fix"]))
    nested = next((o for o in options if dataclasses.is_dataclass(o)), None)
    if nested is not None and isinstance(value, dict):
        value = _parse_block(nested, value, key, command)
    return meta["check"](value, key) if meta["check"] is not None else value


def _parse_block(schema: type[S], raw: Any, where: str, command: str) -> S:
    if not isinstance(raw, Mapping):
        raise ConfigError(format_error(where or "--config", "a mapping", f"{type(raw).__name__} {raw!r}"))
    fields = dataclasses.fields(schema)  # type: ignore[arg-type]
    hints = typing.get_type_hints(schema)
    _unknown_keys(raw, [f.name for f in fields], where, command)
    values: dict[str, Any] = {}
    for f in fields:
        key = _key(where, f.name)
        if f.name not in raw:
            if f.default is _REQUIRED and f.default_factory is _REQUIRED:  # type: ignore[misc]
                raise ConfigError(format_error(key, f"a {f.name!r} entry in the config", "nothing"))
            continue
        values[f.name] = _check_value(f, hints[f.name], raw[f.name], key, command)
    return schema(**values)


def _resolve_paths(obj: Any, where: str, config_path: Path, root: str | None) -> None:
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value, key = getattr(obj, f.name), _key(where, f.name)
        if ConfigPath in _options(hints[f.name]) and value is not None:
            setattr(obj, f.name, resolve_config_path(value, key, config_path, root))
        elif dataclasses.is_dataclass(value):
            _resolve_paths(value, key, config_path, root)


def parse(schema: type[S], raw: Any, config_path: str | Path, command: str, where: str = "") -> S:
    """Check a parsed YAML mapping against ``schema`` and resolve its paths.

    Args:
        schema: One of the config dataclasses of this module.
        raw: The mapping read by :func:`stochclosure.config.load_yaml_mapping`.
        config_path: The YAML file (its folder anchors relative paths).
        command: The sub-command, for the fix of an unknown key (``"train"``).
        where: Prefix of every key in messages (``"config"`` gives ``config.seed``).

    Returns:
        An instance of ``schema`` with defaults filled and every path absolute.

    Raises:
        ConfigError: an unknown or missing key, a value of the wrong type or range, or a relative
            path leaving the config's folder (or ``root``); the message names the key.
    """
    cfg = _parse_block(schema, raw, where, command)
    root = getattr(cfg, "root", None)
    _resolve_paths(cfg, where, Path(config_path), root)
    return cfg


def to_dict(cfg: Any) -> dict[str, Any]:
    """A parsed config as the plain mapping the commands take (``root`` left out: it was applied)."""
    out = dataclasses.asdict(cfg)
    out.pop("root", None)
    return out
