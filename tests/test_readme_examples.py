"""Every fenced ```python block of README.md and docs/*.md runs (a broken example fails the suite).

The blocks of one file run in order in one namespace, as a reader would paste them, in a temporary
working folder. A block preceded on the line before its fence by ``<!-- no-test: reason -->`` is
skipped; each such marker must give its reason.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import matplotlib
import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```python[^\n]*\n(.*?)^```", re.S | re.M)


def blocks(page: Path) -> list[tuple[int, str, bool]]:
    """``(line, source, skipped)`` of every python block of ``page``."""
    text = page.read_text()
    out = []
    for m in FENCE.finditer(text):
        line = text.count("\n", 0, m.start()) + 1
        before = text[:m.start()].rstrip("\n").rsplit("\n", 1)[-1].strip()
        out.append((line, m.group(1), before.startswith("<!-- no-test")))
    return out


def test_every_page_is_found_and_every_skip_has_a_reason():
    assert (ROOT / "README.md") in PAGES and len(PAGES) >= 2
    for page in PAGES:
        for line in page.read_text().splitlines():
            if line.strip().startswith("<!-- no-test"):
                assert re.match(r"<!-- no-test: \S.{10,} -->", line.strip()), f"{page.name}: {line!r} gives no reason"


@pytest.mark.parametrize("page", [p for p in PAGES if any(not s for _, _, s in blocks(p))],
                         ids=lambda p: p.name)
def test_the_python_examples_run(page, tmp_path, monkeypatch):
    matplotlib.use("Agg")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__readme__"}
    for line, source, skipped in blocks(page):
        if skipped:
            continue
        try:
            exec(compile(source, f"{page.name}:{line}", "exec"), namespace)  # noqa: S102 - the project's own docs
        except Exception as exc:  # noqa: BLE001 - report which block failed
            raise AssertionError(f"{page.name}, block at line {line} failed: {type(exc).__name__}: {exc}") from exc
    assert os.getcwd() == str(tmp_path)
