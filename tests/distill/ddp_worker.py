"""Worker for the torchrun test: distil a small student; rank 0 saves the weights.

Run as ``torchrun --nproc_per_node=N ddp_worker.py OUT GRAD_ACCUM`` or as a plain script
(one process). The model, data and teacher are identical in every process (fixed seeds).
"""
from __future__ import annotations

import os
import sys

import torch
from torch import nn

from slimkit.distill.engine import distill
from slimkit.distill.losses import kd_loss
from slimkit.distill.parallel import init_from_env, shutdown, world


def setup() -> tuple[nn.Module, nn.Module, list[tuple[torch.Tensor, torch.Tensor]]]:
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 5))
    student = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 5))
    data = [(torch.randn(12, 16, generator=g), torch.randint(0, 5, (12,), generator=g)) for _ in range(16)]
    return teacher, student, data


def run(grad_accum: int, steps: int = 12) -> tuple[nn.Module, list[float]]:
    teacher, student, data = setup()
    res = distill(student, teacher, data, loss=lambda s, t, b: kd_loss(s, t, b[1], temperature=2.0, alpha=0.5),
                  steps=steps, lr=5e-3, optimizer="adam", grad_accum=grad_accum, seed=0)
    return student, res.losses


if __name__ == "__main__":
    torch.set_num_threads(1)
    size, rank = init_from_env()
    student, losses = run(int(sys.argv[2]))
    assert world() == (size, rank)
    if rank == 0:
        torch.save({"state": student.state_dict(), "losses": losses, "world": size}, sys.argv[1])
    shutdown()
    # torch 2.13 + gloo can abort a rank in C++ static destructors at interpreter exit
    # ("terminate called without an active exception", seen about 1 run in 10 on a loaded
    # machine) after all work is done and saved; skip those destructors
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
