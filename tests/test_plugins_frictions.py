"""What a hostile file and a plugin author meet: names only from files, clashes, groups, forgotten init.

* Specs read from files (checkpoint ``config.json``, rollout YAML) resolve registered names only;
  a ``"module:attr"`` type never imports the module (checked through ``sys.modules`` and a file the
  payload would write on import).
* Two third-party distributions providing one name make it ambiguous (a typed error naming both and
  the ``dist:name`` fix); pinning selects one; the core always wins over a plugin.
* A misspelt entry-point group warns, naming the distribution and the right group.
* A component that forgets ``super().__init__()`` is a PluginValidationError with the fix.
"""

from __future__ import annotations

import json
import sys
import textwrap
import warnings

import pytest
import torch

import stochclosure as sc
from stochclosure import registry
from stochclosure.checkpoint import load_model
from stochclosure.registry import PluginWarning, Registry, provider_of
from stochclosure.samplers import EulerMaruyama
from stochclosure.sdes import VPSDE

PAYLOAD = """
from pathlib import Path
Path({marker!r}).write_text("payload ran")

class X:
    pass
"""


@pytest.fixture
def hostile_folder(tmp_path, monkeypatch):
    """A working folder holding ``payload.py`` (importable: it is the cwd and on sys.path)."""
    marker = tmp_path / "PAYLOAD_RAN"
    (tmp_path / "payload.py").write_text(PAYLOAD.format(marker=str(marker)))
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("payload", None)
    yield marker
    sys.modules.pop("payload", None)


def _assert_not_imported(marker):
    assert "payload" not in sys.modules, "the payload module was imported"
    assert not marker.exists(), "the payload module ran"


def test_the_payload_fixture_can_run_code_when_imported(hostile_folder):
    # Guards the two tests below: the payload is importable, so "not imported" means refused.
    __import__("payload")
    assert hostile_folder.read_text() == "payload ran"


def small_model() -> sc.ClosureModel:
    return sc.ClosureModel("vp", {"type": "gaussian", "sde": "vp", "std": 1.0}, {"type": "euler_maruyama", "steps": 5})


@pytest.mark.parametrize("component", ["sde", "score", "sampler"])
def test_checkpoint_naming_a_module_path_is_refused_without_importing_it(tmp_path, hostile_folder, component):
    d = small_model().save(tmp_path / "ckpt")
    cfg = json.loads((d / "config.json").read_text())
    cfg["model"][component]["type"] = "payload:X"
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(sc.UnknownPluginError, match=r"'payload:X'.*import paths are not accepted.*nothing was imported"):
        load_model(d)
    _assert_not_imported(hostile_folder)


def test_rollout_yaml_naming_a_module_path_is_refused_without_importing_it(tmp_path, hostile_folder):
    from stochclosure.cli.rollout import load_rollout_config, run_rollout

    path = tmp_path / "rollout.yaml"
    path.write_text("model: none\nsystem: {type: 'payload:X'}\nout: out.h5\nn_steps: 2\nmembers: 1\n")
    with pytest.raises(sc.UnknownPluginError, match=r"fix: pass the class or instance itself.*register"):
        run_rollout(load_rollout_config(path), progress=False)
    _assert_not_imported(hostile_folder)
    assert not (tmp_path / "out.h5").exists()


@pytest.mark.parametrize("kind", list(registry.KINDS))
def test_no_kind_imports_a_module_path_from_a_spec(hostile_folder, kind):
    with pytest.raises(sc.UnknownPluginError):
        sc.resolve(kind, {"type": "payload:X"})
    with pytest.raises(sc.UnknownPluginError):
        sc.resolve(kind, "payload:X")
    _assert_not_imported(hostile_folder)


def test_python_users_pass_the_class_or_register_it():
    class MyVP(VPSDE):
        """An unregistered subclass."""

    assert type(sc.resolve("sde", MyVP)) is MyVP
    assert sc.resolve("sde", {"type": MyVP, "beta_max": 5.0}).beta_max == 5.0
    sc.register("sde", "my_vp_frictions", MyVP, overwrite=True)
    try:
        assert type(sc.resolve("sde", {"type": "my_vp_frictions", "beta_max": 5.0})) is MyVP
    finally:
        registry.get_registry("sde").unregister("my_vp_frictions")
    with pytest.raises(sc.ConfigError, match="without ':'"):
        sc.register("sde", "acme:vp", MyVP)


# -- third-party distributions ------------------------------------------------------------------

