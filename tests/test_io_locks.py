"""One writer per output: the advisory lock and per-process temporary names of stochclosure._io."""

from __future__ import annotations

import subprocess
import sys

import pytest

from stochclosure._io import exclusive_lock, temporary_name
from stochclosure.errors import OutputError


def test_second_holder_gets_output_error_naming_the_pid(tmp_path):
    target = tmp_path / "out.h5"
    code = ("import sys,time; from stochclosure._io import exclusive_lock\n"
            f"with exclusive_lock({str(target)!r}):\n    print('held', flush=True); time.sleep(30)\n")
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "held"
        with pytest.raises(OutputError, match=rf"out.*locked by another running process \(pid {p.pid}\)"):
            with exclusive_lock(target):
                pass
    finally:
        p.kill()
        p.wait()
    with exclusive_lock(target) as lock:  # a killed holder leaves no stale lock
        assert lock.exists()
def test_temporary_names_differ_and_sit_beside_the_target(tmp_path):
    a, b = temporary_name(tmp_path / "x.h5"), temporary_name(tmp_path / "x.h5")
    assert a != b and a.parent == tmp_path and a.name.startswith(".x.h5.")
