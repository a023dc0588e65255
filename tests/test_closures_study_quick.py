"""``benchmarks/closures.py --quick``: the whole study on a tiny DNS, and its resume from the work folder."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("stochclosure_neuralop")

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "closures.py"


def _module():
    spec = importlib.util.spec_from_file_location("closures_study", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["closures_study"] = mod
    spec.loader.exec_module(mod)
    return mod


def test_quick_study_writes_every_closure_and_resumes_from_its_cache(tmp_path):
    mod = _module()
    out, work = tmp_path / "out", tmp_path / "work"
    assert mod.main(["--quick", "--out", str(out), "--work", str(work)]) == 0
    first = json.loads((out / "closures_quick.json").read_text())["results"]
    md = (out / "closures_quick.md").read_text()
    for name in ("no closure", "Smagorinsky, fitted c_s", "ADM order 10", "gradient", "ADM + white noise",
                 "ADM + coloured noise, inflated (val)", "deterministic FNO (ADM input)",
                 "ADM + Gaussian residual (CRPS)", "ADM + Gaussian residual (NLL)",
                 "ADM + coloured noise, AR(1), inflated (val)"):
        assert name in md, name
    main = first["gaussian / two_thirds"]
    # ADM is near-exact with the Gaussian filter even on the tiny DNS (measured R^2 0.989 vs 0.787)
    assert main["offline"]["ADM order 10"]["r2"][0] > main["offline"]["Smagorinsky, fitted c_s"]["r2"][0] + 0.1
    assert main["offline"]["ADM + coloured noise"]["spread_skill"][0] > 0
    assert all(row["scores"][-1]["finite"] == 1.0 for row in main["online"]["laws"].values())
    assert "online" not in first["spectral / exact"]
    # a second run reads every stage back from the work folder: identical scores
    assert mod.main(["--quick", "--out", str(out), "--work", str(work)]) == 0
    second = json.loads((out / "closures_quick.json").read_text())["results"]
    assert second == first
