"""The ``minilm-fast`` preset: it loads, obeys the order rules, round-trips, and its steps up to the
export run on a tiny 6-layer, 12-head BERT embedder named like all-MiniLM-L6-v2 (distillation
shortened to a few steps); the export step itself is covered by tests/export."""
from __future__ import annotations

import dataclasses

import torch
import yaml
from support.models import tiny_minilm

import slimkit
from slimkit.core import Context, Recipe, presets
from slimkit.core.recipe import check_order
from slimkit.quantize.embedding import QuantEmbedding

PRESET = "minilm-fast"



def test_preset_is_listed_valid_and_explained() -> None:
    assert PRESET in presets()
    recipe = Recipe.load(PRESET)
    check_order(recipe.steps)
    kinds = [s.config.kind for s in recipe.steps]
    assert kinds[0] == "prune.layers" and kinds[-1] == "export.pt2e"
    assert kinds.index("distill.embedding") > kinds.index("prune.channel")
    assert kinds.index("quantize.embedding") > kinds.index("distill.embedding")  # the table is trained first
    for kind in kinds:
        assert kind in recipe.description, f"description does not mention {kind}"
    doc = recipe.to_dict()
    assert Recipe.from_dict(yaml.safe_load(yaml.safe_dump(doc))).to_dict() == doc


def test_preset_steps_run_on_a_tiny_stand_in(one_thread: None) -> None:
    recipe = Recipe.load(PRESET)
    steps = [dataclasses.replace(s, config=dataclasses.replace(s.config, steps=3, warmup=1))
             if s.config.kind == "distill.embedding" else s for s in recipe.steps[:-1]]
    teacher = tiny_minilm()
    g = torch.Generator().manual_seed(0)
    batches = [{"input_ids": torch.randint(1, 60, (4, 10), generator=g),
                "attention_mask": torch.ones(4, 10, dtype=torch.long)} for _ in range(3)]
    ctx = Context(example_inputs=batches[0], calib_data=batches, unlabeled_data=batches, teacher=teacher,
                  progress=False)
    out = Recipe(steps=tuple(steps), name="t").run(teacher, ctx)

    layers = out.encoder.encoder.layer
    drop = recipe.steps[0].config.drop
    assert len(layers) == 6 - len(drop)
    assert all(layer.intermediate.dense.out_features < 64 for layer in layers)
    assert isinstance(out.encoder.embeddings.word_embeddings, QuantEmbedding)
    kinds = [r.kind for r in slimkit.records(out)]
    assert kinds == [s.config.kind for s in steps]
    with torch.no_grad():
        emb = out(**batches[0])
    assert emb.shape == (4, 48) and torch.allclose(emb.norm(dim=-1), torch.ones(4), atol=1e-4)
    assert len(teacher.encoder.encoder.layer) == 6  # the caller's model is untouched
