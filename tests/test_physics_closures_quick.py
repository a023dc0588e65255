"""The physics-closure benchmark runs end to end in its --quick mode and scores every closure in every setting."""

from __future__ import annotations

import json
import math

from benchmark_scripts import load_benchmark


def test_quick_physics_closure_benchmark(tmp_path):
    bench = load_benchmark("physics_closures.py", "physics_closures")
    assert bench.main(["--quick", "--out", str(tmp_path)]) == 0
    text = (tmp_path / "physics_closures_quick.md").read_text()
    assert "ADM order 5" in text and "coloured noise" in text
    results = json.loads((tmp_path / "physics_closures_quick.json").read_text())["results"]
    assert set(results) == {"gaussian / two_thirds", "gaussian / exact", "spectral / two_thirds", "spectral / exact"}
    for setting, row in results.items():
        assert all(math.isfinite(v) for v in row["r2"].values()), setting
    # the sharp filter is the identity on resolved modes: ADM is exactly R there, whatever its order
    sharp = results["spectral / two_thirds"]["r2"]
    assert sharp["ADM order 0"] == sharp["ADM order 10"] == sharp["resolved correction R"]
    # R is zero for the exact coarse term: R^2 = 1 - sum U^2 / sum (U - mean U)^2 <= 0
    assert results["gaussian / exact"]["r2"]["resolved correction R"] <= 0.0
