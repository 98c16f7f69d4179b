"""The shape of the package: typed, small modules, a curated namespace, no import cycles.

These are the rules of docs/architecture.md, checked on the source so that they cannot erode.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import gnflow

PACKAGE = Path(gnflow.__file__).resolve().parent
ROOT = PACKAGE.parent
MAX_MODULE_LINES = 600
MAX_PUBLIC_NAMES = 30


def _modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def test_every_module_is_under_the_size_limit() -> None:
    sizes = {name: len(path.read_text().splitlines()) for name, path in _modules().items()}
    too_long = {name: n for name, n in sizes.items() if n > MAX_MODULE_LINES}
    assert not too_long, f"modules over {MAX_MODULE_LINES} lines: {too_long}"


def test_the_top_level_namespace_is_curated() -> None:
    assert len(gnflow.__all__) <= MAX_PUBLIC_NAMES, sorted(gnflow.__all__)
    assert len(set(gnflow.__all__)) == len(gnflow.__all__)
    missing = [name for name in gnflow.__all__ if not hasattr(gnflow, name)]
    assert not missing, missing
    # the verbs that docs/architecture.md lists and the README examples use stay at the top level
    for name in ("run", "simulate", "load_config", "integrate", "observe", "read_dataset", "write_dataset"):
        assert name in gnflow.__all__, name


def _imports(name: str, path: Path) -> set[str]:
    """gnflow modules that ``name`` imports anywhere (module level or inside functions), except
    under ``if TYPE_CHECKING``: an import deferred into a function to dodge a cycle is still one."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(n) for n in ast.walk(node))
    found: set[str] = set()
    for imp in ast.walk(tree):
        if id(imp) in skipped or not isinstance(imp, (ast.Import, ast.ImportFrom)):
            continue
        if isinstance(imp, ast.Import):
            found.update(alias.name for alias in imp.names if alias.name.startswith("gnflow"))
            continue
        if imp.level:
            base = package.split(".")
            base = base[: len(base) - imp.level + 1]
            module = ".".join([*base, imp.module] if imp.module else base)
        else:
            module = imp.module or ""
        if module.startswith("gnflow"):
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in imp.names)
    return found


def test_there_are_no_import_cycles_between_modules() -> None:
    modules = _modules()
    graph = {
        name: {m for m in _imports(name, path) if m in modules and m != name and m != "gnflow"}
        for name, path in modules.items()
        if name != "gnflow"
    }
    # a package's __init__ re-exporting its own private modules is not a cycle
    for name in graph:
        graph[name] = {m for m in graph[name] if not (m.startswith(f"{name}.") or name.startswith(f"{m}."))}
    state: dict[str, int] = {}
    cycle: list[str] = []

    def visit(node: str, path: list[str]) -> bool:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycle.extend([*path[path.index(nxt) :], nxt] if nxt in path else [node, nxt])
                return True
            if state.get(nxt) is None and visit(nxt, [*path, nxt]):
                return True
        state[node] = 2
        return False

    for start in sorted(graph):
        if state.get(start) is None and visit(start, [start]):
            break
    assert not cycle, " -> ".join(cycle)


def test_private_torchdiffeq_api_is_used_in_one_adapter_module() -> None:
    users = [name for name, path in _modules().items() if "torchdiffeq._impl" in path.read_text()]
    assert len(users) <= 1, users


def test_run_status_is_never_parsed_from_text() -> None:
    offenders = [
        name
        for name, path in _modules().items()
        if 'startswith("failed' in path.read_text() and name != "gnflow.status"
    ]
    assert not offenders, offenders


@pytest.mark.slow
def test_mypy_reports_no_errors() -> None:
    mypy = shutil.which("mypy", path=str(Path(sys.executable).parent))
    if mypy is None:
        pytest.fail("mypy is not installed: it is part of the test extra (pip install -e '.[test]')")
    done = subprocess.run(
        [mypy, "--no-incremental", "--no-error-summary", "gnflow"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]


def test_former_top_level_names_still_resolve_to_their_module_objects() -> None:
    import importlib

    for name, module in gnflow.COMPATIBILITY_ALIASES.items():
        assert name not in gnflow.__all__, name
        assert getattr(gnflow, name) is getattr(importlib.import_module(module), name), name
    with pytest.raises(AttributeError, match="no attribute 'no_such_name'"):
        _ = gnflow.no_such_name
