"""Multi-model distillation strategies: ensemble teacher, TAKD chain, mutual learning, born-again
networks, and the FeatureTap hook helper."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from slimkit.core import MethodError
from slimkit.distill import (
    FeatureTap,
    MultiTeacher,
    mutual_learning,
    self_distill,
    teacher_assistant_chain,
)
from slimkit.distill.engine import CHECKPOINT_FILE, distill
from slimkit.distill.losses import kd_loss


def _mlp(seed: int, width: int = 16, dropout: float = 0.0, n_in: int = 6, n_out: int = 3) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(n_in, width), nn.ReLU(), nn.Dropout(dropout), nn.Linear(width, n_out))


def _blobs(n_batches: int = 6, bs: int = 32, seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """A separable 3-class problem: Gaussian blobs around well-spread centres."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(3, 6, generator=g) * 3.0  # [3, 6]
    out = []
    for _ in range(n_batches):
        y = torch.randint(0, 3, (bs,), generator=g)  # [B]
        x = centres[y] + 0.5 * torch.randn(bs, 6, generator=g)  # [B, 6]
        out.append((x, y))
    return out


def _weights(m: nn.Module) -> list[torch.Tensor]:
    return [t.detach().clone() for t in m.state_dict().values()]


def _equal(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def _accuracy(model: nn.Module, data: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    model.eval()
    with torch.no_grad():
        hits = sum(int((model(x).argmax(-1) == y).sum()) for x, y in data)
    return hits / sum(len(y) for _, y in data)


# --------------------------------------------------------------------------- MultiTeacher


def _linears() -> tuple[nn.Linear, nn.Linear, torch.Tensor]:
    torch.manual_seed(0)
    return nn.Linear(6, 4), nn.Linear(6, 4), torch.randn(5, 6)


def test_multi_teacher_averages_logits_with_normalised_weights():
    a, b, x = _linears()
    with torch.no_grad():
        assert torch.allclose(MultiTeacher([a, b])(x), (a(x) + b(x)) / 2)
        mt = MultiTeacher([a, b], weights=[1.0, 3.0])
        assert mt.weights == pytest.approx((0.25, 0.75))
        assert torch.allclose(mt(x), 0.25 * a(x) + 0.75 * b(x), atol=1e-6)


def test_multi_teacher_probs_returns_log_of_averaged_probabilities():
    a, b, x = _linears()
    with torch.no_grad():
        out = MultiTeacher([a, b], weights=[2.0, 1.0], average="probs")(x)  # [5, 4]
        manual = (2 / 3) * F.softmax(a(x), -1) + (1 / 3) * F.softmax(b(x), -1)
    assert torch.allclose(out.exp().sum(-1), torch.ones(5), atol=1e-6)
    assert torch.allclose(out.exp(), manual, atol=1e-6)
    assert torch.allclose(F.softmax(out, -1), manual, atol=1e-6)  # what kd_loss at T=1 would see
    assert not torch.allclose(out.exp(), F.softmax((2 * a(x) + b(x)) / 3, -1), atol=1e-3)  # not logit mode


def test_multi_teacher_passes_keyword_inputs_and_works_as_a_teacher():
    class KwModel(nn.Module):
        def __init__(self, scale: float) -> None:
            super().__init__()
            self.scale = scale

        def forward(self, *, input_ids: torch.Tensor) -> torch.Tensor:
            return input_ids * self.scale

    x = torch.randn(2, 3)
    assert torch.allclose(MultiTeacher([KwModel(1.0), KwModel(3.0)])(input_ids=x), 2 * x)

    # as the engine's teacher: frozen in eval mode during the run, flags restored after
    a, b = _mlp(1), _mlp(2)
    data = _blobs(n_batches=2, bs=8)
    seen = []

    def loss(s_out, t_out, batch):
        seen.append((a.training, b.training, t_out.requires_grad))
        with torch.no_grad():
            assert torch.allclose(t_out, (a(batch[0]) + b(batch[0])) / 2)
        return kd_loss(s_out, t_out)

    distill(_mlp(3), MultiTeacher([a, b]), data, loss=loss, steps=2)
    assert seen == [(False, False, False)] * 2 and a.training and b.training


@pytest.mark.parametrize("kwargs", [
    {"weights": [1.0, -1.0]}, {"weights": [1.0, 0.0]}, {"weights": [1.0]}, {"weights": [1.0, float("nan")]},
    {"average": "median"},
])
def test_multi_teacher_rejects_bad_arguments(kwargs):
    a, b, _ = _linears()
    with pytest.raises(MethodError, match="MultiTeacher"):
        MultiTeacher([a, b], **kwargs)


def test_multi_teacher_rejects_no_teachers_and_mismatched_outputs():
    with pytest.raises(MethodError, match="at least one"):
        MultiTeacher([])
    with pytest.raises(MethodError, match="different shapes"):
        MultiTeacher([nn.Linear(6, 4), nn.Linear(6, 3)])(torch.randn(2, 6))


# --------------------------------------------------------------------------- TAKD chain


def test_teacher_assistant_chain_uses_each_trained_stage_as_next_teacher(tmp_path):
    data = _blobs(n_batches=3, bs=16)
    teacher, assistant, student = _mlp(1, width=32), _mlp(2, width=16), _mlp(3, width=8)
    before = [_weights(assistant), _weights(student)]
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    def loss(s_out, t_out, batch):
        seen.append((batch[0], t_out.detach().clone()))
        return kd_loss(s_out, t_out, batch[1], temperature=2.0)

    results = teacher_assistant_chain(teacher, [assistant, student], data, loss=loss, steps=[6, 4], lr=1e-2,
                                      checkpoint_dir=tmp_path)
    assert [r.steps for r in results] == [6, 4]
    assert not _equal(before[0], _weights(assistant)) and not _equal(before[1], _weights(student))
    teacher.eval(), assistant.eval()
    with torch.no_grad():
        # stage 1 saw the original teacher; stage 2 saw the *trained* assistant, not the teacher
        assert all(torch.allclose(t, teacher(x)) for x, t in seen[:6])
        assert all(torch.allclose(t, assistant(x)) for x, t in seen[6:])
        assert not torch.allclose(seen[6][1], teacher(seen[6][0]))
    # stages never share (and so never resume) one checkpoint file
    assert (tmp_path / "stage-0" / CHECKPOINT_FILE).is_file() and (tmp_path / "stage-1" / CHECKPOINT_FILE).is_file()


def test_teacher_assistant_chain_rejects_bad_steps_and_empty_chain():
    def loss(s, t, b):
        return kd_loss(s, t)
    with pytest.raises(MethodError, match="steps has 3 entries for 2 stages"):
        teacher_assistant_chain(_mlp(1), [_mlp(2), _mlp(3)], _blobs(1), loss=loss, steps=[1, 2, 3])
    with pytest.raises(MethodError, match="empty"):
        teacher_assistant_chain(_mlp(1), [], _blobs(1), loss=loss, steps=1)
    with pytest.raises(MethodError, match="teacher_cache"):
        teacher_assistant_chain(_mlp(1), [_mlp(2)], _blobs(1), loss=loss, steps=1, teacher_cache=[None])


# --------------------------------------------------------------------------- mutual learning


def test_mutual_learning_trains_every_peer_to_high_accuracy():
    data = _blobs()
    peers = [_mlp(10), _mlp(11, width=8).eval()]
    hist = mutual_learning(peers, data, steps=100, lr=1e-2, temperature=2.0, alpha=0.5)
    assert [p.training for p in peers] == [True, False]  # training flags restored
    assert len(hist) == 2 and all(len(h) == 100 for h in hist)
    assert all(h[-1] < h[0] for h in hist)
    assert all(_accuracy(p, data) > 0.9 for p in peers)


def test_mutual_learning_kd_term_pulls_peers_together():
    # alpha=1: no labels in the loss at all, only mimicry, so the peers must converge to each other
    data = _blobs(n_batches=2)
    peers = [_mlp(10), _mlp(11)]
    x = data[0][0]

    def gap() -> float:
        with torch.no_grad():
            return float(kd_loss(peers[0](x), peers[1](x), temperature=1.0))

    start = gap()
    mutual_learning(peers, data, steps=40, lr=1e-2, alpha=1.0)
    assert gap() < 0.2 * start


def test_mutual_learning_is_deterministic_under_a_seed():
    def run(seed: int) -> list[list[torch.Tensor]]:
        peers = [_mlp(10, dropout=0.3), _mlp(11, dropout=0.3)]
        mutual_learning(peers, _blobs(n_batches=2), steps=10, lr=1e-2, seed=seed)
        return [_weights(p) for p in peers]

    a, b, c = run(0), run(0), run(1)
    assert all(_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not _equal(a[0], c[0])  # the seed drives dropout, so it matters


def test_mutual_learning_rejects_one_peer_and_unlabelled_data():
    with pytest.raises(MethodError, match="at least 2 peers"):
        mutual_learning([_mlp(0)], _blobs(1), steps=1)
    m = _mlp(0)
    with pytest.raises(MethodError, match="distinct"):
        mutual_learning([m, m], _blobs(1), steps=1)
    with pytest.raises(MethodError, match="labels"):
        mutual_learning([_mlp(0), _mlp(1)], [torch.randn(4, 6)], steps=1)


# --------------------------------------------------------------------------- born-again networks


def test_self_distill_restarts_each_generation_from_the_same_init():
    data = _blobs(n_batches=3, bs=16)
    model = _mlp(5)
    init = _weights(model)
    calls: list[tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]] = []

    def loss(s_out, t_out, batch):
        calls.append((s_out.detach().clone(), None if t_out is None else t_out.detach().clone(), batch[0]))
        if t_out is None:  # generation 0: labels only
            return F.cross_entropy(s_out, batch[1])
        return kd_loss(s_out, t_out, batch[1], temperature=2.0)

    last, results = self_distill(model, data, generations=2, loss=loss, steps=8, lr=1e-2)
    assert len(results) == 2 and [r.steps for r in results] == [8, 8]
    assert type(last) is type(model) and last is not model
    assert not _equal(init, _weights(model)) and not _equal(init, _weights(last))  # both generations trained
    assert all(t is None for _, t, _ in calls[:8])
    # first forward of each generation ran the same init weights on the same first batch
    assert torch.equal(calls[0][0], calls[8][0])
    model.eval()
    with torch.no_grad():  # generation 1's teacher was the trained generation 0
        assert all(torch.allclose(t, model(x)) for _, t, x in calls[8:])


def test_self_distill_rejects_bad_generations_and_steps():
    def loss(s, t, b):
        return F.cross_entropy(s, b[1])
    with pytest.raises(MethodError, match="generations"):
        self_distill(_mlp(0), _blobs(1), generations=0, loss=loss, steps=1)
    with pytest.raises(MethodError, match="steps has 1 entries for 3 stages"):
        self_distill(_mlp(0), _blobs(1), generations=3, loss=loss, steps=[1])


# --------------------------------------------------------------------------- FeatureTap


class _Block(nn.Module):
    """A transformer-like layer that returns ``(hidden, attention)``."""

    def __init__(self) -> None:
        super().__init__()
        self.dense = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.dense(x)  # [B, T, 4]
        return h, torch.softmax(h @ h.transpose(1, 2), -1)  # [B, T, 4], [B, T, T]


class _Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.ModuleList([_Block(), _Block()])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.layer:
            x = block(x)[0]
        return x


def _all_hooks_gone(model: nn.Module) -> bool:
    return all(not m._forward_hooks for m in model.modules())


def test_feature_tap_captures_named_sequential_layers():
    model = _mlp(0, width=16, n_out=4)
    x = torch.randn(5, 6)
    with FeatureTap(model, ["0", "3"]) as tap:
        out = model(x)
        assert not _all_hooks_gone(model)
    assert set(tap.outputs) == {"0", "3"}
    assert tap.outputs["0"].shape == (5, 16) and tap.outputs["3"].shape == (5, 4)
    assert torch.equal(tap.outputs["3"], out)
    assert tap.outputs["0"].requires_grad  # a student's features can be trained through
    assert _all_hooks_gone(model)


def test_feature_tap_globs_and_takes_first_element_of_tuple_outputs():
    torch.manual_seed(0)
    model = nn.Module()
    model.encoder = _Encoder()
    x = torch.randn(2, 3, 4)
    with FeatureTap(model, "encoder.layer.?") as tap:  # fnmatch's * would also match the .dense children
        model.encoder(x)
    assert sorted(tap.outputs) == ["encoder.layer.0", "encoder.layer.1"]
    h0 = model.encoder.layer[0](x)[0]
    assert torch.allclose(tap.outputs["encoder.layer.0"], h0)
    assert tap.outputs["encoder.layer.1"].shape == (2, 3, 4)
    assert _all_hooks_gone(model)


def test_feature_tap_unknown_name_raises_listing_names():
    model = _mlp(0)
    with pytest.raises(MethodError, match=r"no module named 'encoder\.9'.*'0'"):
        FeatureTap(model, ["0", "encoder.9"])
    assert _all_hooks_gone(model)


def test_feature_tap_removes_hooks_when_the_forward_fails():
    model = _mlp(0)
    with pytest.raises(RuntimeError), FeatureTap(model, ["0"]):
        model(torch.randn(2, 7))  # wrong input width
    assert _all_hooks_gone(model)


def test_feature_tap_takes_re_patterns_like_targets():
    torch.manual_seed(0)
    model = nn.Module()
    model.encoder = _Encoder()
    with FeatureTap(model, r"re:encoder\.layer\.\d+") as tap:  # fullmatch: not the .dense children
        model.encoder(torch.randn(2, 3, 4))
    assert sorted(tap.outputs) == ["encoder.layer.0", "encoder.layer.1"]
    with pytest.raises(MethodError, match="no module named"):
        FeatureTap(model, r"re:encoder\.layer\.[5-9]")
