"""Checkpoints: exact round trips, safe loading, typed errors for bad files, atomic writes."""

from __future__ import annotations

import json
import pickle

import pytest
import torch

import stochclosure as sc
from stochclosure.checkpoint import FORMAT_VERSION, load_model, read_config, save_model

pytest.importorskip("stochclosure_neuralop")


def small_model(seed: int = 0) -> sc.ClosureModel:
    torch.manual_seed(seed)
    m = sc.ClosureModel("ve_exp", {"type": "fno", "encoder": {"type": "composite",
                                                               "encoders": ["field", "sparse_smooth"]},
                                   "width": 8, "modes": 4, "layers": 2, "embed_dim": 16},
                        {"type": "euler_maruyama", "steps": 5}, channels=1,
                        target_mean=torch.tensor([0.3]), target_std=torch.tensor([2.5]))
    with torch.no_grad():  # non-trivial FiLM weights so that the noise level matters
        m.score.film.weight.normal_(0, 0.1)
    return m


def condition(batch: int = 2) -> sc.Conditioning:
    g = torch.Generator().manual_seed(3)
    return sc.Conditioning(fields=torch.randn(batch, 1, 16, 16, generator=g),
                           obs_values=torch.randn(batch, 1, 16, generator=g), obs_points=torch.rand(16, 2, generator=g))


@pytest.mark.parametrize("name", ["ckpt", "model.safetensors"])
def test_round_trip_is_exact(tmp_path, name):
    m = small_model()
    path = m.save(tmp_path / name)
    m2 = sc.ClosureModel.load(path)
    s1, s2 = m.state_dict(), m2.state_dict()
    assert s1.keys() == s2.keys()
    for k in s1:
        assert torch.equal(s1[k], s2[k]), k
    assert m2.score.spec() == m.score.spec() and m2.sampler.spec() == m.sampler.spec()
    cond = condition()
    a = m.eval().sample(cond, n=2, generator=torch.Generator().manual_seed(0))
    b = m2.sample(cond, n=2, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b)
    cfg = read_config(path)
    assert cfg["format_version"] == FORMAT_VERSION
    assert {"stochclosure", "torch", "safetensors"} <= set(cfg["versions"])
    assert cfg["normalisation"] == {"target_mean": [0.30000001192092896], "target_std": [2.5]}
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary leftovers


def test_ema_and_raw_weights(tmp_path):
    m = small_model()
    ema = {k: v + 1.0 for k, v in m.named_parameters()}
    save_model(m, tmp_path / "c", ema=ema)
    raw, avg = load_model(tmp_path / "c", weights="raw"), load_model(tmp_path / "c")
    k = "score.film.weight"
    assert torch.equal(raw.state_dict()[k], m.state_dict()[k])
    assert torch.equal(avg.state_dict()[k], m.state_dict()[k] + 1.0)


def test_overwrite_is_atomic_replacement(tmp_path):
    save_model(small_model(0), tmp_path / "c")
    save_model(small_model(1), tmp_path / "c")
    assert torch.equal(load_model(tmp_path / "c").state_dict()["score.film.weight"],
                       small_model(1).state_dict()["score.film.weight"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]


def test_garbage_truncated_and_foreign_files_raise_checkpoint_error(tmp_path):
    m = small_model()
    single = m.save(tmp_path / "m.safetensors")
    data = single.read_bytes()
    (tmp_path / "garbage.safetensors").write_bytes(b"\x00\x01not a checkpoint" * 10)
    (tmp_path / "trunc.safetensors").write_bytes(data[: len(data) // 2])
    flipped = bytearray(data)
    flipped[-5] ^= 0xFF
    (tmp_path / "flipped.safetensors").write_bytes(bytes(flipped))
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(3)}, str(tmp_path / "foreign.safetensors"))
    cases = {"garbage": "unreadable", "trunc": "unreadable", "flipped": "SHA-256", "foreign": "stochclosure checkpoint"}
    for name, match in cases.items():
        with pytest.raises(sc.CheckpointError, match=match):
            load_model(tmp_path / f"{name}.safetensors")
    with pytest.raises(sc.CheckpointError, match="not found"):
        load_model(tmp_path / "missing")

    d = m.save(tmp_path / "dir")
    w = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(w[:-100])
    with pytest.raises(sc.CheckpointError, match="corrupt or truncated"):
        load_model(d)
    (d / "config.json").write_text("{ truncated")
    with pytest.raises(sc.CheckpointError, match="valid JSON"):
        load_model(d)
    (tmp_path / "empty").mkdir()
    with pytest.raises(sc.CheckpointError, match="config.json"):
        load_model(tmp_path / "empty")


def test_other_version_raises(tmp_path):
    d = small_model().save(tmp_path / "dir")
    cfg = json.loads((d / "config.json").read_text())
    cfg["format_version"] = FORMAT_VERSION + 1
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(sc.CheckpointError, match=f"format version {FORMAT_VERSION + 1}"):
        load_model(d)
    cfg["format_version"], cfg["format"] = FORMAT_VERSION, "someone.else"
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(sc.CheckpointError, match="another kind"):
        load_model(d)


class _Payload:
    """Unpickling this would create a marker file: proof that nothing is ever unpickled."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickles_are_never_unpickled(tmp_path):
    marker = tmp_path / "was_unpickled"
    for name in ("evil.safetensors", "evil.pt"):
        (tmp_path / name).write_bytes(pickle.dumps(_Payload(str(marker))))
        with pytest.raises(sc.CheckpointError):
            load_model(tmp_path / name)
    torch.save({"w": torch.zeros(2)}, tmp_path / "torch.safetensors")
    with pytest.raises(sc.CheckpointError):
        load_model(tmp_path / "torch.safetensors")
    assert not marker.exists()


def test_weights_that_do_not_fit_raise(tmp_path):
    d = small_model().save(tmp_path / "dir")
    cfg = json.loads((d / "config.json").read_text())
    cfg["model"]["score"]["width"] = 12  # the stored weights are width 8
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(sc.CheckpointError, match="weights matching the rebuilt model"):
        load_model(d)
