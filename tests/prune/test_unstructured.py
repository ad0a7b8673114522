"""Registered sparsity methods through slimkit.apply, save/restore, and the digits 90 % claim."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import slimkit
from slimkit.core import ConfigError, Context, MethodError, Targets
from slimkit.core.encoding import dense_nbytes
from slimkit.prune import (
    BlockPrune,
    DsdPrune,
    GradualPrune,
    MagnitudePrune,
    MovementPrune,
    NMPrune,
    ObdPrune,
    RegrowPrune,
    SparseGPTPrune,
    WandaPrune,
)
from slimkit.prune.sparsity import nm_ok

LIN = Targets(types=("Linear",))


pytestmark = pytest.mark.usefixtures("one_thread")


class Block(nn.Module):
    """A transformer-ish block: names put Linears into attention / ffn classes."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(50, 16)
        self.attention = nn.ModuleDict({"query": nn.Linear(16, 16), "value": nn.Linear(16, 16)})
        self.intermediate = nn.Linear(16, 64)
        self.output = nn.Linear(64, 16)


def _mlp_calib(seed: int = 0) -> tuple[nn.Module, Context, torch.Tensor]:
    """MLP on correlated, unevenly scaled inputs (where data-aware pruning should win)."""
    g = torch.Generator().manual_seed(seed)
    scales = torch.linspace(0.05, 4.0, 32)[torch.randperm(32, generator=g)]
    x = (torch.randn(512, 32, generator=g) @ (torch.randn(32, 32, generator=g) / 6) + torch.randn(512, 1, generator=g)
         + torch.randn(512, 32, generator=g) * scales)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(32, 48), nn.ReLU(), nn.Linear(48, 8))
    ctx = Context(calib_data=[x[i:i + 128] for i in range(0, 512, 128)], progress=False)
    return model.eval(), ctx, x


