"""No import cycle among the modules of ``sal``, counting imports inside functions too: a
lazy import that closes a circle only hides the circle until someone moves it to the top."""

from __future__ import annotations

import ast
from pathlib import Path

SAL = Path(__file__).resolve().parents[1] / "sal"


def module_names(root: Path) -> dict[str, Path]:
    """Dotted name -> file of every module of the package at ``root`` (a package is its __init__)."""
    names = {}
    for path in root.rglob("*.py"):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules that ``name`` imports anywhere in its file (``from a import b``
    counts as importing module ``a.b`` when there is one, else ``a``)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        else:
            continue
        found |= {t for t in targets if t in modules and t != name}
    return found


def circles(graph: dict[str, set[str]]) -> list[set[str]]:
    """The groups of modules that import one another in a circle (strongly connected
    components of more than one module), each with a cycle through them found by find_cycle."""
    reach = {node: _reachable(graph, node) for node in graph}
    groups: list[set[str]] = []
    for node in sorted(graph):
        group = {other for other in reach[node] if node in reach[other]}
        if len(group) > 1 and group not in groups:
            groups.append(group)
    return groups


def _reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in graph.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a list of nodes (first == last), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def import_graph(root: Path) -> dict[str, set[str]]:
    modules = module_names(root)
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def test_sal_has_no_import_cycle():
    graph = import_graph(SAL)
    assert "sal.training.stream" in graph["sal.training.cache"]  # the graph sees real edges
    found = circles(graph)
    examples = [" -> ".join(find_cycle({m: graph[m] & group for m in group})) for group in found]
    assert not found, "import cycles: " + "; ".join(examples)


def test_the_check_finds_a_cycle_made_of_lazy_and_relative_imports(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "a.py").write_text("from . import b\n")
    (pkg / "sub" / "b.py").write_text("def f():\n    from pkg.c import g\n")
    (pkg / "c.py").write_text("import pkg.sub.a\n")
    graph = import_graph(pkg)
    cycle = find_cycle(graph)
    assert cycle is not None and set(cycle) == {"pkg.sub.a", "pkg.sub.b", "pkg.c"} and cycle[0] == cycle[-1]
    assert circles(graph) == [{"pkg.sub.a", "pkg.sub.b", "pkg.c"}]
    (pkg / "c.py").write_text("")
    assert find_cycle(import_graph(pkg)) is None and circles(import_graph(pkg)) == []
