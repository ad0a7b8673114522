"""Write ``docs/results.md`` from the JSON files under ``benchmarks/results/``.

Usage::

    python benchmarks/make_results.py           # (or `make results`) rewrite docs/results.md
    python benchmarks/make_results.py --check   # exit 1 when docs/results.md is not what the JSON gives

The page is generated, never edited by hand, so a figure in it is always one a benchmark wrote.
Every table is labelled with the CPU (model and the int8 ISA its kernels used) and the date the
file records; a file that does not record them says "not recorded" rather than guessing, and the
script names those files on stderr. Speed-ups are only comparable between tables measured on the
same CPU: int8 kernels differ between CPUs with and without VNNI (docs/quantization.md).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
DOC = ROOT / "docs" / "results.md"
VNNI_FLAGS = ("amx_int8", "avx512_vnni", "avx_vnni")
NOT_RECORDED = "not recorded"


def _load(name: str) -> dict[str, Any] | None:
    p = RESULTS / name
    return json.loads(p.read_text()) if p.is_file() else None


def _isa_from_flags(flags: list[str] | str) -> str | None:
    """The int8 dot product named by a recorded flag list (or a string listing flags)."""
    have = set(flags.replace(",", " ").replace("(", " ").replace(")", " ").replace(";", " ").split()
               if isinstance(flags, str) else flags)
    for f in VNNI_FLAGS:
        if f in have:
            return f
    return "avx2" if "avx2" in have else None


def machine_label(doc: dict[str, Any]) -> dict[str, str | None]:
    """CPU model, int8 ISA and date as a result file records them (None where it does not).

    Knows the shapes the benchmarks write: ``int8_isa`` (``slimkit.core.cpu.Int8Isa.to_dict``),
    ``cpu`` as a dict (``model`` + ``isa`` flags) or a string, and ``meta`` (support matrix).
    """
    meta = doc.get("meta") if isinstance(doc.get("meta"), dict) else {}
    isa = doc.get("int8_isa") if isinstance(doc.get("int8_isa"), dict) else {}
    cpu = doc.get("cpu", meta.get("cpu"))
    model = isa.get("cpu_model") or (cpu.get("model") if isinstance(cpu, dict) else cpu) or None
    name = isa.get("name") or meta.get("int8_isa")
    if not name and isinstance(cpu, dict) and cpu.get("isa"):
        name = _isa_from_flags(cpu["isa"])
    if not name and isinstance(cpu, str) and "(" in cpu:
        name = _isa_from_flags(cpu[cpu.index("("):])
    if name and isa.get("source") not in (None, "cpu"):
        name = f"{name} ({isa['source']})"
    date = doc.get("date") or meta.get("date")
    return {"cpu": model, "isa": name, "date": date}


def label_line(doc: dict[str, Any], command: str) -> str:
    lab = machine_label(doc)
    if lab["cpu"] is None and lab["isa"] is None:
        where = f"CPU: {NOT_RECORDED}"
    else:
        where = f"CPU: {lab['cpu'] or NOT_RECORDED}, int8 ISA {lab['isa'] or NOT_RECORDED}"
    return f"*`{command}`; {where}; measured {lab['date'] or f'(date {NOT_RECORDED})'}.*"


def _x(v: float) -> str:
    return f"{v:.2f}x"


def _spread(s: dict[str, Any] | None, key: str = "speedup") -> str:
    if not s:
        return "n/a"
    return f"{s[key]:.2f}x ({s[key + '_p25']:.2f}-{s[key + '_p75']:.2f})"


COMPARE = (("compare_minilm.json", "zoo:minilm-l6", [("stsb", "STS-B x100", ".2f"), ("sst2", "SST-2 probe", ".3f")]),
           ("compare_efficientnet.json", "zoo:efficientnet-lite0",
            [("accuracy", "top-1 %", ".1f"), ("agreement", "agreement %", ".1f")]),
           ("compare_digits.json", "zoo:digits-cnn", [("accuracy", "accuracy", ".4f")]))


def compare() -> list[str]:
    """The comparison suite: one table per model (slimkit rows in bold)."""
    out = ["## slimkit presets against other toolkits", "",
           "`bash benchmarks/run_all.sh`. Each table is one interleaved run (every round times every row on the "
           "same inputs and threads); a speed-up is the median over rounds of the fp32 round time divided by the "
           "row's. MB is the file the row is served from. Full tables, per-row verdicts and Pareto plots: "
           "`benchmarks/results/compare_*.md`.", ""]
    for name, model, metrics in COMPARE:
        rep = _load(name)
        if rep is None:
            continue
        out += [f"### {model}", "", label_line(rep, rep["command"]), "", f"Runtime: {rep['machine']}.", "",
                "| variant | MB | x smaller | speed-up b=1 | speed-up b=32 | " + " | ".join(h for _, h, _ in metrics) + " |",
                "|---|---|---|---|---|" + "---|" * len(metrics)]
        ref = rep["rows"][0]["file_bytes"]
        for r in rep["rows"]:
            lat = {int(k): v for k, v in r["latency"].items()}
            sp = [_x(lat[b]["speedup"]) if b in lat else "-" for b in (1, 32)]
            mb = f"{r['file_bytes'] / 1e6:.3g}" if r["file_bytes"] else "-"
            small = f"{ref / r['file_bytes']:.1f}x" if r["file_bytes"] and ref else "-"
            ms = [format(r["metrics"][k], f) if k in r["metrics"] else "-" for k, _, f in metrics]
            label = f"**{r['name']}**" if r["who"] == "slimkit" else r["name"]
            out.append(f"| {label} | {mb} | {small} | {sp[0]} | {sp[1]} | " + " | ".join(ms) + " |")
        out.append("")
    return out


def _metric(rep: dict[str, Any]) -> tuple[str, float, float]:
    b, a = rep["before"].get("metrics", {}), rep["after"].get("metrics", {})
    for key in ("spearman_x100", "agreement", "accuracy"):
        if key in a:
            scale = 100.0 if key != "spearman_x100" else 1.0
            return key.replace("_x100", " x100"), b[key] * scale, a[key] * scale
    return "", 0.0, 0.0


PRUNING = (("pruning-minilm.json", "pruning-minilm-bench1.json", "pruning-minilm-bench32.json"),
           ("pruning-effnet.json", "pruning-effnet-bench1.json", None))


def pruning() -> list[str]:
    """Structured pruning without recovery training (``slimkit compress`` + ``slimkit bench`` JSON)."""
    out = ["## Structured pruning, no recovery training", "",
           "`bash benchmarks/pruning.sh` (`slimkit compress ... --json` and `slimkit bench ... --json`). "
           "Speed-ups are paired ratios against the dense model (median, 25-75 % spread).", ""]
    for rep_name, b1, b32 in PRUNING:
        rep = _load(rep_name)
        if rep is None:
            continue
        s1, s32 = _load(b1), _load(b32) if b32 else None
        pb, pa = rep["before"]["profile"], rep["after"]["profile"]
        key, mb, ma = _metric(rep)
        out += [f"### {rep['model']}, recipe {rep['recipe']['name']}", "",
                label_line(rep, f"slimkit compress --model {rep['model']} --recipe {rep['recipe']['name']}"), "",
                "| params | file | MACs (b=1) | speed-up b=1 | speed-up b=32 | metric | before | after |",
                "|---|---|---|---|---|---|---|---|",
                f"| {pb['params_total'] / 1e6:.2f} M -> {pa['params_total'] / 1e6:.2f} M "
                f"| {pb['file_bytes'] / 2**20:.2f} -> {pa['file_bytes'] / 2**20:.2f} MiB "
                f"| {pb['macs'] / 1e6:.0f} M -> {pa['macs'] / 1e6:.0f} M | {_spread(s1)} | {_spread(s32)} "
                f"| {key} | {mb:.2f} | {ma:.2f} |", ""]
    return out


def bilstm() -> list[str]:
    rep = _load("bilstm.json")
    if rep is None:
        return []
    acc = rep["accuracy"]
    variants = [k for k, v in acc.items() if isinstance(v, dict)]
    out = ["## BiLSTM SST-2 classifier", "", label_line(rep, f"python benchmarks/bilstm.py ({rep['recipe']})"), "",
           f"Accuracy on {acc['split']} ({acc['n']} sentences); fp32 {acc['fp32']:.4f}. Hidden units "
           f"{rep['hidden_units']['fp32']} -> {rep['hidden_units']['fast']}; file {rep['file_bytes']['dense']:,} -> "
           f"{rep['file_bytes']['fast']:,} bytes. Batch-1 speed-ups over fp32 eager, paired (median, 25-75 %).", ""]
    for threads, table in rep["batch1_latency"].items():
        inputs = list(next(iter(table.values())))
        out += [f"**{threads}**", "", "| variant | accuracy | agreement | " + " | ".join(inputs) + " |",
                "|---|---|---|" + "---|" * len(inputs)]
        for v in variants:
            cells = [_spread(table.get(v, {}).get(i)) for i in inputs]
            out.append(f"| {v} | {acc[v]['accuracy']:.4f} | {acc[v]['agreement']:.4f} | " + " | ".join(cells) + " |")
        out.append("")
    return out


def int8_paths() -> list[str]:
    names = sorted(p.name for p in RESULTS.glob("int8_paths*.json"))
    if not names:
        return []
    out = ["## MiniLM-L6 int8 paths on STS-B", "",
           "`python benchmarks/int8_paths.py`: every int8 path with the settings slimkit picks for the CPU "
           "(`slimkit.core.cpu`); STS-B test Spearman x100 against fp32.", ""]
    for name in names:
        rep = _load(name)
        assert rep is not None
        forced = ", ".join(f"{k}={v}" for k, v in rep.get("forcing", {}).items()) or "none"
        lin = rep["single_int8_linear"]
        out += [f"### {name}", "", label_line(rep, "python benchmarks/int8_paths.py"), "",
                f"Kernels forced: {forced}. fp32 {rep['fp32_spearman_x100']:.2f}; weight codes up to "
                f"{lin['weight_qmax']}; one int8 Linear's median relative error {lin['median_rel_err_vs_float']:.4f}.",
                "", "| path | STS-B x100 | delta | embedding cosine | within 0.5 point |", "|---|---|---|---|---|"]
        for path, r in rep["paths"].items():
            out.append(f"| {path} | {r['spearman_x100']:.2f} | {r['delta_points']:+.2f} | "
                       f"{r['embedding_cosine']:.4f} | {'yes' if r['within_half_point'] else 'NO'} |")
        if rep.get("note"):
            out += ["", f"Note: {rep['note']}"]
        out.append("")
    return out


def support() -> list[str]:
    rep = _load("support_matrix.json")
    if rep is None:
        return []
    counts = ", ".join(f"{v} {k}" for k, v in rep["meta"]["counts"].items())
    return ["## Support matrix", "", label_line(rep, "python benchmarks/support_matrix.py"), "",
            f"{rep['meta']['cells']} architecture x method cells: {counts}. The table: [support.md](support.md).", ""]


SECTIONS = (compare, pruning, bilstm, int8_paths, support)
RENDERED = {n for n, _, _ in COMPARE} | {n for t in PRUNING for n in t if n} | {"bilstm.json", "support_matrix.json"}


def render() -> str:
    """The whole page (pure: reads the JSON files, writes nothing)."""
    out = ["# Results", "",
           "<!-- Generated by `python benchmarks/make_results.py` (`make results`) from benchmarks/results/*.json. "
           "Do not edit: change the benchmark, re-run it, regenerate. -->", "",
           "Every figure below is read from a JSON file a benchmark script wrote. Each table names the CPU "
           "(model and the int8 instruction set its kernels used) and the date the file records; "
           f"\"{NOT_RECORDED}\" means the file predates that field. Latency ratios measured on one CPU do not "
           "carry over to another.", ""]
    for section in SECTIONS:
        out += section()
    other = sorted(p.name for p in RESULTS.iterdir() if p.suffix in (".md", ".txt") and p.name != "README.md")
    leftover = sorted(p.name for p in RESULTS.glob("*.json") if p.name not in RENDERED and
                      not p.name.startswith("int8_paths"))
    if other or leftover:
        out += ["## Other result files", "",
                "Written by single-topic scripts as text, not rendered here (see each file for its command):", ""]
        out += [f"- [`{n}`](../benchmarks/results/{n})" for n in [*other, *leftover]]
        out.append("")
    return "\n".join(out).rstrip("\n") + "\n"


def unlabelled() -> list[str]:
    """Result JSON files that do not record the CPU model, int8 ISA or date."""
    out = []
    for p in sorted(RESULTS.glob("*.json")):
        lab = machine_label(json.loads(p.read_text()))
        missing = [k for k, v in lab.items() if v is None]
        if missing:
            out.append(f"{p.name} does not record: {', '.join(missing)}")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if docs/results.md is out of date; write nothing")
    args = ap.parse_args(argv)
    text = render()
    for line in unlabelled():
        print(f"make_results: {line}", file=sys.stderr)
    if args.check:
        if not DOC.is_file() or DOC.read_text() != text:
            print(f"{DOC.relative_to(ROOT)} is out of date: run `python benchmarks/make_results.py`", file=sys.stderr)
            return 1
        return 0
    DOC.write_text(text)
    print(f"wrote {DOC.relative_to(ROOT)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
