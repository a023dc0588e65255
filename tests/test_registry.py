"""The entry-point registry: discovery, plugins, errors and the CLI listing."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import warnings
from importlib import metadata

import pytest
import torch

import stochclosure as sc
from stochclosure import registry
from stochclosure.registry import PluginWarning, Registry
from stochclosure.samplers import AbstractSampler, EulerMaruyama
from stochclosure.sdes import VPSDE
from stochclosure.testing import assert_close

BUILTINS = {
    "sde": {"ve", "ve_exp", "vp", "subvp"},
    "score_operator": {"gaussian", "linear_gaussian"},
    "encoder": {"field"},
    "sampler": {"euler_maruyama", "truncated_karras_em", "predictor_corrector", "probability_flow_heun"},
    "system": {"linear_relaxation"},
}


@pytest.mark.parametrize("kind", list(BUILTINS))
def test_builtins_are_discovered_through_their_entry_points(kind):
    eps = {ep.name: ep for ep in metadata.entry_points(group=registry.GROUPS[kind])}
    reg = Registry(kind)
    for name in BUILTINS[kind]:
        assert name in eps and eps[name].dist.name == "stochclosure", f"{name} must be a declared entry point"
        comp = reg._discover()[name]
        assert comp.provider == "stochclosure" and comp.target == eps[name].value
        assert reg.get(name) is eps[name].load()


def test_test_only_plugin_distribution_is_discovered():
    reg = Registry("sde")
    assert "loopback_vp" in reg.names()
    assert reg._discover()["loopback_vp"].provider == "stochclosure-loopback"
    sde = sc.resolve("sde", {"type": "loopback_vp", "beta_max": 10.0})
    t = torch.tensor([0.3], dtype=torch.float64)
    assert_close(sde.marginal_coefficients(t)[1], VPSDE(beta_max=10.0).marginal_coefficients(t)[1], rtol=1e-12,
                 what="loopback VP sigma_t vs VPSDE")
    assert isinstance(sc.resolve("sampler", "loopback_em"), AbstractSampler)


def _fake_distribution(tmp_path, name, group, lines, module_src=None, module=None):
    """Write a real (unzipped) installed distribution that importlib.metadata can discover."""
    dist = tmp_path / f"{name.replace('-', '_')}-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[{group}]\n" + "\n".join(lines) + "\n")
    if module_src is not None:
        (tmp_path / f"{module}.py").write_text(textwrap.dedent(module_src))


@pytest.fixture
def extra_path(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for m in [m for m in sys.modules if m.startswith("scbroken_")]:
        del sys.modules[m]


def test_broken_plugin_warns_and_the_rest_still_load(extra_path):
    _fake_distribution(extra_path, "scbroken-plugin", "stochclosure.samplers",
                       ["exploding = scbroken_mod:Sampler"], "raise RuntimeError('boom at import')\n", "scbroken_mod")
    reg = Registry("sampler")
    with pytest.warns(PluginWarning, match=r"exploding.*scbroken_mod:Sampler.*scbroken-plugin.*boom at import"):
        comps = reg.components(load=True)
    names = {c.name for c in comps}
    assert "exploding" not in names and BUILTINS["sampler"] <= names
    with pytest.raises(sc.UnknownPluginError, match="installed but failed to load"):
        reg.get("exploding")


def test_plugin_not_implementing_interface_is_rejected_naming_missing_methods(extra_path):
    _fake_distribution(extra_path, "scbroken-iface", "stochclosure.sdes", ["halfsde = scbroken_iface:HalfSDE"],
                       """
                       class HalfSDE:
                           def drift(self, x, t):
                               return x
                       """, "scbroken_iface")
    reg = Registry("sde")
    with pytest.warns(PluginWarning, match="missing diffusion, marginal_coefficients"):
        reg.names()
        with pytest.raises(sc.UnknownPluginError):
            reg.get("halfsde")


def test_duplicate_name_warns_with_both_providers(extra_path):
    _fake_distribution(extra_path, "scbroken-dup", "stochclosure.sdes", ["vp = scbroken_dup:X"])
    with pytest.warns(PluginWarning, match=r"'vp' is provided twice: by stochclosure .* and by scbroken-dup"):
        Registry("sde").names()


def test_unknown_name_lists_installed_and_suggests():
    with pytest.raises(sc.UnknownPluginError, match=r"unknown sampler 'euler_maruyamma'.*euler_maruyama.*did you mean"):
        sc.resolve("sampler", "euler_maruyamma")
    with pytest.raises(sc.UnknownPluginError, match="installed sdes: .*subvp.*ve.*vp"):
        sc.resolve("sde", "nope")


def test_resolve_accepts_name_class_instance_and_dict():
    a = sc.resolve("sampler", "euler_maruyama")
    b = sc.resolve("sampler", EulerMaruyama)
    c = sc.resolve("sampler", {"type": "euler_maruyama", "steps": 10})
    inst = EulerMaruyama(steps=3)
    assert isinstance(a, EulerMaruyama) and isinstance(b, EulerMaruyama)
    assert c.steps == 10 and sc.resolve("sampler", inst) is inst
    assert sc.resolve("sampler", c.spec()).config == c.config


def test_dict_spec_errors_name_the_key():
    with pytest.raises(sc.ConfigError, match=r"'sampler.stepz'.*unknown key"):
        sc.resolve("sampler", {"type": "euler_maruyama", "stepz": 10})
    with pytest.raises(sc.ConfigError, match=r"'sampler.type'"):
        sc.resolve("sampler", {"steps": 10})
    with pytest.raises(sc.PluginValidationError, match="builtins.float.*does not implement AbstractSampler"):
        sc.resolve("sampler", 42.0)


def test_register_runtime_component_and_reject_non_implementations():
    class Half(AbstractSampler):
        def nfe(self, steps=None):
            return 0

    with pytest.raises(sc.PluginValidationError, match="missing sample"):
        sc.register("sampler", "half", Half)

    class NotASampler:
        pass

    with pytest.raises(sc.PluginValidationError, match="does not implement AbstractSampler: missing nfe, sample"):
        sc.register("sampler", "nope", NotASampler)

    @sc.register("sampler", "my_em", overwrite=True)
    class MyEM(AbstractSampler):
        def __init__(self, steps: int = 5):
            self.inner = EulerMaruyama(steps=steps)

        def sample(self, score_fn, sde, shape, **kw):
            return self.inner.sample(score_fn, sde, shape, **kw)

        def nfe(self, steps=None):
            return self.inner.nfe(steps)

    try:
        assert isinstance(sc.resolve("sampler", "my_em"), MyEM)
        assert "my_em" in sc.available("sampler")["sampler"]
        with pytest.raises(sc.ConfigError, match="already provided"):
            sc.register("sampler", "my_em", EulerMaruyama)
    finally:
        registry.get_registry("sampler").unregister("my_em")


def test_cli_lists_plugins_by_kind_with_distribution():
    out = subprocess.run([sys.executable, "-m", "stochclosure", "plugins"], capture_output=True, text=True,
                         check=True).stdout
    lines = out.splitlines()
    assert lines[0].split() == ["kind", "name", "distribution", "object"]
    rows = {tuple(line.split()[:3]) for line in lines[1:]}
    assert ("sampler", "euler_maruyama", "stochclosure") in rows
    assert ("sde", "loopback_vp", "stochclosure-loopback") in rows
    for kind, names in BUILTINS.items():
        for name in names:
            assert (kind, name, "stochclosure") in rows


def test_cli_error_is_one_line_with_nonzero_exit():
    r = subprocess.run([sys.executable, "-m", "stochclosure", "samplers", "--n", "-4"], capture_output=True, text=True)
    assert r.returncode != 0
    assert "Traceback" not in r.stderr


def test_refresh_keeps_runtime_registrations():
    reg = Registry("sde")

    class MyVP(VPSDE):
        pass

    reg.register("myvp", MyVP)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        reg.refresh()
    assert reg.get("myvp") is MyVP
