"""The ``minilm-distill-relation`` preset: listed, valid, round-trips, and runs on a tiny 6-layer,
12-head BERT embedder shaped like all-MiniLM-L6-v2 (distillation shortened to a few steps)."""
from __future__ import annotations

import dataclasses

import torch
import yaml
from support.models import tiny_minilm

import slimkit
from slimkit.core import Context, Recipe, presets
from slimkit.core.recipe import check_order

PRESET = "minilm-distill-relation"



def test_preset_is_listed_valid_and_explained() -> None:
    assert PRESET in presets()
    recipe = Recipe.load(PRESET)
    check_order(recipe.steps)
    assert [s.config.kind for s in recipe.steps] == ["prune.layers", "distill.intermediate"]
    distill = recipe.steps[1].config
    assert distill.layer_map == "last_k" and {"what": "attention_relation", "weight": 1.0} in distill.matches
    for kind in ("prune.layers", "distill.intermediate"):
        assert kind in recipe.description
    doc = recipe.to_dict()
    assert Recipe.from_dict(yaml.safe_load(yaml.safe_dump(doc))).to_dict() == doc


def test_preset_runs_on_a_tiny_stand_in() -> None:
    recipe = Recipe.load(PRESET)
    steps = tuple(dataclasses.replace(s, config=dataclasses.replace(s.config, steps=3, warmup=1))
                  if s.config.kind == "distill.intermediate" else s for s in recipe.steps)
    teacher = tiny_minilm()
    g = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(3):
        mask = torch.ones(4, 10, dtype=torch.long)
        mask[0, 7:] = 0
        batches.append({"input_ids": torch.randint(1, 60, (4, 10), generator=g), "attention_mask": mask})
    ctx = Context(calib_data=batches, unlabeled_data=batches, teacher=teacher, progress=False)
    out = Recipe(steps=steps, name="t").run(teacher, ctx)
    assert len(out.encoder.encoder.layer) == 3
    rec = slimkit.records(out)[-1]
    blocks = "encoder.encoder.layer"
    assert rec.data["pairs"] == [[f"{blocks}.2", f"{blocks}.5"]]  # last_k, k=1: last block <- last block
    assert rec.data["steps"] == 3 and rec.data["projections"] == []
    shrunk = Recipe(steps=steps[:1], name="t").run(teacher, ctx)
    assert any(not torch.equal(a, b) for a, b in zip(shrunk.state_dict().values(), out.state_dict().values(),
                                                     strict=True))
    assert len(teacher.encoder.encoder.layer) == 6  # the caller's model is untouched
