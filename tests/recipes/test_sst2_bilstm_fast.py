"""The ``sst2-bilstm-fast`` preset: it loads and explains itself, and its steps run on a tiny BiLSTM
stand-in (distillation shortened), giving a narrower LSTM and an int8 head that save/restore replays exactly.
The real run (zoo model, full steps, accuracy and speed) is benchmarks/bilstm.py."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
import yaml

import slimkit
from slimkit.core import Context, Recipe, presets
from slimkit.core.recipe import check_order
from slimkit.quantize.int8_modules import Int8Linear
from slimkit.zoo.bilstm import BiLSTMClassifier

PRESET = "sst2-bilstm-fast"
pytestmark = pytest.mark.usefixtures("one_thread")


def test_preset_is_listed_valid_and_explained() -> None:
    assert PRESET in presets()
    recipe = Recipe.load(PRESET)
    check_order(recipe.steps)
    kinds = [s.config.kind for s in recipe.steps]
    assert kinds == ["prune.channel", "distill.logits", "quantize.dynamic"]
    for kind in kinds:
        assert kind in recipe.description, f"description does not mention {kind}"
    doc = recipe.to_dict()
    assert Recipe.from_dict(yaml.safe_load(yaml.safe_dump(doc))).to_dict() == doc


def test_preset_steps_run_on_a_tiny_stand_in(tmp_path: Path) -> None:
    recipe = Recipe.load(PRESET)
    steps = tuple(dataclasses.replace(s, config=dataclasses.replace(s.config, steps=4))
                  if s.config.kind == "distill.logits" else s for s in recipe.steps)
    torch.manual_seed(0)
    teacher = BiLSTMClassifier(vocab_size=60, embed_dim=8, hidden=16).eval()
    g = torch.Generator().manual_seed(0)
    inputs = [{"input_ids": torch.randint(1, 60, (4, 9), generator=g),
               "attention_mask": torch.ones(4, 9, dtype=torch.long)} for _ in range(3)]
    train = [(b, torch.randint(0, 2, (4,), generator=g)) for b in inputs]
    ctx = Context(example_inputs=inputs[0], calib_data=inputs, train_data=train, teacher=teacher, progress=False,
                  loss_fn=lambda m, b: torch.nn.functional.cross_entropy(m(**b[0]), b[1]))
    out = Recipe(steps=steps, name="t").run(teacher, ctx)
    # the LSTM stays fp32 (faster than int8 cells once pruned, see the preset's description)
    assert isinstance(out.lstm, torch.nn.LSTM) and isinstance(out.head, Int8Linear)
    assert out.lstm.hidden_size == 6 and out.head.in_features == 4 * 6  # 16 * (1 - 0.625); [mean ; max] x 2 dirs
    x = inputs[1]
    assert out(**x).shape == (4, 2)
    slimkit.save(out, tmp_path / "a")
    back = slimkit.restore(tmp_path / "a", model=lambda: BiLSTMClassifier(vocab_size=60, embed_dim=8, hidden=16))
    torch.testing.assert_close(back(**x), out(**x), rtol=0, atol=0)


@pytest.mark.slow
def test_preset_on_the_zoo_model_keeps_accuracy(data_dir: Path) -> None:
    """Full preset on zoo:sst2-bilstm (trained and cached on first use): within 1 point of fp32."""
    from slimkit import zoo
    from slimkit.app.pipeline import context_for

    zm = zoo.load("zoo:sst2-bilstm")
    task = zoo.get_task("sst2")
    out = Recipe.load(PRESET).run(zm.model, context_for(zm, task, progress=False))
    fp32 = task.evaluate(zm)["accuracy"]
    assert task.evaluate(out, zm)["accuracy"] >= fp32 - 0.01
