"""The contract every registered method keeps, checked for every kind in ``slimkit.kinds()``.

Each kind runs from a one-step YAML recipe on a tiny model suited to it, with a Context
holding example inputs, calibration batches and labelled training batches + a loss, then:

- ``slimkit list-methods --json`` lists it with its stage, config class, a docstring and
  every option (name, type, default, required);
- the model's manifest gains exactly one Record of that kind, and the caller's model is
  left untouched;
- ``slimkit.save`` -> ``slimkit.restore(dir, model=factory)`` (a freshly, *differently*
  initialised dense model) reproduces the outputs bit for bit, the parameter shapes and
  every state tensor's dtype;
- the config survives ``to_dict`` -> ``from_dict`` and a YAML round trip of the recipe;
- an unknown option fails with a ConfigError naming the option;
- "shrink" methods physically reduce the parameter count, "sparsify" methods add zeros
  to the weights, "export" methods write their file into ``ctx.extras["export_dir"]`` and
  leave the model as it was, every other method changes something.

A newly registered kind fails here until it gets an entry in ``CONTRACT``.
"""
from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from torch import nn

import slimkit
from slimkit.cli.main import main as cli_main
from slimkit.core import ConfigError, Context, Recipe, call_model, config_class

pytestmark = pytest.mark.usefixtures("one_thread_module")


# -- tiny models ---------------------------------------------------------------------------------


def digits_cnn(seed: int = 0) -> nn.Module:
    """Digits-like CNN for 8x8 inputs: Conv-BN-ReLU x2, pool, flatten, Linear-ReLU-Linear."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(16 * 4 * 4, 32), nn.ReLU(), nn.Linear(32, 10),
    ).eval()


def tiny_bert(seed: int = 0) -> nn.Module:
    """Random 2-layer BERT (hidden 32, 4 heads of 8, FFN 48) built offline."""
    import transformers

    torch.manual_seed(seed)
    config = transformers.BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=48, max_position_embeddings=16)
    return transformers.BertModel(config).eval()


def tiny_bert_classifier(seed: int = 0) -> nn.Module:
    """Random 2-layer ``BertForSequenceClassification`` (hidden 32, 2 classes) built offline."""
    import transformers

    torch.manual_seed(seed)
    config = transformers.BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=48, max_position_embeddings=16, num_labels=2)
    return transformers.BertForSequenceClassification(config).eval()


def _classifier_data(gen: torch.Generator) -> tuple[Any, Any]:
    return {"input_ids": torch.randint(0, 50, (2, 6), generator=gen)}, torch.randint(0, 2, (2,), generator=gen)


def _cnn_data(gen: torch.Generator) -> tuple[Any, Any]:
    return torch.randn(4, 1, 8, 8, generator=gen), torch.randint(0, 10, (4,), generator=gen)


def _bert_data(gen: torch.Generator) -> tuple[Any, Any]:
    return {"input_ids": torch.randint(0, 50, (2, 6), generator=gen)}, torch.randn(2, 32, generator=gen)


FACTORIES: dict[str, tuple[Callable[[int], nn.Module], Callable[[torch.Generator], tuple[Any, Any]]]] = {
    "digits_cnn": (digits_cnn, _cnn_data),
    "tiny_bert": (tiny_bert, _bert_data),
    "tiny_bert_classifier": (tiny_bert_classifier, _classifier_data),
}


def _first_output(out: Any) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    return out.logits if "logits" in out else out.last_hidden_state[:, 0]


def loss_fn(model: nn.Module, batch: Any) -> torch.Tensor:
    """Cross-entropy for class targets, MSE on the first token's hidden state otherwise."""
    inputs, target = batch
    out = _first_output(call_model(model, inputs))
    if target.dtype == torch.long:
        return nn.functional.cross_entropy(out, target)
    return nn.functional.mse_loss(out, target)


def make_context(data: Callable[[torch.Generator], tuple[Any, Any]], export_dir: Path) -> Context:
    """Three tiny labelled batches: the first is the example, all are calibration and training data."""
    gen = torch.Generator().manual_seed(0)
    batches = [data(gen) for _ in range(3)]
    return Context(example_inputs=batches[0][0], calib_data=[b[0] for b in batches], train_data=batches,
                   loss_fn=loss_fn, progress=False, seed=0, extras={"export_dir": str(export_dir)})


