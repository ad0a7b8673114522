"""``dynamic.early_exit``: an exit classifier after every block, trained to imitate the last layer.

DeeBERT (Xin et al. 2020, "DeeBERT: Dynamic Early Exiting for Accelerating BERT Inference")
puts a small classifier after each transformer block and stops as soon as one is confident
(low prediction entropy); PABEE (Zhou et al. 2020, "BERT Loses Patience") stops once
``patience`` consecutive classifiers agree. Easy inputs then pay for a few blocks only.

Training here is *self-distillation with the backbone frozen*: every exit head learns to
match the model's own final logits (KL at ``temperature``) through the one training engine
(:func:`slimkit.train.run.run_kind`); the blocks and the model's head are not touched, so
with exits off (or a threshold nothing passes) the model is exactly the original, and
its accuracy is the ceiling every threshold trades against. Labels are not needed: the
data is ``Context.unlabeled_data``, else ``train_data`` (labels dropped), else ``calib_data``.

The runtime (how blocks are skipped, what happens at batch > 1, export) is in
:mod:`slimkit.dynamic.exits`. The record holds the block list, the head sizes and the
exit settings; ``restore`` rebuilds the heads from it and loads their weights strictly.
"""
from __future__ import annotations

from typing import Any, Literal

import torch
from torch import nn

from ..core import Context, MethodError, Record, Targets, method_config, register_method, register_replay
from ..core.context import call_model
from ..prune.layers import find_block_lists
from ..train.options import TrainOptions
from ..train.parts import split_batch
from ..train.run import run_kind, tail_mean
from .exits import KIND, ExitHeads, ExitSettings, collect_exits, install


@method_config
class EarlyExitDynamic(TrainOptions):
    """Exit classifiers after every block (DeeBERT / PABEE), distilled from the final layer's logits."""

    kind = KIND
    stage = "train"

    # exit rule at inference: "entropy" (exit when entropy / log C < threshold), "patience" (PABEE),
    # or "entropy_patience" (entropy < threshold and exit_patience agreeing heads, or entropy <
    # solo_ratio * threshold alone)
    criterion: Literal["entropy", "patience", "entropy_patience"] = "entropy"
    threshold: float = 0.3
    # PABEE patience: consecutive agreeing exit heads (named apart from the loop's eval ``patience``)
    exit_patience: int = 2
    # entropy_patience: a head exits without agreeing heads below solo_ratio * threshold (1 = the entropy rule)
    solo_ratio: float = 0.5
    # what each exit head reads from the block's hidden states [B, T, H]: masked mean or the first token
    pooling: Literal["mean", "cls"] = "mean"
    # width of each head's tanh layer (DeeBERT: pooler + classifier); 0 = one Linear
    head_hidden: int = 128
    # softmax temperature of the distillation from the final logits
    temperature: float = 2.0
    steps: int = 300
    lr: float = 1e-3

    def validate(self) -> None:
        super().validate()
        self._require(0.0 <= self.threshold <= 1.0, "threshold", "a normalised entropy in [0, 1]", self.threshold)
        self._require(self.exit_patience >= 1, "exit_patience", "an int >= 1", self.exit_patience)
        self._require(0.0 <= self.solo_ratio <= 1.0, "solo_ratio", "a float in [0, 1]", self.solo_ratio)
        self._require(self.head_hidden >= 0, "head_hidden", "an int >= 0", self.head_hidden)
        self._require(self.temperature > 0, "temperature", "a positive float", self.temperature)


def settings_of(config: EarlyExitDynamic | dict[str, Any]) -> ExitSettings:
    get = config.get if isinstance(config, dict) else lambda k: getattr(config, k)
    return ExitSettings(criterion=get("criterion"), threshold=float(get("threshold")),
                        patience=int(get("exit_patience")), pooling=get("pooling"),
                        solo_ratio=float(get("solo_ratio")))


def _data(ctx: Context) -> Any:
    for attr in ("unlabeled_data", "train_data", "calib_data"):
        if getattr(ctx, attr) is not None:
            return getattr(ctx, attr)
    raise MethodError(f"{KIND} needs input batches: set Context.unlabeled_data, train_data or calib_data")


