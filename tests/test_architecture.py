"""The house rules that can be checked mechanically: a one-way import graph, small files."""
from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _import_graph():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("import_graph", ROOT / "tools" / "import_graph.py")
    mod = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


def test_no_import_cycle_between_parts() -> None:
    g = _import_graph()
    pedges = g.part_edges(g.module_edges())
    assert ("core", "prune") not in pedges  # sanity: the graph is read from the real sources
    assert ("prune", "core") in pedges
    assert g.cycles(pedges) == [], g.cycles(pedges)


def test_core_imports_no_family() -> None:
    g = _import_graph()
    out = {b for (a, b) in g.part_edges(g.module_edges()) if a == "core"}
    assert out <= {"_version"}, out


def test_the_cycle_finder_finds_cycles() -> None:
    g = _import_graph()
    assert g.cycles({("a", "b"): 1, ("b", "c"): 1, ("c", "a"): 1, ("c", "d"): 1}) == [["a", "b", "c"]]


def test_no_source_file_over_500_lines() -> None:
    long = {str(p.relative_to(ROOT)): n for p in (ROOT / "src").rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 500}
    assert not long, long
