"""The strategy recipe kinds (multi-teacher, assistant chain, mutual, born-again) from recipe
dicts on tiny models: each trains, records its stages, and names the key of a bad option."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import transformers
from torch import nn

import slimkit
from slimkit.core import ConfigError, Context, MethodError, ModelSpecError, Recipe, config_class
from slimkit.zoo.minilm import SentenceEmbedder


def mlp(seed: int, hidden: int = 16) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, hidden), nn.ReLU(), nn.Dropout(0.1), nn.Linear(hidden, 5)).eval()


def labelled(n: int = 3) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(0)
    return [(torch.randn(6, 8, generator=gen), torch.randint(0, 5, (6,), generator=gen)) for _ in range(n)]


def bert(layers: int, seed: int = 0) -> transformers.BertModel:
    torch.manual_seed(seed)
    cfg = transformers.BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=layers, num_attention_heads=4,
                                  intermediate_size=48, max_position_embeddings=16)
    return transformers.BertModel(cfg).eval()


def token_batches(n: int = 3) -> list[dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(0)
    return [{"input_ids": torch.randint(0, 50, (2, 6), generator=gen),
             "attention_mask": torch.ones(2, 6, dtype=torch.long)} for _ in range(n)]


def run(kind: str, options: dict[str, Any], model: nn.Module, ctx: Context) -> tuple[nn.Module, slimkit.Record]:
    out = Recipe.from_dict({"name": "t", "steps": [{"kind": kind, "with": options}]}).run(model, ctx)
    return out, slimkit.records(out)[-1]


def changed(a: nn.Module, b: nn.Module) -> bool:
    return any(not torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


def st_folder(path: Path, seed: int) -> Path:
    """A tiny sentence-transformers folder (config, safetensors, modules.json: mean pooling)."""
    bert(2, seed).save_pretrained(path, safe_serialization=True)
    (path / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]))
    return path


def test_multi_teacher_averages_context_and_an_hf_spec(tmp_path: Path) -> None:
    spec = f"hf:{st_folder(tmp_path / 'teacher', seed=3)}"
    student = SentenceEmbedder(bert(1))
    ctx = Context(calib_data=token_batches(), teacher=SentenceEmbedder(bert(2, seed=1)).eval(), progress=False)
    out, rec = run("distill.multi_teacher", {"teachers": ["context", spec], "weights": [3, 1], "loss": "cosine",
                                             "steps": 3}, student, ctx)
    assert changed(student, out)
    assert rec.data["teachers"] == ["context", spec] and rec.data["weights"] == [0.75, 0.25]


def test_multi_teacher_refuses_code_specs_unless_trusted() -> None:
    ctx = Context(train_data=labelled(), teacher=mlp(1), progress=False)
    with pytest.raises(ModelSpecError, match="trust_code"):
        run("distill.multi_teacher", {"teachers": ["context", "py:os:getcwd"], "steps": 1}, mlp(0), ctx)


def test_multi_teacher_kd_on_labelled_batches() -> None:
    model = mlp(0)
    ctx = Context(train_data=labelled(), teacher=mlp(1), progress=False)
    out, rec = run("distill.multi_teacher", {"teachers": ["context", "context"], "average": "probs", "steps": 3},
                   model, ctx)
    assert changed(model, out) and rec.data["steps"] == 3


def test_assistant_chain_shortens_the_teacher_for_int_assistants() -> None:
    student = bert(1)
    ctx = Context(calib_data=token_batches(), teacher=bert(4, seed=1), progress=False)
    out, rec = run("distill.assistant_chain", {"assistants": [3, 2], "loss": "mse", "steps": 2, "assistant_steps": 1},
                   student, ctx)
    assert changed(student, out)
    stages = rec.data["assistants"]
    assert [s["assistant"] for s in stages] == [3, 2] and [s["steps"] for s in stages] == [1, 1]
    assert stages[0]["params"] > stages[1]["params"] > sum(p.numel() for p in student.parameters())
    assert len(ctx.teacher.encoder.layer) == 4  # the teacher itself was copied, not shortened


def test_assistant_chain_never_trains_the_context_teacher() -> None:
    teacher = mlp(1)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    run("distill.assistant_chain", {"assistants": ["context"], "steps": 2},
        mlp(0), Context(train_data=labelled(), teacher=teacher, progress=False))
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())


def test_assistant_chain_bigger_assistant_than_teacher_fails() -> None:
    ctx = Context(calib_data=token_batches(), teacher=bert(2, seed=1), progress=False)
    with pytest.raises(MethodError, match="only 2 blocks"):
        run("distill.assistant_chain", {"assistants": [2], "loss": "mse", "steps": 1}, bert(1), ctx)


def test_mutual_learning_trains_the_model_with_its_peers() -> None:
    model = mlp(0)
    teacher = mlp(1)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    out, rec = run("distill.mutual", {"peers": ["self", "context"], "steps": 3, "alpha": 0.5},
                   model, Context(train_data=labelled(), teacher=teacher, progress=False))
    assert changed(model, out) and rec.data["peers"] == ["self", "context"]
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())  # a peer is a copy
    assert [n for n, _ in out.named_parameters()] == [n for n, _ in model.named_parameters()]


def test_mutual_learning_needs_class_labels() -> None:
    ctx = Context(calib_data=[b[0] for b in labelled()], progress=False)
    with pytest.raises(MethodError, match="class labels"):
        run("distill.mutual", {"steps": 1, "data": "calib"}, mlp(0), ctx)


def test_born_again_generations_and_final_weights() -> None:
    model = mlp(0)
    out, rec = run("distill.born_again", {"generations": 3, "steps": 2},
                   model, Context(train_data=labelled(), teacher=mlp(1), progress=False))
    assert changed(model, out)
    assert [g["generation"] for g in rec.data["generations"]] == [0, 1, 2]
    one, _ = run("distill.born_again", {"generations": 1, "steps": 2},
                 model, Context(train_data=labelled(), teacher=mlp(1), progress=False))
    assert changed(one, out)  # later generations moved the weights on from generation 0


@pytest.mark.parametrize(("kind", "options", "key"), [
    ("distill.multi_teacher", {"teachers": ["context"]}, "teachers"),
    ("distill.multi_teacher", {"teachers": ["context", "resnet"]}, "teachers"),
    ("distill.multi_teacher", {"teachers": ["context", "context"], "weights": [1.0]}, "weights"),
    ("distill.multi_teacher", {"teachers": ["context", "context"], "weights": [1.0, -1.0]}, "weights"),
    ("distill.multi_teacher", {"teachers": ["context", "context"], "average": "probs", "loss": "mse"}, "average"),
    ("distill.multi_teacher", {"teachers": ["context", "context"], "alpha": 2}, "alpha"),
    ("distill.assistant_chain", {}, "assistants"),
    ("distill.assistant_chain", {"assistants": [0]}, "assistants"),
    ("distill.assistant_chain", {"assistants": [2], "assistant_steps": 0}, "assistant_steps"),
    ("distill.assistant_chain", {"assistants": [2.5]}, "assistants[0]"),
    ("distill.mutual", {"peers": []}, "peers"),
    ("distill.mutual", {"peers": ["twin"]}, "peers"),
    ("distill.mutual", {"loss": "mse"}, "loss"),
    ("distill.born_again", {"generations": 0}, "generations"),
    ("distill.born_again", {"loss": "kl"}, "loss"),
    ("distill.born_again", {"generation": 2}, "generation"),
])
def test_bad_options_name_the_key(kind: str, options: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as err:
        config_class(kind).from_dict(options)
    assert err.value.key == key


def test_teacher_specs_may_be_folder_paths_of_hf_models_and_slimkit_artifacts(tmp_path: Path) -> None:
    from slimkit import zoo

    folder = st_folder(tmp_path / "teacher", seed=3)
    artifact = tmp_path / "artifact"
    slimkit.save(zoo.load(f"hf:{folder}").model, artifact)  # the manifest names hf:<folder>
    student = SentenceEmbedder(bert(1))
    ctx = Context(calib_data=token_batches(), progress=False)
    out, rec = run("distill.multi_teacher", {"teachers": [str(folder), str(artifact)], "loss": "cosine", "steps": 2},
                   student, ctx)
    assert changed(student, out) and rec.data["teachers"] == [str(folder), str(artifact)]
    with pytest.raises(ModelSpecError, match="neither a slimkit artifact"):
        run("distill.multi_teacher", {"teachers": [str(tmp_path), str(folder)], "loss": "cosine", "steps": 1},
            student, ctx)
