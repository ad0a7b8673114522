"""Artifacts are untrusted: no code runs without trust_code, file hashes are checked, and a
malformed manifest is always an ArtifactError (never a raw exception or a silent load)."""
from __future__ import annotations

import copy
import json
import sys
import warnings
from pathlib import Path
from typing import Any, Iterator

import pytest
import torch
from torch import nn

import slimkit
from slimkit.core import ArtifactError, Context, Targets
from slimkit.core.safety import seal, sha256_file
from slimkit.prune import ChannelPrune, LayerPrune
from slimkit.quantize.ptq import CastQuant, DynamicQuant

FACTORY = '''
import pathlib
pathlib.Path({marker!r}).write_text("imported")
import torch

def make():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
'''


class Blocks(nn.Module):
    """A tiny model with a ModuleList of blocks (for prune.layers records)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.layers = nn.ModuleList([nn.Linear(6, 6) for _ in range(4)])
        self.head = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = torch.relu(layer(x))
        return self.head(x)


def _cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(),
                         nn.Linear(8 * 6 * 6, 16), nn.ReLU(), nn.Linear(16, 4))


def _pruned_cnn(path: Path) -> nn.Module:
    ctx = Context(example_inputs=torch.randn(1, 1, 6, 6))
    model = slimkit.apply(_cnn(), ChannelPrune(ratio=0.5), Targets(types=("Conv2d", "Linear")), ctx)
    slimkit.save(model, path, spec="test:cnn")
    return model


def _doc(path: Path) -> dict[str, Any]:
    return json.loads((path / "manifest.json").read_text())


def _write(path: Path, doc: dict[str, Any]) -> None:
    (path / "manifest.json").write_text(json.dumps(doc))


def _factory_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, Path]:
    """A module that leaves a marker file when imported; returns (its name, the marker)."""
    marker = tmp_path / "imported.txt"
    (tmp_path / "evil_factory_mod.py").write_text(FACTORY.format(marker=str(marker)))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "evil_factory_mod", raising=False)
    return "evil_factory_mod", marker


def test_py_spec_runs_only_with_trust_code(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mod, marker = _factory_module(tmp_path, monkeypatch)
    art = tmp_path / "art"
    model = slimkit.zoo.load(f"py:{mod}:make").model  # the user's own spec: loading it is their choice
    slimkit.save(model, art)
    marker.unlink()
    monkeypatch.delitem(sys.modules, mod)
    with pytest.raises(ArtifactError, match="trust_code=True") as err:
        slimkit.restore(art)
    assert "--trust-code" in str(err.value) and f"py:{mod}:make" in str(err.value)
    assert not marker.exists() and mod not in sys.modules  # nothing was imported
    again = slimkit.restore(art, trust_code=True)
    x = torch.randn(3, 4)
    assert marker.exists() and torch.equal(again(x), model(x))


def test_mkdtemp_spec_creates_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tempfile

    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    slimkit.save(_cnn(), tmp_path / "art", spec="py:tempfile:mkdtemp")
    with pytest.raises(ArtifactError, match="trust_code"):
        slimkit.restore(tmp_path / "art")
    assert list(scratch.iterdir()) == []


def test_one_flipped_weight_byte_is_refused_naming_the_file(tmp_path: Path) -> None:
    _pruned_cnn(tmp_path)
    file = tmp_path / "model.safetensors"
    raw = bytearray(file.read_bytes())
    header = int.from_bytes(raw[:8], "little")
    raw[8 + header + 5] ^= 0x01  # one bit of one weight value, header untouched
    file.write_bytes(bytes(raw))
    with pytest.raises(ArtifactError, match=r"model\.safetensors is corrupt or was modified"):
        slimkit.restore(tmp_path, model=_cnn)


def test_manifest_lists_every_file_and_checks_them(tmp_path: Path) -> None:
    _pruned_cnn(tmp_path)
    (tmp_path / "notes.txt").write_text("added later")
    assert set(_doc(tmp_path)["files"]) == {"model.safetensors"}
    slimkit.restore(tmp_path, model=_cnn)  # unlisted extra files are not loaded, so not checked
    seal(tmp_path)
    doc = _doc(tmp_path)
    assert doc["files"] == {n: sha256_file(tmp_path / n) for n in ("model.safetensors", "notes.txt")}
    assert doc["model_spec"] == "test:cnn" and doc["records"][0]["kind"] == "prune.channel"  # kept as written
    (tmp_path / "notes.txt").write_text("edited")
    with pytest.raises(ArtifactError, match="notes.txt is corrupt or was modified"):
        slimkit.restore(tmp_path, model=_cnn)
    (tmp_path / "notes.txt").unlink()
    with pytest.raises(ArtifactError, match="notes.txt not found"):
        slimkit.restore(tmp_path, model=_cnn)


@pytest.mark.parametrize("change, message", [
    ({"format_version": 99}, "format_version 99"),
    ({"format_version": "2"}, "format_version '2'"),
    ({"files": None}, "'files'"),
    ({"files": {"../model.safetensors": "0" * 64}}, "'files'"),
    ({"files": {"model.safetensors": "not-a-digest"}}, "'files'"),
    ({"model_spec": 7}, "model_spec"),
    ({"records": "prune.channel"}, "'records'"),
    ({"records": [{"kind": 3}]}, "kind"),
    ({"records": [{"kind": "prune.channel", "data": "plan"}]}, "'data'"),
])
def test_unreadable_manifests_are_refused(tmp_path: Path, change: dict[str, Any], message: str) -> None:
    _pruned_cnn(tmp_path)
    _write(tmp_path, {**_doc(tmp_path), **change})
    with pytest.raises(ArtifactError, match="not a manifest this slimkit can read") as err:
        slimkit.restore(tmp_path, model=_cnn)
    assert message in str(err.value)


def test_format_2_needs_file_hashes_and_format_1_loads_with_a_warning(tmp_path: Path) -> None:
    model = _pruned_cnn(tmp_path)
    doc = _doc(tmp_path)
    del doc["files"]
    _write(tmp_path, doc)
    with pytest.raises(ArtifactError, match="needs 'files'"):
        slimkit.restore(tmp_path, model=_cnn)
    del doc["format_version"]  # the first manifests carried no version and no hashes
    _write(tmp_path, doc)
    with pytest.warns(UserWarning, match="integrity is not checked"):
        again = slimkit.restore(tmp_path, model=_cnn)
    x = torch.randn(2, 1, 6, 6)
    assert torch.equal(again(x), model.eval()(x))


@pytest.mark.parametrize("mutate, fragment", [
    (lambda d: d["records"][0]["data"]["plan"].update({"0.weight": {"0": [-1, 0, 1, 2]}}), "kept index -1"),
    (lambda d: d["records"][0]["data"]["plan"].update({"0.weight": {"0": [0, 99]}}), "outside [0, 8)"),
    (lambda d: d["records"][0]["data"]["plan"].update({"0.weight": {"0": [0, 0, 1, 2]}}), "repeat"),
    (lambda d: d["records"][0]["data"]["plan"].update({"0.weight": {"7": [0]}}), "dim '7'"),
    (lambda d: d["records"][0]["data"]["plan"].update({"nope.weight": {"0": [0]}}), "nope.weight"),
    (lambda d: d["records"][0]["data"].update({"plan": "0.weight"}), "'plan' must map"),
    (lambda d: d["records"][0].update({"kind": "prune.bogus"}), "unknown kind"),
])
def test_bad_record_data_names_the_record(tmp_path: Path, mutate: Any, fragment: str) -> None:
    _pruned_cnn(tmp_path)
    doc = _doc(tmp_path)
    mutate(doc)
    _write(tmp_path, doc)
    with pytest.raises(ArtifactError, match=r"record 1 \(prune\.(channel|bogus)\)") as err:
        slimkit.restore(tmp_path, model=_cnn)
    assert fragment in str(err.value)


def test_a_dtype_name_must_be_a_torch_dtype(tmp_path: Path) -> None:
    _saved_with(CastQuant(dtype="float16"))(tmp_path)
    doc = _doc(tmp_path)
    doc["records"][0]["data"]["dtype"] = "load"  # torch.load is a torch attribute, not a dtype
    _write(tmp_path, doc)
    with pytest.raises(ArtifactError, match="'load' is not a torch dtype"):
        slimkit.restore(tmp_path, model=_mlp)


def test_negative_kept_block_is_refused(tmp_path: Path) -> None:
    model = slimkit.apply(Blocks(), LayerPrune(drop=(1,)), Targets(include=("layers",)))
    slimkit.save(model, tmp_path, spec="test:blocks")
    doc = _doc(tmp_path)
    assert doc["records"][0]["data"]["lists"]["layers"]["kept"] == [0, 2, 3]
    doc["records"][0]["data"]["lists"]["layers"]["kept"] = [0, 2, -1]  # would silently keep block 3
    _write(tmp_path, doc)
    with pytest.raises(ArtifactError, match="kept index -1"):
        slimkit.restore(tmp_path, model=Blocks)


_BAD_VALUES: list[Any] = [-1, "x", None, [], 2.5, [-1, 0], {"0": [-1]}]


def _leaves(node: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Paths to every value inside ``node`` (dict keys and list positions)."""
    yield path
    if isinstance(node, dict):  # inside a record's data, three entries stand for the rest
        for k, v in list(node.items())[: 3 if len(path) >= 4 else None]:
            yield from _leaves(v, (*path, k))
    elif isinstance(node, list):
        for i, v in enumerate(node[:1]):  # the first item stands for the rest
            yield from _leaves(v, (*path, i))


