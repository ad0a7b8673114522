"""The published support matrix as a test: every (architecture, method) cell either works
(its numeric check passes) or raises a slimkit error naming what is unsupported; a raw
exception or a tolerance miss fails. ``benchmarks/support_matrix.py`` writes the same cells
to ``docs/support.md``.
"""
from __future__ import annotations

import pytest
from support.matrix import METHODS, run_cell
from support.models import MODELS

# cells measured over ~5 s on 2 cores (torch.export / torchao pattern matching, big tiny-models)
SLOW_MODELS = {"mobilenet_v2", "efficientnet_lite0"}
SLOW_METHODS = {"export.pt2e"}
# cells that must stay "ok" (an "unsupported" here is a regression, not a documented limit)
MUST_WORK = {
    **{(m, "prune.channel"): True for m in ("bert", "gpt2", "llama_gqa", "qwen2", "mistral", "gpt_neox", "bart",
                                            "whisper_encoder", "wav2vec2", "vit", "deit", "swin", "resnet",
                                            "densenet", "unet", "digits_cnn", "residual_concat_cnn", "mha")},
    **{(m, "prune.heads"): True for m in ("bert", "gpt2", "llama_gqa", "t5_encoder", "qwen2", "mistral", "gpt_neox",
                                          "bart", "whisper_encoder", "wav2vec2", "vit", "deit", "swin")},
    **{(m, "prune.magnitude"): True for m in MODELS},
    **{(m, "save/restore"): True for m in MODELS},
    **{(m, "export.onnx"): True for m in ("bert", "roberta", "distilbert", "gpt2", "llama_gqa", "t5_encoder", "qwen2",
                                          "mistral", "gpt_neox", "bart", "whisper_encoder", "wav2vec2", "vit", "deit",
                                          "swin", "lstm", "gru", "mha")},
    **{(m, "prune.channel"): True for m in ("lstm", "gru")},
    **{(m, "quantize.dynamic"): True for m in ("bert", "qwen2", "bart", "t5_encoder", "lstm", "gru", "mha")},
}


# Cells known to fail, with the reason (strict xfail: once fixed, the cell passes, the xfail
# turns into a failure, and its entry must go). Empty: every cell works or names what it lacks.
KNOWN_BROKEN: dict[tuple[str, str], str] = {}


def _cells() -> list:
    out = []
    for model in MODELS:
        for method in METHODS:
            marks = [pytest.mark.slow] if model in SLOW_MODELS or method in SLOW_METHODS else []
            if (model, method) in KNOWN_BROKEN:
                marks.append(pytest.mark.xfail(strict=True, reason=KNOWN_BROKEN[model, method]))
            out.append(pytest.param(model, method, id=f"{model}-{method}", marks=marks))
    return out


@pytest.mark.parametrize(("model", "method"), _cells())
def test_cell(model: str, method: str) -> None:
    status, detail = run_cell(model, method)
    assert status in ("ok", "unsupported"), f"{model} x {method}: {detail}"
    if status == "unsupported":
        assert detail.strip(), "an unsupported cell must say what is unsupported"
        assert (model, method) not in MUST_WORK, f"{model} x {method} regressed to unsupported: {detail}"


def test_matrix_is_wide_enough() -> None:
    assert len(MODELS) >= 20
    assert set(METHODS) >= {"prune.channel", "prune.heads", "prune.layers", "prune.magnitude", "quantize.dynamic",
                            "quantize.static", "export.onnx", "export.pt2e", "save/restore"}


def test_a_recurrent_layer_that_does_not_shrink_is_a_failure(monkeypatch) -> None:
    # the harness must not call prune.channel "ok" when only the classifier around the LSTM shrank
    import support.matrix as matrix

    status, detail = run_cell("lstm", "prune.channel")
    if status == "ok":  # once recurrent pruning exists, the check itself must still bite
        spec = MODELS["lstm"]
        model, _ = spec.factory()
        with pytest.raises(matrix.CellFailure, match="did not shrink 'rnn'"):
            matrix.must_shrink(model, model, spec, "prune.channel")
    else:
        assert status == "FAIL" and "did not shrink 'rnn'" in detail or status == "unsupported", detail
