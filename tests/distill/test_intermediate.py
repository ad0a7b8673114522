"""``distill.intermediate`` from recipe dicts on tiny random BERTs: it trains, records what it
matched, and refuses bad options with a ConfigError naming the key."""
from __future__ import annotations

from typing import Any

import pytest
import torch
import transformers
from torch import nn

import slimkit
from slimkit.core import ConfigError, Context, MethodError, Recipe, Targets
from slimkit.distill.features import find_layers
from slimkit.distill.intermediate import IntermediateDistill
from slimkit.distill.mapping import layer_pairs
from slimkit.distill.matches import attention_probs


def bert(layers: int, hidden: int = 32, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    cfg = transformers.BertConfig(vocab_size=50, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=4,
                                  intermediate_size=48, max_position_embeddings=16, attn_implementation="eager")
    return transformers.BertModel(cfg).eval()


def batches(n: int = 3) -> list[dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        mask = torch.ones(2, 6, dtype=torch.long)
        mask[1, 4:] = 0  # a padded row: losses must ignore its last two tokens
        out.append({"input_ids": torch.randint(0, 50, (2, 6), generator=gen), "attention_mask": mask})
    return out


def run(options: dict[str, Any], *, student: nn.Module | None = None, teacher: nn.Module | None = None,
        targets: Any = None) -> tuple[nn.Module, nn.Module, slimkit.Record]:
    step: dict[str, Any] = {"kind": "distill.intermediate", "with": {"steps": 3, **options}}
    if targets is not None:
        step["targets"] = targets
    student = student if student is not None else bert(2)
    ctx = Context(calib_data=batches(), teacher=teacher if teacher is not None else bert(4, 48, seed=1), progress=False)
    out = Recipe.from_dict({"name": "t", "steps": [step]}).run(student, ctx)
    return student, out, slimkit.records(out)[-1]


def changed(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()  # projections and learned maps never end up in the model
    return any(not torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("options", [
    {"layer_map": "last_k", "k": 2, "matches": [{"what": "attention_relation"}, {"what": "hidden", "loss": "mse"}]},
    {"layer_map": "uniform", "matches": [{"what": "attention", "heads": "mean"}, {"what": "fitnets"}]},
    {"layer_map": "explicit", "pairs": [[0, 1], [1, 3]], "matches": [{"what": "hidden", "loss": "cosine"},
                                                                    {"what": "attention_transfer", "p": 2}]},
    {"layer_map": "learned", "matches": [{"what": "attention_relation", "relation_heads": 2}]},
])
def test_each_layer_map_and_match_trains_and_records(options: dict[str, Any]) -> None:
    student, out, rec = run(options)
    assert changed(student, out)
    assert rec.kind == "distill.intermediate" and rec.data["steps"] == 3
    assert rec.data["teacher_layers"] == [f"encoder.layer.{i}" for i in range(4)]
    assert [m["what"] for m in rec.data["matches"]] == [m["what"] for m in options["matches"]]
    if options["layer_map"] == "learned":
        rows = rec.data["learned_map"]["0"]
        assert len(rows) == 2 and all(len(r) == 4 and abs(sum(r) - 1) < 1e-3 for r in rows)
    else:
        expected = {"last_k": [[0, 2], [1, 3]], "uniform": [[0, 1], [1, 3]],
                    "explicit": [[0, 1], [1, 3]]}[options["layer_map"]]
        assert rec.data["pairs"] == [[f"encoder.layer.{s}", f"encoder.layer.{t}"] for s, t in expected]


def test_hidden_match_projects_only_where_widths_differ() -> None:
    _, _, rec = run({"matches": [{"what": "hidden"}]})  # 32 -> 48: one projection per student layer
    assert rec.data["projections"] == ["0_0", "0_1"]
    _, _, same = run({"matches": [{"what": "hidden"}, {"what": "fitnets"}]}, teacher=bert(4, 32, seed=1))
    assert same.data["projections"] == ["1_0", "1_1"]  # FitNets always trains its regressor


def test_fsp_and_logit_mse_on_equal_widths() -> None:
    student, out, rec = run({"matches": [{"what": "fsp"}], "logits": "mse"}, teacher=bert(4, 32, seed=1))
    assert changed(student, out) and rec.data["final_loss"] > 0


def test_logits_alone_and_conv_layers_from_targets() -> None:
    torch.manual_seed(0)
    cnn = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
                        nn.Flatten(), nn.Linear(4 * 64, 10))
    teacher = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                            nn.Flatten(), nn.Linear(8 * 64, 10))
    gen = torch.Generator().manual_seed(0)
    data = [(torch.randn(4, 1, 8, 8, generator=gen), torch.randint(0, 10, (4,), generator=gen)) for _ in range(2)]
    step = {"kind": "distill.intermediate", "targets": {"types": ["Conv2d"]},
            "with": {"steps": 3, "matches": [{"what": "fitnets"}, {"what": "attention_transfer"}], "logits": "kd"}}
    out = Recipe.from_dict({"name": "t", "steps": [step]}).run(cnn, Context(train_data=data, teacher=teacher, progress=False))
    rec = slimkit.records(out)[-1]
    assert rec.data["pairs"] == [["0", "0"], ["2", "2"]] and rec.data["projections"] == ["0_0", "0_1"]
    assert changed(cnn, out)


def test_attention_probs_match_the_models_own_attention() -> None:
    """Maps recomputed from the tapped Q and K equal what eager BERT attention returns."""
    model = bert(2)
    batch = batches(1)[0]
    from slimkit.distill.features import LayerFeatures

    tap = LayerFeatures(model, find_layers(model, Targets(), "t"), qkv=True, kind="t")
    with torch.no_grad():
        _, feats = tap(**batch)
        ref = model(**batch, output_attentions=True).attentions
    for f, a in zip(feats, ref, strict=True):
        got = attention_probs(f["q"], f["k"], f["heads"], batch["attention_mask"])  # [B, H, T, T]
        assert torch.allclose(got, a, atol=1e-5)


@pytest.mark.parametrize(("options", "key"), [
    ({"layer_map": "nearest"}, "layer_map"),
    ({"layer_map": "uniform", "k": 2}, "k"),
    ({"layer_map": "last_k", "k": 0}, "k"),
    ({"layer_map": "explicit"}, "pairs"),
    ({"layer_map": "uniform", "pairs": [[0, 1]]}, "pairs"),
    ({"matches": [{"what": "gram"}]}, "matches[0].what"),
    ({"matches": [{"what": "hidden", "loss": "kl"}]}, "matches[0].loss"),
    ({"matches": [{"what": "hidden"}, {"what": "attention", "p": 2}]}, "matches[1].p"),
    ({"matches": [{"what": "hidden", "weight": 0}]}, "matches[0].weight"),
    ({"matches": [{"what": "attention_relation", "relation_heads": 0}]}, "matches[0].relation_heads"),
    ({"matches": ["hidden"]}, "matches[0]"),
    ({"matches": []}, "matches"),
    ({"layer_map": "learned", "matches": [{"what": "fsp"}]}, "matches[0].what"),
    ({"logits": "kl"}, "logits"),
    ({"teacher_layers": ["re:("]}, "teacher_layers"),
    ({"freeze": ["re:["]}, "freeze"),
    ({"stepz": 3}, "stepz"),
])
def test_bad_options_name_the_key(options: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as err:
        IntermediateDistill.from_dict({"steps": 3, **options})
    assert err.value.key == key


@pytest.mark.parametrize(("options", "key"), [
    ({"layer_map": "last_k", "k": 3}, "k"),  # the student has only 2 layers
    ({"layer_map": "explicit", "pairs": [[0, 4]]}, "pairs"),  # the teacher has 4 (0..3)
    ({"layer_map": "explicit", "pairs": [[2, 0]]}, "pairs"),
    ({"layer_map": "explicit", "pairs": [[0, 1], [0, 2]]}, "pairs"),
])
def test_layer_map_out_of_range_for_the_models_names_the_key(options: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as err:
        run(options)
    assert err.value.key == key


def test_mismatched_widths_without_projection_fail_as_method_errors() -> None:
    with pytest.raises(MethodError, match="fsp needs equal widths"):
        run({"matches": [{"what": "fsp"}]})  # 32 vs 48
    with pytest.raises(MethodError, match="differ in shape"):
        run({"matches": [{"what": "hidden"}], "logits": "mse"})
    with pytest.raises(MethodError, match="Context.teacher"):
        Recipe.from_dict({"name": "t", "steps": [{"kind": "distill.intermediate", "with": {"steps": 1}}]}).run(
            bert(2), Context(calib_data=batches(), progress=False))


@pytest.mark.parametrize(("layer_map", "kw", "expected"), [
    ("last_k", {"k": 3}, [(0, 3), (1, 4), (2, 5)]),
    ("last_k", {"k": 1}, [(2, 5)]),
    ("last_k", {}, [(0, 3), (1, 4), (2, 5)]),
    ("uniform", {}, [(0, 1), (1, 3), (2, 5)]),
    ("explicit", {"pairs": [(2, 5), (0, 0)]}, [(0, 0), (2, 5)]),
])
def test_layer_pairs(layer_map: str, kw: dict[str, Any], expected: list[tuple[int, int]]) -> None:
    assert layer_pairs(layer_map, 3, 6, **kw) == expected


def test_layer_pairs_learned_is_every_pair_and_k_past_either_depth_fails() -> None:
    assert layer_pairs("learned", 2, 3) == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]
    for n_s, n_t, k in ((3, 6, 4), (6, 2, 3)):
        with pytest.raises(ConfigError, match=r"\[1, "):
            layer_pairs("last_k", n_s, n_t, k=k)
    with pytest.raises(ConfigError) as err:
        layer_pairs("uniform", 4, 2)
    assert err.value.key == "layer_map"
