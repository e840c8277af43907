"""No import cycles among ditflow's modules (issue 34): every module under ditflow/ is parsed with `ast`, and any
cycle fails the test, named import by import with the file and line of each.

The rule: A → B is an edge when any `import` or `from ... import` statement in A names ditflow module B, wherever
the statement stands: at the top, inside a function (a lazy import), or under `if TYPE_CHECKING:`. A lazy import
keeps start-up fast or a heavy dependency optional; it does not make a cycle acceptable, so it counts the same.
`from pkg import name` is an edge to the submodule `pkg.name` when there is one, else to `pkg`. The `__init__.py`
of the packages above B also runs when B is imported; that is Python's doing, not A's dependency, and is not an
edge. The command tables that import a subcommand's module by its name at run time (`importlib.import_module` in
`cli/main.py`, `training/cli.py`, `bench/__init__.py`) dispatch; they are not imports, and are not edges.
"""
from __future__ import annotations

import ast
from collections import deque
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def modules(root: Path, package: str) -> dict[str, Path]:
    """Dotted name → file, for every module of `package` under `root` (a package by its `__init__.py`)."""
    out = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def import_graph(root: Path, package: str) -> dict[str, dict[str, int]]:
    """Module → {module of `package` it imports: the line of the first such import}."""
    mods = modules(root, package)

    def module_of(name: str) -> str:  # "pkg.mod.Name" lives in "pkg.mod"
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name

    graph: dict[str, dict[str, int]] = {}
    for name, path in mods.items():
        edges = graph.setdefault(name, {})
        home = name if path.name == "__init__.py" else name.rpartition(".")[0]  # where `from . import` starts
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = home.split(".")[: len(home.split(".")) - (node.level - 1)]
                    base = ".".join(parts + ([node.module] if node.module else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
            else:
                continue
            for target in targets:
                if target == package or target.startswith(package + "."):
                    found = module_of(target)
                    if found and found != name:
                        edges.setdefault(found, node.lineno)
    return graph


def cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """One shortest cycle through each group of modules that import one another (Tarjan's strongly connected
    components, then a breadth-first search inside each), as the modules in import order."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = set()
            while True:
                w = stack.pop()
                group.add(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(group)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    found = []
    for group in groups:
        start = min(group)
        came: dict[str, str] = {}
        queue = deque([start])
        while queue:  # the shortest way back to `start`, staying inside the group
            v = queue.popleft()
            if start in graph[v]:
                path = [v]
                while path[-1] != start:
                    path.append(came[path[-1]])
                found.append(path[::-1])
                break
            for w in sorted(graph[v]):
                if w in group and w not in came and w != start:
                    came[w] = v
                    queue.append(w)
    return sorted(found)


def describe(cycle: list[str], graph: dict[str, dict[str, int]], root: Path) -> str:
    mods = modules(root, cycle[0].split(".")[0])
    steps = [f"{mods[a].relative_to(root)}:{graph[a][b]} imports {b}" for a, b in zip(cycle, cycle[1:] + cycle[:1])]
    return "import cycle: " + "; ".join(steps)


def test_ditflow_modules_import_one_another_in_no_cycle():
    graph = import_graph(ROOT, "ditflow")
    assert len(graph) > 50  # the whole package was read
    found = cycles(graph)
    assert not found, "\n".join(describe(c, graph, ROOT) for c in found)


def test_a_cycle_closed_by_a_lazy_import_is_found(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    for init in (pkg / "__init__.py", pkg / "sub" / "__init__.py"):
        init.write_text('"""a package"""\n')
    (pkg / "a.py").write_text("from pkg.sub import b\n")
    (pkg / "sub" / "b.py").write_text("import os\n\n\ndef f():\n    from pkg.a import g\n")
    (pkg / "c.py").write_text("import pkg.a\nfrom .sub.b import f\n")  # imports the cycle, is not in it
    (pkg / "sub" / "d.py").write_text("from . import b\nfrom ..c import x\n")
    graph = import_graph(tmp_path, "pkg")
    assert graph["pkg.c"] == {"pkg.a": 1, "pkg.sub.b": 2} and graph["pkg.sub.d"] == {"pkg.sub.b": 1, "pkg.c": 2}
    found = cycles(graph)
    assert found == [["pkg.a", "pkg.sub.b"]]
    assert describe(found[0], graph, tmp_path) == ("import cycle: pkg/a.py:1 imports pkg.sub.b; "
                                                   "pkg/sub/b.py:5 imports pkg.a")