# Kinds that change the computation but no weight (attention.token_prune: later blocks process
# fewer tokens; attention.window: a banded pattern): checked by their outputs changing, not by their
# state or parameter count.
COMPUTE_ONLY = {"attention.token_prune", "attention.window"}


# -- the contract table --------------------------------------------------------------------------
# kind -> (model factory name, `with` options (small and fast), targets)
CNN_WEIGHTS = {"types": ["Conv2d", "Linear"]}
LINEARS = {"types": ["Linear"]}
CONTRACT: dict[str, tuple[str, dict[str, Any], dict[str, Any]]] = {
    "lowrank.svd": ("digits_cnn", {"rank": 4, "data_aware": True, "calib_batches": 2}, LINEARS),
    "lowrank.block_diagonal": ("digits_cnn", {"blocks": 2}, LINEARS),
    "prune.block": ("digits_cnn", {"sparsity": 0.5, "block": [2, 4]}, LINEARS),
    "prune.channel": ("digits_cnn", {"ratio": 0.5, "importance": "taylor", "calib_batches": 2}, CNN_WEIGHTS),
    "prune.dsd": ("digits_cnn", {"sparsity": 0.5, "sparse_steps": 3, "redense_steps": 2}, CNN_WEIGHTS),
    "prune.gradual": ("digits_cnn", {"sparsity": 0.6, "steps": 4, "every": 1}, CNN_WEIGHTS),
    "prune.regrow": ("digits_cnn", {"sparsity": 0.6, "steps": 4, "every": 2}, CNN_WEIGHTS),
    "prune.heads": ("tiny_bert", {"heads_per_group": 1, "importance": "head", "calib_batches": 2}, {}),
    "prune.layers": ("tiny_bert", {"drop": [0]}, {}),
    "attention.token_prune": ("tiny_bert", {"keep": [1.0, 0.5]}, {}),
    "prune.magnitude": ("digits_cnn", {"sparsity": 0.6, "scope": "global"}, CNN_WEIGHTS),
    "prune.merge": ("digits_cnn", {"ratio": 0.25}, {}),
    "prune.movement": ("digits_cnn", {"sparsity": 0.6, "steps": 4, "every": 1}, CNN_WEIGHTS),
    "prune.nm": ("digits_cnn", {"n": 2, "m": 4}, LINEARS),
    "prune.obd": ("digits_cnn", {"sparsity": 0.5, "batches": 2}, CNN_WEIGHTS),
    "prune.sparsegpt": ("digits_cnn", {"sparsity": 0.5, "blocksize": 16, "batches": 2}, {}),
    "prune.vocab": ("tiny_bert", {"always_keep": [0, 1], "unk_id": 1}, {}),
    "prune.wanda": ("digits_cnn", {"sparsity": 0.5, "batches": 2}, {}),
    "quantize.balanced": ("digits_cnn", {"bits": 3}, CNN_WEIGHTS),
    "share.circulant": ("digits_cnn", {"block": 8}, LINEARS),
    "share.hashed": ("digits_cnn", {"ratio": 0.25, "seed": 3}, LINEARS),
    "share.toeplitz": ("digits_cnn", {"block": 8}, LINEARS),
    "quantize.binary": ("digits_cnn", {"mode": "xnor", "steps": 3}, CNN_WEIGHTS),
    "quantize.cast": ("digits_cnn", {"dtype": "bfloat16"}, LINEARS),
    "quantize.dynamic": ("digits_cnn", {"per_channel": True}, LINEARS),
    "quantize.embedding": ("tiny_bert", {"bits": 4}, {}),
    "quantize.fold_bn": ("digits_cnn", {}, {}),
    "quantize.kmeans": ("digits_cnn", {"bits": 3, "steps": 2}, CNN_WEIGHTS),
    "quantize.mixed": ("digits_cnn", {"n_batches": 2, "choices": [4, 8, 32]}, LINEARS),
    "quantize.pow2": ("digits_cnn", {"bits": 4, "storage": "auto"}, CNN_WEIGHTS),
    "quantize.qat": ("digits_cnn", {"bits": 4, "steps": 3, "calib_batches": 2}, CNN_WEIGHTS),
    "quantize.residual_binary": ("digits_cnn", {"bits": 2}, CNN_WEIGHTS),
    "quantize.smoothquant": ("tiny_bert", {"alpha": 0.5}, {}),
    "quantize.static": ("digits_cnn", {"calib_batches": 2}, CNN_WEIGHTS),
    "quantize.ternary": ("digits_cnn", {"steps": 3}, CNN_WEIGHTS),
    "quantize.weight_only": ("digits_cnn", {"bits": 4, "group_size": 8}, LINEARS),
    "train.bn_recalibrate": ("digits_cnn", {"batches": 2}, {}),
    "train.reconstruct": ("digits_cnn", {"calib_batches": 2}, LINEARS),
    "train.layerdrop": ("tiny_bert", {"steps": 3, "p": 0.5, "objective": "task"}, {}),
    "export.onnx": ("digits_cnn", {"file": "contract.onnx"}, {}),
    "export.pt2e": ("digits_cnn", {"file": "contract.pt2", "calib_batches": 2}, {}),
    "export.openvino": ("digits_cnn", {"file": "contract.xml", "calib_batches": 2}, {}),
    "lowrank.tucker": ("digits_cnn", {"rank": 4}, {"types": ["Conv2d"]}),
    "lowrank.cp": ("digits_cnn", {"rank": 4, "iters": 20}, {"types": ["Conv2d"]}),
    "block.depthwise_separable": ("digits_cnn", {}, {"types": ["Conv2d"]}),
    "block.group_shuffle": ("digits_cnn", {"groups": 2}, {"include": ["3"]}),
    "distill.logits": ("digits_cnn", {"steps": 3, "temperature": 2.0}, {}),
    "distill.embedding": ("digits_cnn", {"steps": 3, "loss": "mse"}, {}),
    "distill.intermediate": ("tiny_bert", {"steps": 2, "layer_map": "last_k", "k": 1,
                                           "matches": [{"what": "attention_relation"}, {"what": "hidden"}]}, {}),
    "distill.multi_teacher": ("digits_cnn", {"steps": 2, "teachers": ["context", "context"], "weights": [2, 1]}, {}),
    "distill.assistant_chain": ("tiny_bert", {"steps": 2, "assistants": [1], "loss": "mse"}, {}),
    "distill.mutual": ("digits_cnn", {"steps": 2}, {}),
    "distill.born_again": ("digits_cnn", {"steps": 2, "generations": 2}, {}),
    "lowrank.tt": ("tiny_bert", {"d": 2, "max_rank": 4}, {"include": ["*word_embeddings", "*intermediate.dense"]}),
    "share.factorized_embedding": ("tiny_bert", {"dim": 8}, {"include": ["*word_embeddings"]}),
    "share.layers": ("tiny_bert", {"groups": 1}, {}),
    "attention.linformer": ("tiny_bert", {"k": 4}, {}),
    # favor: the random features are a saved buffer (elu+1 adds no state, so "changed something" cannot see it;
    # tests/attention covers it)
    "attention.linear": ("tiny_bert", {"feature_map": "favor", "features": 8, "seed": 1}, {}),
    "dynamic.early_exit": ("tiny_bert_classifier", {"steps": 2, "threshold": 0.5}, {}),
    "attention.window": ("tiny_bert", {"window": 1, "global_tokens": [0]}, {}),
}

