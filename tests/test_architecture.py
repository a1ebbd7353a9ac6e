"""The shape of the code: no import cycles, the core imports no study, no study imports another.

Checked two ways: an ast walk of the package (module-level imports form no
cycle; no import anywhere, nested ones included, crosses the core -> study or
study -> study line), and import-linter's contracts in pyproject.toml.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "scene_sim"


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports(path: Path, *, module_level: bool) -> set[str]:
    """The scene_sim modules ``path`` imports (TYPE_CHECKING blocks left out)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    found: set[str] = set()

    def visit(nodes: list[ast.stmt]) -> None:
        for node in nodes:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            if isinstance(node, ast.Import):
                found.update(a.name for a in node.names if a.name.startswith("scene_sim"))
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                if base.startswith("scene_sim"):
                    for a in node.names:  # `from pkg import module` imports the module
                        sub = f"{base}.{a.name}"
                        found.add(sub if (ROOT / Path(*sub.split("."))).with_suffix(".py").exists() else base)
            if not module_level:
                for field in ("body", "orelse", "finalbody", "handlers"):
                    visit([n for n in getattr(node, field, []) if isinstance(n, ast.stmt | ast.excepthandler)])  # type: ignore[arg-type]
            elif isinstance(node, ast.If | ast.Try):
                for field in ("body", "orelse", "finalbody"):
                    visit(getattr(node, field, []))

    visit(tree.body)
    found.discard(me)
    return found


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def study_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[2] if len(parts) > 2 and parts[1] == "studies" else None


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def dfs(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (cycle := dfs(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := dfs(node)):
            return cycle
    return None


def test_no_import_cycles_among_modules():
    mods = modules()
    graph = {name: {m for m in imports(path, module_level=True) if m in mods} for name, path in mods.items()}
    assert find_cycle(graph) is None, f"import cycle: {' -> '.join(find_cycle(graph) or [])}"


def test_the_core_never_imports_a_study():
    offenders = [
        f"{name} imports {m}"
        for name, path in modules().items()
        if study_of(name) is None and name != "scene_sim.studies"
        for m in imports(path, module_level=False)
        if study_of(m) is not None
    ]
    assert offenders == []


def test_no_study_imports_another():
    offenders = [
        f"{name} imports {m}"
        for name, path in modules().items()
        if (mine := study_of(name)) is not None
        for m in imports(path, module_level=False)
        if (theirs := study_of(m)) is not None and theirs != mine
    ]
    assert offenders == []


def test_the_checks_catch_what_they_forbid(tmp_path):
    # The walk itself must see a nested core -> study import and a cycle.
    core = tmp_path / "core.py"
    core.write_text("def f():\n    from scene_sim.studies.scene import model\n")
    global ROOT
    saved = ROOT
    try:
        ROOT = tmp_path
        assert "scene_sim.studies.scene" in imports(core, module_level=False)
        assert imports(core, module_level=True) == set()
    finally:
        ROOT = saved
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


@pytest.mark.skipif(shutil.which("lint-imports", path=str(Path(sys.executable).parent)) is None, reason="import-linter")
def test_import_linter_contracts_hold():
    exe = Path(sys.executable).parent / "lint-imports"
    done = subprocess.run([str(exe), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout
