"""SparsityHook in a hand-written training loop, fine_tune, and the regularisers."""
from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from slimkit.core import Context, MethodError, Targets
from slimkit.prune.hooks import SparsityHook, fine_tune
from slimkit.prune.regularizers import (
    Regularizer,
    ReweightedL1Prox,
    group_lasso,
    group_norms,
    l1_penalty,
    row_linf,
    soft_threshold,
)
from slimkit.prune.schedules import DSD, Cubic, GrowPrune, NarangRamp, OneShot, cubic_sparsity

pytestmark = pytest.mark.usefixtures("one_thread")


def _task(seed: int = 0, n: int = 256) -> tuple[nn.Module, Context]:
    """A small MLP regression task whose target depends on few inputs."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 16, generator=g)
    y = x[:, :3] @ torch.tensor([[1.0], [-2.0], [0.5]])  # [n, 1]
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 1))
    batches = [(x[i:i + 32], y[i:i + 32]) for i in range(0, n, 32)]
    ctx = Context(train_data=batches, loss_fn=lambda m, b: nn.functional.mse_loss(m(b[0]), b[1]), progress=False)
    return model, ctx


def _loop(model: nn.Module, ctx: Context, hook: SparsityHook, steps: int, lr: float = 1e-2) -> list[float]:
    """A plain loop written as a user would: the hook needs only loss() and step()."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    data = list(ctx.train_data)  # type: ignore[arg-type]
    sparsities = []
    for t in range(steps):
        loss = ctx.loss_fn(model, data[t % len(data)]) + hook.loss(model)  # type: ignore[misc]
        opt.zero_grad()
        loss.backward()
        opt.step()
        hook.step(t)
        sparsities.append(float((model[0].weight == 0).float().mean()))
    return sparsities


def test_one_shot_masks_survive_adam_steps_and_finalize_leaves_zeros() -> None:
    model, ctx = _task()
    hook = SparsityHook(model, OneShot(sparsity=0.75, at=2), targets=Targets(types=("Linear",)))
    sp = _loop(model, ctx, hook, 30)
    assert sp[:2] == [0.0, 0.0] and all(s == pytest.approx(0.75) for s in sp[2:])
    zero_pattern = model[0].weight == 0
    report = hook.finalize()
    assert hook.masks is None and torch.equal(model[0].weight == 0, zero_pattern)
    assert report["params"]["0.weight"]["sparsity"] == pytest.approx(0.75)  # type: ignore[index]
    assert report["sparsity"] == pytest.approx(0.75, abs=0.01)
    assert not any(n.endswith("mask") for n, _ in model.named_buffers())  # masks are not module state


def test_cubic_hook_follows_the_schedule_and_fine_tune_reduces_loss() -> None:
    model, ctx = _task(1)
    sched = Cubic(final=0.9, steps=60, every=10)
    hook = SparsityHook(model, sched, scope="layer")
    losses = fine_tune(model, ctx, 100, hook=hook, lr=1e-2)
    assert [t for t, _ in hook.history] == [0, 10, 20, 30, 40, 50, 60]
    for t, s in hook.history:
        assert s == pytest.approx(cubic_sparsity(t, 0.9, steps=60), abs=0.01)
    hook.finalize()
    assert float((model[0].weight == 0).float().mean()) == pytest.approx(0.9, abs=0.005)
    assert sum(losses[-10:]) < sum(losses[:10])
    assert model.training  # fine_tune restores the mode it found


def test_movement_scores_accumulate_minus_w_grad_and_prune_weights_moving_to_zero() -> None:
    lin = nn.Linear(4, 1, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[3.0, 0.1, -2.0, 0.2]]))
    model = nn.Sequential(lin)
    hook = SparsityHook(model, OneShot(sparsity=0.5, at=1), method="movement")
    lin.weight.grad = torch.tensor([[1.0, -1.0, -1.0, 0.0]])  # pushes w0 and w2 towards zero, w1 away
    hook.step(0)
    assert torch.allclose(hook.scores["0.weight"], torch.tensor([[-3.0, 0.1, -2.0, 0.0]]))
    hook.step(1)  # mask update: movement keeps w1, w3 (small but growing), magnitude would keep w0, w2
    assert torch.equal(lin.weight != 0, torch.tensor([[False, True, False, True]]))


def test_grow_prune_keeps_sparsity_and_regrows_by_gradient() -> None:
    lin = nn.Linear(8, 1, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.arange(1.0, 9.0).reshape(1, 8))
    model = nn.Sequential(lin)
    hook = SparsityHook(model, GrowPrune(sparsity=0.5, every=1, end=10, alpha=0.5))
    hook.step(0)  # magnitude mask: keep 5..8
    assert torch.equal(lin.weight != 0, torch.tensor([[False] * 4 + [True] * 4]))
    lin.weight.grad = torch.tensor([[0.0, 9.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]])
    lin.weight.grad[0, 3] = 5.0
    hook.step(1)  # drop frac(1) ~= 0.49 of 4 active -> 1: drop |w|=5, regrow index 1 (largest |grad|)
    keep = hook.masks["0.weight"]  # type: ignore[index]
    assert int(keep.sum()) == 4 and bool(keep[0, 1]) and not bool(keep[0, 4])
    assert float(lin.weight.detach()[0, 1]) == 0.0  # regrown from zero


