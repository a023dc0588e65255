"""The documentation (mkdocs + mkdocstrings API reference) builds with ``--strict``: no warnings.

``make test`` installs the ``test`` extra, which includes mkdocs, so this test runs there; it is
skipped, saying why, only where mkdocs is not installed.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("mkdocstrings") is None,
                    reason="mkdocs/mkdocstrings not installed (pip install -e .[docs], or make test, installs them)")
def test_docs_build_strictly(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NO_MKDOCS_2_WARNING": "1"}
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                          cwd=ROOT, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    assert "WARNING" not in proc.stderr, proc.stderr[-4000:]
    site = tmp_path / "site"
    api = (site / "api" / "samplers" / "index.html").read_text()
    assert "AbstractSampler" in api and "Parameters" in api      # generated from the docstrings
    assert "CosineVPSDE" in (site / "tutorials" / "index.html").read_text()   # tutorials included
