"""Mixed precision: Hutchinson trace, the measured-error probe, the bit allocator and quantize.mixed."""
from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

import slimkit
from slimkit.core import Context
from slimkit.core.errors import MethodError
from slimkit.quantize import MixedQuant, WeightOnlyConv2d, WeightOnlyLinear, allocate_bits
from slimkit.quantize.mixed import format_nbytes
from slimkit.quantize.rtn import dequantize_weight, rtn_quantize
from slimkit.quantize.sensitivity import hutchinson_trace, measured_error_probe


def test_hutchinson_on_quadratic_with_known_hessian() -> None:
    g = torch.Generator().manual_seed(0)
    m = torch.randn(10, 10, generator=g)
    a = m @ m.T + torch.eye(10)  # SPD Hessian of 0.5 z^T A z, z = [x (4), y (6)]
    x = torch.randn(4, requires_grad=True, generator=g)
    y = torch.randn(6, requires_grad=True, generator=g)

    def loss() -> torch.Tensor:
        z = torch.cat([x, y])
        return 0.5 * z @ a @ z

    tx, ty = hutchinson_trace(loss, [x, y], n_samples=3000, generator=torch.Generator().manual_seed(1))
    assert tx == pytest.approx(float(torch.trace(a[:4, :4])), rel=0.05)
    assert ty == pytest.approx(float(torch.trace(a[4:, 4:])), rel=0.05)
    d = torch.diag(torch.arange(1.0, 11.0))  # diagonal Hessian: v^T H v = tr(H) exactly for any v
    exact = hutchinson_trace(lambda: 0.5 * torch.cat([x, y]) @ d @ torch.cat([x, y]), [x, y], n_samples=1)
    assert exact == pytest.approx([10.0, 45.0])


def test_allocator_meets_budget_and_favours_sensitive_layers() -> None:
    sizes = {"a": 1000, "b": 1000, "c": 1000}
    sens = {"a": 100.0, "b": 1.0, "c": 0.01}
    budget = 1000 * (8 + 4 + 2) / 8  # room for one layer at 8, one at 4, one at 2 bits
    bits = allocate_bits(sens, sizes, budget, choices=(2, 4, 8))
    assert bits == {"a": 8, "b": 4, "c": 2}
    # a budget that fits float for one layer keeps the most sensitive one in float
    very = {**sens, "a": 1e6}  # so sensitive that even 8 bits costs more than b and c at low bits
    bits32 = allocate_bits(very, sizes, 4000 + 500 + 250, choices=(2, 4, 8, 32))
    assert bits32 == {"a": 32, "b": 4, "c": 2} and sum(sizes[n] * b / 8 for n, b in bits32.items()) <= 4750
    with pytest.raises(MethodError, match="budget"):
        allocate_bits(sens, sizes, 100, choices=(2, 4))


def test_allocator_is_optimal_on_small_instances() -> None:
    g = torch.Generator().manual_seed(2)
    choices = (2, 3, 4, 8, 32)
    for trial in range(5):
        names = [f"l{i}" for i in range(4)]
        sizes = {n: int(torch.randint(100, 2000, (1,), generator=g)) for n in names}
        sens = {n: float(torch.rand(1, generator=g)) * 10 ** float(torch.randint(-2, 3, (1,), generator=g))
                for n in names}
        budget = 0.3 * sum(sizes.values()) * 4
        got = allocate_bits(sens, sizes, budget, choices, resolution=4096)

        def cost(assign: dict[str, int], sizes: dict[str, int] = sizes) -> float:
            return sum(sizes[n] * 4 if b == 32 else -(-sizes[n] * b // 8) for n, b in assign.items())

        def damage(assign: dict[str, int], sizes: dict[str, int] = sizes, sens: dict[str, float] = sens) -> float:
            return sum(sens[n] * (0 if b == 32 else sizes[n] * 4.0 ** -b) for n, b in assign.items())

        assert cost(got) <= budget
        slack = budget * (1 - len(names) / 4096)  # the DP rounds each cost up by < 1 unit
        best = min((damage(dict(zip(names, c))) for c in itertools.product(choices, repeat=4)
                    if cost(dict(zip(names, c))) <= slack), default=None)
        assert best is not None and damage(got) <= best + 1e-12


def test_measured_error_probe_ranks_and_restores() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 16), nn.Linear(16, 16))
    with torch.no_grad():
        model[1].weight.mul_(20.0)  # amplifies the error of layer 0 as well as its own rounding
    before = [p.detach().clone() for p in model.parameters()]
    inputs = [torch.randn(8, 16) for _ in range(2)]
    def qfn(w):
        return dequantize_weight(*rtn_quantize(w, 2, None, True))
    damage = measured_error_probe(model, ["0", "1"], qfn, inputs)
    assert damage["0"] > 0 and damage["1"] > 0
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    kl = measured_error_probe(model, ["0"], qfn, inputs, metric="kl")
    assert kl["0"] > 0


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(16 * 16, 64),
                         nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))


@pytest.mark.parametrize("sensitivity", ["probe", "hessian"])
def test_mixed_method_meets_budget_and_restores(tmp_path, sensitivity: str) -> None:
    model = _net()
    g = torch.Generator().manual_seed(3)
    xs = [torch.randn(16, 1, 4, 4, generator=g) for _ in range(2)]
    ctx = Context(calib_data=xs, train_data=[(x, torch.randint(0, 10, (16,), generator=g)) for x in xs],
                  loss_fn=lambda m, b: nn.functional.cross_entropy(m(b[0]), b[1]))
    cfg = MixedQuant(budget_ratio=0.2, sensitivity=sensitivity, keep_float=("7",), group_size=32,
                         hutchinson_samples=4)
    q = slimkit.apply(model, cfg, ctx=ctx)
    rec = slimkit.records(q)[-1]
    layers = rec.data["layers"]
    assert set(layers) == {"0", "3", "5", "7"}
    assert layers["7"]["bits"] == 32 and isinstance(q[7], nn.Linear)  # kept in float
    assert rec.summary["total_weight_bytes"] <= rec.summary["budget_bytes"]
    shapes = {"0": (16, 9), "3": (64, 256), "5": (64, 64), "7": (10, 64)}
    assert rec.summary["total_weight_bytes"] == sum(
        format_nbytes(*shapes[n], layers[n]["bits"], 32, False) for n in shapes)
    assert any(layers[n]["bits"] < 32 for n in ("0", "3", "5"))
    for n in ("0", "3", "5"):
        if layers[n]["bits"] < 32:
            assert isinstance(q[int(n)], WeightOnlyConv2d if n == "0" else WeightOnlyLinear)
    slimkit.save(q, tmp_path)
    r = slimkit.restore(tmp_path, model=_net)
    with torch.no_grad():
        assert torch.allclose(r(xs[0]), q(xs[0]), atol=1e-5)


def test_mixed_budget_too_small() -> None:
    with pytest.raises(MethodError, match="budget"):
        slimkit.apply(_net(), MixedQuant(budget_bytes=10, choices=(2, 4)), ctx=Context(calib_data=[torch.randn(2, 1, 4, 4)]))
