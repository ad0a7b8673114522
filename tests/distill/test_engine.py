"""The distillation engine (seeding, exact resume, early stopping, keep-best, grad accumulation,
offline teacher cache) and the ``distill.logits`` / ``distill.embedding`` recipe kinds."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import slimkit
import slimkit.catalog
from slimkit.core import Context, MethodError, Recipe, records
from slimkit.distill.cache import cache_teacher_topk, kd_with, topk_of
from slimkit.distill.engine import distill
from slimkit.distill.losses import kd_loss


def _mlp(seed: int, dropout: float = 0.0, width: int = 16) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, width), nn.ReLU(), nn.Dropout(dropout), nn.Linear(width, 5))


def _data(n_batches: int = 7, bs: int = 8, seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(bs, 6, generator=g), torch.randint(0, 5, (bs,), generator=g)) for _ in range(n_batches)]


def _kd(s_out, t_out, batch):
    return kd_with(s_out, t_out, batch[1], temperature=2.0, alpha=0.5)


def _weights(m: nn.Module) -> list[torch.Tensor]:
    return [t.detach().clone() for t in m.state_dict().values()]


def _equal(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


TEACHER = _mlp(100, width=32).eval()


def _run(seed: int = 0, **kw) -> tuple[nn.Module, object]:
    student = _mlp(0, dropout=0.3)
    opts = {"loss": _kd, "steps": 20, "lr": 1e-2, "schedule": "cosine", "warmup": 3, "clip_norm": 1.0, "seed": seed}
    opts.update(kw)
    res = distill(student, TEACHER, _data(), **opts)
    return student, res


def test_same_seed_same_weights_other_seed_differs():
    a, ra = _run(seed=3)
    b, rb = _run(seed=3)
    c, _ = _run(seed=4)  # only dropout masks depend on the seed here
    assert _equal(_weights(a), _weights(b)) and ra.losses == rb.losses
    assert not _equal(_weights(a), _weights(c))
    assert ra.steps == 20 and ra.losses[-1] < ra.losses[0]
    assert not TEACHER.training  # the teacher's mode is left alone


class _Crash:
    """A loss that raises after ``n`` calls, like a run killed mid-way."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __call__(self, s_out, t_out, batch):
        self.n -= 1
        if self.n < 0:
            raise KeyboardInterrupt
        return _kd(s_out, t_out, batch)


@pytest.mark.parametrize("every", [5, 4])  # checkpoint exactly at the crash, and 2 steps before it
def test_interrupted_run_resumes_to_identical_weights(tmp_path, every):
    def metric(m):
        return {"acc": float(m(torch.ones(1, 6)).sum())}

    common = {"eval_fn": metric, "eval_every": 3, "checkpoint_dir": tmp_path, "checkpoint_every": every}
    straight, rs = _run(**{**common, "checkpoint_dir": tmp_path / "straight"})
    with pytest.raises(KeyboardInterrupt):
        _run(**{**common, "loss": _Crash(10)})
    resumed, rr = _run(**common)
    assert rr.resumed_from == (10 if every == 5 else 8)
    assert _equal(_weights(straight), _weights(resumed))
    assert rr.losses == rs.losses and rr.evals == rs.evals and rr.steps == 20
    # a finished run resumes to itself without training further
    again, ra = _run(**common)
    assert ra.resumed_from == 20 and _equal(_weights(again), _weights(straight))


def test_checkpoint_from_other_settings_is_refused(tmp_path):
    _run(steps=4, checkpoint_dir=tmp_path, checkpoint_every=2)
    with pytest.raises(MethodError, match="resume=False"):
        _run(steps=6, checkpoint_dir=tmp_path)
    _, r = _run(steps=6, checkpoint_dir=tmp_path, resume=False)
    assert r.resumed_from is None and r.steps == 6


def test_early_stopping_stops_after_patience_evals():
    scores = iter([0.5, 0.6, 0.4, 0.55, 0.3, 0.9, 0.9])

    _, r = _run(steps=50, eval_fn=lambda m: {"acc": next(scores)}, eval_every=2, early_stopping_patience=3)
    assert r.stopped_early and r.steps == 10  # evals at 2, 4 (best), 6, 8, 10 -> 3 without improvement
    assert r.best_metric == 0.6 and r.best_step == 4 and len(r.evals) == 5


