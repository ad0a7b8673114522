"""docs/results.md is generated from benchmarks/results/*.json and must match what the JSON gives."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "make_results.py"


@pytest.fixture(scope="module")
def gen():
    spec = importlib.util.spec_from_file_location("bench_make_results", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def test_docs_results_is_up_to_date(gen):
    text = gen.render()
    assert gen.DOC.read_text() == text, "docs/results.md is stale: run `python benchmarks/make_results.py`"
    assert gen.main(["--check"]) == 0


def test_every_result_json_is_rendered_or_listed(gen):
    text = gen.render()
    for p in sorted(gen.RESULTS.glob("*.json")):
        shown = p.name in gen.RENDERED or p.name.startswith("int8_paths")
        assert shown or f"`{p.name}`" in text, p.name


def test_every_table_names_its_cpu_and_date(gen):
    import re

    chunks = re.split(r"^#{2,3} ", gen.render(), flags=re.M)[1:]
    tables = [c for c in chunks if "\n|---" in c]
    assert len(tables) >= 5
    for chunk in tables:
        assert re.search(r"^\*`.*`; CPU: .*; measured .*\.\*$", chunk, flags=re.M), chunk.splitlines()[0]


def test_label_from_int8_isa(gen):
    doc = {"date": "2026-12-02", "int8_isa": {"name": "avx2", "cpu_model": "AMD EPYC 7B12", "source": "cpu"}}
    assert gen.label_line(doc, "cmd") == "*`cmd`; CPU: AMD EPYC 7B12, int8 ISA avx2; measured 2026-12-02.*"


def test_label_from_recorded_flags_and_forcing(gen):
    flags = {"cpu": {"model": "Intel Xeon", "isa": ["avx2", "avx512f", "avx512_vnni"]}}
    assert gen.machine_label(flags) == {"cpu": "Intel Xeon", "isa": "avx512_vnni", "date": None}
    forced = {"int8_isa": {"name": "avx2", "cpu_model": "X", "source": "FBGEMM_ENABLE_INSTRUCTIONS=AVX2"}}
    assert gen.machine_label(forced)["isa"] == "avx2 (FBGEMM_ENABLE_INSTRUCTIONS=AVX2)"


def test_missing_label_is_not_invented(gen):
    line = gen.label_line({"machine": "x86_64, 2 cores"}, "cmd")
    assert line == "*`cmd`; CPU: not recorded; measured (date not recorded).*"
    assert "CPU: AMD EPYC, int8 ISA not recorded" in gen.label_line({"cpu": "AMD EPYC"}, "cmd")


def test_check_fails_on_a_stale_page(gen, tmp_path, monkeypatch):
    stale = tmp_path / "results.md"
    stale.write_text(gen.render().replace("| fp32 PyTorch |", "| fp32 (edited by hand) |", 1))
    monkeypatch.setattr(gen, "DOC", stale)
    monkeypatch.setattr(gen, "ROOT", tmp_path)
    assert gen.main(["--check"]) == 1
    assert gen.main([]) == 0 and stale.read_text() == gen.render()


def test_generic_tables_render_with_their_label(gen, monkeypatch, tmp_path):
    import json

    doc = {"title": "Low-rank on X", "command": "python benchmarks/x.py", "date": "2026-12-02",
           "int8_isa": {"name": "avx2", "cpu_model": "AMD EPYC 7B12", "source": "cpu"},
           "tables": [{"caption": "ranks", "columns": ["layer", "rank", "ratio"], "rows": [["fc1", 16, 1.2346]]}],
           "notes": ["one seed"]}
    (tmp_path / "lowrank_minilm.json").write_text(json.dumps(doc))
    monkeypatch.setattr(gen, "RESULTS", tmp_path)
    text = "\n".join(gen.generic())
    assert "## Low-rank on X" in text
    assert "*`python benchmarks/x.py`; CPU: AMD EPYC 7B12, int8 ISA avx2; measured 2026-12-02.*" in text
    assert "| fc1 | 16 | 1.235 |" in text and "Note: one seed" in text