def fake_distribution(site, name, entry_points, modules=None, version="0.1"):
    """An unzipped installed distribution (``*.dist-info``) that importlib.metadata discovers."""
    info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text("".join(f"[{g}]\n" + "\n".join(lines) + "\n"
                                                   for g, lines in entry_points.items()))
    for module, src in (modules or {}).items():
        (site / f"{module}.py").write_text(textwrap.dedent(src))


SAMPLER_SRC = """
from stochclosure.samplers import EulerMaruyama

class {cls}(EulerMaruyama):
    \"\"\"A third-party sampler.\"\"\"
"""


@pytest.fixture
def site(tmp_path, monkeypatch):
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    yield site
    monkeypatch.undo()
    for m in [m for m in sys.modules if m.startswith("scclash_")]:
        del sys.modules[m]
    registry.refresh()


@pytest.fixture
def clash(site):
    """Two third-party distributions both provide the sampler ``shared_em``; one also shadows a built-in."""
    fake_distribution(site, "acme-samplers", {"stochclosure.samplers": ["shared_em = scclash_acme:AcmeEM"]},
                      {"scclash_acme": SAMPLER_SRC.format(cls="AcmeEM")})
    fake_distribution(site, "zeta_samplers", {"stochclosure.samplers": ["shared_em = scclash_zeta:ZetaEM",
                                                                        "euler_maruyama = scclash_zeta:ZetaEM"]},
                      {"scclash_zeta": SAMPLER_SRC.format(cls="ZetaEM")})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PluginWarning)
        registry.refresh()
    return site


def test_a_third_party_clash_is_ambiguous_and_names_providers_and_fix(clash):
    with pytest.raises(sc.AmbiguousPluginError, match=r"'shared_em'.*acme-samplers.*zeta_samplers.*"
                                                      r"fix: pin the provider as 'acme-samplers:shared_em'"):
        sc.resolve("sampler", "shared_em")
    assert issubclass(sc.AmbiguousPluginError, sc.UnknownPluginError)
    with pytest.raises(sc.AmbiguousPluginError):
        provider_of("sampler", "shared_em")
    assert "shared_em" not in registry.get_registry("sampler")
    assert {"acme-samplers:shared_em", "zeta_samplers:shared_em"} <= set(registry.available("sampler")["sampler"])


def test_the_clashes_warn_at_discovery(clash):
    with pytest.warns(PluginWarning) as caught:
        Registry("sampler").names()
    messages = [str(w.message) for w in caught]
    assert any("'shared_em'" in m and "2 third-party distributions" in m for m in messages), messages
    assert any("'euler_maruyama' is provided twice" in m and "the core's own wins" in m for m in messages), messages


def test_pinning_dist_name_selects_the_provider_and_survives_a_checkpoint(clash, tmp_path):
    acme = sc.resolve("sampler", {"type": "acme-samplers:shared_em", "steps": 3})
    zeta = sc.resolve("sampler", "Zeta-Samplers:shared_em")  # distribution names compare as pip does
    assert type(acme).__name__ == "AcmeEM" and type(zeta).__name__ == "ZetaEM"
    assert provider_of("sampler", "acme-samplers:shared_em") == "acme-samplers"
    assert acme.spec()["type"] == "acme-samplers:shared_em"
    m = sc.ClosureModel("vp", {"type": "gaussian", "sde": "vp", "std": 1.0}, acme)
    again = load_model(m.save(tmp_path / "ckpt"))
    assert type(again.sampler).__name__ == "AcmeEM" and again.sampler.steps == 3


def test_the_core_wins_over_a_plugin_and_the_plugin_stays_reachable_pinned(clash):
    assert sc.resolve("sampler", "euler_maruyama").__class__ is EulerMaruyama
    assert provider_of("sampler", "euler_maruyama") == "stochclosure"
    shadowed = sc.resolve("sampler", "zeta-samplers:euler_maruyama")
    assert type(shadowed).__name__ == "ZetaEM"
    assert shadowed.spec()["type"] in ("zeta_samplers:euler_maruyama", "zeta_samplers:shared_em")


def test_an_unknown_distribution_pin_names_the_real_providers(clash):
    with pytest.raises(sc.UnknownPluginError, match=r"'nobody:shared_em'.*provided by acme-samplers, zeta_samplers"):
        sc.resolve("sampler", "nobody:shared_em")


def test_provider_of_names_the_distribution():
    assert provider_of("sde", "vp") == "stochclosure"
    assert provider_of("sde", "stochclosure:vp") == "stochclosure"
    with pytest.raises(sc.UnknownPluginError):
        provider_of("sde", "nope")


