"""Float comparisons in the tests are relative to the magnitude of the values compared.

Batched and single calls, one or two threads, and the kernels of different CPUs round float
results differently by a few units in the last place *of the values' magnitude*; an absolute
tolerance is therefore wrong for values of some magnitude (too loose for small ones, too strict
for large ones). This test reads the sources (AST, no import, no regex) of ``tests/``,
``plugins/*/tests/``, ``tutorials/``, ``benchmarks/`` and the doctests in ``stochclosure/`` and
fails on a comparison whose tolerance ignores the magnitude:

* ``atol=`` (``abs=`` of ``pytest.approx``, ``abs_tol=`` of ``math.isclose``) with a value other
  than a literal ``0`` or a product with the scale written out (``atol=1e-10 * float(ref.abs().max())``);
* ``allclose(`` / ``isclose(`` without an explicit ``atol`` (their default ``atol=1e-8`` is absolute);
* ``torch.testing.assert_close`` without an explicit ``atol`` (its default is ``1e-5`` for float32).

Use ``stochclosure.testing.assert_close(actual, expected, rtol=..., what=...)`` instead. A
genuinely absolute tolerance (a value that is exactly 0 by construction, a probability or a
correlation in [-1, 1], a statistical bound in units of a known standard error, a solver's own
``atol`` option) is allowed by a comment ``# abs-tol: <reason>`` on one of the call's lines; the
reason is required, and a comment that no longer sits on a flagged call fails too (stale entry).
"""

from __future__ import annotations

import ast
import doctest
import io
import re
import tokenize
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PRAGMA = re.compile(r"#\s*abs-tol:\s*(.*)$")
MIN_REASON = 10  # characters: a reason, not a bare marker

# keyword naming the absolute tolerance, per comparison function (last name of the call)
ABS_KEYWORD = {"allclose": "atol", "isclose": "atol", "assert_allclose": "atol", "assert_close": "atol",
               "approx": "abs"}
# functions whose default absolute tolerance is non-zero: an explicit (zero or scaled) atol is required.
# np.testing.assert_allclose (default atol=0), pytest.approx (default abs=1e-12, far below any rounding
# step we compare) and math.isclose (abs_tol=0) are relative by default.
NEEDS_EXPLICIT = {"allclose", "isclose"}
ATOL_POSITION = {"allclose": 3, "isclose": 3, "assert_allclose": 3}  # (a, b, rtol, atol, ...)


@dataclass(frozen=True)
class Finding:
    """One comparison with an absolute tolerance, or one stale ``abs-tol`` comment."""

    where: str
    line: int
    what: str

    def __str__(self) -> str:
        return f"{self.where}:{self.line}: {self.what}"


def _dotted(node: ast.AST) -> str:
    """``torch.testing.assert_close`` for the call's function, ``?`` for parts that are not names."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return "?"


def _is_zero(node: ast.AST) -> bool:
    return isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and node.value == 0


def _is_scaled(node: ast.AST) -> bool:
    """A product with a computed factor: the scale is written out (``1e-10 * float(x.abs().max())``)."""
    if not (isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mult)):
        return False

    def computed(n: ast.AST) -> bool:
        if isinstance(n, ast.Constant):
            return False
        if isinstance(n, ast.Name):
            return not n.id.isupper()  # a module constant (ATOL) is a number, not a scale
        if isinstance(n, ast.UnaryOp):
            return computed(n.operand)
        if isinstance(n, ast.BinOp):
            return computed(n.left) or computed(n.right)
        return True  # a call, an attribute, a subscript: computed from the data

    return computed(node.left) or computed(node.right)


def _torch_testing_names(tree: ast.AST) -> set[str]:
    """Local names bound to ``torch.testing.assert_close`` by ``from torch.testing import ...``."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "torch.testing":
            names |= {a.asname or a.name for a in node.names if a.name == "assert_close"}
    return names


def _call_findings(tree: ast.AST) -> list[tuple[int, int, str]]:
    """``(first line, last line, message)`` for every comparison with an absolute tolerance."""
    torch_assert_close = _torch_testing_names(tree)
    out = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        last = name.rsplit(".", 1)[-1]
        kwargs = {k.arg: k.value for k in node.keywords if k.arg}
        span = (node.lineno, node.end_lineno or node.lineno)
        keyword = ABS_KEYWORD.get(last, "atol")
        if last == "isclose" and name.startswith("math."):
            keyword = "abs_tol"
        value = kwargs.get(keyword)
        if value is None and last in ATOL_POSITION and len(node.args) > ATOL_POSITION[last]:
            value = node.args[ATOL_POSITION[last]]
        if value is not None:
            if not (_is_zero(value) or _is_scaled(value)):
                out.append((*span, f"{name}(..., {keyword}={ast.unparse(value)}): an absolute tolerance; "
                                   "compare relative to the values' magnitude (stochclosure.testing.assert_close)"))
            continue
        torch_testing = name.endswith("testing.assert_close") or (name in torch_assert_close)
        if (last in NEEDS_EXPLICIT and not name.startswith("math.")) or torch_testing:
            out.append((*span, f"{name}(...) without atol: its default absolute tolerance ignores the magnitude; "
                               "use stochclosure.testing.assert_close(..., rtol=...)"))
    return out


def _pragmas(source: str) -> dict[int, str]:
    """``{line: reason}`` of the ``# abs-tol: reason`` comments of a source."""
    found = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT and (m := PRAGMA.search(tok.string)):
            found[tok.start[0]] = m.group(1).strip()
    return found


