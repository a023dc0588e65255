"""Configuration YAML and stored JSON are bounded: alias bombs, deep nesting and huge texts are refused, typed."""

from __future__ import annotations

import json
import time

import pytest

from stochclosure.cli.distill import load_distill_config
from stochclosure.cli.rollout import load_rollout_config
from stochclosure.cli.train import load_train_config
from stochclosure.config import MAX_NESTING, MAX_YAML_NODES, json_nesting, load_json_text, load_yaml_mapping
from stochclosure.data.generate import load_config
from stochclosure.errors import CheckpointError, ConfigError, DatasetError

LOADERS = [load_yaml_mapping, load_config, load_train_config, load_rollout_config, load_distill_config]


def laughs(levels: int = 9, width: int = 9) -> str:
    """A "billion laughs" document: ``width ** (levels + 1)`` values once expanded."""
    lines = [f"a0: &a0 [{', '.join(['lol'] * width)}]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * width)}]" for i in range(1, levels + 1)]
    return "\n".join(lines) + "\n"


MERGE_BOMB = "b0: &b0 {x: 1, y: 2, z: 3}\n" + "".join(
    f"b{i}: &b{i} {{<<: [{', '.join([f'*b{i - 1}'] * 9)}]}}\n" for i in range(1, 9))


@pytest.mark.parametrize("loader", LOADERS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("text,match", [
    (laughs(), "expanding to more than"),
    ("data:\n  path: x.h5\n  extra:\n" + "".join("    " + ln + "\n" for ln in laughs().splitlines()), "expanding to more than"),
    (MERGE_BOMB, "expanding to more than"),
    ("a: " + "[" * 500 + "]" * 500 + "\n", "nesting deeper than"),
    ("a: &x [1, *x]\n", "recursive structure"),
], ids=["laughs", "laughs-nested", "merge-keys", "deep", "recursive"])
def test_every_command_refuses_unbounded_yaml_quickly(tmp_path, loader, text, match):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    t0 = time.perf_counter()
    with pytest.raises(ConfigError, match=rf"'--config'.*expected.*({match})"):
        loader(path)
    assert time.perf_counter() - t0 < 5


def test_bounded_aliases_and_large_but_reasonable_files_still_load(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("sde: &s {type: vp, beta_max: 20.0}\nscore: {type: gaussian, sde: *s}\n"
                    + "a: " + "[" * (MAX_NESTING - 2) + "1" + "]" * (MAX_NESTING - 2) + "\n")
    cfg = load_yaml_mapping(path)
    assert cfg["score"]["sde"] == {"type": "vp", "beta_max": 20.0}
    # just under the budget: width 9, levels such that the expansion stays below MAX_YAML_NODES
    path.write_text(laughs(levels=3, width=9))
    assert len(load_yaml_mapping(path)["a3"]) == 9
    assert 9**4 < MAX_YAML_NODES


def test_oversized_yaml_is_refused_without_parsing(tmp_path):
    path = tmp_path / "big.yaml"
    path.write_text("a: " + "x" * (4 * 2**20 + 1) + "\n")
    with pytest.raises(ConfigError, match=r"'--config'.*expected a YAML file of at most 4 MiB"):
        load_yaml_mapping(path)


def test_json_nesting_ignores_brackets_in_strings():
    assert json_nesting('{"a": [1, [2, "]]]"]]}') == 3
    assert json_nesting('["\\"[[["]') == 1
    assert json_nesting("") == 0


@pytest.mark.parametrize("error", [ConfigError, CheckpointError, DatasetError])
def test_json_text_is_bounded_and_errors_are_typed(error):
    assert load_json_text(json.dumps({"a": [1, 2]}), "x", error) == {"a": [1, 2]}
    deep = "[" * 100_000 + "]" * 100_000
    t0 = time.perf_counter()
    with pytest.raises(error, match=rf"'where'.*expected JSON nested at most {MAX_NESTING} levels deep, got 100000"):
        load_json_text(deep, "where", error)
    assert time.perf_counter() - t0 < 5
    with pytest.raises(error, match=r"'where'.*at most 10 characters, got 12"):
        load_json_text('"0123456789"', "where", error, max_chars=10)
    with pytest.raises(error, match=r"'where'.*valid JSON"):
        load_json_text("{ truncated", "where", error)
    with pytest.raises(error, match=r"'where'.*UTF-8"):
        load_json_text(b"\xff\xfe", "where", error)


def test_a_yaml_number_read_as_text_is_a_config_error_with_the_fix(tmp_path):
    """YAML 1.1 reads ``6.86e4`` as a string; a float parameter gets a typed error, not a TypeError."""
    import stochclosure as sc

    with pytest.raises(sc.ConfigError, match=r"system\.ic_scale.*6\.86e\+4"):
        sc.resolve("system", {"type": "navier_stokes_2d_subgrid", "n": 16, "n_fine": 32, "ic_scale": "6.86e4"})
    with pytest.raises(sc.ConfigError, match=r"sampler\.steps.*an integer"):
        sc.resolve("sampler", {"type": "euler_maruyama", "steps": "ten"})
    assert sc.resolve("system", {"type": "navier_stokes_2d_subgrid", "n": 16, "n_fine": 32, "nu": 1}).nu == 1.0