@pytest.mark.parametrize("mode", ["max", "min"])
def test_keep_best_restores_best_scoring_weights(mode):
    scores = [0.2, 0.9, 0.5, 0.4, 0.3] if mode == "max" else [0.8, 0.1, 0.5, 0.4, 0.3]
    seen: list[list[torch.Tensor]] = []

    def metric(m):
        seen.append(_weights(m))
        return {"other": 0.0, "loss": scores[len(seen) - 1]}

    student, r = _run(steps=10, eval_fn=metric, eval_every=2, keep_best=True, metric="loss", mode=mode)
    assert r.best_step == 4 and r.best_metric == scores[1]
    assert _equal(_weights(student), seen[1])
    assert not _equal(_weights(student), seen[-1])


def test_grad_accum_matches_larger_batch():
    g = torch.Generator().manual_seed(0)
    xs, ys = torch.randn(32, 6, generator=g), torch.randn(32, 3, generator=g)
    small = [(xs[i:i + 4], ys[i:i + 4]) for i in range(0, 32, 4)]  # 8 batches of 4
    large = [(xs[i:i + 8], ys[i:i + 8]) for i in range(0, 32, 8)]  # 4 batches of 8

    def mse(s_out, _t, batch):
        return F.mse_loss(s_out, batch[1])

    outs = []
    for data, accum in ((small, 2), (large, 1)):
        torch.manual_seed(0)
        lin = nn.Linear(6, 3)
        distill(lin, None, data, loss=mse, steps=6, lr=0.05, optimizer="sgd", grad_accum=accum)
        outs.append(_weights(lin))
    for a, b in zip(*outs):
        assert torch.allclose(a, b, atol=1e-6, rtol=0)
    assert not torch.equal(outs[0][0], (torch.manual_seed(0), nn.Linear(6, 3))[1].weight)  # it trained


def test_topk_cache_is_renormalised_and_kd_is_restricted_to_those_classes():
    data = _data(n_batches=3)
    cache = cache_teacher_topk(TEACHER, data, k=3)
    assert len(cache) == 3 and cache[0].indices.shape == (8, 3)
    for entry in cache:
        assert torch.allclose(entry.probs.sum(1), torch.ones(8), atol=1e-6)
    x, y = data[0]
    t = TEACHER(x).detach()  # [8, 5]
    assert torch.equal(cache[0].indices, t.topk(3, dim=1).indices)
    s = torch.randn(8, 5)
    idx = cache[0].indices
    restricted = kd_loss(s.gather(1, idx), t.gather(1, idx), temperature=3.0)
    assert torch.allclose(kd_with(s, cache[0], temperature=3.0), restricted, atol=1e-6)
    # with labels the hard term still sees every class
    mixed = kd_with(s, cache[0], y, temperature=3.0, alpha=0.25)
    assert torch.allclose(mixed, 0.25 * restricted + 0.75 * F.cross_entropy(s, y), atol=1e-6)
    # K = C keeps everything: cached KD equals live KD
    full = topk_of(t, 5)
    assert torch.allclose(kd_with(s, full, temperature=3.0), kd_loss(s, t, temperature=3.0), atol=1e-5)


def test_engine_with_full_cache_matches_live_teacher():
    data = _data()
    cache = cache_teacher_topk(TEACHER, data, k=5)
    live, _ = _run(seed=1)
    cached = _mlp(0, dropout=0.3)
    distill(cached, None, data, loss=_kd, steps=20, lr=1e-2, schedule="cosine", warmup=3, clip_norm=1.0, seed=1,
            teacher_cache=cache)
    for a, b in zip(_weights(live), _weights(cached)):
        assert torch.allclose(a, b, atol=1e-4)
    with pytest.raises(MethodError, match="teacher_cache"):
        distill(_mlp(0), None, data, loss=_kd, steps=2, teacher_cache=cache[:2], grad_accum=3)


# ------------------------------------------------------------------ recipe kinds on real digits
@pytest.fixture(scope="module")
def digits():
    zm = slimkit.zoo.load("zoo:digits-cnn")
    return zm, slimkit.zoo.get_task("digits")


def _student() -> nn.Module:
    torch.manual_seed(0)
    return slimkit.zoo.digits.DigitsCNN(widths=(4, 8, 16), hidden=16)