def _out_err(a: nn.Module, b: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        return float(((a(x) - b(x)) ** 2).mean())


def test_magnitude_class_scopes() -> None:
    torch.manual_seed(0)
    m = Block()
    with torch.no_grad():
        m.intermediate.weight.mul_(20)  # the ffn class is on a much larger scale
    blind = slimkit.apply(m, MagnitudePrune(sparsity=0.5, scope="global"))
    uni = slimkit.apply(m, MagnitudePrune(sparsity=0.5, scope="class-uniform"))
    dist = slimkit.apply(m, MagnitudePrune(sparsity=0.5, scope="class-distribution"))
    rec = slimkit.records(uni)[0]
    assert rec.data["classes"] == {"embed.weight": "embedding", "attention.query.weight": "attention",
                                   "attention.value.weight": "attention", "intermediate.weight": "ffn",
                                   "output.weight": "ffn"}
    assert float((blind.intermediate.weight == 0).float().mean()) < 0.1  # class-blind spares the big layer
    emb = float((uni.embed.weight == 0).float().mean())
    assert emb == pytest.approx(0.5, abs=0.002)  # each class alone reaches the target
    attn = torch.cat([uni.attention.query.weight.reshape(-1), uni.attention.value.weight.reshape(-1)])
    assert float((attn == 0).float().mean()) == pytest.approx(0.5, abs=0.002)
    drec = slimkit.records(dist)[0]
    assert drec.summary["sparsity"] == pytest.approx(0.5, abs=0.001) and drec.data["lambda"] > 0
    lam = slimkit.apply(m, MagnitudePrune(scope="class-distribution", threshold_lambda=drec.data["lambda"]))
    assert torch.equal(lam.output.weight == 0, dist.output.weight == 0)  # solved lambda reproduces the rule
    override = slimkit.apply(m, MagnitudePrune(sparsity=0.5, scope="class-uniform", classes={"all": ("*",)}))
    assert set(slimkit.records(override)[0].data["classes"].values()) == {"all"}
    with pytest.raises(ConfigError, match="threshold_lambda"):
        MagnitudePrune(scope="layer", threshold_lambda=1.0)


def test_obd_beats_magnitude_on_unevenly_scaled_regression() -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(400, 20, generator=g) * torch.logspace(-1, 1, 20)  # feature scales 0.1 .. 10
    w_true = torch.randn(1, 20, generator=g) / torch.logspace(-1, 1, 20)  # small weights on big features
    y = x @ w_true.T + 0.1 * torch.randn(400, 1, generator=g)
    model = nn.Sequential(nn.Linear(20, 1, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.linalg.lstsq(x, y).solution.T)  # at the minimum, as OBD assumes
    def loss_fn(m, b):
        return nn.functional.mse_loss(m(b[0]), b[1])
    ctx = Context(train_data=[(x[i:i + 40], y[i:i + 40]) for i in range(0, 400, 40)], loss_fn=loss_fn)
    obd = slimkit.apply(model, ObdPrune(sparsity=0.5, batches=5, fisher="batch"), LIN, ctx)
    mag = slimkit.apply(model, MagnitudePrune(sparsity=0.5), LIN)
    assert slimkit.records(obd)[0].summary["batches"] == 5 and slimkit.records(obd)[0].summary["fisher"] == "batch"
    auto = slimkit.apply(model, ObdPrune(sparsity=0.5, batches=5), LIN, ctx)
    assert slimkit.records(auto)[0].summary["fisher"] == "sample"  # (x, y) batches split per sample
    with torch.no_grad():
        assert float(loss_fn(obd, (x, y))) < 0.7 * float(loss_fn(mag, (x, y)))
    # the pruned set is exactly the bottom half of 1/2 F_ii w_i^2, F = mean of squared batch gradients
    w = model[0].weight.detach()[0]  # [20]
    fisher = torch.zeros(20)
    for xb, yb in ctx.train_data[:5]:  # type: ignore[index]
        r = xb @ w - yb[:, 0]  # [40] residuals
        fisher += (2.0 / (len(r)) * (xb * r[:, None]).sum(0)) ** 2
    by_hand = torch.topk(0.5 * fisher / 5 * w**2, 10, largest=False).indices
    assert set(by_hand.tolist()) == set((obd[0].weight.detach()[0] == 0).nonzero().squeeze(1).tolist())
    # ... and mostly agrees with the exact-Hessian saliency h_ii = 2 mean(x_i^2)
    oracle = torch.topk((x**2).mean(0) * w**2, 10, largest=False).indices
    assert len(set(oracle.tolist()) & set(by_hand.tolist())) >= 7
    assert all(p.grad is None for p in obd.parameters())
    with pytest.raises(MethodError, match="loss_fn"):
        slimkit.apply(model, ObdPrune(), LIN, Context(train_data=ctx.train_data))


def test_per_sample_fisher_and_batch_splitting() -> None:
    from slimkit.prune.unstructured import empirical_fisher, split_batch

    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(12, 5, generator=g), torch.randn(12, 1, generator=g)
    model = nn.Sequential(nn.Linear(5, 1, bias=False))
    w = model[0].weight.detach()[0]
    def loss_fn(m, b):
        return nn.functional.mse_loss(m(b[0]), b[1])
    per_sample = torch.stack([(2 * (x[i] @ w - y[i, 0]) * x[i]) ** 2 for i in range(12)]).mean(0)  # [5]
    (fisher,) = empirical_fisher(model, [("w", model[0].weight)], loss_fn, [(x[:8], y[:8]), (x[8:], y[8:])], 1)
    assert torch.allclose(fisher[0], per_sample, rtol=1e-4)
    (coarse,) = empirical_fisher(model, [("w", model[0].weight)], loss_fn, [(x[:8], y[:8]), (x[8:], y[8:])])
    assert not torch.allclose(coarse[0], per_sample, rtol=1e-2)  # whole-batch gradients are another estimate
    parts = split_batch({"a": x, "b": (y, 3)}, 5)
    assert [p["a"].shape[0] for p in parts] == [5, 5, 2] and parts[2]["b"][1] == 3
    with pytest.raises(MethodError, match="leading sizes"):
        split_batch((torch.zeros(4, 2), torch.zeros(2)), 1)


def test_sparsegpt_and_wanda_beat_magnitude_on_layer_outputs() -> None:
    model, ctx, x = _mlp_calib()
    mag = slimkit.apply(model, MagnitudePrune(sparsity=0.6), LIN)
    errs = {"magnitude": _out_err(model, mag, x)}
    for name, cfg in (("sparsegpt", SparseGPTPrune(sparsity=0.6)), ("wanda", WandaPrune(sparsity=0.6)),
                      ("sparsegpt-parallel", SparseGPTPrune(sparsity=0.6, sequential=False))):
        out = slimkit.apply(model, cfg, LIN, ctx)
        rec = slimkit.records(out)[0]
        assert rec.summary["sparsity"] == pytest.approx(0.6, abs=0.01)
        assert rec.summary["calib_rows"] == 512 and rec.data["params"]["0.weight"]["sparsity"] == pytest.approx(0.6, abs=0.01)
        errs[name] = _out_err(model, out, x)
    assert errs["sparsegpt"] < 0.7 * errs["magnitude"] and errs["wanda"] < errs["magnitude"]
    assert errs["sparsegpt"] < errs["wanda"]
    nm = slimkit.apply(model, SparseGPTPrune(n=2, m=4, blocksize=16), LIN, ctx)
    assert nm_ok(nm[0].weight != 0, 2, 4) and nm_ok(nm[2].weight != 0, 2, 4)
    wnm = slimkit.apply(model, WandaPrune(n=2, m=4), LIN, ctx)
    assert nm_ok(wnm[0].weight != 0, 2, 4)
    with pytest.raises(MethodError, match="calib_data"):
        slimkit.apply(model, WandaPrune(), LIN, Context())
    with pytest.raises(ConfigError, match="blocksize"):
        SparseGPTPrune(n=2, m=4, blocksize=6)


def test_calibrated_methods_skip_convs_and_say_so() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4 * 4 * 4, 5))
    ctx = Context(calib_data=[torch.randn(8, 1, 6, 6)])
    out = slimkit.apply(net, WandaPrune(sparsity=0.5), ctx=ctx)
    assert slimkit.records(out)[0].data["skipped"] == ["0"]
    assert float((out[0].weight == 0).float().mean()) == 0.0 and float((out[2].weight == 0).float().mean()) == 0.5
    with pytest.raises(MethodError, match="Linear"):
        slimkit.apply(net, SparseGPTPrune(), Targets(types=("Conv2d",)), ctx)


