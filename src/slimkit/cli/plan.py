"""``slimkit plan``: find a recipe that meets speed / accuracy / size budgets (docs/plan.md).

Kept apart from :mod:`slimkit.cli.main` so the planner's options live with it; ``main``
only registers the subcommand. Bad input (a budget string, a space file, an unknown spec
or task) exits 2 with one line; progress goes to stderr.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Callable

_BUDGET_HELP = ("a budget, repeatable: 'speedup>=2.0' (vs the dense model on --runtime), 'max_drop<=1.0' "
                "(metric points on the task's dev split), 'size<=12MB' (bytes on disk)")


def add_parser(sub: Any, at_least: Callable[[int], Any]) -> None:
    """Register ``plan`` on the CLI's subparsers (``at_least`` is main's positive-int type)."""
    s = sub.add_parser("plan", help="search a recipe that meets speed/accuracy/size budgets, write and verify it")
    s.add_argument("--model", required=True, help="model spec: zoo:NAME, hf:PATH or py:module:factory")
    s.add_argument("--task", required=True, help="task whose dev split scores sensitivity (test: report only)")
    s.add_argument("--budget", action="append", required=True, help=_BUDGET_HELP)
    s.add_argument("--runtime", choices=["eager", "pt2e", "onnx"], default="eager",
                   help="what the latency table times (pt2e: the torch.export program; onnx: ONNX Runtime)")
    s.add_argument("--batch-size", type=at_least(1), default=1)
    s.add_argument("--seq-len", type=at_least(2), default=128)
    s.add_argument("--out", required=True, type=Path, help="folder for plan.yaml, sensitivity.json, lut.json, report")
    s.add_argument("--space", type=Path, help="YAML file of search-space options (docs/plan.md)")
    s.add_argument("--solver", choices=["dp", "greedy"], default="dp")
    s.add_argument("--cache", type=Path, help="sensitivity cache folder (default: the slimkit cache dir /plan)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--rounds", type=at_least(1), default=5, help="paired timing rounds per latency entry")
    s.add_argument("--threads", type=at_least(1), help="torch threads for timing (default: current)")
    s.add_argument("--max-backoff", type=at_least(0), default=3, help="accuracy back-off rounds at most")
    s.add_argument("--dev-limit", type=at_least(1),
                   help="score the first N dev samples only (sensitivity and back-off; faster, noisier; "
                        "part of the cache key)")
    s.add_argument("--workers", type=at_least(1),
                   help="run the sensitivity trials on a local Ray instance with N one-thread workers, started and "
                        "stopped by slimkit (needs slimkit[plan]); latency is still timed serially. Default: serial")
    s.add_argument("--ray-address", help="run the sensitivity trials on an existing Ray cluster (HOST:PORT, "
                                         "ray://HOST:PORT or auto); every node needs slimkit, the model and the data")
    s.add_argument("--json", action="store_true")


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the planner from parsed arguments; returns its report."""
    from ..plan import SpaceConfig, parse_budgets, plan

    budgets = parse_budgets(args.budget)  # before any model is loaded: a typo fails fast
    space = SpaceConfig.load(args.space) if args.space is not None else None
    return plan(args.model, args.task, budgets, out_dir=args.out, runtime=args.runtime, batch_size=args.batch_size,
                seq_len=args.seq_len, space=space, solver=args.solver, cache_dir=args.cache, seed=args.seed,
                rounds=args.rounds, threads=args.threads, max_backoff=args.max_backoff, dev_limit=args.dev_limit,
                quiet=args.json, workers=args.workers, ray_address=args.ray_address)
