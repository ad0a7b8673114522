"""Shared machinery of the per-model comparison benchmarks (``benchmarks/compare_*.py``).

A benchmark builds a list of :class:`Row` (one per toolkit / method variant, the first being
fp32 PyTorch), then:

- :func:`time_rows` times every row on the same inputs and threads, **interleaved**: each
  round runs every row once (a short untimed settle call, then ``iters`` timed calls), the
  order reversing every round; a row's speed-up is the median over rounds of
  ``fp32 round median / row round median`` (a ratio measured inside one round, so slow
  drifts of the shared machine cancel), with the 25-75 % spread of those per-round ratios;
- :func:`write_results` writes the Markdown table (``<name>.md``), the raw figures
  (``<name>.json``) and the Pareto plot (``<name>.png``: speed-up vs metric) under
  ``benchmarks/results/``.

Bytes are the size of the file the row is served from (ONNX, ``.pt2``, safetensors or a
``torch.save`` state dict). Params and MACs are counted on the PyTorch module of the same
architecture before quantization (:func:`slimkit.measure.profile`), at batch 1.
"""
from __future__ import annotations

import datetime
import io
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from slimkit.core.context import call_model
from slimkit.core.cpu import int8_isa
from slimkit.measure.latency import fixed_threads, quantile

RESULTS = Path(__file__).parent / "results"


@dataclass
class Row:
    """One compared variant. ``model`` is any callable taking the batch (an nn.Module, ``OrtModel``,
    ``Pt2eModel``); ``source`` is the float PyTorch module of the same architecture (for params/MACs)."""

    name: str
    model: Any
    source: torch.nn.Module | None = None
    file_bytes: int | None = None
    who: str = "baseline"  # "reference" | "baseline" | "slimkit"
    note: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    params: int | None = None
    macs: int | None = None
    latency: dict[int, dict[str, float]] = field(default_factory=dict)  # batch size -> figures


def state_dict_bytes(model: torch.nn.Module) -> int:
    """Bytes of ``torch.save(model.state_dict())`` (how a torch.ao / torchao model is stored)."""
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.getbuffer().nbytes


def count(rows: list[Row], example: Any) -> None:
    """Fill params and MACs from each row's float source module (batch-1 example)."""
    from slimkit import measure

    cache: dict[int, tuple[int, int]] = {}
    for r in rows:
        if r.source is None:
            continue
        key = id(r.source)
        if key not in cache:
            p = measure.profile(r.source, example)
            cache[key] = (p.params_total, p.macs)
        r.params, r.macs = cache[key]


def time_rows(rows: list[Row], inputs: Any, *, batch: int, rounds: int = 8, iters: int = 3, warmup: int = 2,
              settle: int = 1, pause_s: float = 0.05, inputs_for: Callable[[Row], Any] | None = None) -> None:
    """Interleaved latency of every row at one batch size; results go to ``row.latency[batch]``.

    ``rows[0]`` is the reference (fp32 PyTorch): every ratio is ``rows[0] / row`` per round.
    """
    xs = [inputs_for(r) if inputs_for else inputs for r in rows]
    per_round: list[list[float]] = [[] for _ in rows]
    with fixed_threads(None), torch.no_grad():
        for r, x in zip(rows, xs):
            if isinstance(r.model, torch.nn.Module):
                r.model.eval()
            for _ in range(warmup):
                call_model(r.model, x)
        for k in range(rounds):
            order = list(range(len(rows)))
            if k % 2:
                order.reverse()
            for i in order:
                if pause_s:
                    time.sleep(pause_s)  # lets the previous runtime's spinning threads go idle
                for _ in range(settle):
                    call_model(rows[i].model, xs[i])
                ts = []
                for _ in range(iters):
                    t0 = time.perf_counter_ns()
                    call_model(rows[i].model, xs[i])
                    ts.append((time.perf_counter_ns() - t0) / 1e6)
                per_round[i].append(statistics.median(ts))
    base = per_round[0]
    for r, meds in zip(rows, per_round):
        ratios = [b / m for b, m in zip(base, meds)]
        r.latency[batch] = {"ms": statistics.median(meds), "speedup": statistics.median(ratios),
                            "p25": quantile(ratios, 0.25), "p75": quantile(ratios, 0.75), "rounds_ms": meds}


