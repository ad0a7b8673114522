"""Data-parallel distillation with a real 2-process ``torchrun`` (gloo, CPU).

The 2-process run (1 micro-batch per rank per step) must match a 1-process run with
``grad_accum=2`` on the same stream: DDP averages the two ranks' gradients, which is what
accumulating the two micro-batches does.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
import ddp_worker  # noqa: E402  (a sibling script, importable once HERE is on sys.path)


def test_torchrun_two_processes_match_one_process_with_accumulation(tmp_path) -> None:
    out = tmp_path / "ddp.pt"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(HERE / "ddp_worker.py"), str(out), "1"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = torch.load(out, weights_only=True)
    assert got["world"] == 2
    ref, ref_losses = ddp_worker.run(grad_accum=2)
    _, start, _ = ddp_worker.setup()
    moved = max(float((v - start.state_dict()[k]).abs().max()) for k, v in ref.state_dict().items())
    assert moved > 1e-2  # training really changed the weights
    for k, v in ref.state_dict().items():
        assert torch.allclose(got["state"][k], v, atol=1e-5, rtol=1e-4), k
    assert torch.allclose(torch.tensor(got["losses"]), torch.tensor(ref_losses), atol=1e-5)
    # and it is not what one process sees with a single micro-batch per step
    single, _ = ddp_worker.run(grad_accum=1)
    assert max(float((single.state_dict()[k] - v).abs().max()) for k, v in ref.state_dict().items()) > 1e-3