def test_nm_and_block_methods() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(4, 8, 3), nn.Flatten(), nn.Linear(8 * 4 * 4, 16))
    out = slimkit.apply(net, NMPrune(n=2, m=4), Targets(types=("Conv2d", "Linear")))
    assert nm_ok(out[0].weight != 0, 2, 4) and nm_ok(out[2].weight != 0, 2, 4)
    assert slimkit.records(out)[0].summary["sparsity"] == pytest.approx(0.5)
    with pytest.raises(MethodError, match=r"0\.weight.*exclude"):
        slimkit.apply(nn.Sequential(nn.Linear(6, 4)), NMPrune(), LIN)
    with pytest.raises(ConfigError, match="'n'"):
        NMPrune(n=5, m=4)
    blk = slimkit.apply(net, BlockPrune(sparsity=0.75, block=(4, 4)), LIN)
    w = blk[2].weight.detach()
    tiles = (w != 0).reshape(4, 4, 32, 4).permute(0, 2, 1, 3).reshape(4, 32, 16)
    assert bool(((tiles.sum(-1) == 0) | (tiles.sum(-1) == 16)).all())  # whole blocks kept or dropped
    assert slimkit.records(blk)[0].summary["sparsity"] == pytest.approx(0.75, abs=0.01)


def test_sparse_model_round_trips_and_is_stored_sparse(tmp_path: Path) -> None:
    model, ctx, x = _mlp_calib()
    out = slimkit.apply(model, SparseGPTPrune(sparsity=0.8), LIN, ctx)
    slimkit.save(out, tmp_path)
    again = slimkit.restore(tmp_path, model=lambda: _mlp_calib()[0])
    assert torch.equal(again(x), out(x))
    dense = sum(dense_nbytes(t) for t in out.state_dict().values())
    assert (tmp_path / "model.safetensors").stat().st_size < 0.5 * dense