KINDS = slimkit.kinds()  # at collection time: every registered method gets a test


def test_contract_table_names_only_registered_kinds() -> None:
    stale = sorted(set(CONTRACT) - set(KINDS))
    assert not stale, f"CONTRACT in {__file__} has entries for kinds that are not registered: {stale}; remove them"


# -- helpers -------------------------------------------------------------------------------------
def _tensors(out: Any) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict) or hasattr(out, "values"):
        out = list(out.values())
    if isinstance(out, (list, tuple)):
        return [t for v in out for t in _tensors(v)]
    return []


def _outputs(model: nn.Module, batches: list[Any]) -> list[torch.Tensor]:
    with torch.no_grad():
        return [t for b in batches for t in _tensors(call_model(model.eval(), b))]


def _zeros(model: nn.Module) -> int:
    return sum(int((p == 0).sum()) for p in model.parameters() if p.is_floating_point())


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(a[k].shape == b[k].shape and a[k].dtype == b[k].dtype
                                        and torch.equal(a[k], b[k]) for k in a)


def _recipe_yaml(kind: str, options: dict[str, Any], targets: dict[str, Any]) -> str:
    step: dict[str, Any] = {"kind": kind, "with": options}
    if targets:
        step["targets"] = targets
    return yaml.safe_dump({"name": f"contract-{kind}", "steps": [step]}, sort_keys=False)


def listed_methods(capsys: pytest.CaptureFixture[str]) -> dict[str, dict[str, Any]]:
    """``slimkit list-methods --json``, parsed: kind -> entry."""
    capsys.readouterr()
    assert cli_main(["list-methods", "--json"]) == 0
    return {m["kind"]: m for m in json.loads(capsys.readouterr().out)["methods"]}


# -- the contract --------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_method_contract(kind: str, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    if kind not in CONTRACT:
        pytest.fail(f"method kind {kind!r} is registered but has no contract entry: add "
                    f"CONTRACT[{kind!r}] = (model factory name, small fast `with` options, targets) to {__file__} "
                    f"(factories: {sorted(FACTORIES)}; add a tiny model there if none suits the method)")
    check_contract(kind, *CONTRACT[kind], capsys, tmp_path)


# Capabilities that are options of a kind rather than kinds of their own: each runs through the
# same contract from YAML (the issue-16 list: "everything reachable from a recipe").
VARIANTS: dict[str, tuple[str, str, dict[str, Any], dict[str, Any]]] = {
    "intermediate-uniform-hidden-mse-logits": ("distill.intermediate", "tiny_bert", {
        "steps": 2, "layer_map": "uniform", "matches": [{"what": "hidden", "loss": "mse"}], "logits": "mse"}, {}),
    "intermediate-explicit-attention": ("distill.intermediate", "tiny_bert", {
        "steps": 2, "layer_map": "explicit", "pairs": [[0, 1]], "matches": [{"what": "attention", "loss": "kl"}]}, {}),
    "intermediate-learned-fitnets": ("distill.intermediate", "tiny_bert", {
        "steps": 2, "layer_map": "learned", "matches": [{"what": "fitnets"}]}, {}),
    "intermediate-attention-transfer-fsp": ("distill.intermediate", "tiny_bert", {
        "steps": 2, "matches": [{"what": "attention_transfer", "p": 2.0}, {"what": "fsp", "weight": 0.5}]}, {}),
    "intermediate-cnn-hidden-cosine-kd": ("distill.intermediate", "digits_cnn", {
        "steps": 2, "matches": [{"what": "hidden", "loss": "cosine"}], "logits": "kd", "temperature": 2.0},
        {"types": ["Conv2d"]}),
    "assistant-chain-spec": ("distill.assistant_chain", "digits_cnn", {"steps": 2, "assistants": ["context"]}, {}),
    "mutual-context-peer": ("distill.mutual", "digits_cnn", {"steps": 2, "peers": ["context"]}, {}),
    "gradual-narang": ("prune.gradual", "digits_cnn", {"sparsity": 0.6, "steps": 4, "every": 1,
                                                        "sparsity_schedule": "narang"}, CNN_WEIGHTS),
    "gradual-l1": ("prune.gradual", "digits_cnn", {"sparsity": 0.6, "steps": 4, "every": 1, "reg": "l1",
                                                    "reg_weight": 1e-3}, CNN_WEIGHTS),
    "gradual-group-lasso": ("prune.gradual", "digits_cnn", {"sparsity": 0.6, "steps": 4, "every": 1,
                                                             "reg": "group_lasso", "reg_groups": "cols"}, CNN_WEIGHTS),
    "movement-rpp-proximal": ("prune.movement", "digits_cnn", {"sparsity": 0.6, "steps": 4, "every": 1,
                                                                "proximal": True}, CNN_WEIGHTS),
    "tucker-vbmf-params-gate": ("lowrank.tucker", "digits_cnn", {"gate": "params", "gate_min_ratio": 1.5}, {}),
    "tucker-energy": ("lowrank.tucker", "digits_cnn", {"energy": 0.9, "iters": 2}, {"types": ["Conv2d"]}),
    "depthwise-separable-multiplier-params-gate": ("block.depthwise_separable", "digits_cnn",
                                                   {"multiplier": 2, "gate": "params", "gate_min_ratio": 2.0},
                                                   {"types": ["Conv2d"]}),
    "cp-ratio": ("lowrank.cp", "digits_cnn", {"ratio": 0.5, "iters": 10}, {"types": ["Conv2d"]}),
    "circulant-dense-product": ("share.circulant", "digits_cnn", {"block": 8, "product": "dense"}, LINEARS),
    "toeplitz-fft-product": ("share.toeplitz", "digits_cnn", {"block": 4, "product": "fft"}, LINEARS),
    "hashed-size-params-gate": ("share.hashed", "digits_cnn", {"size": 100, "gate": "params", "gate_min_ratio": 4.0},
                                LINEARS),
    "channel-entropy": ("prune.channel", "digits_cnn", {"ratio": 0.5, "importance": "entropy", "calib_batches": 2},
                        CNN_WEIGHTS),
    "channel-output-norm": ("prune.channel", "digits_cnn", {"ratio": 0.5, "importance": "output_norm",
                                                             "calib_batches": 2}, CNN_WEIGHTS),
    "svd-bert-budget-params-gate": ("lowrank.svd", "tiny_bert", {"budget": 0.5, "gate": "params",
                                                                 "gate_min_ratio": 1.2},
                                    {"include": ["*.layer.*"], "types": ["Linear"]}),
    "svd-bert-embedding-ratio": ("lowrank.svd", "tiny_bert", {"ratio": 0.5}, {"include": ["*word_embeddings"]}),
    "tt-linear-ranks-factors-gate-params": ("lowrank.tt", "digits_cnn", {
        "d": 2, "ranks": [3], "factors": [[16, 16], [8, 4]], "gate": "params", "gate_min_ratio": 2.0},
        {"include": ["8", "10"]}),
    "factorized-embedding-frequency": ("share.factorized_embedding", "tiny_bert", {
        "dim": 8, "init": "frequency", "data": "calib", "batches": 2}, {"include": ["*word_embeddings"]}),
    "factorized-embedding-exact-rows": ("share.factorized_embedding", "tiny_bert", {
        "dim": 4, "init": "frequency", "data": "calib", "exact_rows": 5}, {"include": ["*word_embeddings"]}),
    "channel-input-norm": ("prune.channel", "digits_cnn", {"ratio": 0.5, "importance": "input_norm",
                                                            "calib_batches": 2}, CNN_WEIGHTS),
    "linformer-vit-style-max-len": ("attention.linformer", "tiny_bert", {"k": 3, "max_len": 12},
                                    {"include": ["encoder.layer.1.*"]}),
    "layerdrop-cnn-linear-embedding": ("train.layerdrop", "digits_cnn", {
        "steps": 2, "p": 0.5, "drop_schedule": "linear", "objective_options": {"loss": "mse"}},
        {"types": ["BatchNorm2d"]}),
    "share-layers-group-map-index": ("share.layers", "tiny_bert", {"group_map": [[0, 1]], "init": "index",
                                                                    "index": -1}, {}),
    "early-exit-patience-cls-linear": ("dynamic.early_exit", "tiny_bert_classifier", {
        "steps": 2, "criterion": "patience", "exit_patience": 1, "pooling": "cls", "head_hidden": 0}, {}),
    "early-exit-entropy-patience": ("dynamic.early_exit", "tiny_bert_classifier", {
        "steps": 2, "criterion": "entropy_patience", "threshold": 0.9, "exit_patience": 1, "solo_ratio": 0.25}, {}),
    "window-no-global-tokens": ("attention.window", "tiny_bert", {"window": 2, "global_tokens": []}, {}),
    "token-prune-merge-min-keep-key-norm": ("attention.token_prune", "tiny_bert", {
        "keep": [1.0, 0.5], "reduce": "merge", "min_keep": 3, "score": "key_norm"}, {}),
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_capability_contract(variant: str, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    check_contract(*VARIANTS[variant], capsys, tmp_path)


def check_contract(kind: str, factory_name: str, options: dict[str, Any], targets: dict[str, Any],
                   capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """The contract of one kind run with ``options`` on the tiny model ``factory_name``."""
    factory, data = FACTORIES[factory_name]
    cls = config_class(kind)

    # listed by the CLI with its options
    listed = listed_methods(capsys).get(kind)
    assert listed is not None, f"{kind} missing from `slimkit list-methods --json`"
    assert listed["stage"] == cls.stage and listed["config"] == cls.__name__
    assert listed["doc"], f"{cls.__name__} needs a docstring (its first line is the list-methods summary)"
    fields = dataclasses.fields(cls)  # type: ignore[arg-type]
    assert [f["name"] for f in listed["fields"]] == [f.name for f in fields]
    for f in listed["fields"]:
        assert f["type"] and isinstance(f["required"], bool)
    # the listed defaults are valid option values that mean the same as leaving the option out
    listed_defaults = {f["name"]: f["default"] for f in listed["fields"] if not f["required"]}
    assert cls.from_dict({**listed_defaults, **options}) == cls.from_dict(options)

    # config round trips: dict, YAML recipe; an unknown option names itself
    recipe = Recipe.from_yaml(_recipe_yaml(kind, options, targets))
    (step,) = recipe.steps
    config = step.config
    assert type(config) is cls and cls.from_dict(config.to_dict()) == config
    again = Recipe.from_yaml(yaml.safe_dump(recipe.to_dict()))
    assert again.steps[0].config == config and again.steps[0].targets == step.targets
    with pytest.raises(ConfigError, match="no_such_option"):
        Recipe.from_yaml(_recipe_yaml(kind, {**options, "no_such_option": 1}, targets))
    with pytest.raises(ConfigError, match="no_such_option"):
        cls.from_dict({**options, "no_such_option": 1})

    # run it
    model = factory(0)
    ctx = make_context(data, tmp_path / "export")
    ctx.teacher = factory(2).eval()  # distillation kinds learn from it; the others ignore it
    before_state = _state(model)
    before_params = sum(p.numel() for p in model.parameters())
    before_zeros = _zeros(model)
    out = recipe.run(model, ctx)
    assert _same_state(before_state, _state(model)), f"{kind} modified the caller's model"
    recs = slimkit.records(out)
    assert [r.kind for r in recs] == [kind]
    assert recs[0].config == config.to_dict()
    json.dumps(recs[0].to_dict())  # plain JSON data, or the manifest cannot be written
    if cls.stage == "export":
        assert _same_state(before_state, _state(out)), f"{kind} is an export step but changed the model"
        name = config.to_dict().get("file")  # export configs name the file they write
        assert isinstance(name, str), f"{kind}: an export config needs a `file` option"
        assert (tmp_path / "export" / name).is_file(), f"{kind} wrote no {name} into Context.extras['export_dir']"
    elif kind in COMPUTE_ONLY:  # no weight changes: what runs does, so the outputs must
        calib = list(ctx.calib_data)  # type: ignore[arg-type]
        assert not all(torch.equal(a, b) for a, b in zip(_outputs(model, calib), _outputs(out, calib))), \
            f"{kind} changed nothing"
    else:
        assert not _same_state(before_state, _state(out)), f"{kind} changed nothing"
    after_params = sum(p.numel() for p in out.parameters())
    if cls.stage == "shrink" and kind not in COMPUTE_ONLY:
        assert after_params < before_params, f"{kind} is a shrink method but kept {after_params} parameters"
    if cls.stage == "sparsify":
        assert _zeros(out) > before_zeros, f"{kind} is a sparsify method but added no zero weight"

    # save -> restore into a differently initialised dense model reproduces it exactly
    batches = list(ctx.calib_data)  # type: ignore[arg-type]
    expected = _outputs(out, batches)
    slimkit.save(out, tmp_path / "m")
    restored = slimkit.restore(tmp_path / "m", model=lambda: factory(1))
    assert [r.kind for r in slimkit.records(restored)] == [kind]
    assert [(n, p.shape) for n, p in restored.named_parameters()] == [(n, p.shape) for n, p in out.named_parameters()]
    assert {k: v.dtype for k, v in restored.state_dict().items()} == {k: v.dtype for k, v in out.state_dict().items()}
    got = _outputs(restored, batches)
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert g.shape == e.shape and torch.equal(g, e), f"{kind}: restored outputs differ from the saved model's"
