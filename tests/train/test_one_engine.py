"""Every kind that trains goes through the one engine, and no other optimizer loop exists.

A kind *trains* when its config inherits :class:`TrainOptions` or has a ``steps`` option
(binary / ternary / k-means fine-tune through ``quantize.qat.train_and_convert``). Each runs
from a one-step recipe on a tiny CNN while the engine's entry point is spied on and every
``torch.optim.Optimizer`` construction is traced back to the file that built it.
"""
from __future__ import annotations

import dataclasses
import inspect
import re
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from torch import nn

import slimkit
from slimkit.core import ConfigError, Context, Recipe, config_class
from slimkit.train import TrainOptions, engine

pytestmark = pytest.mark.usefixtures("one_thread_module")

SRC = Path(slimkit.__file__).parent
WEIGHTS = {"types": ["Conv2d", "Linear"]}
# kind -> (`with` options, targets); the kinds with "engine runs" > 0 must go through train()
RUNS: dict[str, tuple[dict[str, Any], dict[str, Any], int]] = {
    "distill.logits": ({"steps": 3, "temperature": 2.0}, {}, 1),
    "distill.embedding": ({"steps": 3, "loss": "mse"}, {}, 1),
    "distill.intermediate": ({"steps": 3, "matches": [{"what": "hidden"}], "logits": "kd"},
                             {"types": ["Conv2d", "Linear"]}, 1),
    "distill.multi_teacher": ({"steps": 3, "teachers": ["context", "context"]}, {}, 1),
    "distill.assistant_chain": ({"steps": 2, "assistants": ["context"]}, {}, 2),  # teacher -> assistant -> student
    "distill.mutual": ({"steps": 3}, {}, 1),
    "distill.born_again": ({"steps": 2, "generations": 2}, {}, 2),
    "prune.gradual": ({"sparsity": 0.6, "steps": 4, "every": 1}, WEIGHTS, 1),
    "prune.movement": ({"sparsity": 0.6, "steps": 4, "every": 1}, WEIGHTS, 1),
    "prune.regrow": ({"sparsity": 0.6, "steps": 4, "every": 2}, WEIGHTS, 1),
    "prune.dsd": ({"sparsity": 0.5, "sparse_steps": 3, "redense_steps": 2}, WEIGHTS, 2),  # sparse, then re-dense
    "quantize.qat": ({"bits": 4, "steps": 3, "calib_batches": 2}, WEIGHTS, 1),
    "quantize.binary": ({"mode": "xnor", "steps": 3}, WEIGHTS, 1),
    "quantize.ternary": ({"steps": 3}, WEIGHTS, 1),
    "quantize.kmeans": ({"bits": 3, "steps": 2}, WEIGHTS, 1),
    # recovery kinds: live in slimkit.train but fit without an optimizer loop
    "train.bn_recalibrate": ({"batches": 2}, {}, 0),
    "train.reconstruct": ({"calib_batches": 2}, {"types": ["Linear"]}, 0),
    # a training kind: skips blocks (here the CNN's ReLUs, named by targets) while distill.embedding trains
    "train.layerdrop": ({"steps": 3, "p": 0.5}, {"types": ["ReLU"]}, 1),
    "dynamic.early_exit": ({"steps": 3}, {}, 1),  # on the tiny BERT classifier (MODELS)
}


def _trains(kind: str) -> bool:
    cls = config_class(kind)
    return issubclass(cls, TrainOptions) or "steps" in {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]


def _cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(8 * 4 * 4, 16), nn.ReLU(), nn.Linear(16, 10),
    ).eval()


def _loss(model: nn.Module, batch: Any) -> torch.Tensor:
    return nn.functional.cross_entropy(model(batch[0]), batch[1])


def _ctx(n: int = 3) -> Context:
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(8, 1, 8, 8, generator=g), torch.randint(0, 10, (8,), generator=g)) for _ in range(n)]
    return Context(example_inputs=batches[0][0], calib_data=[b[0] for b in batches], train_data=batches,
                   loss_fn=_loss, teacher=_cnn(2), progress=False, seed=0)


def _bert_classifier() -> nn.Module:
    from tests.dynamic.models import tiny_bert_classifier

    return tiny_bert_classifier()


def _text_ctx() -> Context:
    from tests.dynamic.models import text_batches

    batches = text_batches()
    return Context(example_inputs=batches[0][0], train_data=batches, progress=False, seed=0)


# kinds that need another model than the tiny CNN: kind -> (model factory, context factory)
MODELS: dict[str, tuple[Any, Any]] = {"dynamic.early_exit": (_bert_classifier, _text_ctx)}