def _probe(model: nn.Module, path: str, batch: Any) -> tuple[int, int]:
    """``(hidden width, classes)`` from one forward: the blocks' ``[B, T, H]`` output and the ``[B, C]`` logits."""
    blocks = model.get_submodule(path)
    seen: dict[str, Any] = {}
    handle = blocks[0].register_forward_hook(lambda _m, _a, out: seen.__setitem__("out", out))
    was = model.training
    try:
        with torch.no_grad():
            out = call_model(model.eval(), split_batch(batch)[0])
    except MethodError:
        raise
    except Exception as exc:  # the model cannot run this batch: the user's data or model is at fault
        raise MethodError(f"{KIND}: the model does not run on the first data batch: {type(exc).__name__}: {exc}") \
            from exc
    finally:
        handle.remove()
        model.train(was)
    from ..core.context import first_tensor

    hidden = first_tensor(seen.get("out"))
    if hidden is None or hidden.dim() != 3:
        raise MethodError(f"{KIND}: the blocks of {path!r} do not output a [B, T, H] hidden state "
                          "(early exit supports transformer encoders)")
    logits = out if isinstance(out, torch.Tensor) else getattr(out, "logits", None)
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or logits.shape[1] < 2:
        raise MethodError(f"{KIND} needs a classifier returning logits [B, C] with C >= 2 (a tensor or an output "
                          f"with .logits), got {type(out).__name__}"
                          + (f" of shape {tuple(logits.shape)}" if isinstance(logits, torch.Tensor) else ""))
    return int(hidden.shape[-1]), int(logits.shape[1])


class _HeadTrainer(nn.Module):
    """What the engine trains: the model with its backbone frozen and kept in eval mode (no
    dropout noise in the hidden states the heads read or in the final logits they imitate)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def train(self, mode: bool = True) -> _HeadTrainer:
        self.training = mode
        self.model.eval()
        return self


def _objective(temperature: float):  # type: ignore[no-untyped-def]
    def objective(trainer: nn.Module, batch: Any, _t_out: Any) -> torch.Tensor:
        from ..core.context import batch_args

        args, kwargs = batch_args(split_batch(batch)[0])
        exits, final = collect_exits(trainer.model, *args, **kwargs)  # each [B, C]
        target = torch.softmax(final.detach().float() / temperature, dim=-1)
        losses = [nn.functional.kl_div(torch.log_softmax(e.float() / temperature, dim=-1), target,
                                       reduction="batchmean") for e in exits]
        return torch.stack(losses).mean() * temperature ** 2
    return objective


@register_method(EarlyExitDynamic)
def early_exit(model: nn.Module, config: EarlyExitDynamic, targets: Targets, ctx: Context) -> Record:
    lists = find_block_lists(model, targets, KIND)
    if len(lists) != 1:
        raise MethodError(f"{KIND}: targets name {len(lists)} block lists {lists}; name exactly one")
    path = lists[0]
    n = len(model.get_submodule(path))
    data = _data(ctx)
    width, classes = _probe(model, path, next(iter(data)))
    heads = ExitHeads(n - 1, width, classes, config.head_hidden)
    install(model, path, heads, settings_of(config))
    backbone = [p for name, p in model.named_parameters() if not name.startswith("exit_heads.") and p.requires_grad]
    for p in backbone:
        p.requires_grad_(False)
    try:
        result = run_kind(_HeadTrainer(model), config, ctx, _objective(config.temperature), data, what=KIND,
                          names_of=model)
    finally:
        for p in backbone:
            p.requires_grad_(True)
    model.eval()
    return Record(kind=KIND, data={"path": path, "n_blocks": n, "width": width, "classes": classes,
                                   "head_hidden": config.head_hidden},
                  summary={"exit_heads": n - 1, "head_params": sum(p.numel() for p in heads.parameters()),
                           "steps": result.steps, "final_loss": tail_mean(result.losses)})


@register_replay(EarlyExitDynamic)
def replay_early_exit(model: nn.Module, record: Record) -> None:
    """Rebuild the exit heads and the exit-aware class from the record (weights load next, strictly)."""
    d = record.data
    path, n = d["path"], d["n_blocks"]
    sizes = [d["n_blocks"], d["width"], d["classes"], d["head_hidden"]]
    if not isinstance(path, str) or not all(type(v) is int and v >= 0 for v in sizes) or n < 2:
        raise MethodError(f"{KIND} replay: bad record data {d!r}")
    blocks = model.get_submodule(path)
    if not isinstance(blocks, nn.ModuleList) or len(blocks) != n:
        raise MethodError(f"{KIND} replay: {path!r} is not a list of {n} blocks in this model")
    config = EarlyExitDynamic.from_dict(record.config)
    install(model, path, ExitHeads(n - 1, d["width"], d["classes"], d["head_hidden"]), settings_of(config))


__all__ = ["EarlyExitDynamic", "settings_of"]
