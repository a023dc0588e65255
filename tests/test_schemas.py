"""The command line's layer: one schema checker and one path rule for every ``--config``, a static command table."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from stochclosure.cli import COMMANDS, build_parser, main
from stochclosure.cli.distill import load_distill_config
from stochclosure.cli.rollout import load_rollout_config
from stochclosure.cli.schemas import GenerateConfig, TrainConfig, parse
from stochclosure.cli.train import load_train_config
from stochclosure.data.generate import DEFAULTS
from stochclosure.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def write(folder: Path, name: str, cfg: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(yaml.safe_dump(cfg))
    return path


def train_cfg(**changes):
    return {"data": {"path": "ns.h5"}, "model": {"score": "gaussian"}, "out": "run", **changes}


def distill_cfg(**changes):
    return {"teacher": "teacher/step-00000001", "data": {"path": "ns.h5"}, "out": "student", **changes}


def rollout_cfg(**changes):
    return {"model": "none", "system": "lorenz96", "out": "ens.safetensors", **changes}


LOADERS = {"train": (load_train_config, train_cfg), "distill": (load_distill_config, distill_cfg),
           "rollout": (load_rollout_config, rollout_cfg)}
# every path key of every command, and a config that puts a value there
PATH_KEYS = [("train", "data.path"), ("train", "out"), ("distill", "data.path"), ("distill", "teacher"),
             ("distill", "out"), ("rollout", "model"), ("rollout", "out"), ("rollout", "initial.path")]


def with_value(cfg: dict, key: str, value: str) -> dict:
    block, _, name = key.rpartition(".")
    if block:
        cfg[block] = {**(cfg.get(block) if block != "initial" else {}), name: value}
    else:
        cfg[name] = value
    return cfg


@pytest.mark.parametrize("command,key", PATH_KEYS)
def test_one_path_rule_for_every_command(tmp_path, command, key):
    load, make = LOADERS[command]
    folder = tmp_path / "a" / "b"
    escaping = write(folder, "escape.yaml", with_value(make(), key, "../../../outside"))
    with pytest.raises(ConfigError, match=f"'{key}'.*may not leave the config's folder"):
        load(escaping)
    inside = load(write(folder, "inside.yaml", with_value(make(), key, "sub/thing")))
    got = inside[key.split(".")[0]] if "." not in key else inside[key.split(".")[0]][key.split(".")[1]]
    assert got == str((folder / "sub" / "thing").resolve())
    absolute = load(write(folder, "absolute.yaml", with_value(make(), key, str(tmp_path / "elsewhere"))))
    got = absolute[key] if "." not in key else absolute[key.split(".")[0]][key.split(".")[1]]
    assert got == str((tmp_path / "elsewhere").resolve())
    widened = load(write(folder, "root.yaml", {**with_value(make(), key, "../up"), "root": ".."}))
    assert "root" not in widened


@pytest.mark.parametrize("command,typo,near", [("train", {"data": {"path": "x.h5", "resolutoin": 3}}, "resolution"),
                                               ("distill", {"studnet": {}}, "student"),
                                               ("rollout", {"member": 3}, "members")])
def test_unknown_key_names_it_and_suggests_the_near_miss(tmp_path, command, typo, near):
    load, make = LOADERS[command]
    with pytest.raises(ConfigError, match=f"did you mean '{near}'") as info:
        load(write(tmp_path, "c.yaml", {**make(), **typo}))
    assert f"stochclosure {command} --help" in str(info.value)


@pytest.mark.parametrize("command,change,key", [
    ("train", {"data": {"path": "x.h5", "history": True}}, "data.history"),     # a boolean is not an integer
    ("train", {"model": {"score": "gaussian", "channels": 0}}, "model.channels"),
    ("train", {"seed": -1}, "seed"),
    ("train", {"model": "gaussian"}, "model"),                                  # a block must be a mapping
    ("distill", {"student": {"levels": [0.3, 1.0]}}, "student.levels"),
    ("distill", {"student": {"levels": [1.0, 0.3], "steps": 3}}, "student.steps"),
    ("distill", {"data": {"path": 3}}, "data.path"),
    ("rollout", {"n_steps": -1}, "n_steps"),
    ("rollout", {"sampler_steps": 0}, "sampler_steps"),
    ("rollout", {"initial": {"seed": 1, "path": "s"}}, "initial"),
])
def test_types_and_ranges_are_checked_with_the_key_named(tmp_path, command, change, key):
    load, make = LOADERS[command]
    with pytest.raises(ConfigError, match=f"argument '{key}'"):
        load(write(tmp_path, "c.yaml", {**make(), **change}))


@pytest.mark.parametrize("command,missing", [("train", "out"), ("distill", "teacher"), ("rollout", "system")])
def test_missing_required_key(tmp_path, command, missing):
    load, make = LOADERS[command]
    cfg = make()
    del cfg[missing]
    with pytest.raises(ConfigError, match=f"argument '{missing}'.*entry in the config"):
        load(write(tmp_path, "c.yaml", cfg))


def test_parse_returns_the_typed_schema_with_defaults(tmp_path):
    cfg = parse(TrainConfig, train_cfg(), tmp_path / "c.yaml", "train")
    assert cfg.data.history == 0 and cfg.data.val_split == "val" and cfg.model.sde == "ve_exp" and cfg.seed == 0
    assert cfg.out == str((tmp_path / "run").resolve())


def test_generate_schema_has_the_library_keys_and_defaults():
    fields = {f.name: f for f in dataclasses.fields(GenerateConfig)}
    assert set(fields) == {"system", *DEFAULTS}
    got = {name: (f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default)
           for name, f in fields.items() if name != "system"}
    assert got == DEFAULTS


def test_generate_cli_suggests_the_near_miss(tmp_path, capsys):
    path = write(tmp_path, "g.yaml", {"trajectorys": 3})
    assert main(["generate", "--system", "lorenz96", "--config", str(path), "--out", str(tmp_path / "g.h5")]) == 2
    err = capsys.readouterr().err
    assert "'config.trajectorys'" in err and "did you mean 'trajectories'" in err
    assert not (tmp_path / "g.h5").exists()


def test_command_table_modules_define_the_command():
    for name, cmd in COMMANDS.items():
        module = cmd.load()
        assert callable(module.add_arguments) and callable(module.run), name
    parser = build_parser()
    assert parser.parse_args(["rollout", "--config", "x.yaml"]).config == "x.yaml"


def _modules_after(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys\nprint('\\n'.join(sorted(sys.modules)))"],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    return set(out.stdout.split())


def test_a_command_imports_only_its_own_module():
    loaded = _modules_after("from stochclosure.cli import main\nimport contextlib, io\n"
                            "with contextlib.redirect_stdout(io.StringIO()):\n    main(['plugins'])")
    assert "stochclosure.cli.plugins" in loaded
    others = sorted(m for m in loaded if m.startswith("stochclosure.cli.") and m != "stochclosure.cli.plugins")
    assert not others, others


def test_python_dash_m_runs_the_command_line():
    out = subprocess.run([sys.executable, "-m", "stochclosure", "--help"], capture_output=True, text=True,
                         timeout=300, cwd=ROOT)
    assert out.returncode == 0 and all(name in out.stdout for name in COMMANDS), out.stderr
