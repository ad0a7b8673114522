"""Tied-weight and block-diagonal Linears: digits MLP accuracy and gate ratios at MiniLM shapes.

Part 1 trains a 64-512-512-10 MLP on the digits train split (1347 images, fixed seed),
then replaces its two hidden Linears with each structured kind (and ``lowrank.block_diagonal``) (least-squares projection
of the trained weights), reports test accuracy (450 images) right after the projection
and after a short fine-tune with the training engine, the stored parameters, the
``slimkit.save`` file size and the restored model's accuracy (it must equal the live one).

Part 2 is what ``gate: latency`` measures: paired, interleaved timing
(:func:`slimkit.lowrank.gate.decide`) of each structured layer against the dense Linear
at MiniLM's shapes (384x384, 384->1536, 1536->384) at 32x128, 1x128 and 1x1 tokens, eager
PyTorch and the ``torch.export`` program. Ratio = dense / structured time (> 1: the
structured layer is faster). CPU, ``--threads`` threads (default 1), a few minutes::

    python benchmarks/structured_digits.py [--steps 300] [--threads 1] [--rounds 5] [--minilm | --only-minilm]

Part 3 (``--minilm``; ``--only-minilm`` adds it to an existing JSON) applies
``share.circulant`` with ``gate: latency`` to zoo:minilm-l6's FFN Linears at 32x128 and 1x128
tokens and times the whole model against fp32 (speed only, no recovery).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

import slimkit
from slimkit.core import MethodConfig, Targets
from slimkit.core.cpu import int8_isa
from slimkit.lowrank.block_diagonal import BlockDiagonalLinear, BlockDiagonalLowrank
from slimkit.lowrank.gate import decide, n_params
from slimkit.share.structured import CirculantShare, HashedShare, ToeplitzShare
from slimkit.share.structured_layers import CirculantLinear, HashedLinear, ToeplitzLinear
from slimkit.train.engine import task_loss, train
from slimkit.train.options import TrainOptions
from slimkit.zoo.digits import digits_split

RESULTS = Path(__file__).parent / "results"
HIDDEN = 512


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, HIDDEN), nn.ReLU(),
                         nn.Linear(HIDDEN, 10))


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return round(float((model.eval()(x).argmax(1) == y).float().mean()) * 100, 2)


def fit(model: nn.Module, batches: list[Any], steps: int, lr: float) -> None:
    loss = task_loss(lambda m, b: nn.functional.cross_entropy(m(b[0]), b[1]))
    train(model.train(), loss, batches, TrainOptions(steps=steps, lr=lr, seed=0))
    model.eval()


def digits_rows(steps: int) -> list[dict[str, Any]]:
    x_tr, y_tr, x_te, y_te = digits_split()
    perm = torch.randperm(len(y_tr), generator=torch.Generator().manual_seed(0))
    batches = [(x_tr[perm[i:i + 64]], y_tr[perm[i:i + 64]]) for i in range(0, len(perm), 64)]
    dense = mlp()
    fit(dense, batches, 3 * steps, 1e-3)
    hidden = Targets(include=("1", "3"))
    rows = [{"name": "dense fp32", "params": n_params(dense), "acc_projected": None, "acc": accuracy(dense, x_te, y_te)}]
    configs: list[tuple[str, MethodConfig]] = [
        ("hashed ratio 1/8", HashedShare(ratio=0.125)),
        ("hashed ratio 1/32", HashedShare(ratio=1 / 32)),
        ("circulant block 64 (fft)", CirculantShare(block=64)),
        ("circulant block 16 (fft)", CirculantShare(block=16)),
        ("toeplitz block 64 (dense product)", ToeplitzShare(block=64)),
        ("block-diagonal 4 blocks (lowrank.block_diagonal)", BlockDiagonalLowrank(blocks=4)),
    ]
    with tempfile.TemporaryDirectory() as tmp:
        slimkit.save(dense, Path(tmp) / "dense")
        rows[0]["file_bytes"] = (Path(tmp) / "dense" / "model.safetensors").stat().st_size
        for name, config in configs:
            t0 = time.perf_counter()
            model = slimkit.apply(dense, config, hidden)
            projected = accuracy(model, x_te, y_te)
            fit(model, batches, steps, 1e-3)
            acc = accuracy(model, x_te, y_te)
            path = slimkit.save(model, Path(tmp) / f"row{len(rows)}")
            restored = slimkit.restore(path, model=mlp)
            rows.append({"name": name, "params": n_params(model), "acc_projected": projected, "acc": acc,
                         "acc_restored": accuracy(restored, x_te, y_te),
                         "file_bytes": (path / "model.safetensors").stat().st_size,
                         "seconds": round(time.perf_counter() - t0, 1)})
            print(rows[-1], flush=True)
    return rows


def candidates(n_in: int, n_out: int) -> list[tuple[str, nn.Module]]:
    return [
        ("circulant b64 fft", CirculantLinear(n_in, n_out, 64, "fft")),
        ("circulant b128 fft", CirculantLinear(n_in, n_out, 128, "fft")),
        ("circulant b64 dense", CirculantLinear(n_in, n_out, 64, "dense")),
        ("toeplitz b64 dense", ToeplitzLinear(n_in, n_out, 64, "dense")),
        ("toeplitz b64 fft", ToeplitzLinear(n_in, n_out, 64, "fft")),
        ("hashed 1/8", HashedLinear(n_in, n_out, n_in * n_out // 8, seed=0)),
        ("block-diagonal 4", BlockDiagonalLinear(n_in, n_out, 4)),
    ]


def gate_rows(rounds: int) -> list[dict[str, Any]]:
    rows = []
    gen = torch.Generator().manual_seed(0)
    for n_in, n_out in [(384, 384), (384, 1536), (1536, 384)]:
        dense = nn.Linear(n_in, n_out).eval()
        for tokens in [(32, 128), (1, 128), (1, 1)]:
            x = torch.randn(*tokens, n_in, generator=gen)
            for name, layer in candidates(n_in, n_out):
                for runtime in ("eager", "pt2"):
                    if runtime == "pt2" and "fft" not in name:
                        continue  # gather + GEMM: the same kernels as eager
                    opts = CirculantShare(gate="latency", gate_runtime=runtime, gate_rounds=rounds, gate_iters=3)
                    d = decide(f"{n_in}x{n_out}", dense, layer.eval(), (x,), opts)
                    rows.append({"shape": f"{n_in}->{n_out}", "tokens": f"{tokens[0]}x{tokens[1]}", "layer": name,
                                 "runtime": runtime, "dense_ms": round(d.dense_ms or 0, 3),
                                 "structured_ms": round(d.factorized_ms or 0, 3), "ratio": round(d.ratio or 0, 3),
                                 "params_ratio": round(d.params_dense / d.params_factorized, 1), "kept": d.kept})
                    print(rows[-1], flush=True)
    return rows


def minilm_rows(rounds: int) -> dict[str, Any]:
    """``share.circulant`` (block 64, FFT) with ``gate: latency`` on MiniLM's 12 FFN Linears, then the
    whole model timed against fp32 (speed only: the projected model is not recovered, its
    accuracy is meaningless until a distillation step retrains it)."""
    from slimkit import zoo
    from slimkit.core import Context
    from slimkit.measure.latency import compare

    zm = zoo.load("zoo:minilm-l6")
    ffn = Targets(include=(r"re:.*layer\.\d+\.(intermediate|output)\.dense",))
    out: dict[str, Any] = {}
    for batch in (32, 1):
        x = zm.example_inputs(batch, 128)
        config = CirculantShare(block=64, gate="latency", gate_rounds=rounds, gate_iters=2)
        model = slimkit.apply(zm.model, config, ffn, Context(example_inputs=x))
        rec = slimkit.records(model)[-1]
        res = compare(zm.model, model, x, rounds=3, iters_per_round=1 if batch > 1 else 5, warmup=1)
        out[f"{batch}x128"] = {
            "layers_kept_circulant": rec.summary["layers_factorized"], "layers_declined": rec.summary["layers_declined"],
            "layer_ratios": {d["layer"].split("encoder.layer.")[-1]: round(d["ratio"], 2) for d in rec.data["gate"]},
            "params_fp32": n_params(zm.model), "params": n_params(model),
            "whole_model_fp32_ms": round(res.median_a_ms, 1), "whole_model_ms": round(res.median_b_ms, 1),
            "whole_model_speedup": round(res.speedup, 3)}
        print(batch, out[f"{batch}x128"], flush=True)
    return out


DIGITS_COLS = ["model", "params", "file bytes", "test acc. after projection", "test acc. after fine-tune",
               "restored acc."]
GATE_LAYERS = ["circulant b64 fft", "circulant b128 fft", "toeplitz b64 dense", "toeplitz b64 fft", "hashed 1/8",
               "block-diagonal 4"]


def tables(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The result file's own tables (rendered by benchmarks/make_results.py) from its raw rows."""
    out = [{"caption": "digits MLP 64-512-512-10, two hidden Linears replaced, 300 fine-tune steps (450 test images)",
            "columns": DIGITS_COLS,
            "rows": [[r["name"], r["params"], r["file_bytes"], r["acc_projected"], r["acc"], r.get("acc_restored")]
                     for r in doc.get("digits_mlp", [])]}]
    rows = doc.get("gate_ratios_minilm_shapes", [])
    if rows:
        by = {(r["shape"], r["tokens"], r["layer"], r["runtime"]): r["ratio"] for r in rows}
        keys = list(dict.fromkeys((r["shape"], r["tokens"]) for r in rows))
        dense_ms = {(r["shape"], r["tokens"]): r["dense_ms"] for r in rows if r["runtime"] == "eager"}
        out.append({"caption": "gate ratio dense/structured per layer at MiniLM shapes, eager (1 thread; > 1: "
                               "structured faster)",
                    "columns": ["shape", "tokens", "dense ms", *GATE_LAYERS],
                    "rows": [[shape, tok, dense_ms.get((shape, tok)), *(by.get((shape, tok, lay, "eager"))
                                                                        for lay in GATE_LAYERS)]
                             for shape, tok in keys]})
    minilm = doc.get("minilm_circulant_ffn", {})
    if minilm:
        out.append({"caption": "zoo:minilm-l6, share.circulant block 64 on the 12 FFN Linears with gate: latency "
                               "(speed only, not recovered)",
                    "columns": ["tokens", "FFN layers kept circulant", "declined", "params", "fp32 params",
                                "whole-model fp32 ms", "whole-model ms", "speed-up"],
                    "rows": [[k, v["layers_kept_circulant"], v["layers_declined"], v["params"], v["params_fp32"],
                              v["whole_model_fp32_ms"], v["whole_model_ms"], v["whole_model_speedup"]]
                             for k, v in minilm.items()]})
    return out