def paired(slow: Row, fast: Row, batch: int) -> dict[str, float]:
    """``fast``'s speed-up over ``slow`` from the same rounds: median, 25 and 75 % of per-round ratios."""
    ratios = [a / b for a, b in zip(slow.latency[batch]["rounds_ms"], fast.latency[batch]["rounds_ms"])]
    return {"speedup": statistics.median(ratios), "p25": quantile(ratios, 0.25), "p75": quantile(ratios, 0.75)}


def band_floor(rows: list[Row], metric: str, point: float = 1.0) -> float:
    """The issue's "equal accuracy" floor: the reference (fp32) row's ``metric`` less one point
    (``point`` in the metric's own units: 1.0 for STS-B x100 or top-1 %, 0.01 for an accuracy in [0, 1])."""
    return next(r for r in rows if r.who == "reference").metrics[metric] - point


def verdicts(rows: list[Row], candidate: Row, metric: str, batches: list[int], *, higher_is_better: bool = True,
             tol: float = 0.0, floor: float | None = None) -> list[str]:
    """For every other row: does ``candidate`` beat it on latency (any batch) or size, at an equal or
    better ``metric``? One Markdown bullet per row, computed from the measured figures, saying also
    where it does not win (slower or tied batches, not smaller, lower metric).

    The one verdict rule of every comparison script:

    * **faster** at a batch only when at least three of four paired rounds are faster (the 25th
      percentile of the per-round ratios, :func:`paired`, is above 1). Two rows that run the same
      graph on the same runtime come out as a tie, not as a coin-flip win.
    * **smaller**: fewer bytes in the file each row is served from.
    * **equal or better metric**: ``candidate >= row - tol``, or, with ``floor``, the candidate at or
      above ``floor`` (the issue's "equal accuracy" band, e.g. within 1.0 point of fp32): every row
      scoring above the floor is then a tie on the metric, not a loss.
    """
    out = []
    mine = candidate.metrics.get(metric)
    for r in rows:
        if r is candidate:
            continue
        if mine is None or metric not in r.metrics:
            out.append(f"- {candidate.name} vs {r.name}: no comparison ({metric} not measured for both)")
            continue
        theirs = r.metrics[metric]
        as_good = mine >= theirs - tol if higher_is_better else mine <= theirs + tol
        in_band = floor is not None and (mine >= floor if higher_is_better else mine <= floor)
        ok_metric = as_good or in_band
        wins, losses = [], []
        for b in batches:
            if b in r.latency and b in candidate.latency:
                p = paired(r, candidate, b)
                spread = f"{p['speedup']:.2f}x, p25-p75 {p['p25']:.2f}-{p['p75']:.2f}"
                if p["p25"] > 1.0:
                    wins.append(f"faster at b={b} ({spread})")
                elif p["p75"] < 1.0:
                    losses.append(f"slower at b={b} ({spread})")
                else:
                    losses.append(f"tie at b={b} ({spread}: within round-to-round noise)")
        if r.file_bytes and candidate.file_bytes:
            smaller = candidate.file_bytes < r.file_bytes
            (wins if smaller else losses).append(
                f"{'smaller' if smaller else 'not smaller'} ({_fmt_bytes(candidate.file_bytes)} vs "
                f"{_fmt_bytes(r.file_bytes)} MB)")
        if as_good:
            how = "equal or better" + (f", tolerance {tol:g}" if tol else "")
        elif in_band:
            how = f"equal: both at or above the floor {floor:.4g}"
        else:
            how = "WORSE"
        score = f"{metric} {mine:.4g} vs {theirs:.4g} ({how})"
        if wins and ok_metric:
            verdict = "beats it: " + " and ".join(wins)
        elif wins:
            verdict = "does NOT beat it at equal metric: " + " and ".join(wins) + f", but {metric} is lower"
        else:
            verdict = "does NOT beat it: neither faster nor smaller"
        tail = f"; {'; '.join(losses)}" if losses else ""
        out.append(f"- {candidate.name} vs {r.name}: {verdict}; {score}{tail}")
    return out


def machine() -> str:
    """One line naming the machine and runtime versions the figures were measured on."""
    import onnxruntime

    return (f"{platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads, "
            f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}")


def _fmt_bytes(n: int | None) -> str:
    return "-" if n is None else f"{n / 1e6:.3g}"


