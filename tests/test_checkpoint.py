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


# -- loading trusts nothing: links, dtypes, statistics, nesting, size, the SDE -------------------------------------

def rewrite_weights(d, edit, name="model.safetensors"):
    """Apply ``edit(tensors)`` to a weight file of checkpoint ``d``, keep its metadata, update its SHA-256."""
    import hashlib

    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    path = d / name
    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata()
    tensors = load_file(str(path))
    edit(tensors)
    save_file(tensors, str(path), metadata=meta)
    cfg = json.loads((d / "config.json").read_text())
    cfg["files"][name] = hashlib.sha256(path.read_bytes()).hexdigest()
    (d / "config.json").write_text(json.dumps(cfg))


def edit_config(d, edit):
    cfg = json.loads((d / "config.json").read_text())
    edit(cfg)
    (d / "config.json").write_text(json.dumps(cfg))


def test_links_leaving_the_checkpoint_folder_are_refused(tmp_path):
    d = small_model().save(tmp_path / "ckpt")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (d / "model.safetensors").rename(elsewhere / "model.safetensors")
    (d / "model.safetensors").symlink_to(elsewhere / "model.safetensors")
    with pytest.raises(sc.CheckpointError, match=r"model.safetensors'.*expected a file inside the checkpoint folder"
                                                 r".*a link resolving to .*elsewhere/model.safetensors"):
        load_model(d)
    # a link that stays inside the folder is fine
    (d / "model.safetensors").unlink()
    (d / "weights").mkdir()
    (elsewhere / "model.safetensors").rename(d / "weights" / "model.safetensors")
    (d / "model.safetensors").symlink_to(d / "weights" / "model.safetensors")
    assert torch.equal(load_model(d).state_dict()["score.film.weight"], small_model().state_dict()["score.film.weight"])
    (d / "config.json").rename(elsewhere / "config.json")
    (d / "config.json").symlink_to(elsewhere / "config.json")
    with pytest.raises(sc.CheckpointError, match=r"config.json'.*expected a file inside the checkpoint folder"):
        read_config(d)
    (d / "config.json").unlink()
    (elsewhere / "config.json").rename(d / "config.json")
    edit_config(d, lambda c: c["files"].update({"../../outside.safetensors": "0" * 64}))
    with pytest.raises(sc.CheckpointError, match=r"files'.*expected plain file names"):
        load_model(d)


@pytest.mark.parametrize("dtype,ok", [(torch.int8, False), (torch.int64, False), (torch.bool, False),
                                      (torch.float64, False), (torch.float16, True), (torch.bfloat16, True)])
def test_weight_dtype_rule(tmp_path, dtype, ok):
    m = small_model()
    d = m.save(tmp_path / "ckpt")
    rewrite_weights(d, lambda t: t.__setitem__("score.film.weight", t["score.film.weight"].to(dtype)))
    if ok:  # an exact widening: the values arrive unchanged
        loaded = load_model(d).state_dict()["score.film.weight"]
        assert loaded.dtype == torch.float32
        assert torch.equal(loaded, m.state_dict()["score.film.weight"].to(dtype).float())
    else:
        with pytest.raises(sc.CheckpointError, match=r"'score.film.weight'.*expected a floating tensor of dtype "
                                                     rf"float32 .*got {str(dtype).replace('torch.', '')}"):
            load_model(d)


def test_complex_spectral_weights_must_stay_complex(tmp_path):
    d = small_model().save(tmp_path / "ckpt")
    key = next(k for k, v in small_model().state_dict().items() if v.is_complex())
    rewrite_weights(d, lambda t: t.__setitem__(key, t[key].real.contiguous()))
    with pytest.raises(sc.CheckpointError, match=rf"'{key}'.*expected a complex tensor of dtype complex64.*float32"):
        load_model(d)


