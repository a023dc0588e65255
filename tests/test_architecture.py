"""The package's structure: no import circles, short functions, light checkpoint loading, optional torchsde.

(a) The graph of module-level imports among ``stochclosure`` modules (built with :mod:`ast`,
    imports inside functions and under ``if TYPE_CHECKING:`` left out) has no cycle: every
    strongly connected component is a single module.
(b) No function or method in ``stochclosure/`` is longer than :data:`MAX_FUNCTION_LINES` lines,
    except the entries of :data:`LONG_FUNCTIONS`, each with its reason.
(c) ``import stochclosure.checkpoint`` (and loading a model) imports neither the command line nor
    the trainer (nor distillation, nor run folders); the losses module is light and allowed.
(d) ``torchsde`` is imported only by the ``stochclosure-torchsde`` plugin, not by the core package.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "stochclosure"

MAX_FUNCTION_LINES = 80
"""Longest function allowed: lines from ``def`` to its last line, decorators and the docstring
excluded (documentation is not complexity)."""

LONG_FUNCTIONS: dict[str, str] = {}
"""``"path::qualname"`` -> why it may be longer than :data:`MAX_FUNCTION_LINES` (for now)."""


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _module_level_imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    """Imports executed when the module is imported: top level, inside ``try``/``if`` (not TYPE_CHECKING)."""
    found: list[ast.Import | ast.ImportFrom] = []
    stack: list[ast.stmt] = list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        elif isinstance(node, ast.If) and not _is_type_checking(node):
            stack.extend(node.body + node.orelse)
        elif isinstance(node, ast.Try):
            stack.extend(node.body + node.orelse + node.finalbody + [s for h in node.handlers for s in h.body])
    return found


def _resolve(module: str, is_package: bool, node: ast.Import | ast.ImportFrom, modules: set[str]) -> set[str]:
    """The ``stochclosure`` modules an import statement makes Python load (parent packages included)."""
    if isinstance(node, ast.Import):
        targets = [alias.name for alias in node.names]
    else:
        base = module if is_package else module.rpartition(".")[0]
        for _ in range(node.level - 1):
            base = base.rpartition(".")[0]
        prefix = (f"{base}.{node.module}" if node.module else base) if node.level else (node.module or "")
        targets = [prefix] + [f"{prefix}.{alias.name}" for alias in node.names]
    out: set[str] = set()
    for target in targets:
        parts = target.split(".")
        for i in range(1, len(parts) + 1):  # importing a.b.c loads a, a.b and a.b.c
            name = ".".join(parts[:i])
            if name in modules:
                out.add(name)
    return out


def import_graph() -> dict[str, set[str]]:
    """Module -> the ``stochclosure`` modules its module-level imports load."""
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    modules = set(files)
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        deps: set[str] = set()
        for node in _module_level_imports(tree):
            deps |= _resolve(name, path.name == "__init__.py", node, modules)
        deps.discard(name)
        # a module's own ancestors are loaded before it anyway: an edge to them is not a circle of its making
        graph[name] = {d for d in deps if not name.startswith(d + ".")}
    return graph


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components of ``graph`` (iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    comp.append(member)
                    if member == node:
                        break
                components.append(sorted(comp))
    return components


def test_strongly_connected_finds_a_planted_circle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert sorted(len(c) for c in strongly_connected(graph)) == [1, 1, 3]
    assert ["a", "b", "c"] in strongly_connected(graph)


def test_no_import_circle():
    circles = [c for c in strongly_connected(import_graph()) if len(c) > 1]
    assert not circles, "import circles among module-level imports: " + "; ".join(" <-> ".join(c) for c in circles)


def test_the_graph_sees_relative_imports():
    graph = import_graph()
    assert "stochclosure.checkpoint" in graph["stochclosure.training.trainer"]
    assert "stochclosure.training.trainer" in graph["stochclosure.cli.train"]


def _docstring_lines(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    first = fn.body[0] if fn.body else None
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
        return first.end_lineno - first.lineno + 1
    return 0


def _long_functions() -> dict[str, int]:
    found: dict[str, int] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        tree = ast.parse(path.read_text(), filename=str(path))
        todo: list[tuple[str, ast.AST]] = [("", tree)]
        while todo:
            prefix, node = todo.pop()
            for child in ast.iter_child_nodes(node):
                if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    qual = f"{prefix}{child.name}"
                    if not isinstance(child, ast.ClassDef):
                        length = child.end_lineno - child.lineno + 1 - _docstring_lines(child)
                        if length > MAX_FUNCTION_LINES:
                            found[f"{rel}::{qual}"] = length
                    todo.append((qual + ".", child))
    return found


def test_no_long_functions():
    long = _long_functions()
    new = {k: v for k, v in long.items() if k not in LONG_FUNCTIONS}
    assert not new, f"functions over {MAX_FUNCTION_LINES} lines (split them): {new}"


def test_long_function_allow_list_is_current():
    stale = sorted(set(LONG_FUNCTIONS) - set(_long_functions()))
    assert not stale, f"allow-list entries no longer over {MAX_FUNCTION_LINES} lines (remove them): {stale}"


def _modules_after(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys\nprint('\\n'.join(sorted(sys.modules)))"],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    return set(out.stdout.split())


@pytest.mark.parametrize("code", [
    "import stochclosure.checkpoint",
    "import stochclosure\nfrom stochclosure.pretrained import load_pretrained\nload_pretrained()",
    "import stochclosure\nfrom stochclosure.pretrained import pretrained_path\n"
    "stochclosure.load_model(pretrained_path())",
])
def test_loading_a_checkpoint_imports_neither_cli_nor_trainer(code):
    loaded = _modules_after(code)
    assert "stochclosure.checkpoint" in loaded
    bad = sorted(m for m in loaded if m.startswith(("stochclosure.cli", "stochclosure.training.trainer",
                                                    "stochclosure.training.distill", "stochclosure.runs")))
    assert not bad, f"{code!r} imported {bad}"


def test_torchsde_only_in_its_plugin():
    users = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            if any(n == "torchsde" or n.startswith("torchsde.") for n in names):
                users.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not users, f"torchsde imported by the core package at {users}; it belongs to stochclosure-torchsde"
    assert _modules_after("import stochclosure\nimport stochclosure.samplers") >= {"stochclosure.samplers"}
    assert "torchsde" not in _modules_after("import stochclosure\nimport stochclosure.samplers")


def test_core_does_not_require_torchsde():
    import configparser

    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    requires = [r.strip() for r in cfg["options"]["install_requires"].splitlines() if r.strip()]
    assert not [r for r in requires if r.startswith("torchsde")], requires
