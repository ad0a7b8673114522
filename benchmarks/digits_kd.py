"""Knowledge distillation on digits: a quarter-width student with KD vs the same student on labels alone.

Teacher: ``zoo:digits-cnn`` (DigitsCNN, widths 16/32/64, hidden 64). Student: the same
class at a quarter of every width (4/8/16, hidden 16; ~1/12 of the parameters). Both
student arms use the same engine (:func:`slimkit.distill.engine.distill`), data order,
initialisation, steps, optimizer and LR schedule per seed; the only difference is the
loss: Hinton KD (``alpha`` soft + ``1 - alpha`` cross-entropy) vs cross-entropy alone.
Accuracy is on the fixed 450-image test split; mean and sample std over the seeds.
CPU, one thread, about a minute::

    .venv/bin/python benchmarks/digits_kd.py [--seeds 3] [--epochs 8] [--lr 5e-3] [--temperature 4] [--alpha 0.5]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
import torch.nn.functional as F

import slimkit
from slimkit.distill.cache import kd_with
from slimkit.distill.engine import distill
from slimkit.zoo.digits import DigitsCNN


def student(seed: int) -> DigitsCNN:
    torch.manual_seed(seed)
    return DigitsCNN(widths=(4, 8, 16), hidden=16)


def narrowed(teacher: torch.nn.Module, example: torch.Tensor) -> torch.nn.Module:
    """The teacher with 3/4 of every layer's channels removed by L1 importance (``prune.channel``):
    the same architecture as :func:`student`, initialised from the teacher's strongest filters."""
    from slimkit import Context
    from slimkit.core import Targets
    from slimkit.prune.structured import ChannelPrune

    return slimkit.apply(teacher, ChannelPrune(ratio=0.75), Targets(), Context(example_inputs=example))


def shifted(batches: list, seed: int, max_shift: int) -> list:
    """The same batches with every image moved by a seeded random (dx, dy) in [-s, s] pixels
    (zero fill): both arms see the same augmented images; only KD can label them softly."""
    if max_shift == 0:
        return batches
    g = torch.Generator().manual_seed(10_000 + seed)
    out = []
    for x, y in batches:
        x2 = torch.zeros_like(x)  # [B, 1, 8, 8]
        for i in range(x.shape[0]):
            dx, dy = (int(v) for v in torch.randint(-max_shift, max_shift + 1, (2,), generator=g))
            src = x[i, :, max(0, -dy):x.shape[2] - max(0, dy), max(0, -dx):x.shape[3] - max(0, dx)]
            x2[i, :, max(0, dy):max(0, dy) + src.shape[1], max(0, dx):max(0, dx) + src.shape[2]] = src
        out.append((x2, y))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=5e-3)
    ap.add_argument("--temperature", type=float, default=4.0)
    ap.add_argument("--alpha", type=float, default=0.5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--narrowed", action="store_true",
                    help="also train students initialised by narrowing the teacher (pruning surgery)")
    ap.add_argument("--shift", type=int, default=0, help="random image shifts of up to this many pixels")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    zm = slimkit.zoo.load("zoo:digits-cnn")
    task = slimkit.zoo.get_task("digits")
    teacher = zm.model.eval()

    def kd(s_out, t_out, batch):
        return kd_with(s_out, t_out, batch[1], temperature=args.temperature, alpha=args.alpha)

    def ce(s_out, _t_out, batch):
        return F.cross_entropy(s_out, batch[1])

    arms = {"KD": (kd, teacher), "labels only": (ce, None)}
    if args.narrowed:
        arms.update({"KD, narrowed from teacher": (kd, teacher), "labels only, narrowed from teacher": (ce, None)})
    acc: dict[str, list[float]] = {name: [] for name in arms}
    agree: dict[str, list[float]] = {name: [] for name in arms}
    steps = 0
    t0 = time.perf_counter()
    for seed in range(args.seeds):
        data = shifted(task.train_batches(zm, args.batch_size, epochs=args.epochs, seed=seed), seed, args.shift)
        steps = len(data)
        for name, (loss, t) in arms.items():
            net = narrowed(teacher, zm.example_inputs(2)) if "narrowed" in name else student(seed)
            torch.manual_seed(seed)
            distill(net, t, data, loss=loss, steps=steps, lr=args.lr, schedule="cosine", warmup=steps // 20,
                    seed=seed)
            m = task.evaluate(net, reference=teacher)
            acc[name].append(m["accuracy"])
            agree[name].append(m["agreement"])
            print(f"seed {seed} {name}: accuracy {m['accuracy']:.4f}", file=sys.stderr)
    elapsed = time.perf_counter() - t0

    p_teacher, p_student = (sum(p.numel() for p in m.parameters()) for m in (teacher, student(0)))
    t_acc = task.evaluate(teacher)["accuracy"]
    print(f"Digits KD: {args.seeds} seeds, {steps} steps each ({args.epochs} epochs x batch {args.batch_size}), "
          f"AdamW lr {args.lr} cosine, T={args.temperature}, alpha={args.alpha}; {elapsed:.0f} s on "
          f"{args.threads} thread(s)\n")
    print("| model | params | test accuracy (mean ± std) | per seed | top-1 agreement with teacher |")
    print("|---|---:|---:|---|---:|")
    print(f"| teacher zoo:digits-cnn | {p_teacher:,} | {t_acc:.4f} | - | - |")
    for name in arms:
        a = acc[name]
        std = statistics.stdev(a) if len(a) > 1 else 0.0
        print(f"| student 1/4 width, {name} | {p_student:,} | {statistics.mean(a):.4f} ± {std:.4f} | "
              f"{', '.join(f'{v:.4f}' for v in a)} | {statistics.mean(agree[name]):.4f} |")
    print()
    for name in arms:
        if name != "labels only":
            gains = [k - c for k, c in zip(acc[name], acc["labels only"])]
            print(f"{name} - labels only from scratch, per seed (same data order): "
                  f"{', '.join(f'{g:+.4f}' for g in gains)}")


if __name__ == "__main__":
    main()