LOGITS_YAML = """
steps:
  - kind: distill.logits
    with: {steps: 120, lr: 0.01, temperature: 4.0, alpha: 0.5, eval_every: 40, keep_best: true, top_k: %s}
"""


@pytest.mark.parametrize("top_k", ["null", "4"])
def test_logits_recipe_trains_student_and_round_trips(digits, tmp_path, top_k):
    zm, task = digits
    teacher = zm.model
    teacher_before = _weights(teacher)
    student = _student()
    before = task.evaluate(student)["accuracy"]
    ctx = Context(train_data=task.train_batches(zm, 64), teacher=teacher, progress=False,
                  eval_fn=lambda m: task.evaluate(m))
    out = Recipe.from_yaml(LOGITS_YAML % top_k).run(student, ctx)
    acc = task.evaluate(out)["accuracy"]
    rec = records(out)[-1]
    assert rec.kind == "distill.logits" and rec.summary["steps"] == 120
    assert rec.summary["best_metric"] == pytest.approx(acc)  # keep_best: the final model is the best one
    assert before < 0.3 and acc > 0.8
    assert _equal(_weights(teacher), teacher_before)  # the teacher is frozen
    slimkit.save(out, tmp_path / "m")
    back = slimkit.restore(tmp_path / "m", model=_student)
    assert _equal(_weights(back), _weights(out))


def test_logits_without_teacher_is_a_clear_error(digits):
    zm, task = digits
    ctx = Context(train_data=task.train_batches(zm, 64), progress=False)
    with pytest.raises(MethodError, match="Context.teacher"):
        Recipe.from_yaml(LOGITS_YAML % "null").run(_student(), ctx)


@pytest.mark.parametrize("loss", ["cosine", "mse"])
def test_embedding_recipe_aligns_student_with_teacher(loss):
    class Embed(nn.Module):
        def __init__(self, seed: int) -> None:
            super().__init__()
            torch.manual_seed(seed)
            self.net = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 4))

        def forward(self, x):
            return F.normalize(self.net(x), dim=-1)

    teacher, student = Embed(1), Embed(2)
    g = torch.Generator().manual_seed(5)
    batches = [torch.randn(16, 6, generator=g) for _ in range(8)]
    held_out = torch.randn(64, 6, generator=g)

    def fidelity(m):
        with torch.no_grad():
            return float(F.cosine_similarity(m(held_out), teacher(held_out)).mean())

    start = fidelity(student)
    recipe = Recipe.from_yaml(f"steps: [{{kind: distill.embedding, with: {{loss: {loss}, steps: 150, lr: 0.02}}}}]")
    out = recipe.run(student, Context(calib_data=batches, teacher=teacher, progress=False))
    assert start < 0.5 and fidelity(out) > 0.95
    assert records(out)[-1].summary["final_loss"] < 0.05
    assert fidelity(student) == start  # apply() trained a copy


def test_dropout_override_trains_as_without_dropout_and_restores_the_rates():
    """``dropout=0`` on a student with Dropout(0.3) gives exactly the weights of the same student
    without Dropout; the rates seen in training are the override and come back afterwards."""
    seen: list[float] = []
    student, _ = _run(seed=5, dropout=0.0)
    drop = student[2]
    assert drop.p == 0.3  # restored
    plain = _mlp(0, dropout=0.3)
    plain[2] = nn.Identity()
    distill(plain, TEACHER, _data(), loss=_kd, steps=20, lr=1e-2, schedule="cosine", warmup=3, clip_norm=1.0, seed=5)
    assert _equal(_weights(student), _weights(plain))
    with_drop, _ = _run(seed=5)
    assert not _equal(_weights(student), _weights(with_drop))  # the override changed training

    probe = _mlp(0, dropout=0.3)
    probe[2].register_forward_hook(lambda m, i, o: seen.append(m.p))
    distill(probe, TEACHER, _data(), loss=_kd, steps=2, lr=1e-2, dropout=0.5)
    assert seen == [0.5, 0.5] and probe[2].p == 0.3
    with pytest.raises(MethodError, match="dropout"):
        distill(_mlp(0), TEACHER, _data(), loss=_kd, steps=1, dropout=1.0)
