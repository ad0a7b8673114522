"""Distillation strategies beyond one student and one teacher, each a thin layer over :func:`distill`.

- :class:`MultiTeacher`: an ensemble of teachers that looks like one teacher to the engine.
- :func:`teacher_assistant_chain`: TAKD, teacher -> assistant(s) -> student in stages.
- :func:`mutual_learning`: Deep Mutual Learning, peers teaching each other with no teacher.
- :func:`self_distill`: born-again networks, a model distilled into fresh copies of itself.
- :class:`FeatureTap`: forward hooks that expose intermediate activations by module name,
  which hidden-state and attention-map losses (FitNets, TinyBERT) need on arbitrary models.

Everything that trains goes through the engine (seeding, schedules, checkpoints) except
:func:`mutual_learning`, whose peers must step together and so need their own small loop.
"""
from __future__ import annotations

import copy
import difflib
import math
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.hooks import RemovableHandle

from ..core.context import Batch, call_model
from ..core.errors import MethodError
from ..core.targets import Targets
from .engine import DistillResult, LossFn, _optimizer, _Stream, distill, split_batch, to_device
from .losses import kd_loss

if TYPE_CHECKING:
    from typing_extensions import Self


def _logits(out: Any, what: str) -> torch.Tensor:
    """A model output as a logits tensor: the tensor itself or a Hugging Face output's ``.logits``."""
    if isinstance(out, torch.Tensor):
        return out
    logits = getattr(out, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    raise MethodError(f"{what}: expected the model to return a logits tensor (or an output with .logits), "
                      f"got {type(out).__name__}")


def _per_stage(steps: int | Sequence[int], n: int, what: str) -> list[int]:
    """``steps`` as one count per stage: an int is repeated, a sequence must have ``n`` entries."""
    per = [steps] * n if isinstance(steps, int) else list(steps)
    if len(per) != n:
        raise MethodError(f"{what}: steps has {len(per)} entries for {n} stages; pass one int or one per stage")
    return per


def _stage_kwargs(kwargs: dict[str, Any], what: str, stage: str, desc: str) -> dict[str, Any]:
    """Engine options for one stage: its own checkpoint subfolder (stages sharing one file would
    resume each other's runs) and a progress label; a teacher cache is refused because every
    stage after the first has a different teacher."""
    if kwargs.get("teacher_cache") is not None:
        raise MethodError(f"{what}: teacher_cache is not supported (each stage has a different teacher)")
    out = dict(kwargs)
    if out.get("checkpoint_dir") is not None:
        out["checkpoint_dir"] = Path(out["checkpoint_dir"]) / stage
    out.setdefault("desc", desc)
    return out


# --------------------------------------------------------------------------- ensemble teacher


class MultiTeacher(nn.Module):
    """Several teachers presented to the engine as one: the weighted average of their outputs.

    ``average="logits"`` (default) averages logits, as Hinton et al. 2015 do to distil an
    ensemble: cheap, and every teacher's confidence scale carries over. ``average="probs"``
    averages the softmax probabilities instead (the ensemble's actual predictive
    distribution) and returns their log, so a softmax downstream (e.g. in :func:`kd_loss`)
    recovers exactly the averaged distribution at T=1; at other temperatures it sharpens or
    softens that distribution. ``weights`` default to equal and are normalised to sum to 1.
    Each teacher must return a logits tensor (or an output with ``.logits``) of one shape.
    """

    def __init__(self, teachers: Sequence[nn.Module], weights: Sequence[float] | None = None, *,
                 average: Literal["logits", "probs"] = "logits") -> None:
        super().__init__()
        if len(teachers) == 0:
            raise MethodError("MultiTeacher: need at least one teacher")
        if average not in ("logits", "probs"):
            raise MethodError(f"MultiTeacher: average must be 'logits' or 'probs', got {average!r}")
        ws = [1.0] * len(teachers) if weights is None else [float(w) for w in weights]
        if len(ws) != len(teachers):
            raise MethodError(f"MultiTeacher: got {len(ws)} weights for {len(teachers)} teachers")
        if not all(math.isfinite(w) and w > 0 for w in ws):
            raise MethodError(f"MultiTeacher: weights must be finite and > 0, got {ws}")
        total = sum(ws)
        self.teachers = nn.ModuleList(teachers)
        self.weights: tuple[float, ...] = tuple(w / total for w in ws)  # plain floats: any dtype/device
        self.average = average

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        outs = [_logits(t(*args, **kwargs), "MultiTeacher") for t in self.teachers]  # each [..., C]
        shapes = {tuple(o.shape) for o in outs}
        if len(shapes) != 1:
            raise MethodError(f"MultiTeacher: teachers returned different shapes {sorted(shapes)}")
        if self.average == "logits":
            return sum(w * o for w, o in zip(self.weights, outs, strict=True))  # type: ignore[return-value]
        # log(sum_k w_k p_k) = logsumexp_k(log w_k + log p_k): no underflow for confident teachers
        logp = torch.stack([F.log_softmax(o.float(), dim=-1) for o in outs])  # [K, ..., C]
        logw = torch.tensor(self.weights, dtype=logp.dtype, device=logp.device).log()  # [K]
        logw = logw.reshape(-1, *([1] * (logp.dim() - 1)))  # [K, 1, ..., 1]
        return torch.logsumexp(logp + logw, dim=0)  # [..., C]


# --------------------------------------------------------------------------- staged distillation


def teacher_assistant_chain(
    teacher: nn.Module,
    chain: Sequence[nn.Module],
    train_data: Iterable[Batch],
    *,
    loss: LossFn,
    steps: int | Sequence[int],
    **distill_kwargs: Any,
) -> list[DistillResult]:
    """TAKD (Mirzadeh et al. 2020): distil ``teacher -> chain[0] -> chain[1] -> ...`` in order.

    A large capacity gap hurts distillation (the student cannot mimic the teacher well);
    intermediate-size assistants bridge it. Stage ``i`` trains ``chain[i]`` in place with the
    previous model as teacher (the engine runs it frozen: eval mode, no grad). ``steps`` is
    one count for every stage or one per stage; ``distill_kwargs`` go to every stage, and a
    ``checkpoint_dir`` gets one ``stage-<i>`` subfolder per stage. Returns the stage results.
    """
    if len(chain) == 0:
        raise MethodError("teacher_assistant_chain: chain is empty; pass at least the student")
    per = _per_stage(steps, len(chain), "teacher_assistant_chain")
    results = []
    current = teacher
    for i, (student, n) in enumerate(zip(chain, per, strict=True)):
        kw = _stage_kwargs(distill_kwargs, "teacher_assistant_chain", f"stage-{i}",
                           f"takd {i + 1}/{len(chain)}")
        results.append(distill(student, current, train_data, loss=loss, steps=n, **kw))
        current = student
    return results


def self_distill(
    model: nn.Module,
    train_data: Iterable[Batch],
    *,
    generations: int,
    loss: LossFn,
    steps: int | Sequence[int],
    **distill_kwargs: Any,
) -> tuple[nn.Module, list[DistillResult]]:
    """Born-again networks (Furlanello et al. 2018): a model distilled into a copy of itself, repeatedly.

    Generation 0 is ``model`` itself, trained in place on labels alone: the engine calls
    ``loss(student_out, None, batch)``, so **the loss must handle** ``teacher_out is None``
    (e.g. fall back to cross-entropy). Generation ``k + 1`` is a fresh deep copy of ``model``
    as it was *before* any training, so every generation starts from the same init and
    differs only by its teacher, generation ``k``. ``steps`` is one int or one per
    generation; a ``checkpoint_dir`` gets a ``generation-<k>`` subfolder each. Returns the
    last generation and every generation's result.
    """
    if generations < 1:
        raise MethodError(f"self_distill: generations must be >= 1, got {generations}")
    per = _per_stage(steps, generations, "self_distill")
    init = copy.deepcopy(model)  # keeps one extra copy of the weights alive for the whole run
    results = []
    teacher: nn.Module | None = None
    current = model
    for k, n in enumerate(per):
        if k > 0:
            teacher, current = current, copy.deepcopy(init)
        kw = _stage_kwargs(distill_kwargs, "self_distill", f"generation-{k}", f"born-again {k}/{generations - 1}")
        results.append(distill(current, teacher, train_data, loss=loss, steps=n, **kw))
    return current, results


# --------------------------------------------------------------------------- mutual learning


def mutual_learning(
    peers: Sequence[nn.Module],
    train_data: Iterable[Batch],
    *,
    steps: int,
    lr: float = 1e-3,
    temperature: float = 1.0,
    alpha: float = 0.5,
    seed: int = 0,
    optimizer: Literal["adamw", "adam", "sgd"] = "adamw",
    device: str | torch.device = "cpu",
) -> list[list[float]]:
    """Deep Mutual Learning (Zhang et al. 2018): peers train together, each also mimicking the others.

    No pre-trained teacher: each peer ``i`` minimises
    ``(1 - alpha) * CE(out_i, labels) + alpha * mean_{j != i} KD(out_i, out_j.detach())``
    (``KD`` is :func:`kd_loss` at ``temperature``), which regularises every peer towards the
    cohort's softer consensus. All peers' outputs come from the same step and all step
    together (the common simultaneous variant; the paper's Algorithm 1 re-runs the forward
    after each peer's update). ``train_data`` must be labelled: ``(inputs, labels)`` batches
    or dicts with ``"labels"``; it is cycled as in the engine. Constant ``lr``; seeded from
    ``seed`` in a forked RNG. Peers are trained in place; returns each peer's loss history.
    """
    if len(peers) < 2:
        raise MethodError(f"mutual_learning: need at least 2 peers, got {len(peers)}")
    if len({id(p) for p in peers}) != len(peers):
        raise MethodError("mutual_learning: peers must be distinct modules")
    if steps < 1 or lr <= 0 or temperature <= 0 or not 0.0 <= alpha <= 1.0:
        raise MethodError(f"mutual_learning: need steps >= 1, lr > 0, temperature > 0, 0 <= alpha <= 1; "
                          f"got {steps}, {lr}, {temperature}, {alpha}")
    device = torch.device(device)
    opts = []
    for i, peer in enumerate(peers):
        params = [p for p in peer.to(device).parameters() if p.requires_grad]
        if not params:
            raise MethodError(f"mutual_learning: peer {i} has no trainable parameters")
        opts.append(_optimizer(params, optimizer, lr, 0.0))
    was_training = [p.training for p in peers]
    histories: list[list[float]] = [[] for _ in peers]
    n = len(peers)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        stream = _Stream(train_data)
        try:
            for peer in peers:
                peer.train()
            for _ in range(steps):
                batch = to_device(stream.next()[0], device)
                inputs, labels = split_batch(batch)
                if labels is None:
                    raise MethodError("mutual_learning: batches need labels: (inputs, labels) or a dict "
                                      "with 'labels'")
                outs = [_logits(call_model(p, inputs), "mutual_learning") for p in peers]  # each [..., C]
                total = torch.zeros((), device=device)
                for i, out in enumerate(outs):
                    ce = F.cross_entropy(out.reshape(-1, out.shape[-1]), labels.reshape(-1), ignore_index=-100)
                    kd = sum(kd_loss(out, outs[j].detach(), temperature=temperature)
                             for j in range(n) if j != i) / (n - 1)
                    loss_i = (1.0 - alpha) * ce + alpha * kd
                    histories[i].append(float(loss_i.detach()))
                    total = total + loss_i  # the detached targets keep each peer's gradient its own
                for opt in opts:
                    opt.zero_grad(set_to_none=True)
                total.backward()
                for opt in opts:
                    opt.step()
        finally:
            for peer, flag in zip(peers, was_training, strict=True):
                peer.train(flag)
    return histories


# --------------------------------------------------------------------------- intermediate features


class FeatureTap:
    """Capture the outputs of named submodules during a forward pass.

    ``with FeatureTap(model, ["encoder.layer.0", "features.*"]) as tap: model(x)`` leaves
    ``tap.outputs[name]`` holding each matched module's output (the first element when it
    returns a tuple, as transformer layers do). Names are those of ``model.named_modules()``;
    patterns match as in :class:`slimkit.core.Targets`: fnmatch globs (``*`` crosses dots:
    ``"layer.?"`` picks the layers, ``"layer.*"`` their children too) or ``re:`` regular
    expressions (``"re:layer\\.[0-3]"``), and each pattern must match at least one module. Outputs keep their autograd graph, so a student's captured features can be trained
    through; a module called twice in one forward keeps its last output. Hooks are removed on
    exit, even on error.
    """

    def __init__(self, model: nn.Module, names: str | Sequence[str]) -> None:
        patterns = [names] if isinstance(names, str) else list(names)
        if not patterns:
            raise MethodError("FeatureTap: need at least one module name")
        modules = dict(model.named_modules())
        available = [n for n in modules if n]
        chosen: dict[str, nn.Module] = {}
        for pattern in patterns:
            if pattern in modules:
                hits = [pattern]
            else:
                select = Targets(include=(pattern,))
                hits = [n for n in available if select.matches(n, modules[n])]
            if not hits:
                close = difflib.get_close_matches(pattern, available, n=5) or available[:8]
                raise MethodError(f"FeatureTap: no module named {pattern!r} in {type(model).__name__}; "
                                  f"available names include {close}")
            for n in hits:
                chosen[n] = modules[n]
        self.modules = chosen
        self.outputs: dict[str, Any] = {}
        self._handles: list[RemovableHandle] = []

    def _hook(self, name: str) -> Callable[[nn.Module, Any, Any], None]:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            self.outputs[name] = output[0] if isinstance(output, (tuple, list)) and output else output
        return hook

    def __enter__(self) -> Self:
        if self._handles:
            raise MethodError("FeatureTap: already active; a tap cannot be entered twice at once")
        self.outputs = {}
        try:
            for name, module in self.modules.items():
                self._handles.append(module.register_forward_hook(self._hook(name)))
        except BaseException:
            self.remove()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def remove(self) -> None:
        """Remove every hook this tap registered (``__exit__`` does this)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []


__all__ = ["FeatureTap", "MultiTeacher", "mutual_learning", "self_distill", "teacher_assistant_chain"]
