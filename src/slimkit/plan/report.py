"""``report.md`` of a plan: budgets, predicted next to measured, the back-off rounds, the LUT check."""
from __future__ import annotations

from typing import Any


def _f(x: Any, fmt: str = ".2f") -> str:
    return "-" if x is None else format(x, fmt)


def render_markdown(r: dict[str, Any]) -> str:
    """Human-readable summary of :func:`slimkit.plan.plan`'s report dict."""
    b, p, m, base, isa = r["budgets"], r["predicted"], r["measured"], r["base"], r["int8_isa"]
    lines = [f"# slimkit plan: {r['model']} on {r['task']} ({r['runtime']}, batch {r['batch_size']})", "",
             f"Budgets: {', '.join(f'{k}={v}' for k, v in b.items() if v is not None)}; solver {r['solver']} "
             f"(minimise {r['objective']}); {r['units']} units, {r['actions']} candidate actions; "
             f"{r['sensitivity_evaluations']} dev evaluations this run (the rest from the cache)"
             + (f", trials on {r['trials_on']}." if r.get("trials_on") else "."), "",
             "| | predicted | measured |", "|---|---|---|",
             f"| speed-up vs dense ({r['runtime']}) | {_f(p['speedup'])}x | {_f(m['speedup'])}x |",
             f"| {r['metric']} drop, dev (points) | {_f(p['drop'])} | {_f(m['dev_drop'])} |",
             f"| {r['metric']} drop, test (points) | - | {_f(m['test_drop'])} |",
             f"| size (bytes) | {_f(p['size_bytes'], '.0f')} | {_f(m['size_bytes'], '.0f')} |", "",
             f"Dense model: dev {_f(base['dev'])}, test {_f(base['test'])}, {base['size_bytes']} bytes, "
             f"{_f(base['latency_ms'], '.3f')} ms.", ""]
    chk = r.get("lut_check")
    if chk:
        lines += [f"LUT check: predicted {_f(chk['predicted_ms'], '.3f')} ms vs measured "
                  f"{_f(chk['measured_ms'], '.3f')} ms (relative error {100 * chk['relative_error']:+.1f} %).", ""]
    lines += ["## Rounds", ""]
    for rd in r["rounds"]:
        lines.append(f"- round {rd['round']}: {len(rd['actions'])} action(s), dev drop {_f(rd['dev_drop'])}"
                     + (f", reverted {rd['reverted']}" if rd.get("reverted") else "")
                     + (f" ({rd['note']})" if rd.get("note") else ""))
    lines += ["", "## Final plan", ""]
    lines += [f"- {c['unit']}: {c['action']}" for c in r["final"]] or ["- (none: the dense model)"]
    if r.get("untimed"):
        lines += ["", f"Left out as not runnable on {r['runtime']}: " + ", ".join(r["untimed"]) + "."]
    if r["not_paying"]:
        lines += ["", f"Left out as not paying (no measured latency gain): {len(r['not_paying'])} action(s)."]
    lines += ["", "Budgets met (measured): " + ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in r["meets"].items()),
              "", f"{r['seconds']} s; {isa.get('cpu_model', '')} (int8 ISA {isa.get('name', '')}), {r['date']}"]
    return "\n".join(lines) + "\n"


__all__ = ["render_markdown"]
