"""``slimkit`` command line: list-methods, profile, compress, eval, bench, export, plan, demo.

User mistakes (bad recipe, unknown spec or task, missing data, corrupt artifact, bad
option values) exit with status 2 and a one-line reason on stderr; ``--debug`` shows the
traceback. ``--json`` prints exactly one JSON document on stdout; progress goes to stderr.
SIGTERM is handled like Ctrl-C (exit 143 instead of 130), so ``compress`` removes its
temporary folder beside ``--out`` either way.

Commands that restore a saved folder (eval, bench, export) never import code the folder
names (a ``py:`` model spec) or unpickle a ``.pt2`` program unless given ``--trust-code``.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any, NoReturn, Sequence

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


class _Parser(argparse.ArgumentParser):
    """argparse with the CLI's error contract: one line on stderr, exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def at_least(low: int) -> Any:
    """An argparse type: an integer >= ``low`` (``--batch-size 0`` is a mistake, not a request)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {value}")
        return value
    parse.__name__ = f"integer >= {low}"
    return parse


_TRUST_HELP = ("allow the saved folder to run code: import the module of a py:module:factory model spec, "
               "unpickle a .pt2 program (only for folders you trust)")
_RUNTIME_HELP = ("what to time: auto (default) = what the folder ships (model.pt2 or model.onnx when an export "
                 "step wrote one, else the restored PyTorch model), or eager / onnx / pt2e")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="slimkit", description="Make trained PyTorch models smaller and faster, measured honestly.")
    p.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("list-methods", help="every registered method with its options, and the presets")
    s.add_argument("--json", action="store_true")

    s = sub.add_parser("profile", help="params, bytes, MACs, memory-access cost, per-layer table")
    s.add_argument("--model", required=True, help="model spec: zoo:NAME, hf:PATH, py:module:factory, or a saved folder")
    s.add_argument("--task", help="also evaluate on this task")
    s.add_argument("--batch-size", type=at_least(1), default=1)
    s.add_argument("--seq-len", type=at_least(2), default=128)
    s.add_argument("--json", action="store_true")

    s = sub.add_parser("compress", help="run a recipe and write the compressed model with a report")
    s.add_argument("--model", required=True)
    s.add_argument("--recipe", required=True, help="a YAML file or a preset name (slimkit list-methods lists them)")
    s.add_argument("--out", required=True, type=Path)
    s.add_argument("--task")
    s.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--runtime", choices=["auto", "eager", "onnx", "pt2e"], default="auto", help=_RUNTIME_HELP)
    s.add_argument("--json", action="store_true")

    s = sub.add_parser("eval", help="evaluate a saved model on a task")
    s.add_argument("dir", type=Path)
    s.add_argument("--task", required=True)
    s.add_argument("--trust-code", action="store_true", help=_TRUST_HELP)
    s.add_argument("--json", action="store_true")

    s = sub.add_parser("bench", help="paired latency ratio of a saved model against its dense origin")
    s.add_argument("dir", type=Path)
    s.add_argument("--against", help="baseline model spec (default: the model the folder was made from)")
    s.add_argument("--batch-size", type=at_least(1), default=1)
    s.add_argument("--seq-len", type=at_least(2), default=128)
    s.add_argument("--rounds", type=at_least(1), default=10)
    s.add_argument("--threads", type=at_least(1))
    s.add_argument("--runtime", choices=["auto", "eager", "onnx", "pt2e"], default="auto", help=_RUNTIME_HELP)
    s.add_argument("--trust-code", action="store_true", help=_TRUST_HELP)
    s.add_argument("--json", action="store_true")

    s = sub.add_parser("export", help="write a saved model as ONNX (float or int8 for ONNX Runtime), as a "
                                      "PT2E int8 program (PyTorch x86 Inductor) or as a Hugging Face folder "
                                      "(from_pretrained), and check it")
    s.add_argument("dir", type=Path)
    s.add_argument("--format", choices=["onnx", "pt2e", "openvino", "hf"], default="onnx",
                   help="openvino: model.xml + model.bin, NNCF int8 (--int8 static, the default; needs --task) "
                        "or fp32 (--int8 none); hf: config + safetensors (+ tokenizer) for transformers' "
                        "from_pretrained; refused, "
                        "naming what, when the config cannot express the pruned model (docs/export.md)")
    s.add_argument("--int8", choices=["none", "dynamic", "static"],
                   help="ONNX: none (default, float) / dynamic / static; pt2e: static (default) or dynamic "
                        "(a PT2E program is always int8); openvino: static (default) or none; static needs --task")
    s.add_argument("--exclude", nargs="*", default=[], help="ONNX node-name patterns kept in float")
    s.add_argument("--task", help="calibration data for --int8 static")
    s.add_argument("--out", type=Path, help="file to write (default DIR/model.onnx, DIR/model.pt2 or "
                                             "DIR/model.xml; hf: the folder DIR/hf)")
    s.add_argument("--trust-code", action="store_true", help=_TRUST_HELP)
    s.add_argument("--json", action="store_true")

    from .plan import add_parser as add_plan_parser

    add_plan_parser(sub, at_least)

    s = sub.add_parser("demo", help="compress the embedded default models and print before/after tables")
    s.add_argument("--skip-minilm", action="store_true")
    s.add_argument("--json", action="store_true")
    return p


def _emit(doc: Any, as_json: bool, text: str) -> None:
    if as_json:
        sys.stdout.write(json.dumps(doc, indent=2, default=str) + "\n")
    else:
        sys.stdout.write(text.rstrip() + "\n")


def _list_methods(args: argparse.Namespace) -> int:
    from ..core import config_class, kinds, presets

    methods = []
    for kind in kinds():
        cls = config_class(kind)
        methods.append({"kind": kind, "stage": cls.stage, "config": cls.__name__,
                        "doc": (cls.__doc__ or "").strip().split("\n")[0], "fields": cls.describe()})
    lines = []
    for m in methods:
        lines.append(f"{m['kind']}  [{m['stage']}]  {m['doc']}")
        for f in m["fields"]:
            lines.append(f"    {f['name']}: {f['type']} = {f['default']!r}")
    lines.append("\npresets: " + ", ".join(presets()))
    _emit({"methods": methods, "presets": presets()}, args.json, "\n".join(lines))
    return 0


def _profile(args: argparse.Namespace) -> int:
    from .. import measure, zoo

    zm = zoo.load(args.model)
    task = zoo.get_task(args.task) if args.task else None
    inputs = zm.example_inputs(args.batch_size, args.seq_len) if zm.family == "text" else zm.example_inputs(args.batch_size)
    prof = measure.profile(zm.model, inputs)
    doc: dict[str, Any] = {"model": args.model, "batch_size": args.batch_size, "profile": prof.to_dict()}
    if zm.family == "text":
        doc["seq_len"] = args.seq_len
    if task is not None:
        doc["metrics"] = task.evaluate(zm.model, zm)
    from ..core.cpu import int8_isa

    isa = int8_isa()
    doc["int8_isa"] = isa.to_dict()
    text = prof.table() + "\n" + isa.line()
    if "metrics" in doc:
        text += "\n" + "\n".join(f"{k}: {v}" for k, v in doc["metrics"].items())
    _emit(doc, args.json, text)
    return 0


def _compress(args: argparse.Namespace) -> int:
    from ..app.pipeline import compress
    from ..app.report import render_markdown

    report = compress(args.model, args.recipe, args.out, task_name=args.task, overwrite=args.overwrite,
                      quiet=args.json, seed=args.seed, runtime=args.runtime)
    _emit(report, args.json, render_markdown(report) + f"\nwritten to {args.out}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from ..app.pipeline import evaluate

    doc = evaluate(args.dir, args.task, trust_code=args.trust_code)
    _emit(doc, args.json, "\n".join(f"{k}: {v}" for k, v in doc["metrics"].items()))
    return 0


def _bench(args: argparse.Namespace) -> int:
    from ..app.pipeline import bench

    doc = bench(args.dir, against=args.against, batch_size=args.batch_size, seq_len=args.seq_len,
                rounds=args.rounds, threads=args.threads, runtime=args.runtime, trust_code=args.trust_code)
    text = (f"{doc['model']} ({doc['runtime']}) vs {doc['baseline']} (eager) at batch {doc['batch_size']}: "
            f"{doc['speedup']:.2f}x faster "
            f"(IQR {doc['speedup_p25']:.2f}-{doc['speedup_p75']:.2f}; medians {doc['median_a_ms']:.3f} ms -> "
            f"{doc['median_b_ms']:.3f} ms)")
    _emit(doc, args.json, text)
    return 0


def _export(args: argparse.Namespace) -> int:
    from ..app.export import export_artifact

    doc = export_artifact(args.dir, out=args.out, int8=args.int8, exclude=tuple(args.exclude), task_name=args.task,
                          fmt=args.format, trust_code=args.trust_code)
    _emit(doc, args.json, "\n".join(f"{k}: {v}" for k, v in doc.items()))
    return 0


def _plan(args: argparse.Namespace) -> int:
    from ..plan.report import render_markdown
    from .plan import run

    report = run(args)
    _emit(report, args.json, render_markdown(report) + f"\nwritten to {args.out}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    doc, text = run_demo(skip_minilm=args.skip_minilm, quiet=args.json)
    _emit(doc, args.json, text)
    return 0


_COMMANDS = {"list-methods": _list_methods, "profile": _profile, "compress": _compress, "eval": _eval,
             "bench": _bench, "export": _export, "plan": _plan, "demo": _demo}


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program is, so ``finally`` blocks clean up as for Ctrl-C."""


def _on_sigterm(signum: int, frame: Any) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second TERM must not cut the clean-up short
    raise Terminated


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # bad options (2) or --help (0): return the status instead of exiting
        return exc.code if isinstance(exc.code, int) else 2
    from ..core.errors import SlimkitError

    installed, previous = False, None
    if sys.platform != "win32":
        try:
            previous = signal.signal(signal.SIGTERM, _on_sigterm)
            installed = True
        except ValueError:  # not the main thread: leave signals alone
            pass
    try:
        return _COMMANDS[args.command](args)
    except SlimkitError as exc:
        if args.debug:
            raise
        msg = str(exc).replace("\n", " ")
        print(f"slimkit: error: {msg}", file=sys.stderr)
        return 2
    except Terminated:
        print("slimkit: terminated", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print("slimkit: interrupted", file=sys.stderr)
        return 130
    finally:
        if installed:
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