# -- misspelt groups ----------------------------------------------------------------------------

@pytest.mark.parametrize("wrong,right", [("stochclosure.sampler", "stochclosure.samplers"),
                                         ("stochclosure.score_operator", "stochclosure.score_operators"),
                                         ("stochclosure.encodres", "stochclosure.encoders")])
def test_a_misspelt_entry_point_group_warns_with_the_right_one(site, wrong, right):
    fake_distribution(site, "scclash-typo", {wrong: ["typo_thing = scclash_typo:Thing"]})
    kind = next(k for k, g in registry.GROUPS.items() if g == right)
    with pytest.warns(PluginWarning, match=rf"scclash-typo.*{wrong!r}.*fix: rename the group to {right!r}"):
        Registry(kind).names()


def test_an_unrelated_stochclosure_group_does_not_warn(site):
    fake_distribution(site, "scclash-other", {"stochclosure.dashboards": ["x = scclash_other:X"]})
    with warnings.catch_warnings():
        warnings.simplefilter("error", PluginWarning)
        for kind in registry.KINDS:
            Registry(kind).names()


# -- forgotten super().__init__() ---------------------------------------------------------------

class NoInitEncoder(sc.encoders.FieldEncoder):
    """Forgets super().__init__() and sets a plain attribute (construction succeeds)."""

    def __init__(self, channels: int = 1) -> None:
        self.width = channels


class NoInitScore(sc.scores.GaussianScore):
    """Forgets super().__init__() and assigns a submodule (torch raises inside __init__)."""

    def __init__(self) -> None:
        self.layer = torch.nn.Linear(2, 2)


@pytest.mark.parametrize("kind,cls", [("encoder", NoInitEncoder), ("score_operator", NoInitScore)])
def test_forgotten_super_init_is_a_plugin_validation_error_with_the_fix(kind, cls):
    with pytest.raises(sc.PluginValidationError, match=r"does not call super\(\).__init__\(\).*fix: call super"):
        sc.resolve(kind, cls)
    sc.register(kind, "noinit_frictions", cls, overwrite=True)
    try:
        with pytest.raises(sc.PluginValidationError, match=r"super\(\).__init__\(\)"):
            sc.resolve(kind, {"type": "noinit_frictions"})
    finally:
        registry.get_registry(kind).unregister("noinit_frictions")


def test_a_forgotten_super_init_instance_is_refused_when_passed_in():
    with pytest.raises(sc.PluginValidationError, match=r"NoInitEncoder.*super\(\).__init__\(\)"):
        sc.resolve("encoder", NoInitEncoder.__new__(NoInitEncoder))


# -- the test-only plugin -----------------------------------------------------------------------

def test_the_loopback_plugin_is_provided_by_the_test_session_not_installed():
    from importlib import metadata
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    makefile = (root / "Makefile").read_text()
    assert "tests/plugins" not in next(line for line in makefile.splitlines() if line.startswith("PKGS"))
    dist = metadata.distribution("stochclosure-loopback")
    where = Path(str(dist.locate_file(""))).resolve()
    assert where.name.startswith("stochclosure-test-plugins-"), f"loopback found at {where}, not the session's folder"
    assert provider_of("sde", "loopback_vp") == "stochclosure-loopback"


# -- tutorial 02's sampler pattern --------------------------------------------------------------

def tutorial_definitions(*names):
    """The tutorial's imports and the named top-level definitions, executed without the script."""
    import ast
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "tutorials" / "02_register_components.py"
    tree = ast.parse(path.read_text())
    keep = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))
            or (isinstance(n, (ast.FunctionDef, ast.ClassDef)) and n.name in names)]
    namespace: dict = {"__name__": "tutorial02_definitions"}
    exec(compile(ast.Module(body=keep, type_ignores=[]), str(path), "exec"), namespace)  # noqa: S102
    return namespace


def test_the_tutorial_sampler_forwards_the_grid_parameters_and_warm_starts():
    from types import SimpleNamespace

    from stochclosure.rollouts import WarmStart

    ddim_cls = tutorial_definitions("ddim", "DDIM")["DDIM"]
    s = ddim_cls(steps=7, eta=0.5, t_start=0.4, t_end=2e-3, rho=5.0, data_std=1.5)
    for key, want in {"t_start": 0.4, "t_end": 2e-3, "rho": 5.0, "data_std": 1.5, "eta": 0.5}.items():
        assert s.spec()[key] == want, key
    assert (s.t_start, s.t_end, s.rho, s.data_std) == (0.4, 2e-3, 5.0, 1.5)
    sc.register("sampler", "ddim_frictions", ddim_cls, overwrite=True)
    try:
        warm = WarmStart(t_start=0.2).sampler_for(SimpleNamespace(sampler=s))
        assert type(warm) is ddim_cls and warm.t_start == 0.2 and warm.rho == 5.0 and warm.data_std == 1.5
    finally:
        registry.get_registry("sampler").unregister("ddim_frictions")


