"""The engine's imports run one way: base -> catalog -> code -> query -> replay -> jobs.

An AST scan of every module under engine/ (deferred imports inside functions included, as they
are cycles held apart by hand) resolves each import to an engine module and checks that no
module imports a later stage and that the modules form no cycle. docs/architecture.md shows
the same order.
"""

from __future__ import annotations

import ast
from pathlib import Path

ENGINE = Path(__file__).resolve().parent.parent / "engine"
# Each stage may import itself and the stages before it, never one after it.
STAGES = ("errors", "project", "catalog", "code", "query", "replay", "jobs")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ENGINE).with_suffix("").parts
    return ".".join(parts).removesuffix("__init__").rstrip(".")


def _imports_of(path: Path) -> set[str]:
    """Engine modules (dotted, relative to engine/) that `path` imports anywhere."""
    name = _module_name(path)
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    package = [p for p in package if p]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)] if node.level > 1 else package
                target = [*base, *(node.module.split(".") if node.module else [])]
            elif node.module and node.module.startswith("florsql.engine"):
                target = node.module.split(".")[2:]
            else:
                continue
            for alias in node.names:  # `from . import zygote` imports a module
                sub = ".".join([*target, alias.name])
                found.add(sub if (ENGINE / f"{sub.replace('.', '/')}.py").exists()
                          else ".".join(target))
        elif isinstance(node, ast.Import):
            found |= {".".join(a.name.split(".")[2:]) for a in node.names
                      if a.name.startswith("florsql.engine.")}
    return found - {name}


def _graph() -> dict[str, set[str]]:
    return {_module_name(p): _imports_of(p) for p in ENGINE.rglob("*.py")
            if "__pycache__" not in p.parts}


def _stage(module: str) -> int | None:
    head = module.split(".")[0]
    return STAGES.index(head) if head in STAGES else None


def test_no_engine_module_imports_a_later_stage() -> None:
    wrong = []
    for module, imports in _graph().items():
        if _stage(module) is None:  # the facade (engine/__init__.py) may import every stage
            continue
        for target in imports:
            if target == "" or (_stage(target) or 0) > _stage(module):
                wrong.append(f"{module} imports {target or 'the engine facade'}")
    assert not wrong, "imports against the stage order " + " -> ".join(STAGES) + ":\n" + \
        "\n".join(sorted(wrong))


def test_engine_modules_import_each_other_in_no_cycle() -> None:
    graph = _graph()
    cycles = [scc for scc in _strongly_connected(graph) if len(scc) > 1]
    assert not cycles, f"import cycles: {cycles}"


def test_the_engine_never_imports_a_surface() -> None:
    surfaces = []
    for path in ENGINE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            module = node.module if isinstance(node, ast.ImportFrom) else None
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [module]
            for name in names:
                if name and name.startswith("florsql") and not name.startswith("florsql.engine"):
                    surfaces.append(f"{path.relative_to(ENGINE)}: {name}")
    assert not surfaces, surfaces


def test_the_cycle_check_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert [sorted(s) for s in _strongly_connected(graph) if len(s) > 1] == [["a", "b", "c"]]


def _strongly_connected(graph: dict[str, set[str]]) -> list[set[str]]:
    """Tarjan's algorithm (iterative enough for a few dozen modules)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in graph:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            scc = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                scc.add(w)
                if w == v:
                    break
            out.append(scc)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out