@pytest.mark.parametrize("name,value,match", [
    ("target_mean", [float("nan")], r"expected finite numbers, got \[nan\]"),
    ("target_std", [float("inf")], r"expected finite numbers, got \[inf\]"),
    ("target_std", [0.0], r"expected positive numbers"),
    ("target_mean", ["0.3"], r"expected a list of numbers, one per channel, got \['0.3'\]"),
    ("target_mean", None, r"expected a list of numbers, one per channel, got None"),
    ("target_std", [None], r"expected a list of numbers"),
    ("target_std", [True], r"expected a list of numbers"),
    ("target_mean", [0.1, 0.2], r"expected 1 values \(one per channel\), got 2"),
    ("target_mean", {"a": 1}, r"expected a list of numbers"),
])
def test_bad_normalisation_statistics_in_the_config_are_refused(tmp_path, name, value, match):
    d = small_model().save(tmp_path / "ckpt")
    edit_config(d, lambda c: c["normalisation"].__setitem__(name, value))
    with pytest.raises(sc.CheckpointError, match=rf"'normalisation.{name}'.*{match}"):
        load_model(d)


def test_bad_normalisation_statistics_in_the_weights_are_refused(tmp_path):
    m = small_model()
    for name, value, match in (("target_std", float("inf"), "positive finite numbers among the weights"),
                               ("target_mean", float("nan"), "finite numbers among the weights")):
        d = m.save(tmp_path / name)
        rewrite_weights(d, lambda t, name=name, value=value: t.__setitem__(name, torch.tensor([value])))
        with pytest.raises(sc.CheckpointError, match=rf"'{name}'.*expected {match}"):
            load_model(d)
    d = m.save(tmp_path / "mismatch")
    rewrite_weights(d, lambda t: t.__setitem__("target_mean", torch.tensor([7.0])))
    with pytest.raises(sc.CheckpointError, match=r"'normalisation.target_mean'.*expected the values stored with the "
                                                 r"weights, \[7.0\], got \[0.30000001192092896\]"):
        load_model(d)


def test_deeply_nested_or_oversized_configs_are_refused(tmp_path):
    from safetensors.torch import save_file

    d = small_model().save(tmp_path / "ckpt")
    cfg = json.loads((d / "config.json").read_text())
    text = json.dumps(cfg)[:-1] + ', "x": ' + "[" * 100_000 + "]" * 100_000 + "}"
    (d / "config.json").write_text(text)
    with pytest.raises(sc.CheckpointError, match=r"config.json'.*expected JSON nested at most 100 levels deep"):
        load_model(d)
    (d / "config.json").write_text(json.dumps(cfg)[:-1] + ', "x": "' + " " * (16 * 2**20) + '"}')
    with pytest.raises(sc.CheckpointError, match=r"config.json'.*expected at most 16 MiB of JSON, got 1677\d{4} bytes"):
        load_model(d)
    single = tmp_path / "deep.safetensors"
    save_file({"w": torch.zeros(2)}, str(single), metadata={"stochclosure": "[" * 5000 + "]" * 5000})
    with pytest.raises(sc.CheckpointError, match=r"deep.safetensors \(metadata\)'.*nested at most 100 levels"):
        load_model(single)


@pytest.mark.parametrize("form", ["ckpt", "m.safetensors"])
def test_an_sde_swapped_in_the_config_is_detected(tmp_path, form):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    m = small_model()
    path = m.save(tmp_path / form)
    vp = {"type": "vp", "beta_min": 0.1, "beta_max": 20.0, "T": 1.0, "eps": 0.001}

    def swap(cfg):  # the model's SDE and the score's, consistently: ClosureModel alone cannot tell
        cfg["model"]["sde"], cfg["model"]["score"]["sde"] = vp, "vp"

    if form == "ckpt":
        edit_config(path, swap)
    else:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata()
        cfg = json.loads(meta["stochclosure"])
        swap(cfg)
        save_file(load_file(str(path)), str(path), metadata={**meta, "stochclosure": json.dumps(cfg)})
    with pytest.raises(sc.IncompatibleComponentsError, match=r"'model.sde'.*expected the SDE the weights were trained "
                                                             r"with, \{.*'ve_exp'.*\}, got \{.*'vp'.*\}"):
        load_model(path)


def test_checkpoints_without_the_sde_record_still_load(tmp_path):
    from safetensors.torch import load_file, save_file

    m = small_model()
    d = m.save(tmp_path / "old")
    for name in ("model.safetensors",):  # as written before the record existed: no metadata
        save_file(load_file(str(d / name)), str(d / name))
    edit_config(d, lambda c: c["files"].update(
        {"model.safetensors": __import__("hashlib").sha256((d / "model.safetensors").read_bytes()).hexdigest()}))
    assert torch.equal(load_model(d).state_dict()["score.film.weight"], m.state_dict()["score.film.weight"])


@pytest.fixture
def third_party(tmp_path, monkeypatch):
    """A distribution ``acme-closures`` 1.2.3 (no ``stochclosure-`` prefix) providing the SDE ``acme_vp``."""
    from stochclosure import registry

    site = tmp_path / "site"
    (site / "acme_sde").mkdir(parents=True)
    (site / "acme_sde" / "__init__.py").write_text(
        "from stochclosure.sdes import VPSDE\n\n\nclass AcmeVP(VPSDE):\n    \"\"\"A third-party SDE.\"\"\"\n")
    info = site / "acme_closures-1.2.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-closures\nVersion: 1.2.3\n")
    (info / "entry_points.txt").write_text("[stochclosure.sdes]\nacme_vp = acme_sde:AcmeVP\n")
    (info / "top_level.txt").write_text("acme_sde\n")
    monkeypatch.syspath_prepend(str(site))
    registry.refresh()
    yield
    monkeypatch.undo()
    registry.refresh()


def test_versions_name_every_distribution_that_provides_a_component(tmp_path, third_party):
    m = sc.ClosureModel("acme_vp", {"type": "gaussian", "sde": "acme_vp", "std": 1.0}, "euler_maruyama")
    for path in (m.save(tmp_path / "ckpt"), m.save(tmp_path / "m.safetensors")):
        cfg = read_config(path)
        assert cfg["providers"]["sde:acme_vp"] == {"distribution": "acme-closures", "version": "1.2.3"}
        assert cfg["providers"]["score_operator:gaussian"] == {"distribution": "stochclosure",
                                                               "version": cfg["versions"]["stochclosure"]}
        assert cfg["versions"]["acme-closures"] == "1.2.3"
        assert load_model(path).sde.spec()["type"] == "acme_vp"
    fno = read_config(small_model().save(tmp_path / "fno"))
    assert fno["providers"]["score_operator:fno"]["distribution"] == "stochclosure-neuralop"
    assert fno["providers"]["score_operator:fno"]["version"] == fno["versions"]["stochclosure-neuralop"]
    assert {"encoder:composite", "encoder:field", "encoder:sparse_smooth", "sde:ve_exp",
            "sampler:euler_maruyama"} <= set(fno["providers"])


def test_hash_tensor_takes_0d_tensors_and_keeps_the_digests_of_the_others():
    import hashlib

    from stochclosure.checkpoint import hash_tensor

    t = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    h = hashlib.sha256()
    hash_tensor(h, t)
    ref = hashlib.sha256(str(t.dtype).encode() + str(tuple(t.shape)).encode())  # the digest files were named by
    ref.update(t.view(torch.uint8).numpy().tobytes())
    assert h.hexdigest() == ref.hexdigest()
    a, b = hashlib.sha256(), hashlib.sha256()
    hash_tensor(a, torch.tensor(1.5))
    hash_tensor(b, torch.tensor(2.5))
    assert a.hexdigest() != b.hexdigest()
