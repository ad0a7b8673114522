"""Before/after tables for reports and the terminal (Markdown, readable as plain text)."""
from __future__ import annotations

from typing import Any


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n:.2f} GiB"  # pragma: no cover


def human_count(n: float) -> str:
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            return f"{n / div:.2f} {suffix}"
    return f"{n:.0f}"


def _ratio(before: float | None, after: float | None) -> str:
    if not before or not after:
        return ""
    return f"{before / after:.2f}x smaller" if after < before else f"{after / before:.2f}x larger" if after > before else "same"


_ROWS = [
    ("params", "params_total", human_count),
    ("non-zero params", "params_nonzero", human_count),
    ("bytes on disk (file)", "file_bytes", human_bytes),
    ("bytes (size account)", "bytes_on_disk", human_bytes),
    ("MACs (batch 1)", "macs", human_count),
    ("memory-access cost", "mac_cost_bytes", human_bytes),
]


_COUNT_KEYS = {"n", "n_train"}


def before_after_rows(report: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """``(what, before, after, change)`` rows from a compress report."""
    b, a = report["before"]["profile"], report["after"]["profile"]
    rows = []
    for label, key, fmt in _ROWS:
        if key in b and key in a:
            rows.append((label, fmt(b[key]), fmt(a[key]), _ratio(b[key], a[key])))
    lat = report.get("latency")
    if lat:
        served = lat.get("runtime", "eager") + (f": {lat['file']}" if lat.get("file") else "")
        rows.append((
            f"latency (batch {lat.get('batch', 1)}, median; after = {served})",
            f"{lat['median_a_ms']:.3f} ms", f"{lat['median_b_ms']:.3f} ms",
            f"{lat['speedup']:.2f}x faster (IQR {lat['speedup_p25']:.2f}-{lat['speedup_p75']:.2f}, same run)",
        ))
    bm, am = report["before"].get("metrics", {}), report["after"].get("metrics", {})
    for key in bm:
        if key in am and isinstance(bm[key], float) and key not in _COUNT_KEYS:
            rows.append((key, f"{bm[key]:.4f}", f"{am[key]:.4f}", f"{am[key] - bm[key]:+.4f}"))
    return rows


def table(rows: list[tuple[str, ...]], header: tuple[str, ...]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])


def render_markdown(report: dict[str, Any]) -> str:
    title = f"# slimkit report: {report['model']} with recipe {report['recipe'].get('name', '')}\n"
    parts = [title, table(before_after_rows(report), ("", "before", "after", "change")), ""]
    if report.get("steps"):
        parts.append("## Steps\n")
        rows = []
        for s in report["steps"]:
            p = s["profile"]
            metric = ", ".join(f"{k}={v:.4f}" for k, v in s.get("metrics", {}).items()
                               if isinstance(v, float) and k not in _COUNT_KEYS)
            rows.append((s["step"], human_count(p["params_nonzero"]), human_bytes(p["bytes_on_disk"]), human_count(p["macs"]), metric))
        parts.append(table(rows, ("step", "non-zero params", "bytes", "MACs", "metrics")))
    if report.get("int8_isa"):
        isa = report["int8_isa"]
        parts.append(f"\nint8 ISA: {isa['name']} (weight codes +-{isa['weight_qmax']}; {isa['source']}) on "
                     f"{isa['cpu_model']}; flags: {' '.join(isa['flags']) or '-'}.")
    parts.append(f"\nTotal time: {report.get('seconds', 0):.1f} s. Latency ratio: baseline (eager PyTorch) and "
                 "compressed model (on the runtime that serves it: the exported file when the folder ships one) "
                 "interleaved in rounds in the same process, same inputs and threads; median of per-round medians.\n")
    return "\n".join(parts)