def test_warm_start_refusal_names_the_grid_parameters_to_forward():
    from types import SimpleNamespace

    from stochclosure.rollouts import WarmStart

    class Dropping(sc.samplers.GridSampler):
        """Drops the skeleton's parameters (the mistake the tutorial warns about)."""

        nfe_per_step = 1

        def step(self, state, t_cur, t_next, score_fn, noise):
            return state

        def __init__(self, steps: int | None = None) -> None:
            super().__init__(steps)

    sc.register("sampler", "dropping_frictions", Dropping, overwrite=True)
    try:
        with pytest.raises(sc.ConfigError, match=r"t_start, t_end, rho, data_std.*super\(\).__init__\(steps, \*\*common\)"):
            WarmStart(t_start=0.2).sampler_for(SimpleNamespace(sampler=Dropping(steps=3)))
    finally:
        registry.get_registry("sampler").unregister("dropping_frictions")


def test_example_condition_matches_the_encoder_rank():
    class OneD(sc.encoders.FieldEncoder):
        """A field encoder restricted to 1-D grids."""

        spatial_dims = (1,)

    assert tuple(sc.encoders.FieldEncoder().example_condition(3).fields.shape) == (3, 1, 16, 16)
    assert tuple(OneD().example_condition(3).fields.shape) == (3, 1, 16)


# -- `stochclosure samplers` checks every registered sampler ------------------------------------

def test_the_sampler_check_reports_every_registered_sampler():
    from stochclosure.cli.samplers import run_sampler_check

    class Exploding(EulerMaruyama):
        """Fails while sampling."""

        def sample(self, *args, **kwargs):
            raise RuntimeError("exploded on purpose")

    class MyEM(EulerMaruyama):
        """A working run-time sampler."""

    sc.register("sampler", "exploding_frictions", Exploding, overwrite=True)
    sc.register("sampler", "my_em_frictions", MyEM, overwrite=True)
    try:
        rows = run_sampler_check(n=8, batch=4, steps=3, sdes=("vp",))
        by_name = {r["sampler"]: r for r in rows}
        assert set(by_name) == set(registry.available("sampler")["sampler"]) and len(rows) == len(by_name)
        assert {"loopback_em", "my_em_frictions", "euler_maruyama", "consistency"} <= set(by_name)
        assert by_name["exploding_frictions"]["status"] == "failed: RuntimeError: exploded on purpose"
        assert by_name["my_em_frictions"]["status"] == "ok" and by_name["my_em_frictions"]["nfe"] == 4
    finally:
        for name in ("exploding_frictions", "my_em_frictions"):
            registry.get_registry("sampler").unregister(name)


# -- dealiasing cut and the subgrid system's coarse noise ----------------------------------------

def _masked_product(a_hat, b_hat, n, mask):
    """Pseudo-spectral product of two fields on ``n x n``, truncated by ``mask``."""
    prod = torch.fft.irfft2(a_hat, s=(n, n)) * torch.fft.irfft2(b_hat, s=(n, n))
    return torch.fft.rfft2(prod) * mask


def _exact_product(a_hat, b_hat, n, mask):
    """The same product computed on a 2n grid (no aliasing possible), brought back and truncated."""
    from stochclosure.systems.spectral import resize_hat

    m = 2 * n
    a, b = (torch.fft.irfft2(resize_hat(h, n, m), s=(m, m)) for h in (a_hat, b_hat))
    return resize_hat(torch.fft.rfft2(a * b), m, n) * mask