def test_dsd_redense_lets_pruned_weights_train_again() -> None:
    model, ctx = _task(2)
    hook = SparsityHook(model, DSD(sparsity=0.6, sparse_at=5, dense_at=25))
    sp = _loop(model, ctx, hook, 40)
    assert sp[4] == 0.0 and all(s == pytest.approx(0.6, abs=0.002) for s in sp[5:25])
    assert hook.masks is None and sp[-1] < 0.05  # re-dense: the zeros moved


def test_narang_threshold_hook_reaches_about_the_percentile() -> None:
    model, ctx = _task(3)
    hook = SparsityHook(model, NarangRamp(start=0, ramp=20, end=40, freq=5, percentile=0.8),
                        targets=Targets(include=("0",)))
    sp = _loop(model, ctx, hook, 45, lr=1e-3)
    assert all(b >= a for a, b in itertools.pairwise(sp))  # masks only shrink
    assert 0.7 < sp[-1] < 0.9


def test_errors_name_what_is_missing() -> None:
    model, ctx = _task()
    with pytest.raises(MethodError, match="select no weight"):
        SparsityHook(model, OneShot(sparsity=0.5), targets=Targets(types=("Conv2d",)))
    with pytest.raises(MethodError, match="method"):
        SparsityHook(model, OneShot(sparsity=0.5), method="taylor")  # type: ignore[arg-type]
    with pytest.raises(MethodError, match="train_data"):
        fine_tune(model, Context(loss_fn=ctx.loss_fn), 3)
    with pytest.raises(MethodError, match="no batches"):
        fine_tune(model, Context(loss_fn=ctx.loss_fn, train_data=[]), 3)


def test_regularizer_values_by_hand() -> None:
    w = torch.tensor([[3.0, -4.0], [0.0, 1.0]])
    conv = torch.ones(2, 3, 2, 2)
    assert float(l1_penalty([w])) == 8.0
    assert torch.allclose(group_norms(w, "rows"), torch.tensor([5.0, 1.0]))
    assert torch.allclose(group_norms(w, "cols"), torch.tensor([3.0, 17.0**0.5]))
    assert torch.allclose(group_norms(conv, "filters"), torch.tensor([12.0**0.5] * 2))
    assert torch.allclose(group_norms(conv, "cols"), torch.tensor([8.0**0.5] * 3))  # input channels
    assert float(group_lasso([w, w], "rows")) == pytest.approx(12.0)
    assert float(row_linf([w])) == 5.0
    assert float(Regularizer(kind="row_l2", strength=0.5)([w])) == pytest.approx(3.0)
    assert float(Regularizer(kind="row_linf", strength=2.0)([w])) == pytest.approx(10.0)
    assert torch.equal(soft_threshold(torch.tensor([-2.0, -0.5, 0.3, 1.5]), 1.0), torch.tensor([-1.0, 0.0, 0.0, 0.5]))


def test_group_lasso_training_zeroes_whole_rows_and_l1_hook_term_is_added() -> None:
    model, ctx = _task(4)
    reg = Regularizer(kind="group_lasso", strength=0.05, groups="cols")
    hook = SparsityHook(model, OneShot(sparsity=0.0, at=10**9), targets=Targets(include=("0",)), regularizer=reg)
    expected = 0.05 * float(group_norms(model[0].weight.detach(), "cols").sum())
    assert float(hook.loss().detach()) == pytest.approx(expected, rel=1e-5)
    fine_tune(model, ctx, 150, hook=hook, lr=2e-2)
    norms = group_norms(model[0].weight.detach(), "cols")
    # the three input columns the target depends on keep far more norm than the 13 irrelevant ones
    assert float(norms[:3].min()) > 5 * float(norms[3:].max())


def test_reweighted_l1_prox_makes_exact_zeros_small_first() -> None:
    w = torch.tensor([0.01, -0.02, 0.5, -1.0])
    prox = ReweightedL1Prox(strength=5e-4, lr=1.0, eps=1e-3, reweight_every=1)
    prox.step([w], 0)
    # thresholds lr * lam / (|w| + eps): 0.045 and 0.024 zero the small weights exactly ...
    assert w[0] == 0.0 and w[1] == 0.0
    # ... while the large ones shrink by only ~1e-3 (plain L1 with the same 0.024 would cost them 0.024)
    assert float(w[2]) == pytest.approx(0.5 - 5e-4 / 0.501) and float(w[3]) == pytest.approx(-1.0 + 5e-4 / 1.001)
