"""Shared test setup: deterministic seeds, one intra-op thread unless asked for more.

Small FFTs and elementwise kernels run far slower with two threads than with one when the two
cores are shared (thread hand-off dominates), so the suite runs single-threaded by default;
tests that measure threading set it themselves.

Thread count switch: ``STOCHCLOSURE_TEST_THREADS=N`` (a positive integer, default ``1``) runs
every test with ``N`` intra-op threads, e.g.::

    STOCHCLOSURE_TEST_THREADS=2 .venv/bin/python -m pytest -q tests/test_rollout.py

Reductions, matmuls and FFTs split their work differently with two threads, so results may differ
from the single-thread run by float rounding; the tests compare floats relative to the values'
magnitude (``stochclosure.testing.assert_close``) and must pass with 1 and with 2 threads. The
count is set once per session (``pytest_configure``, so module-scoped fixtures and, in the same
session, the plugin tests and doctests see it too) and re-pinned around every test under
``tests/``. The variable is normalised at start-up (set to the count in use), so tests that start
subprocesses which should follow it (the tutorials) pass ``os.environ[THREADS_VARIABLE]`` on as
``OMP_NUM_THREADS``.

Test-only plugins (``tests/plugins/*``, e.g. the loopback plugin) are never installed into the
environment: at session start each is made importable and discoverable for this test session
only, as an unzipped distribution (a generated ``*.dist-info`` with its entry points beside a copy
of its package) in a temporary folder put first on ``sys.path`` and on ``PYTHONPATH`` (so the
subprocesses the tests start see it too), then removed at session end.
"""

from __future__ import annotations

import configparser
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest
import torch

from stochclosure.errors import format_error

THREADS_VARIABLE = "STOCHCLOSURE_TEST_THREADS"


def session_threads() -> int:
    """The intra-op thread count of the test session (``STOCHCLOSURE_TEST_THREADS``, default 1).

    Raises:
        pytest.UsageError: if the variable is set to anything but a positive integer.
    """
    raw = os.environ.get(THREADS_VARIABLE, "1").strip()
    if not raw.isdigit() or int(raw) < 1:
        raise pytest.UsageError(format_error(THREADS_VARIABLE, "a positive integer number of intra-op threads",
                                             repr(raw), f"unset it or set e.g. {THREADS_VARIABLE}=2"))
    return int(raw)


def pytest_configure(config):
    threads = session_threads()
    os.environ[THREADS_VARIABLE] = str(threads)
    torch.set_num_threads(threads)


TEST_PLUGINS = Path(__file__).resolve().parent / "plugins"
_TEST_SITE: list[str] = []


def _write_test_distribution(project: Path, site: Path) -> None:
    """Write ``project`` (a setup.cfg project) into ``site`` as an installed, unzipped distribution."""
    cfg = configparser.ConfigParser(interpolation=None)
    cfg.read(project / "setup.cfg")
    name, version = cfg["metadata"]["name"], cfg["metadata"]["version"]
    info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    groups = cfg["options.entry_points"] if cfg.has_section("options.entry_points") else {}
    (info / "entry_points.txt").write_text(
        "".join(f"[{group}]\n{groups[group].strip()}\n\n" for group in groups))
    packages = [p for p in project.iterdir() if (p / "__init__.py").is_file()]
    for package in packages:
        shutil.copytree(package, site / package.name, ignore=shutil.ignore_patterns("__pycache__"))
    (info / "top_level.txt").write_text("".join(f"{p.name}\n" for p in packages))


def pytest_sessionstart(session):
    from stochclosure import registry

    site = Path(tempfile.mkdtemp(prefix="stochclosure-test-plugins-"))
    for project in sorted(TEST_PLUGINS.glob("*/setup.cfg")):
        _write_test_distribution(project.parent, site)
    _TEST_SITE.append(str(site))
    sys.path.insert(0, str(site))
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))
    registry.refresh()


def pytest_sessionfinish(session, exitstatus):
    for site in _TEST_SITE:
        shutil.rmtree(site, ignore_errors=True)


def pytest_report_header(config):
    return f"torch intra-op threads: {session_threads()} (set {THREADS_VARIABLE}=N to change)"


@pytest.fixture(autouse=True)
def _seed_and_threads():
    threads = torch.get_num_threads()
    torch.set_num_threads(session_threads())
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(1234)
