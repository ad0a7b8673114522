"""``train.layerdrop``: blocks are really skipped in training at the configured rate, never at eval,
reproducibly, through the one engine, and nothing is left on the model afterwards."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import transformers
import yaml
from torch import nn

import slimkit
from slimkit.core import ArtifactError, ConfigError, Context, MethodError, Recipe, Targets
from slimkit.core.record import manifest_of
from slimkit.train.layerdrop import BlockDropper, LayerdropTrain, drop_probabilities, find_blocks, probe_identities

pytestmark = pytest.mark.usefixtures("one_thread_module")

N_BLOCKS = 4


def tiny_bert(seed: int = 0, layers: int = N_BLOCKS) -> transformers.BertModel:
    torch.manual_seed(seed)
    config = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=layers, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=16)
    return transformers.BertModel(config).eval()


class Pooled(nn.Module):
    """A sentence encoder like MiniLM: mean-pooled BERT states (``forward -> [B, H]``)."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        self.encoder = tiny_bert(seed)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.encoder(input_ids=input_ids).last_hidden_state.mean(1)  # [B, T, H] -> [B, H]


def _batches(n: int = 3) -> list[tuple[dict[str, torch.Tensor], torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [({"input_ids": torch.randint(0, 50, (2, 5), generator=g)}, torch.randn(2, 16, generator=g))
            for _ in range(n)]


def _loss(model: nn.Module, batch: Any) -> torch.Tensor:
    inputs, target = batch
    return nn.functional.mse_loss(model(**inputs).last_hidden_state.mean(1), target)


def _ctx(**kw: Any) -> Context:
    batches = _batches()
    return Context(example_inputs=batches[0][0], train_data=batches, loss_fn=_loss, progress=False, seed=0, **kw)


class AttentionCalls:
    """Counts, per block, how often its attention ran (it does not run when the block is skipped)."""

    def __init__(self, model: transformers.BertModel) -> None:
        self.counts = [0] * len(model.encoder.layer)
        self.training: list[bool] = []
        for i, layer in enumerate(model.encoder.layer):
            layer.attention.register_forward_hook(lambda m, a, o, i=i: self._hit(i, m))

    def _hit(self, i: int, module: nn.Module) -> None:
        self.counts[i] += 1
        self.training.append(module.training)


def test_blocks_are_skipped_at_the_configured_rate_and_counted() -> None:
    model = tiny_bert()
    calls = AttentionCalls(model)
    steps = 240
    out = slimkit.apply(model, LayerdropTrain(steps=steps, p=0.8, drop_schedule="linear", objective="task"),
                        Targets(), _ctx(), inplace=True)
    rec = slimkit.records(out)[0]
    probs = [0.2, 0.4, 0.6, 0.8]
    assert rec.data["p"] == probs and rec.data["blocks"] == [f"encoder.layer.{i}" for i in range(N_BLOCKS)]
    runs, skips = rec.data["runs"], rec.data["skips"]
    assert [r + s for r, s in zip(runs, skips)] == [steps] * N_BLOCKS  # one decision per block per step
    # the attention hook sees one probe forward (eval) plus every training run: skipped blocks never ran
    assert calls.counts == [r + 1 for r in runs]
    for s, p in zip(skips, probs):  # binomial(240, p): 5 standard deviations are at most 0.16
        assert abs(s / steps - p) < 0.16, (skips, probs)
    assert skips[0] < skips[-1]  # the linear schedule skips deep blocks more often
    assert rec.summary["expected_skip_rate"] == 0.5 and abs(rec.summary["skip_rate"] - 0.5) < 0.1


def test_every_block_runs_in_eval_mode_also_in_the_engines_evaluations() -> None:
    model = tiny_bert()
    calls = AttentionCalls(model)
    eval_runs: list[list[int]] = []

    def eval_fn(m: nn.Module) -> dict[str, float]:
        before = list(calls.counts)
        with torch.no_grad():
            m(**_batches(1)[0][0])
        eval_runs.append([a - b for a, b in zip(calls.counts, before)])
        return {"score": 0.0}

    slimkit.apply(model, LayerdropTrain(steps=6, p=0.9, objective="task", eval_every=2), Targets(),
                  _ctx(eval_fn=eval_fn), inplace=True)
    assert eval_runs == [[1] * N_BLOCKS] * 3  # every block ran in each of the 3 evaluations (steps 2, 4, 6)

    blocks = find_blocks(model, Targets(), "t")
    dropper = BlockDropper(blocks, [0.99] * N_BLOCKS, probe_identities(model, blocks, _batches(1)[0][0], "t"), 0)
    with dropper.installed():
        model.eval()
        before = list(calls.counts)
        model(**_batches(1)[0][0])
        assert [a - b for a, b in zip(calls.counts, before)] == [1] * N_BLOCKS
        model.train()
        model(**_batches(1)[0][0])
    assert dropper.runs == [0] * N_BLOCKS and dropper.skips == [1] * N_BLOCKS  # seeded draws, all below 0.99


def test_seeded_runs_are_identical_and_other_seeds_differ() -> None:
    def run(seed: int) -> tuple[dict[str, torch.Tensor], list[int]]:
        out = slimkit.apply(tiny_bert(), LayerdropTrain(steps=12, p=0.5, objective="task", seed=seed), Targets(),
                            _ctx())
        return out.state_dict(), slimkit.records(out)[0].data["skips"]

    (a, skips_a), (b, skips_b), (_, skips_c) = run(3), run(3), run(4)
    assert skips_a == skips_b and all(torch.equal(a[k], b[k]) for k in a)
    assert skips_a != skips_c


def test_nothing_is_left_on_the_model_and_the_architecture_is_unchanged() -> None:
    model = tiny_bert()
    out = slimkit.apply(model, LayerdropTrain(steps=3, p=0.5, objective="task"), Targets(), _ctx())
    assert [type(m) for m in out.modules()] == [type(m) for m in model.modules()]
    assert {k: v.shape for k, v in out.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}
    for m in out.modules():
        assert "forward" not in m.__dict__
        assert not m._forward_hooks and not m._forward_pre_hooks
    # a failing run removes the wrappers too
    blocks = find_blocks(out, Targets(), "t")
    dropper = BlockDropper(blocks, [0.5] * N_BLOCKS, probe_identities(out, blocks, _batches(1)[0][0], "t"), 0)
    with pytest.raises(RuntimeError, match="boom"):
        with dropper.installed():
            assert all("forward" in b.__dict__ for _, b in blocks)
            raise RuntimeError("boom")
    assert not any("forward" in b.__dict__ for _, b in blocks)


def test_composes_with_embedding_distillation_and_prune_layers(tmp_path: Path) -> None:
    student, teacher = Pooled(0).eval(), Pooled(1).eval()
    teacher_calls = []
    teacher.register_forward_hook(lambda m, a, o: teacher_calls.append(1))
    batches = [b[0] for b in _batches()]
    ctx = Context(example_inputs=batches[0], unlabeled_data=batches, teacher=teacher, progress=False, seed=0)
    recipe = Recipe.from_yaml(yaml.safe_dump({"name": "ld", "steps": [
        {"kind": "train.layerdrop", "with": {"steps": 4, "p": 0.5, "objective": "embedding",
                                             "objective_options": {"loss": "cosine"}}},
        {"kind": "prune.layers", "with": {"keep_every": 2}}]}))
    out = recipe.run(student, ctx)
    assert len(teacher_calls) == 4  # distill.embedding ran the teacher once per step
    recs = slimkit.records(out)
    assert [r.kind for r in recs] == ["train.layerdrop", "prune.layers"]
    assert recs[0].data["objective"] == "distill.embedding" and recs[0].data["train"]["steps"] == 4
    assert len(out.encoder.encoder.layer) == N_BLOCKS // 2
    slimkit.save(out, tmp_path / "m")
    restored = slimkit.restore(tmp_path / "m", model=lambda: Pooled(5))
    with torch.no_grad():
        assert torch.equal(restored.eval()(**batches[0]), out.eval()(**batches[0]))


def test_replay_rejects_a_record_naming_blocks_the_model_lacks(tmp_path: Path) -> None:
    out = slimkit.apply(tiny_bert(), LayerdropTrain(steps=2, objective="task"), Targets(), _ctx())
    manifest_of(out).records[0].data["blocks"].append("encoder.layer.9")
    slimkit.save(out, tmp_path / "m")
    with pytest.raises(ArtifactError, match="encoder.layer.9"):
        slimkit.restore(tmp_path / "m", model=lambda: tiny_bert(1))


def test_residual_style_blocks_named_by_targets() -> None:
    class Res(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.f = nn.Linear(8, 8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + torch.relu(self.f(x))

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), Res(), Res(), Res(), nn.Linear(8, 2))
    assert [n for n, _ in find_blocks(model, Targets(types=("Res",)), "t")] == ["1", "2", "3"]
    g = torch.Generator().manual_seed(0)
    data = [(torch.randn(4, 4, generator=g), torch.randn(4, 2, generator=g)) for _ in range(2)]
    ctx = Context(example_inputs=data[0][0], train_data=data, progress=False, seed=0,
                  loss_fn=lambda m, b: nn.functional.mse_loss(m(b[0]), b[1]))
    out = slimkit.apply(model, LayerdropTrain(steps=20, p=0.5, objective="task"), Targets(types=("Res",)), ctx)
    rec = slimkit.records(out)[0]
    assert rec.data["blocks"] == ["1", "2", "3"] and sum(rec.data["skips"]) > 0 and sum(rec.data["runs"]) > 0


def test_a_block_returning_a_tuple_is_replaced_by_the_input_first_in_a_tuple() -> None:
    class Pair(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.f = nn.Linear(8, 8)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return x + self.f(x), self.f.weight.sum()

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layers = nn.ModuleList([Pair(), Pair()])

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            for layer in self.layers:
                x = layer(x)[0]
            return x

    net, x = Net(), torch.randn(3, 8)
    blocks = find_blocks(net, Targets(), "t")
    identities = probe_identities(net, blocks, x, "t")
    assert [n for n, _ in blocks] == ["layers.0", "layers.1"]
    assert identities[0](x)[0] is x and identities[0](x)[1] is None and len(identities[0](x)) == 2
    with BlockDropper(blocks, [0.999, 0.999], identities, 0).installed():
        net.train()
        assert torch.equal(net(x), x)  # both blocks skipped: the identity


def test_errors_are_slimkit_errors() -> None:
    mlp = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    ctx = Context(example_inputs=torch.randn(2, 4), train_data=[(torch.randn(2, 4), torch.randn(2, 2))],
                  loss_fn=lambda m, b: nn.functional.mse_loss(m(b[0]), b[1]), progress=False)
    with pytest.raises(MethodError, match="no nn.ModuleList of same-class blocks"):
        slimkit.apply(mlp, LayerdropTrain(steps=1, objective="task"), Targets(), ctx)
    with pytest.raises(MethodError, match=r"block 0 \(Linear\) maps shape \[2, 4\] to \[2, 8\]"):
        slimkit.apply(mlp, LayerdropTrain(steps=1, objective="task"), Targets(types=("Linear",)), ctx)
    with pytest.raises(MethodError, match="select no module"):
        slimkit.apply(mlp, LayerdropTrain(steps=1, objective="task"), Targets(types=("Conv2d",)), ctx)
    with pytest.raises(MethodError, match="Context.teacher"):
        slimkit.apply(tiny_bert(), LayerdropTrain(steps=1), Targets(), _ctx())
    with pytest.raises(ConfigError, match="'p'"):
        LayerdropTrain(p=1.0)
    with pytest.raises(ConfigError, match="objective_options.no_such"):
        LayerdropTrain(objective_options={"no_such": 1})
    with pytest.raises(ConfigError, match="objective_options.loss"):
        LayerdropTrain(objective_options={"loss": "l1"})
    with pytest.raises(ConfigError, match="loop options"):
        LayerdropTrain(objective_options={"steps": 3})
    with pytest.raises(ConfigError, match="objective_options"):
        LayerdropTrain(objective="task", objective_options={"loss": "mse"})


def test_drop_probabilities() -> None:
    assert drop_probabilities(3, 0.3, "uniform") == [0.3, 0.3, 0.3]
    assert drop_probabilities(4, 0.4, "linear") == pytest.approx([0.1, 0.2, 0.3, 0.4])
