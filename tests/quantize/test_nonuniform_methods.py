"""quantize.balanced / quantize.pow2 / quantize.residual_binary: codes, records and save -> restore."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

import slimkit
from slimkit.core import ConfigError, Context, config_class
from slimkit.quantize.nonuniform import (
    equal_frequency_bins,
    log2_quantize,
    residual_binary,
    residual_dequantize,
)
from slimkit.quantize.nonuniform_methods import balanced_codes, pow2_codes, residual_codes
from slimkit.quantize.packed import PackedLayer

from .lowbit_helpers import check_round_trip, inputs, tiny_model

# recipe-style steps: {kind, with}
STEPS = [
    {"kind": "quantize.balanced", "with": {"bits": 3}},
    {"kind": "quantize.pow2", "with": {"bits": 4, "storage": "auto"}},
    {"kind": "quantize.residual_binary", "with": {"bits": 2, "mode": "alternating"}},
    {"kind": "quantize.residual_binary", "with": {"bits": 3, "mode": "greedy", "per_channel": False}},
]


@pytest.mark.parametrize("step", STEPS, ids=lambda s: f"{s['kind']}-{s['with']['bits']}")
def test_kind_packs_every_layer_and_round_trips(step: dict, tmp_path: Path) -> None:
    config = config_class(step["kind"]).from_dict(step["with"])
    model = tiny_model()
    x = inputs()
    dense_out = model(x)
    out = slimkit.apply(model, config, None, Context(progress=False))
    layers = [m for m in out.modules() if isinstance(m, PackedLayer)]
    assert len(layers) == 2 and all(m.meta["bits"] == config.bits for m in layers)  # the conv and the linear
    rec = slimkit.records(out)[-1]
    assert rec.kind == step["kind"] and rec.summary["bits"] == config.bits
    assert set(rec.data["layers"]) == {"0", "4"}
    if config.storage == "packed":
        numel = sum(math.prod(m.meta["shape"]) for m in layers)
        assert rec.summary["code_bytes"] == sum(math.ceil(math.prod(m.meta["shape"]) * config.bits / 8)
                                                for m in layers)
        assert rec.summary["bits_per_weight"] == pytest.approx(8 * rec.summary["code_bytes"] / numel, abs=1e-4)
    assert 0 < rec.summary["weight_rel_error"] < 0.5
    assert not torch.equal(out(x), dense_out)  # the weights really changed
    check_round_trip(out, tmp_path / "q", x)


def test_balanced_codes_are_equal_frequency_bins() -> None:
    w = torch.randn(6, 40, generator=torch.Generator().manual_seed(0))
    codes, cb = balanced_codes(w, 3)
    ref_cb, ref_idx = equal_frequency_bins(w, 3)
    assert torch.equal(codes, ref_idx) and torch.equal(cb[0], ref_cb)
    assert torch.bincount(codes.reshape(-1), minlength=8).tolist() == [30] * 8  # 240 weights, 8 equal bins


def test_pow2_levels_are_powers_of_two_and_zeros_stay_zero() -> None:
    w = torch.randn(8, 16, generator=torch.Generator().manual_seed(1))
    w[w.abs() < 0.5] = 0.0  # a pruned layer
    codes, cb, zero_code = pow2_codes(w, 4)
    deq = cb[0][codes]
    assert torch.equal(deq, log2_quantize(w, 4).values)
    assert cb[0, zero_code] == 0 and torch.all(deq[w == 0] == 0)
    nz = deq[deq != 0].abs()
    assert torch.equal(torch.log2(nz), torch.round(torch.log2(nz)))
    assert int(codes.max()) < 2**4 - 1  # the top code is never written


@pytest.mark.parametrize("per_channel", [True, False])
def test_residual_codebook_reproduces_the_sum_of_binary_planes(per_channel: bool) -> None:
    w = torch.randn(5, 3, 3, 3, generator=torch.Generator().manual_seed(2))  # a conv kernel
    codes, cb = residual_codes(w, 3, "alternating", per_channel)
    axis = 0 if per_channel else None
    scales, signs = residual_binary(w, 3, mode="alternating", axis=axis)
    ref = residual_dequantize(scales, signs, axis)
    rows = codes.reshape(5, -1)
    g = cb.expand(5, -1) if cb.shape[0] == 1 else cb
    got = torch.gather(g, 1, rows).reshape(w.shape)
    torch.testing.assert_close(got, ref, atol=1e-6, rtol=0)


def test_residual_alternating_is_no_worse_than_greedy() -> None:
    errs = {}
    for mode in ("greedy", "alternating"):
        out = slimkit.apply(tiny_model(), config_class("quantize.residual_binary").from_dict({"mode": mode}), None,
                            Context(progress=False))
        errs[mode] = slimkit.records(out)[-1].summary["weight_rel_error"]
    assert errs["alternating"] <= errs["greedy"] + 1e-6


def test_new_kinds_are_listed_and_check_their_options() -> None:
    kinds = slimkit.kinds()
    assert {"quantize.balanced", "quantize.pow2", "quantize.residual_binary"} <= set(kinds)
    with pytest.raises(ConfigError, match="bits"):
        config_class("quantize.pow2").from_dict({"bits": 1})
    with pytest.raises(ConfigError, match="bits"):
        config_class("quantize.balanced").from_dict({"bits": 9})
    with pytest.raises(ConfigError, match="storage"):
        config_class("quantize.residual_binary").from_dict({"storage": "sparse"})
