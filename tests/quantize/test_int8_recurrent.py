"""Dynamic int8 LSTM/GRU (Int8RNN): close to float, equal to the integer emulation, stored as plain buffers."""
from __future__ import annotations

import copy
import itertools

import pytest
import torch
from torch import nn

import slimkit
from slimkit import Targets
from slimkit.core import MethodError
from slimkit.quantize.int8_recurrent import Int8RNN, emulate
from slimkit.quantize.ptq import DynamicQuant

pytestmark = pytest.mark.usefixtures("one_thread")

CASES = list(itertools.product((nn.LSTM, nn.GRU), (False, True), (False, True)))
IDS = [f"{c.__name__}-{'bi' if b else 'uni'}-{'bf' if f else 'tf'}" for c, b, f in CASES]


class Net(nn.Module):
    def __init__(self, cls: type[nn.RNNBase], bidirectional: bool = True, batch_first: bool = True) -> None:
        super().__init__()
        self.rnn = cls(8, 12, num_layers=2, bidirectional=bidirectional, batch_first=batch_first)
        self.head = nn.Linear(12 * (2 if bidirectional else 1), 3)
        self.batch_first = batch_first

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return self.head(out.mean(dim=1 if self.batch_first else 0))


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("cls,bi,bf", CASES, ids=IDS)
def test_int8_rnn_close_to_float_and_equal_to_integer_emulation(cls, bi, bf) -> None:
    torch.manual_seed(0)
    rnn = cls(8, 12, num_layers=2, bidirectional=bi, batch_first=bf).eval()
    q = Int8RNN.from_float(rnn)
    x = torch.randn(3, 6, 8)
    with torch.no_grad():
        ref, _ = rnn(x)
        got, state = q(x)
        emu = emulate(q, x)
    assert got.shape == ref.shape
    float_err = (got - ref).abs().max().item()
    assert 0.0 < _rel(got, ref) < 0.03  # int8 changes the result, slightly
    # the kernel computes what the integer emulation computes (a rare 1-LSB rounding tie aside)
    emu_err = (got - emu).abs()
    assert (emu_err > 1e-5).float().mean().item() < 0.02
    assert emu_err.max().item() < float_err
    h = state[0] if cls is nn.LSTM else state
    assert h.shape == (2 * (2 if bi else 1), 3 if bf else 6, 12)  # x is [B, T, I] or [T, B, I]


def test_unbatched_input_and_given_state() -> None:
    torch.manual_seed(1)
    rnn = nn.LSTM(8, 12).eval()
    q = Int8RNN.from_float(rnn)
    x = torch.randn(5, 8)  # [T, I]
    h0 = (torch.randn(1, 12) * 0.1, torch.randn(1, 12) * 0.1)
    with torch.no_grad():
        ref, (h, c) = rnn(x, h0)
        got, (qh, qc) = q(x, h0)
    assert got.shape == ref.shape and qh.shape == h.shape
    assert _rel(got, ref) < 0.03


def test_quantize_dynamic_swaps_rnn_and_round_trips(tmp_path) -> None:
    torch.manual_seed(0)
    model = Net(nn.LSTM).eval()
    x = torch.randn(2, 5, 8)
    q = slimkit.apply(model, DynamicQuant(), Targets())
    assert isinstance(q.rnn, Int8RNN) and q.rnn.weight_hh_l1_reverse_int8.dtype == torch.int8
    assert _rel(q(x), model(x)) < 0.03
    q(x)  # packs the weights; a deep copy must still work
    copy.deepcopy(q)
    slimkit.save(q, tmp_path / "q")
    back = slimkit.restore(tmp_path / "q", model=lambda: Net(nn.LSTM))
    assert isinstance(back.rnn, Int8RNN)
    torch.testing.assert_close(back(x), q(x), rtol=0, atol=0)
    # the artifact holds plain tensors only: int8 codes, float scales and biases
    assert all(t.dtype in (torch.int8, torch.float32) for t in back.state_dict().values())


def test_pruned_then_int8_gru(tmp_path) -> None:
    from slimkit import Context
    from slimkit.prune import ChannelPrune

    torch.manual_seed(0)
    model = Net(nn.GRU).eval()
    x = torch.randn(2, 5, 8)
    small = slimkit.apply(model, ChannelPrune(ratio=0.5), Targets(include=("rnn",)), Context(example_inputs=x))
    q = slimkit.apply(small, DynamicQuant(), Targets())
    assert q.rnn.hidden_size == 6
    slimkit.save(q, tmp_path / "q")
    back = slimkit.restore(tmp_path / "q", model=lambda: Net(nn.GRU))
    torch.testing.assert_close(back(x), q(x), rtol=0, atol=0)


def test_plain_rnn_and_projected_lstm_are_refused() -> None:
    class Proj(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn = nn.LSTM(4, 8, proj_size=3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.rnn(x)[0]

    with pytest.raises(MethodError, match="proj_size"):
        slimkit.apply(Proj(), DynamicQuant(), Targets(include=("rnn",)))


@pytest.mark.parametrize("cls", [nn.LSTM, nn.GRU])
def test_profile_counts_recurrent_macs_like_float(cls) -> None:
    from slimkit import measure

    torch.manual_seed(0)
    model = Net(cls).eval()
    x = torch.randn(1, 5, 8)
    g = 4 if cls is nn.LSTM else 3
    # per token: layer 0 reads 8 inputs, layer 1 reads 2*12; both directions; plus the 24 -> 3 head
    expected = 5 * 2 * g * 12 * ((8 + 12) + (24 + 12)) + 24 * 3
    assert measure.profile(model, x).macs == expected
    q = slimkit.apply(model, DynamicQuant(), Targets())
    assert measure.profile(q, x).macs == expected