def scan_source(source: str, where: str, line_offset: int = 0) -> list[Finding]:
    """Findings of one Python source (a file, or one doctest example shifted by ``line_offset``)."""
    tree = ast.parse(source)
    pragmas = _pragmas(source)
    used: set[int] = set()
    findings = []
    for first, last, msg in sorted(_call_findings(tree)):
        lines = [n for n in range(first, last + 1) if n in pragmas]
        if not lines:
            findings.append(Finding(where, first + line_offset, msg))
            continue
        used.update(lines)
        if len(pragmas[lines[0]]) < MIN_REASON:
            findings.append(Finding(where, lines[0] + line_offset, "'# abs-tol:' needs a reason (why the "
                                    "tolerance is genuinely absolute)"))
    for n in sorted(set(pragmas) - used):
        findings.append(Finding(where, n + line_offset, "stale '# abs-tol:' comment: no comparison with an "
                                "absolute tolerance on this line; remove it"))
    return findings


def scan_doctests(source: str, where: str) -> list[Finding]:
    """Findings of the doctest examples in the docstrings of one module."""
    tree = ast.parse(source)
    parser = doctest.DocTestParser()
    findings = []
    for node in ast.walk(tree):
        if not isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        doc = ast.get_docstring(node, clean=False)
        if not doc or ">>>" not in doc:
            continue
        start = node.body[0].lineno  # the docstring's first line
        for ex in parser.get_examples(doc):
            try:
                findings += scan_source(ex.source, where, start + ex.lineno - 1)
            except SyntaxError:
                continue  # not Python (shell sessions in a docstring); doctest itself reports real errors
    return findings


def scanned_files() -> list[tuple[Path, bool]]:
    """``(path, doctests only)`` for every source the rule covers."""
    files = [(p, False) for d in ("tests", "tutorials", "benchmarks") for p in sorted((ROOT / d).rglob("*.py"))]
    files += [(p, False) for p in sorted(ROOT.glob("plugins/*/tests/**/*.py"))]
    files += [(p, True) for p in sorted((ROOT / "stochclosure").rglob("*.py"))]
    return [(p, doc) for p, doc in files if ".venv" not in p.parts and "build" not in p.parts]


def test_no_absolute_tolerance_in_float_comparisons():
    findings = []
    for path, doctests_only in scanned_files():
        source = path.read_text(encoding="utf-8")
        where = str(path.relative_to(ROOT))
        findings += scan_doctests(source, where) if doctests_only else scan_source(source, where)
    assert not findings, ("float comparisons with an absolute tolerance (see tests/test_tolerances.py):\n"
                          + "\n".join(map(str, findings)))


def test_the_scan_covers_the_test_sources():
    covered = {str(p.relative_to(ROOT)) for p, _ in scanned_files()}
    assert "tests/test_rollout.py" in covered and "stochclosure/testing/__init__.py" in covered
    assert any(p.startswith("plugins/") and "/tests/" in p for p in covered)
    assert any(p.startswith("tutorials/") for p in covered) and any(p.startswith("benchmarks/") for p in covered)


@pytest.mark.parametrize("line", [
    "torch.allclose(a, b, atol=1e-5)",
    "torch.allclose(a, b)",
    "a.allclose(b, rtol=1e-3)",
    "np.allclose(a, b)",
    "np.isclose(a, b, 1e-5, 1e-8)",
    "torch.testing.assert_close(a, b)",
    "torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)",
    "np.testing.assert_allclose(a, b, atol=TOL)",
    "np.testing.assert_allclose(a, b, 1e-7, 1e-6)",
    "assert x == pytest.approx(0.9, abs=0.1)",
    "math.isclose(a, b, abs_tol=1e-9)",
    "torch.testing.assert_close(a, b, rtol=0, atol=ATOL * 1)",
    "f(a, b, atol=tol)",
    "torch.allclose(a, b, atol=1e-5)  # abs-tol:",
])
def test_absolute_tolerances_are_found(line):
    src = f"from torch.testing import assert_close\n{line}\nassert_close(a, b)\n"
    found = scan_source(src, "x.py")
    assert [f.line for f in found][:1] == [2] and len(found) == 2, found  # the line, and the torch import


@pytest.mark.parametrize("line", [
    "assert_close(a, b, rtol=1e-6, what='x')",
    "torch.allclose(a, b, rtol=1e-6, atol=0)",
    "torch.allclose(a, b, rtol=0, atol=1e-10 * float(ref.abs().max()))",
    "torch.testing.assert_close(a, b, rtol=0, atol=0)",
    "np.testing.assert_allclose(a, b, rtol=1e-12)",
    "assert x == pytest.approx(0.9, rel=0.1)",
    "math.isclose(a, b, rel_tol=1e-9)",
    "torch.allclose(a, b, atol=1e-5)  # abs-tol: exactly zero by construction",
    "torch.allclose(\n    a, b,  # abs-tol: a probability in [0, 1]\n    atol=1e-3)",
])
def test_relative_tolerances_and_allowed_ones_pass(line):
    assert scan_source(f"from stochclosure.testing import assert_close\n{line}\n", "x.py") == []


def test_stale_allow_comments_and_doctests_are_found():
    found = scan_source("x = 1  # abs-tol: left behind after a fix\n", "x.py")
    assert len(found) == 1 and "stale" in found[0].what
    module = 'def f():\n    """Doc.\n\n    Example:\n        >>> import torch\n' \
             '        >>> torch.allclose(torch.ones(1), torch.ones(1), atol=1e-5)\n        True\n    """\n'
    found = scan_doctests(module, "m.py")
    assert [f.line for f in found] == [6], found