def finish(doc: dict[str, Any]) -> dict[str, Any]:
    """Add the title, tables and notes that make_results.py renders."""
    doc["title"] = "Tied-weight and block-diagonal Linears (share.hashed / circulant / toeplitz, lowrank.block_diagonal)"
    doc["summary"] = ("Digits accuracy after a short fine-tune, and the per-layer speed ratios `gate: latency` "
                      "measures at MiniLM shapes; details and the verdict in docs/sharing.md.")
    doc["tables"] = tables(doc)
    doc["notes"] = ["timings on a machine shared with other jobs (paired, interleaved, provisional); the 1x128 "
                    "rows of the FFN shapes are bimodal under L3 contention (docs/sharing.md)"]
    return doc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--skip-gate", action="store_true")
    ap.add_argument("--minilm", action="store_true", help="also gate circulant FFNs in zoo:minilm-l6 and time it")
    ap.add_argument("--only-minilm", action="store_true", help="run only the MiniLM part (merged into the JSON)")
    ap.add_argument("--retable", action="store_true", help="only rebuild the JSON's tables from its raw rows")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    doc: dict[str, Any] = {
        "date": datetime.date.today().isoformat(),
        "command": "python benchmarks/structured_digits.py " + " ".join(sys.argv[1:]),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads, "
                   f"torch {torch.__version__}",
        "int8_isa": int8_isa().to_dict(),
    }
    path = RESULTS / "structured_digits.json"
    if args.retable:
        old = json.loads(path.read_text())
        old.setdefault("int8_isa", doc["int8_isa"])
        path.write_text(json.dumps(finish(old), indent=2) + "\n")
        return
    if args.only_minilm:
        doc = {**json.loads(path.read_text()), "minilm_command": doc["command"], "minilm_date": doc["date"],
               "minilm_circulant_ffn": minilm_rows(args.rounds)}
        path.write_text(json.dumps(finish(doc), indent=2) + "\n")
        print(f"wrote {path}")
        return
    doc["digits_mlp"] = digits_rows(args.steps)
    if not args.skip_gate:
        doc["gate_ratios_minilm_shapes"] = gate_rows(args.rounds)
    if args.minilm:
        doc["minilm_circulant_ffn"] = minilm_rows(args.rounds)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "structured_digits.json").write_text(json.dumps(finish(doc), indent=2) + "\n")
    print(f"wrote {RESULTS / 'structured_digits.json'}")


if __name__ == "__main__":
    main()
