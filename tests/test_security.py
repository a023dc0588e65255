"""Safe loading: nothing is unpickled, YAML is plain data, config paths stay where they belong.

A crafted checkpoint (test_checkpoint.py::test_pickles_are_never_unpickled) and a pickled HDF5
attribute (the battery's h5_pickled_attribute row) are refused without running their payload; a
plugin that raises on import only warns (test_registry.py::test_broken_plugin_warns...).
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import pytest
import yaml

import stochclosure as sc
from stochclosure._io import resolve_config_path
from stochclosure.data.generate import load_config
from stochclosure.rollout_cli import load_rollout_config
from stochclosure.train_cli import load_train_config

ROOT = Path(__file__).resolve().parents[1]
UNSAFE = [
    (re.compile(r"\bpickle\.loads?\("), "pickle.load"),
    (re.compile(r"\bcPickle\b|\bdill\b|\bjoblib\.load\("), "pickle-based loader"),
    (re.compile(r"\byaml\.(load|unsafe_load|full_load)\("), "yaml.load without SafeLoader"),
    (re.compile(r"allow_pickle\s*=\s*True"), "numpy allow_pickle"),
]


def test_no_code_is_unpickled_anywhere_in_the_sources():
    bad = []
    for folder in ("stochclosure", "plugins", "benchmarks", "tutorials"):
        for path in (ROOT / folder).rglob("*.py"):
            text = path.read_text()
            for pattern, what in UNSAFE:
                for m in pattern.finditer(text):
                    bad.append(f"{path.relative_to(ROOT)}: {what}: {m.group(0)}")
            for m in re.finditer(r"torch\.load\(([^)]*)\)", text):
                if "weights_only=True" not in m.group(1):
                    bad.append(f"{path.relative_to(ROOT)}: torch.load without weights_only=True")
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("loader", [load_train_config, load_config, load_rollout_config],
                         ids=["train", "generate", "rollout"])
def test_yaml_python_tags_are_refused_and_never_run(tmp_path, loader):
    marker = tmp_path / "RAN"
    cfg = tmp_path / "evil.yaml"
    cfg.write_text(f"out: !!python/object/apply:os.system ['touch {marker}']\n"
                   f"data: !!python/object/new:pathlib.Path ['{marker}']\n")
    with pytest.raises(sc.ConfigError, match="'--config'.*no !!python tags"):
        loader(cfg)
    assert not marker.exists()


def test_rollout_checkpoint_with_a_pickle_payload_is_refused(tmp_path):
    import torch

    from stochclosure.rollouts import resumable_ensemble
    from stochclosure.systems import LinearRelaxation

    marker = tmp_path / "RAN"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    ckpt = tmp_path / "r.ckpt"
    ckpt.write_bytes(pickle.dumps(Payload()))
    system = LinearRelaxation(n=8)
    with pytest.raises(sc.CheckpointError, match="'checkpoint'"):
        resumable_ensemble(system, None, torch.zeros(1, 8, 8), 2, 2, seed=0, checkpoint=ckpt)
    assert not marker.exists()


def test_config_paths_stay_inside_the_config_folder_unless_given_explicitly(tmp_path):
    cfg = tmp_path / "project" / "configs" / "c.yaml"
    cfg.parent.mkdir(parents=True)
    inside = resolve_config_path("runs/a", "out", cfg)
    assert inside == str(cfg.parent / "runs" / "a")
    assert resolve_config_path("sub/../b.h5", "data.path", cfg) == str(cfg.parent / "b.h5")
    for escape in ("../x.h5", "../../../../etc/passwd", "runs/../../x"):
        with pytest.raises(sc.ConfigError, match="'out'.*may not leave the config's folder.*absolute path.*root"):
            resolve_config_path(escape, "out", cfg)
    # explicit: an absolute path, or a root declared in the config
    assert resolve_config_path(str(tmp_path / "abs.h5"), "out", cfg) == str(tmp_path / "abs.h5")
    assert resolve_config_path("../data/x.h5", "out", cfg, root="..") == str(tmp_path / "project" / "data" / "x.h5")
    with pytest.raises(sc.ConfigError, match="'out'"):
        resolve_config_path("../../x.h5", "out", cfg, root="..")
    # a symbolic link does not smuggle a path out either
    (cfg.parent / "link").symlink_to(tmp_path)
    with pytest.raises(sc.ConfigError, match="'data.path'"):
        resolve_config_path("link/x.h5", "data.path", cfg)
    with pytest.raises(sc.ConfigError, match="'out'.*a path"):
        resolve_config_path(3, "out", cfg)


def test_train_config_escaping_its_folder_is_refused_but_shipped_configs_load(tmp_path):
    cfg = {"data": {"path": "../secret.h5"}, "model": {"score": "gaussian"}, "out": "run"}
    path = tmp_path / "conf" / "t.yaml"
    path.parent.mkdir()
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(sc.ConfigError, match="'data.path'"):
        load_train_config(path)
    for shipped in sorted((ROOT / "configs" / "paper").glob("train_*.yaml")):
        loaded = load_train_config(shipped)  # `root: ../..` lets them reach benchmarks/work
        assert loaded["out"].startswith(str(ROOT / "benchmarks" / "work")), shipped