def _tiny_classification() -> tuple[nn.Module, Context, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(384, 12, generator=g)
    y = (x[:, :4] @ torch.randn(4, 3, generator=g)).argmax(1)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 64), nn.ReLU(), nn.Linear(64, 3))
    batches = [(x[i:i + 64], y[i:i + 64]) for i in range(0, 384, 64)]
    ctx = Context(train_data=batches, loss_fn=lambda m, b: nn.functional.cross_entropy(m(b[0]), b[1]),
                  progress=False)
    return model, ctx, x, y


@pytest.mark.parametrize("cfg", [
    GradualPrune(sparsity=0.8, steps=120, every=10, lr=1e-2),
    MovementPrune(sparsity=0.8, steps=120, every=10, lr=1e-2),
    RegrowPrune(sparsity=0.8, steps=120, every=20, lr=1e-2),
], ids=["gradual", "movement", "grow-prune"])
def test_training_methods_reach_the_sparsity_and_learn(cfg: GradualPrune) -> None:
    model, ctx, x, y = _tiny_classification()
    out = slimkit.apply(model, cfg, LIN, ctx)
    rec = slimkit.records(out)[0]
    assert rec.summary["sparsity"] == pytest.approx(0.8, abs=0.005)
    for layer in rec.data["params"].values():
        assert layer["sparsity"] == pytest.approx(0.8, abs=0.01)
    with torch.no_grad():
        acc = float((out(x).argmax(1) == y).float().mean())
    assert acc > 0.8  # it learnt the task while pruning (chance is 1/3)
    if isinstance(cfg, GradualPrune):
        sched = rec.data["schedule"]
        assert sched[0][0] == 0 and sched[-1][1] == pytest.approx(0.8, abs=0.005)


def test_dsd_ends_dense_after_a_sparse_phase() -> None:
    model, ctx, _, _ = _tiny_classification()
    out = slimkit.apply(model, DsdPrune(sparsity=0.7, dense_steps=10, sparse_steps=40, redense_steps=40), LIN, ctx)
    rec = slimkit.records(out)[0]
    assert rec.summary["sparse_phase_sparsity"] == pytest.approx(0.7, abs=0.01)
    assert rec.summary["sparsity"] < 0.05  # re-dense phase revived the pruned weights
    with pytest.raises(MethodError, match="train_data"):
        slimkit.apply(model, DsdPrune(), LIN, Context(loss_fn=ctx.loss_fn))


def test_configs_round_trip_as_plain_data() -> None:
    from slimkit.core import config_class

    kinds = ["prune.magnitude", "prune.obd", "prune.sparsegpt", "prune.wanda", "prune.block", "prune.nm",
             "prune.gradual", "prune.movement", "prune.regrow", "prune.dsd"]
    for kind in kinds:
        cls = config_class(kind)
        cfg = cls()
        assert cls.from_dict(cfg.to_dict()) == cfg
        assert cls.stage == ("train" if kind == "prune.dsd" else "sparsify")
        assert {d["name"] for d in cls.describe()} == set(cfg.to_dict())
    m = MagnitudePrune.from_dict({"scope": "class-uniform", "classes": {"head": ["classifier*"]}})
    assert m.classes == {"head": ("classifier*",)} and m.to_dict()["classes"] == {"head": ["classifier*"]}
    with pytest.raises(ConfigError, match="scope"):
        MagnitudePrune.from_dict({"scope": "class"})
