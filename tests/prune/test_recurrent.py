"""Recurrent layers in pruning: hidden units of LSTM/GRU (uni/bi, multi-layer, batch_first or not)."""
from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

import slimkit
from slimkit import Context, Targets
from slimkit.prune import ChannelPrune, MagnitudePrune
from slimkit.prune.graph import analyze
from slimkit.prune.recurrent import param_names

pytestmark = pytest.mark.usefixtures("one_thread")

VOCAB, EMB, HID, CLASSES = 40, 8, 6, 3


class Tagger(nn.Module):
    """Embedding -> RNN -> (mean over time of the outputs | final state of the last layer) -> Linear."""

    def __init__(self, cls: type[nn.RNNBase], bidirectional: bool, batch_first: bool, layers: int = 2,
                 read: str = "output") -> None:
        super().__init__()
        self.batch_first, self.read = batch_first, read
        self.emb = nn.Embedding(VOCAB, EMB)
        self.rnn = cls(EMB, HID, num_layers=layers, bidirectional=bidirectional, batch_first=batch_first)
        d = 2 if bidirectional else 1
        self.head = nn.Linear(d * HID if read == "output" else (d * HID if bidirectional else HID), CLASSES)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:  # ids: [B, T]
        x = self.emb(ids)  # [B, T, E]
        if not self.batch_first:
            x = x.transpose(0, 1)  # [T, B, E]
        out, state = self.rnn(x)
        if self.read == "output":
            return self.head(out.mean(dim=1 if self.batch_first else 0))  # [B, C]
        h = state[0] if isinstance(state, tuple) else state  # [L*D, B, H]
        if self.rnn.bidirectional:
            return self.head(torch.cat([h[-2], h[-1]], dim=-1))  # both directions of the last layer
        return self.head(h[-1])


CASES = list(itertools.product((nn.LSTM, nn.GRU), (False, True), (False, True), ("output", "state")))
IDS = [f"{c.__name__}-{'bi' if b else 'uni'}-{'bf' if f else 'tf'}-{r}" for c, b, f, r in CASES]


def _model(cls, bi, bf, read, seed=0):
    torch.manual_seed(seed)
    return Tagger(cls, bi, bf, read=read).eval(), torch.randint(0, VOCAB, (3, 7))


def _zero_units(model: Tagger, dead: list[int]) -> None:
    """Zero every slice coupled to hidden units ``dead`` in every layer and direction."""
    rnn, g = model.rnn, {"LSTM": 4, "GRU": 3}[model.rnn.mode]
    d = 2 if rnn.bidirectional else 1
    rows = [k * HID + j for k in range(g) for j in dead]
    cols = [r * HID + j for r in range(d) for j in dead]
    with torch.no_grad():
        for layer in range(rnn.num_layers):
            for r in range(d):
                wi, wh, bi, bh = param_names(layer, r, True)
                for name in (wi, wh, bi, bh):
                    getattr(rnn, name)[rows] = 0
                getattr(rnn, wh)[:, dead] = 0
                if layer > 0:
                    getattr(rnn, wi)[:, cols] = 0
        model.head.weight[:, cols if model.head.in_features == d * HID else dead] = 0


@pytest.mark.parametrize("cls,bi,bf,read", CASES, ids=IDS)
def test_pruning_units_whose_weights_are_zero_keeps_the_output(cls, bi, bf, read) -> None:
    model, x = _model(cls, bi, bf, read)
    dead = [1, 4]
    _zero_units(model, dead)
    ref = model(x)
    out = slimkit.apply(model, ChannelPrune(ratio=len(dead) / HID), Targets(include=("rnn",)),
                        Context(example_inputs=x))
    rnn = out.rnn
    assert rnn.hidden_size == HID - len(dead)
    g = {"LSTM": 4, "GRU": 3}[rnn.mode]
    d = 2 if bi else 1
    h = HID - len(dead)
    for layer in range(2):
        for r in range(d):
            wi, wh, bias_i, bias_h = param_names(layer, r, True)
            assert getattr(rnn, wi).shape == (g * h, EMB if layer == 0 else d * h)
            assert getattr(rnn, wh).shape == (g * h, h)
            assert getattr(rnn, bias_i).shape == getattr(rnn, bias_h).shape == (g * h,)
    assert out.head.in_features == (d * h if (read == "output" or bi) else h)
    torch.testing.assert_close(out(x), ref, rtol=1e-5, atol=1e-6)
    assert rnn.weight_hh_l0.abs().sum(dim=0).min() > 0  # the dead units are the ones removed