def _recipe(kind: str, options: dict[str, Any], targets: dict[str, Any]) -> Recipe:
    step: dict[str, Any] = {"kind": kind, "with": options}
    if targets:
        step["targets"] = targets
    return Recipe.from_yaml(yaml.safe_dump({"name": kind, "steps": [step]}))


class Spy:
    """Counts engine runs (keeping their results) and records which file built each optimizer."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.results: list[engine.TrainResult] = []
        self.optimizer_files: list[str] = []
        real_run, real_init = engine._run, torch.optim.Optimizer.__init__

        def run(*args: Any, **kwargs: Any) -> engine.TrainResult:
            self.results.append(real_run(*args, **kwargs))
            return self.results[-1]

        def init(opt: torch.optim.Optimizer, *args: Any, **kwargs: Any) -> None:
            caller = next(f.filename for f in inspect.stack()[1:] if f"{Path('torch', 'optim')}" not in f.filename)
            self.optimizer_files.append(caller)
            real_init(opt, *args, **kwargs)

        monkeypatch.setattr(engine, "_run", run)
        monkeypatch.setattr(torch.optim.Optimizer, "__init__", init)


def test_every_training_kind_is_in_the_table() -> None:
    training = {k for k in slimkit.kinds() if _trains(k)}
    missing = sorted(training - {k for k, v in RUNS.items() if v[2]})
    assert not missing, f"kinds that train but are not checked to go through the engine: {missing}; add them to RUNS"
    assert {k for k in slimkit.kinds() if k.startswith("train.")} <= set(RUNS)


@pytest.mark.parametrize("kind", sorted(RUNS))
def test_kind_trains_through_the_engine_only(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    options, targets, runs = RUNS[kind]
    spy = Spy(monkeypatch)
    model_fn, ctx_fn = MODELS.get(kind, (_cnn, _ctx))
    out = _recipe(kind, options, targets).run(model_fn(), ctx_fn())
    assert [r.kind for r in slimkit.records(out)] == [kind]
    assert len(spy.results) == runs, f"{kind}: {len(spy.results)} engine runs, expected {runs}"
    assert all(r.steps > 0 and len(r.losses) == r.steps for r in spy.results)
    engine_parts = str(SRC / "train" / "parts.py")
    assert spy.optimizer_files == [engine_parts] * runs, f"{kind} built optimizers in {spy.optimizer_files}"
    if kind.startswith("train."):
        assert config_class(kind).__module__.startswith("slimkit.train."), f"{kind} must live in slimkit.train"


def test_qat_with_kd_trains_through_the_engine_with_the_teacher(monkeypatch: pytest.MonkeyPatch) -> None:
    spy = Spy(monkeypatch)
    ctx = _ctx()
    calls = []
    teacher = ctx.teacher
    assert teacher is not None
    teacher.register_forward_hook(lambda m, a, o: calls.append(1))
    _recipe("quantize.qat", {"bits": 4, "steps": 3, "calib_batches": 2, "kd_alpha": 0.5}, WEIGHTS).run(_cnn(), ctx)
    assert len(spy.results) == 1 and spy.results[0].steps == 3
    assert len(calls) == 3  # the engine ran the teacher once per step


def test_no_optimizer_is_constructed_outside_slimkit_train() -> None:
    """Source check: ``torch.optim.<Optimizer>(`` appears only in slimkit/train (the zoo's scripts that
    train the reference models from scratch are not compression methods and keep their own recipe)."""
    allowed = {SRC / "train" / "parts.py", SRC / "zoo" / "digits.py", SRC / "zoo" / "bilstm.py"}
    pattern = re.compile(r"\boptim\.(?!lr_scheduler)[A-Z]\w*\(")
    offenders = [str(p.relative_to(SRC)) for p in sorted(SRC.rglob("*.py"))
                 if p not in allowed and pattern.search(p.read_text())]
    assert not offenders, f"optimizers built outside slimkit/train: {offenders}"
    assert pattern.search((SRC / "train" / "parts.py").read_text())  # the pattern does find a constructor


def test_options_are_one_validated_config_shared_by_the_training_kinds() -> None:
    for kind in [k for k in slimkit.kinds() if _trains(k)]:
        cls = config_class(kind)
        if issubclass(cls, TrainOptions):
            with pytest.raises(ConfigError, match="patience"):
                cls.from_dict({"patience": 0})
            with pytest.raises(ConfigError, match="early_stopping_patience"):  # one name: patience
                cls.from_dict({"early_stopping_patience": 3})
    with pytest.raises(ConfigError, match="warmup"):
        TrainOptions(steps=5, warmup=5)
    assert config_class("prune.gradual")().optimizer == "adam"  # pruning keeps Adam at a constant rate
    assert config_class("prune.gradual")().schedule == "constant"
    assert config_class("distill.logits")().optimizer == "adamw"
