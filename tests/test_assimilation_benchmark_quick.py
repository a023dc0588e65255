"""The assimilation benchmark runs end to end in its --quick mode (learned closures included), reports every forecast
model and resumes."""

from __future__ import annotations

import json
import math

from benchmark_scripts import load_benchmark


def test_quick_benchmark_end_to_end(tmp_path):
    bench = load_benchmark("assimilation.py", "assimilation_bench")
    out = tmp_path / "assimilation_quick.md"
    res = bench.main(["--quick", "--work", str(tmp_path / "work"), "--out", str(out)])
    text = out.read_text()
    assert "Quick smoke run" in text and "Navier" in text and "Against the targets" in text
    twin = json.loads(out.with_suffix(".json").read_text())
    assert twin["quick"] is True
    for variant in ("dense", "sparse"):
        rows = twin["l96"][variant]
        # the smoke run trains the Gaussian law (not the diffusion closure: its training is a CLI call)
        assert set(rows) == {"perfect model", "no closure", "cubic", "cubic + AR(1)", bench.GAUSS_L96}
        for name, r in rows.items():
            assert r["cycles"] == 20 and r["inflation"] in (1.0, 1.2), name
            assert math.isfinite(r["rmse_se"]) and r["analysis_fraction"] > 0, name
        # observing X with std 1, the filter with the perfect model or the cubic closures beats the
        # observations; the reduced model without closure is far off (its X climate is wrong)
        for name in ("perfect model", "cubic", "cubic + AR(1)", bench.GAUSS_L96):
            assert rows[name]["rmse"] < 0.8 and rows[name]["divergences"] == 0, name
        assert rows["no closure"]["rmse"] > 2 * rows["cubic"]["rmse"]
    best = twin["learned_ns"]["classical"]["best"]
    assert set(twin["ns"]) == {"no closure", "Smagorinsky", best, f"{best} + Gaussian residual, AR(1) latent"}
    # the cost table compares the analysis with the forecast at both grids, with and without weight interpolation
    assert set(twin["cost"]) == {"16", "32"} and twin["cost"]["32"]["analysis stride 4"] > 0
    # a second call reads every cached run and gives the same numbers
    again = bench.main(["--quick", "--work", str(tmp_path / "work"), "--out", str(out)])
    assert json.dumps(again["l96"]) == json.dumps(res["l96"]) and json.dumps(again["ns"]) == json.dumps(res["ns"])