def test_units_are_scored_over_every_coupled_slice() -> None:
    model, x = _model(nn.LSTM, True, True, "output")
    graph = analyze(model, x)
    g = next(g for g in graph.groups if ("rnn.weight_hh_l1", 1) in g.members)
    # the last layer's units: both directions' gate rows and recurrent columns, and the head columns
    for axis in [("rnn.weight_ih_l1", 0), ("rnn.weight_hh_l1", 0), ("rnn.bias_ih_l1", 0), ("rnn.bias_hh_l1", 0),
                 ("rnn.weight_ih_l1_reverse", 0), ("rnn.weight_hh_l1_reverse", 1), ("head.weight", 1)]:
        assert axis in g.members, axis
    assert g.n_units == 2 * HID
    rows = g.members[("rnn.weight_ih_l1", 0)]  # [4H]: gate k of unit j is row k*H + j
    assert (rows.reshape(4, HID) == rows[:HID]).all()
    first = next(g for g in graph.groups if ("rnn.weight_hh_l0", 1) in g.members)
    assert ("rnn.weight_ih_l1", 1) in first.members and ("rnn.weight_ih_l1_reverse", 1) in first.members


def test_one_hidden_size_for_all_layers_and_directions() -> None:
    model, x = _model(nn.LSTM, True, False, "output", seed=3)
    out = slimkit.apply(model, ChannelPrune(ratio=0.5, scope="global"), Targets(include=("rnn",)),
                        Context(example_inputs=x))
    sizes = {p.shape[1] for n, p in out.rnn.named_parameters() if n.startswith("weight_hh")}
    assert sizes == {out.rnn.hidden_size} and out.rnn.hidden_size < HID
    assert out(x).shape == (3, CLASSES)


def test_an_initial_state_from_outside_freezes_the_units() -> None:
    class WithState(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn = nn.GRU(4, HID, batch_first=True)
            self.head = nn.Linear(HID, 2)

        def forward(self, x: torch.Tensor, h0: torch.Tensor) -> torch.Tensor:
            return self.head(self.rnn(x, h0)[0][:, -1])

    with pytest.raises(slimkit.core.MethodError, match="no prunable channel group"):
        slimkit.apply(WithState(), ChannelPrune(ratio=0.5), Targets(include=("rnn",)),
                      Context(example_inputs=(torch.randn(2, 5, 4), torch.zeros(1, 2, HID))))


def test_save_restore_replays_the_shrink(tmp_path) -> None:
    model, x = _model(nn.LSTM, True, True, "state")
    out = slimkit.apply(model, ChannelPrune(ratio=0.5), Targets(include=("rnn",)), Context(example_inputs=x))
    slimkit.save(out, tmp_path / "a")
    back = slimkit.restore(tmp_path / "a", model=lambda: _model(nn.LSTM, True, True, "state", seed=5)[0])
    assert back.rnn.hidden_size == out.rnn.hidden_size == HID // 2
    torch.testing.assert_close(back(x), out(x))


@pytest.mark.parametrize("cls", [nn.LSTM, nn.GRU])
def test_magnitude_covers_every_recurrent_weight(cls) -> None:
    model, _ = _model(cls, True, True, "output")
    out = slimkit.apply(model, MagnitudePrune(sparsity=0.5), Targets())
    rec = slimkit.records(out)[-1]
    names = [n for n, _ in out.rnn.named_parameters() if n.startswith("weight")]
    assert len(names) == 8  # ih/hh x 2 layers x 2 directions
    for n in names:
        assert f"rnn.{n}" in rec.data["params"], n
        p = getattr(out.rnn, n)
        assert (p == 0).float().mean().item() == pytest.approx(0.5, abs=0.02), n
    assert not any(n.startswith("rnn.bias") for n in rec.data["params"])
    # the recurrent weights are most of the model's matrices; the old rule saw only emb and head
    assert rec.summary["numel"] > sum(getattr(out.rnn, n).numel() for n in names)


def test_projected_lstm_is_left_alone_and_round_to_applies() -> None:
    class Proj(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn = nn.LSTM(4, 8, proj_size=3, batch_first=True)
            self.head = nn.Linear(3, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.rnn(x)[0].mean(dim=1))

    x = torch.randn(2, 5, 4)
    with pytest.raises(slimkit.core.MethodError, match="no prunable channel group"):
        slimkit.apply(Proj(), ChannelPrune(ratio=0.5), Targets(include=("rnn",)), Context(example_inputs=x))
    model, ids = _model(nn.GRU, True, True, "output")
    out = slimkit.apply(model, ChannelPrune(ratio=0.3, round_to=4), Targets(include=("rnn",)),
                        Context(example_inputs=ids))
    assert out.rnn.hidden_size == 4  # 6 * 0.7 = 4.2 -> a multiple of 4
