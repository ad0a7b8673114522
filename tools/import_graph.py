"""Print slimkit's import graph between its top-level parts and fail on a cycle.

    python tools/import_graph.py            # edges "a -> b (n imports)" and the verdict
    python tools/import_graph.py --modules  # also every module-level edge behind them

Every ``import`` / ``from ... import`` statement counts, including those inside functions
(a lazy import is still a dependency). Parts are the subpackages and top-level modules of
``slimkit`` (``core``, ``prune``, ``quantize``, ``catalog``, ...); the root package
``slimkit/__init__.py`` is the composition root that wires the catalog and the zoo into core
and is itself imported by nothing in the package. Uses only the standard library.
"""
from __future__ import annotations

import ast
import sys
from collections import defaultdict
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def module_edges(src: Path = SRC) -> dict[tuple[str, str], int]:
    """(importer module, imported slimkit module) -> number of import statements."""
    modules = {_module_name(p): p for p in (src / "slimkit").rglob("*.py")}
    edges: dict[tuple[str, str], int] = defaultdict(int)
    for name, path in modules.items():
        is_pkg = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = name.split(".") if is_pkg else name.split(".")[:-1]
                    base = base[: len(base) - (node.level - 1)]
                    mod = ".".join(base + ([node.module] if node.module else []))
                else:
                    mod = node.module or ""
                # "from slimkit import zoo" imports the submodule slimkit.zoo
                targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in modules else mod for a in node.names]
            for t in targets:
                if t == "slimkit" or t.startswith("slimkit."):
                    while t not in modules and "." in t:
                        t = t.rsplit(".", 1)[0]
                    if t != name:
                        edges[(name, t)] += 1
    return dict(edges)


def part(module: str) -> str:
    bits = module.split(".")
    return bits[1] if len(bits) > 1 else "slimkit"


def part_edges(edges: dict[tuple[str, str], int]) -> dict[tuple[str, str], int]:
    out: dict[tuple[str, str], int] = defaultdict(int)
    for (a, b), n in edges.items():
        if part(a) != part(b):
            out[(part(a), part(b))] += n
    return dict(out)


def cycles(pedges: dict[tuple[str, str], int]) -> list[list[str]]:
    """Strongly connected components with more than one part (Tarjan)."""
    graph: dict[str, list[str]] = defaultdict(list)
    for a, b in pedges:
        graph[a].append(b)
        graph.setdefault(b, [])
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def main(argv: list[str]) -> int:
    edges = module_edges()
    pedges = part_edges(edges)
    for (a, b), n in sorted(pedges.items()):
        print(f"{a} -> {b} ({n} imports)")
        if "--modules" in argv:
            for (ma, mb), k in sorted(edges.items()):
                if part(ma) == a and part(mb) == b:
                    print(f"    {ma} -> {mb}" + (f" x{k}" if k > 1 else ""))
    found = cycles(pedges)
    for c in found:
        print("CYCLE between: " + ", ".join(c))
    print("no import cycle between slimkit's parts" if not found else f"{len(found)} cycle(s)")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
