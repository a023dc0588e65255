"""Allocator tuning: applied through mallopt, idempotent, opt-out respected, results unchanged."""

from __future__ import annotations

import os
import subprocess
import sys

import torch

from stochclosure import perf

_CHILD = """
import json, torch
from stochclosure import perf
torch.manual_seed(0)
x = torch.randn(8, 4, 64, 64)
w = torch.randn(4, 64, 33, dtype=torch.complex64)
before = torch.fft.irfft2(torch.fft.rfft2(x) * w, s=(64, 64))
ok = perf.tune_allocator()
after = torch.fft.irfft2(torch.fft.rfft2(x) * w, s=(64, 64))
print(json.dumps({"ok": ok, "again": perf.tune_allocator(), "equal": bool(torch.equal(before, after)),
                  "settings": perf.allocator_settings()}))
"""


def _run(env_extra: dict[str, str]) -> dict:
    import json

    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != perf.OPT_OUT_ENV}
    env.update(env_extra)
    out = subprocess.run([sys.executable, "-c", _CHILD], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_tune_allocator_applies_once_and_keeps_results():
    res = _run({})
    if perf._glibc() is None:  # pragma: no cover - non-glibc platforms
        assert res["ok"] is False
        return
    assert res["ok"] and res["again"] and res["equal"]
    assert res["settings"]["MALLOC_MMAP_MAX_"] == 0


def test_tune_allocator_respects_opt_out_and_user_settings():
    assert _run({perf.OPT_OUT_ENV: "0"})["ok"] is False
    assert _run({"MALLOC_TOP_PAD_": "1048576"})["ok"] is False


def test_cli_applies_it(monkeypatch):
    calls = []
    monkeypatch.setattr(perf, "tune_allocator", lambda force=False: calls.append(force) or True)
    from stochclosure.cli import main

    assert main(["plugins"]) == 0
    assert calls == [False]
    assert torch.ones(1).item() == 1.0