def _fmt_speed(lat: dict[str, float] | None) -> str:
    if not lat:
        return "-"
    return f"{lat['speedup']:.2f}x ({lat['p25']:.2f}-{lat['p75']:.2f}), {lat['ms']:.1f} ms"


def table(rows: list[Row], metric_cols: list[tuple[str, str, str]], batches: list[int]) -> str:
    """Markdown table; ``metric_cols`` = (key in row.metrics, header, format)."""
    ref_bytes = rows[0].file_bytes
    head = ["variant", "by", "MB on disk", "x smaller", "params (M)", "MACs b=1 (M)"]
    head += [f"speed-up b={b} (p25-p75), median" for b in batches] + [h for _, h, _ in metric_cols] + ["notes"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        smaller = f"{ref_bytes / r.file_bytes:.1f}x" if ref_bytes and r.file_bytes else "-"
        cells = [r.name, r.who, _fmt_bytes(r.file_bytes), smaller,
                 "-" if r.params is None else f"{r.params / 1e6:.3g}",
                 "-" if r.macs is None else f"{r.macs / 1e6:.3g}"]
        cells += [_fmt_speed(r.latency.get(b)) for b in batches]
        cells += [format(r.metrics[k], f) if k in r.metrics else "-" for k, _, f in metric_cols]
        cells.append(r.note)
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def pareto_png(path: Path, rows: list[Row], metric: str, label: str, batch: int) -> bool:
    """Speed-up at ``batch`` (x) against the metric (y), one labelled point per row; the
    non-dominated rows joined by a line. Returns False when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    pts = [(r.latency[batch]["speedup"], r.metrics[metric], r) for r in rows
           if batch in r.latency and metric in r.metrics]
    fig, ax = plt.subplots(figsize=(7.5, 5))
    for x, y, r in pts:
        colour = {"slimkit": "tab:red", "reference": "black"}.get(r.who, "tab:blue")
        ax.scatter([x], [y], color=colour, s=40, zorder=3)
        ax.annotate(r.name, (x, y), fontsize=7, xytext=(4, 3), textcoords="offset points")
    front = sorted(((x, y) for x, y, _ in pts), key=lambda p: -p[0])
    best, line = float("-inf"), []
    for x, y in front:  # fastest first: keep points more accurate than every faster one
        if y > best:
            line.append((x, y))
            best = y
    if len(line) > 1:
        ax.plot([p[0] for p in line], [p[1] for p in line], "--", color="grey", zorder=1)
    ax.set_xlabel(f"speed-up over fp32 PyTorch at batch {batch} (higher is better)")
    ax.set_ylabel(label)
    ax.grid(alpha=0.3)
    ax.set_title("red: slimkit presets, blue: other toolkits, black: fp32", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def write_results(name: str, title: str, rows: list[Row], metric_cols: list[tuple[str, str, str]],
                  batches: list[int], *, pareto_metric: str, pareto_label: str, command: str,
                  notes: str = "") -> Path:
    """Write ``results/<name>.md`` (+ ``.json``, ``.png``) and return the Markdown path."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = datetime.date.today().isoformat()
    isa = int8_isa()
    md = [f"# {title}", "", f"`{command}` ({stamp}; {machine()}; CPU {isa.cpu_model}, int8 ISA {isa.name})", "",
          "Speed-ups are paired ratios to fp32 PyTorch measured in one interleaved run (median over rounds, "
          "25-75 % spread); MB is the file each row is served from.", "",
          table(rows, metric_cols, batches)]
    if notes:
        md += ["", notes]
    png = RESULTS / f"{name}.png"
    if pareto_png(png, rows, pareto_metric, pareto_label, batches[0]):
        md += ["", f"![Pareto plot]({png.name})"]
    path = RESULTS / f"{name}.md"
    path.write_text("\n".join(md) + "\n")
    raw = [{"name": r.name, "who": r.who, "file_bytes": r.file_bytes, "params": r.params, "macs": r.macs,
            "latency": r.latency, "metrics": r.metrics, "note": r.note} for r in rows]
    (RESULTS / f"{name}.json").write_text(json.dumps({"date": stamp, "machine": machine(), "command": command,
                                                      "int8_isa": isa.to_dict(), "rows": raw}, indent=2) + "\n")
    return path