@pytest.mark.parametrize("n", [6, 8, 12, 18, 24, 30, 32, 48])
def test_the_dealiasing_cut_is_alias_free_and_n_over_3_is_not(n):
    from stochclosure.systems.spectral import spectral_grid
    from stochclosure.testing import assert_close

    g = spectral_grid(n, torch.float64)
    gen = torch.Generator().manual_seed(n)
    a_hat, b_hat = (torch.fft.rfft2(torch.randn(2, n, n, generator=gen, dtype=torch.float64)) for _ in range(2))
    a_hat, b_hat = a_hat * g.dealias, b_hat * g.dealias
    assert_close(_masked_product(a_hat, b_hat, n, g.dealias), _exact_product(a_hat, b_hat, n, g.dealias),
                 rtol=1e-10, what=f"dealiased product of two kept modes, n={n}")
    assert int(g.dealias[: n // 2, 0].sum()) == (n - 1) // 3 + 1
    if n % 3 == 0:  # the one-mode-wider cut n // 3 folds |k + p| = 2n/3 onto the kept -n/3
        wide = ((g.kx.abs() <= n // 3) & (g.ky.abs() <= n // 3)).to(torch.float64)
        a_w = torch.fft.rfft2(torch.randn(2, n, n, generator=gen, dtype=torch.float64)) * wide
        b_w = torch.fft.rfft2(torch.randn(2, n, n, generator=gen, dtype=torch.float64)) * wide
        aliased = _masked_product(a_w, b_w, n, wide) - _exact_product(a_w, b_w, n, wide)
        assert float(aliased.abs().max()) > 1e-3 * float(_exact_product(a_w, b_w, n, wide).abs().max())


def _filtered_noise_variance(system, batch=4000):
    gen = torch.Generator().manual_seed(0)
    w = system.filter(system.fine.noise(batch, generator=gen, dtype=torch.float64))
    return (torch.fft.rfft2(w, norm="forward").abs() ** 2).mean(dim=(0, 1))


@pytest.mark.parametrize("noise", [{}, {"noise_alpha": 0.002, "noise_kappa": 3.0}], ids=["default", "custom"])
def test_coarse_noise_has_the_law_of_the_filtered_noise_for_the_sharp_filter(noise):
    from stochclosure.systems.subgrid import NavierStokes2DSubgrid

    s = NavierStokes2DSubgrid(n=8, n_fine=32, **noise)
    emp, exact = _filtered_noise_variance(s), s.coarse.noise_spectrum()
    kept = exact > 0
    assert torch.equal(kept, emp > 1e-12 * float(emp.max()))
    ratio = emp[kept] / exact[kept]
    # 4000 draws: each mode's variance estimate has a relative std of about 1/sqrt(4000) to 1/sqrt(2000)
    assert abs(float(ratio.mean()) - 1.0) < 0.02 and float((ratio - 1.0).abs().max()) < 0.12, ratio


def test_coarse_noise_differs_from_the_gaussian_filtered_noise_as_documented():
    from stochclosure.systems.subgrid import NavierStokes2DSubgrid

    s = NavierStokes2DSubgrid(n=8, n_fine=32, filter="gaussian")
    emp, exact = _filtered_noise_variance(s), s.coarse.noise_spectrum()
    kept = exact > 0
    g = s.coarse.grid(torch.float64)
    damping = torch.exp(-g.lam2 * (2.0 / 8) ** 2 / 24.0) ** 2
    ratio = emp[kept] / (exact * damping)[kept]
    assert abs(float(ratio.mean()) - 1.0) < 0.02  # the filtered noise is the damped one
    assert float((emp[kept] / exact[kept]).min()) < 0.5  # so the coarse noise is not its law


# -- checkpoints name each component's distribution and version ---------------------------------

class ScriptEM(EulerMaruyama):
    """A sampler defined in a script, never registered."""


def test_a_checkpoint_of_an_unregistered_component_records_it_and_asks_to_register_it(tmp_path):
    from stochclosure.checkpoint import read_config

    m = sc.ClosureModel("vp", {"type": "gaussian", "sde": "vp", "std": 1.0}, ScriptEM(steps=4))
    d = m.save(tmp_path / "ckpt")
    cfg = read_config(d)
    key = f"sampler:{ScriptEM.__module__}:ScriptEM"
    assert cfg["providers"][key] == {"distribution": "unknown", "version": None}
    assert cfg["providers"]["sde:vp"] == {"distribution": "stochclosure", "version": cfg["versions"]["stochclosure"]}
    with pytest.raises(sc.UnknownPluginError, match=r"nothing was imported.*register"):
        load_model(d)
    sc.register("sampler", "script_em_frictions", ScriptEM, overwrite=True)
    try:  # registered, under the name the config then names, it loads
        cfg["model"]["sampler"]["type"] = "script_em_frictions"
        (d / "config.json").write_text(json.dumps(cfg))
        again = load_model(d).sampler
        assert type(again) is ScriptEM and again.steps == 4
    finally:
        registry.get_registry("sampler").unregister("script_em_frictions")