def _set(doc: Any, path: tuple[Any, ...], value: Any, *, delete: bool = False) -> None:
    for key in path[:-1]:
        doc = doc[key]
    if delete:
        del doc[path[-1]]
    else:
        doc[path[-1]] = value


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))


def _saved_with(config: Any) -> Any:
    return lambda p: slimkit.save(slimkit.apply(_mlp(), config, Targets(types=("Linear",))), p, spec="test:mlp")


@pytest.mark.parametrize("factory, make", [
    (_cnn, lambda p: _pruned_cnn(p)),
    (_mlp, _saved_with(DynamicQuant())),
    (_mlp, _saved_with(CastQuant(dtype="float16"))),
    (Blocks, lambda p: slimkit.save(slimkit.apply(Blocks(), LayerPrune(drop=(2,)), Targets(include=("layers",))), p,
                                    spec="test:blocks")),
])
def test_fuzzed_manifests_raise_only_artifact_error(tmp_path: Path, factory: Any, make: Any) -> None:
    """Every value of the manifest replaced by wrong types / bad indices, and every key
    removed: restore either succeeds or raises ArtifactError, never anything else."""
    make(tmp_path)
    original = _doc(tmp_path)
    # every top-level field and everything a replay reads (a record's kind and data)
    paths = [p for p in _leaves(original) if 0 < len(p) and p[0] != "files"
             and (p[0] != "records" or len(p) < 3 or p[2] in ("kind", "data"))]
    outcomes = {"ok": 0, "refused": 0}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for path in paths:
            mutations: list[tuple[Any, bool]] = [(v, False) for v in _BAD_VALUES]
            if isinstance(path[-1], str):
                mutations.append((None, True))
            for value, delete in mutations:
                doc = copy.deepcopy(original)
                _set(doc, path, value, delete=delete)
                _write(tmp_path, doc)
                try:
                    slimkit.restore(tmp_path, model=factory)
                    outcomes["ok"] += 1
                except ArtifactError:
                    outcomes["refused"] += 1
    assert outcomes["refused"] > 10 and outcomes["ok"] > 0  # both kinds of outcome were exercised


def test_hf_folders_never_run_code_or_unpickle(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    from slimkit.core import ModelSpecError

    config = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=32)
    torch.manual_seed(0)
    model = transformers.BertModel(config)
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    config.save_pretrained(pickled)
    torch.save(model.state_dict(), pickled / "pytorch_model.bin")  # pickled weights only
    with pytest.raises(ModelSpecError, match="cannot load"):
        slimkit.zoo.load(f"hf:{pickled}")
    remote = tmp_path / "remote"
    model.save_pretrained(remote)
    marker = tmp_path / "ran.txt"
    (remote / "modeling_evil.py").write_text(f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n"
                                            "from transformers import BertModel as EvilModel\n")
    cfg = json.loads((remote / "config.json").read_text())
    cfg.update({"model_type": "evil-bert", "auto_map": {"AutoModel": "modeling_evil.EvilModel"}})
    (remote / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelSpecError):
        slimkit.zoo.load(f"hf:{remote}")
    assert not marker.exists()
    safe = tmp_path / "safe"
    model.save_pretrained(safe)
    assert slimkit.zoo.load(f"hf:{safe}").family == "text"
