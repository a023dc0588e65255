"""Load a script of ``benchmarks/`` as a module, for the tests of that script."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_benchmark(script: str, name: str) -> ModuleType:
    """Execute ``benchmarks/<script>`` as module ``name``, registered in ``sys.modules``.

    Registration lets dataclasses and pickling find the module; ``benchmarks/`` goes on
    ``sys.path`` so that a script's imports of its sibling modules resolve.
    """
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / script)
    assert spec is not None and spec.loader is not None, f"no benchmark script {script}"
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod
