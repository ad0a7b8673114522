"""The jobs behind the CLI: compress a zoo model with a recipe, evaluate, benchmark.

Kept apart from argument parsing so the demo, the CLI and tests share one code path.
"""
from __future__ import annotations

import datetime
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from torch import nn

from .. import measure, zoo
from ..core import Context, Recipe, read_manifest, restore, save
from ..core.api import MANIFEST_FILE, WEIGHTS_FILE, replace_dir
from ..core.cpu import int8_isa
from ..core.errors import ArtifactError, ConfigError, MethodError, ModelSpecError
from ..core.progress import Progress
from ..core.safety import require_trust, seal
from .report import render_markdown
from .serving import baseline_for, load_runtime, shipped


def context_for(zm: "zoo.ZooModel", task: "zoo.Task | None", *, calib_batches: int = 8, batch_size: int = 32,
                seed: int = 0, progress: bool = True) -> Context:
    """A Context wired to a task's data: calibration and training batches, loss and metric."""
    ctx = Context(example_inputs=zm.example_inputs(1), seed=seed, progress=progress)
    if task is None:
        return ctx
    ctx.calib_data = task.calibration_batches(zm, calib_batches, batch_size)
    if task.has_training:
        ctx.train_data = task.train_batches(zm, batch_size, seed=seed)
        ctx.loss_fn = task.loss_fn
    ctx.unlabeled_data = task.unlabeled_batches(zm, 64, seed=seed)
    ctx.eval_fn = lambda model: task.evaluate(model, zm)
    ctx.teacher = zm.model
    return ctx


def calibration_need(recipe: Recipe, default: int = 8) -> int:
    """Calibration batches to prepare: the most any step asks for (``calib_batches``), at least ``default``.

    A step that asks for more than the context holds silently gets fewer, so the context is
    sized to the hungriest step (tasks cap it at the data they have).
    """
    asked = [s.config.to_dict().get("calib_batches") for s in recipe.steps]
    return max([default, *(a for a in asked if isinstance(a, int))])


def snapshot(model: nn.Module, zm: "zoo.ZooModel", task: "zoo.Task | None", *, reference: nn.Module | None = None,
             saved_dir: Path | None = None) -> dict[str, Any]:
    """Profile (and, with a task, evaluate) one model state."""
    prof = measure.profile(model, zm.example_inputs(1))
    out: dict[str, Any] = {"profile": prof.to_dict()}
    if saved_dir is not None:
        out["profile"]["file_bytes"] = (saved_dir / WEIGHTS_FILE).stat().st_size
    if task is not None:
        out["metrics"] = task.evaluate(model, zm, reference=reference)
    return out


def _log(msg: str, quiet: bool) -> None:
    if not quiet:
        print(msg, file=sys.stderr, flush=True)


def compress(spec: str, recipe_source: str, out: Path, *, task_name: str | None = None, overwrite: bool = False,
             quiet: bool = False, seed: int = 0, bench_rounds: int = 10, runtime: str = "auto") -> dict[str, Any]:
    """Run ``recipe`` on ``spec`` and write ``out/{model.safetensors,manifest.json,report.md,report.json}``.

    Validates everything (recipe, spec, task, output folder) before any work, writes into
    a temporary sibling folder and renames it into place at the end, so an interrupted run
    leaves nothing half-written. The report's latency times ``runtime`` (``auto``: what
    the folder ships, e.g. the ``model.onnx`` an export step wrote) against the dense
    eager model; the manifest is sealed last, with the hashes of every file.
    """
    recipe = Recipe.load(recipe_source)
    _check_runtime(recipe, runtime)
    out = Path(out)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not overwrite)):
        raise ArtifactError(f"{out} exists and is not empty (use --overwrite)")
    task = zoo.get_task(task_name) if task_name else None
    zm = zoo.load(spec)
    if task is not None:
        task.check_model(zm)
    _log(f"slimkit: {spec}: {len(recipe.steps)} step(s) from recipe {recipe.name!r}", quiet)
    ctx = context_for(zm, task, calib_batches=calibration_need(recipe), seed=seed, progress=not quiet)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    ctx.extras["export_dir"] = tmp  # export steps write their artifact next to the weights
    t0 = time.perf_counter()
    steps: list[dict[str, Any]] = []

    def on_step(i: int, step: Any, model: nn.Module) -> None:
        bar.set_postfix(last=step.config.kind)
        bar.update(1)
        info = {"step": step.label, "kind": step.config.kind, "record": _last_record(model)}
        info.update(snapshot(model, zm, task, reference=zm.model))
        steps.append(info)

    try:
        before = snapshot(zm.model, zm, task, reference=zm.model)
        # one line per finished step in a log (a bar on a terminal); the loops inside steps show their own
        bar = Progress(len(recipe.steps), f"slimkit {recipe.name}", enabled=not quiet, unit="step", eta=False,
                       leave=True)
        with bar:
            model = recipe.run(zm.model, ctx, on_step=on_step)
        save(model, tmp, spec=spec)
        after = dict(steps[-1]) if steps else snapshot(model, zm, task, reference=zm.model)
        after["profile"]["file_bytes"] = (tmp / WEIGHTS_FILE).stat().st_size
        before["profile"]["file_bytes"] = _dense_file_bytes(zm.model)
        rt, name = shipped(tmp, read_manifest(tmp), runtime)
        # this run wrote the file itself, so loading a .pt2 here trusts no one else's code
        served = model if name is None else load_runtime(tmp, read_manifest(tmp), rt, name, trust_code=True)
        base = baseline_for(zm.model, read_manifest(tmp), name, zm.example_inputs(1))
        cmp = _compare(base, served, zm.example_inputs(1), rt, name, rounds=bench_rounds, quiet=quiet)
        report = {
            "model": spec, "recipe": recipe.to_dict(), "task": task_name,
            "before": before, "after": after, "steps": steps,
            "latency": {"batch": 1, "runtime": rt, "file": name, **cmp.to_dict()},
            "seconds": round(time.perf_counter() - t0, 2),
            "int8_isa": int8_isa().to_dict(),  # int8 settings and results depend on it
            "date": datetime.date.today().isoformat(),
        }
        import json

        (tmp / "report.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
        (tmp / "report.md").write_text(render_markdown(report))
        seal(tmp)
        replace_dir(tmp, out, overwrite=overwrite)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return report


def _check_runtime(recipe: Recipe, runtime: str) -> None:
    """``--runtime onnx|pt2e`` needs a recipe step that writes that file (checked before any work)."""
    kinds = {"onnx": "export.onnx", "pt2e": "export.pt2e"}
    if runtime in kinds and not any(s.config.kind == kinds[runtime] for s in recipe.steps):
        raise ConfigError(f"--runtime {runtime}: recipe {recipe.name!r} has no {kinds[runtime]} step to time",
                          key="runtime")


def _compare(base: nn.Module, served: nn.Module, inputs: Any, runtime: str, name: str | None, *, rounds: int,
             threads: int | None = None, quiet: bool = False) -> measure.CompareResult:
    """Paired latency of the eager baseline against the served model; a shipped file that
    cannot run this batch is a clear error, not a traceback."""
    try:
        with Progress(rounds, f"timing {name or 'the restored model'} ({runtime}) vs the dense eager model", enabled=not quiet,
                      unit="round") as bar:
            return measure.compare(base, served, inputs, rounds=rounds, threads=threads, on_round=bar.update)
    except Exception as exc:
        if name is None:
            raise
        raise MethodError(f"{name} ({runtime}) failed on the benchmark batch: {type(exc).__name__}: {exc}") from exc


def _last_record(model: nn.Module) -> dict[str, Any]:
    from ..core import records

    recs = records(model)
    return {"kind": recs[-1].kind, "summary": recs[-1].summary} if recs else {}


def _dense_file_bytes(model: nn.Module) -> int:
    """Size of the uncompressed model as slimkit would save it (for the 'before' column)."""
    with tempfile.TemporaryDirectory() as d:
        save(model, d, spec="dense")
        return (Path(d) / WEIGHTS_FILE).stat().st_size


def load_artifact(path: Path, *, trust_code: bool = False) -> tuple[nn.Module, "zoo.ZooModel"]:
    """Restore a saved model and the zoo entry it came from (for inputs, tokenizer, reference).

    The folder is untrusted: a ``py:`` model spec is refused before anything is imported
    unless ``trust_code``; file hashes are checked by ``restore``.
    """
    path = Path(path)
    if not (path / MANIFEST_FILE).is_file():
        raise ArtifactError(f"{path} is not a slimkit model folder (no {MANIFEST_FILE})")
    manifest = read_manifest(path)
    if not manifest.model_spec:
        raise ArtifactError(f"{path / MANIFEST_FILE} names no model_spec")
    require_trust(manifest.model_spec, trust_code, path / MANIFEST_FILE)
    try:
        zm = zoo.load(manifest.model_spec)
    except ModelSpecError as exc:
        raise ArtifactError(f"{path / MANIFEST_FILE}: model_spec cannot be built: {exc}") from exc
    # the zoo model is the dense origin: restore rebuilds from a copy of it instead of loading it twice
    return restore(path, model=zm.model, trust_code=trust_code), zm


def evaluate(path: Path, task_name: str, *, trust_code: bool = False) -> dict[str, Any]:
    task = zoo.get_task(task_name)
    model, zm = load_artifact(path, trust_code=trust_code)
    task.check_model(zm)
    return {"model": str(path), "task": task_name, "metrics": task.evaluate(model, zm, reference=zm.model)}


def bench(path: Path, *, against: str | None = None, batch_size: int = 1, seq_len: int = 128, rounds: int = 10,
          threads: int | None = None, runtime: str = "auto", trust_code: bool = False,
          quiet: bool = False) -> dict[str, Any]:
    """Paired latency: the baseline (``against`` or the model's own dense origin, eager PyTorch)
    vs what the folder ships (``runtime="auto"``: its model.pt2 / model.onnx, else the
    restored model) or the runtime asked for. The result says which runtime and file were timed."""
    path = Path(path)
    model, zm = load_artifact(path, trust_code=trust_code)
    manifest = read_manifest(path)
    rt, name = shipped(path, manifest, runtime)
    served = model if name is None else load_runtime(path, manifest, rt, name, threads=threads, trust_code=trust_code)
    base = zoo.load(against) if against else zm
    inputs = zm.example_inputs(batch_size, seq_len) if zm.family == "text" else zm.example_inputs(batch_size)
    cmp = _compare(baseline_for(base.model, manifest, name, inputs), served, inputs, rt, name, rounds=rounds,
                   threads=threads, quiet=quiet)
    return {"model": str(path), "runtime": rt, "file": name, "baseline": base.spec, "baseline_runtime": "eager",
            "batch_size": batch_size, "seq_len": seq_len if zm.family == "text" else None, **cmp.to_dict(),
            "int8_isa": int8_isa().to_dict(), "date": datetime.date.today().isoformat()}
