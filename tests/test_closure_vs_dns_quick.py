"""The closure-vs-DNS benchmark runs end to end in its --quick mode and reports every setting."""

from __future__ import annotations

import json
import math

import pytest
from benchmark_scripts import load_benchmark


@pytest.mark.slow
def test_quick_benchmark_end_to_end(tmp_path):
    bench = load_benchmark("closure_vs_dns.py", "closure_vs_dns")
    out = tmp_path / "closure_vs_dns_quick.md"
    payload = bench.main(["--quick", "--work", str(tmp_path / "work"), "--out", str(out)])
    text = out.read_text()
    assert "Headline" in text and "Break-even" in text
    twin = json.loads(out.with_suffix(".json").read_text())
    assert twin["quick"] is True and twin["rollouts"].keys() == payload["rollouts"].keys()
    names = set(twin["rollouts"])
    assert {"no closure", "Smagorinsky"} <= names
    assert any("warm start" in n for n in names) and any("AR(1)" in n for n in names)
    assert any(n.startswith("distilled 1-step") for n in names) and any(n.startswith("many-step") for n in names)
    for name, row in twin["rollouts"].items():
        assert name in twin["cost"]["seconds_per_time_unit"]
        for h in row["horizons"].values():
            assert math.isfinite(h["mean_rel_error"]) and math.isfinite(h["crps"]), name
    # NFE per step follows the resampling schedule
    assert twin["rollouts"]["distilled 1-step, every 4"]["nfe_per_step"] == pytest.approx(0.25)
    assert twin["rollouts"]["no closure"]["nfe_per_step"] == 0
    assert {"many-step (DPM-Solver++ 4)", "distilled 1-step", "distilled 2-step"} <= set(twin["offline"]["rows"])
    # a second call reuses every cache (resumable) and writes the same tables
    again = bench.main(["--quick", "--work", str(tmp_path / "work"), "--out", str(out)])
    assert again["rollouts"] == payload["rollouts"]
