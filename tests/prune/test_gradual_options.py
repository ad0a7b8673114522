"""Recipe options of prune.gradual / prune.movement: Narang ramp, sparsity penalties, RPP proximal step."""
from __future__ import annotations

import itertools
from typing import Any

import pytest
import torch
import yaml
from torch import nn

import slimkit
from slimkit.core import ConfigError, Context, Recipe
from slimkit.prune import GradualPrune, MovementPrune
from slimkit.prune.regularizers import group_lasso, l1_penalty
from slimkit.train import engine

pytestmark = pytest.mark.usefixtures("one_thread")


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 1))


def _ctx() -> Context:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(128, 16, generator=g)
    y = x[:, :3] @ torch.tensor([[1.0], [-2.0], [0.5]])  # [128, 1]
    batches = [(x[i:i + 32], y[i:i + 32]) for i in range(0, 128, 32)]
    return Context(train_data=batches, loss_fn=lambda m, b: nn.functional.mse_loss(m(b[0]), b[1]), progress=False)


def _run(options: dict[str, Any], kind: str = "prune.gradual") -> tuple[nn.Module, list[float]]:
    """Run one recipe step (YAML, as a user writes it); return the model and the engine's per-step losses."""
    step = {"kind": kind, "targets": {"types": ["Linear"]}, "with": options}
    recipe = Recipe.from_yaml(yaml.safe_dump({"name": "t", "steps": [step]}))
    losses: list[list[float]] = []
    real = engine._run

    def spy(*args: Any, **kwargs: Any) -> engine.TrainResult:
        r = real(*args, **kwargs)
        losses.append(r.losses)
        return r

    engine._run = spy  # type: ignore[assignment]
    try:
        out = recipe.run(_model(), _ctx())
    finally:
        engine._run = real  # type: ignore[assignment]
    assert len(losses) == 1
    return out, losses[0]


def _record(model: nn.Module) -> Any:
    (rec,) = slimkit.records(model)
    return rec


def test_narang_ramp_gives_a_different_sparsity_history_than_cubic() -> None:
    base = {"sparsity": 0.8, "steps": 40, "ramp": 0.5, "every": 5, "lr": 1e-2}
    cubic, _ = _run(base)
    narang, _ = _run({**base, "sparsity_schedule": "narang"})
    hc, hn = _record(cubic).data["schedule"], _record(narang).data["schedule"]
    assert [t for t, _ in hc] == [t for t, _ in hn] == [0, 5, 10, 15, 20]
    assert hc != hn
    # the cubic front-loads pruning; Narang's threshold starts with the shallower slope
    assert hc[1][1] > hn[1][1] + 0.1, (hc, hn)
    assert all(a <= b for (_, a), (_, b) in itertools.pairwise(hn))  # a threshold ramp's masks only shrink
    assert _record(cubic).summary["sparsity"] == pytest.approx(0.8, abs=0.005)
    # Narang ends at each layer's 80th-percentile |w| at the start: near 80 %, not exactly
    assert 0.6 < _record(narang).summary["sparsity"] < 0.95


@pytest.mark.parametrize("reg", ["l1", "group_lasso"])
def test_a_regularizer_adds_its_penalty_to_the_training_loss(reg: str) -> None:
    base = {"sparsity": 0.5, "steps": 6, "every": 2, "lr": 1e-2}
    _, plain = _run(base)
    _, regd = _run({**base, "reg": reg, "reg_weight": 0.05})
    weights = [p.detach() for n, p in _model().named_parameters() if n.endswith("weight")]
    penalty = 0.05 * (l1_penalty(weights) if reg == "l1" else group_lasso(weights, "rows"))
    # step 0 sees the same weights and batch: the losses differ by exactly the penalty
    assert regd[0] - plain[0] == pytest.approx(float(penalty), rel=1e-4)
    assert regd[1:] != plain[1:]


def test_the_proximal_step_zeroes_weights_beyond_the_mask_target() -> None:
    base = {"sparsity": 0.3, "steps": 20, "every": 5, "lr": 1e-2}
    plain, _ = _run(base)
    prox, _ = _run({**base, "proximal": True, "proximal_weight": 0.2})  # measured: 0.80
    assert _record(plain).summary["sparsity"] == pytest.approx(0.3, abs=0.005)
    assert _record(prox).summary["sparsity"] > 0.5  # soft-thresholding reached exact zeros the mask did not ask for


def test_options_are_validated_and_unknown_keys_rejected() -> None:
    with pytest.raises(ConfigError, match="sparsity_schedule"):
        MovementPrune(sparsity_schedule="narang")  # movement scores are not magnitudes
    with pytest.raises(ConfigError, match="scope"):
        GradualPrune(sparsity_schedule="narang", scope="global")
    with pytest.raises(ConfigError, match="reg"):
        GradualPrune.from_dict({"reg": "l2"})
    with pytest.raises(ConfigError, match="reg_weight"):
        GradualPrune(reg="l1", reg_weight=0.0)
    with pytest.raises(ConfigError, match="reg_strength"):
        GradualPrune.from_dict({"reg_strength": 0.1})
    cfg = GradualPrune.from_dict({"sparsity_schedule": "narang", "reg": "row_linf", "proximal": True, "warmup": 3})
    assert GradualPrune.from_dict(cfg.to_dict()) == cfg
