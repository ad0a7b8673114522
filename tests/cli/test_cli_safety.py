"""The CLI on untrusted or malformed folders and bad option values: exit 2 with one line,
nothing imported or created; SIGTERM cleans up; bench times the runtime the folder ships."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

import slimkit
from slimkit.cli.main import main
from slimkit.core import Context, Targets
from slimkit.core.safety import seal
from slimkit.prune import ChannelPrune


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(code: int, err: str) -> bool:
    return code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """zoo:digits-cnn with a quarter of its channels removed, saved (spec zoo:digits-cnn)."""
    zm = slimkit.zoo.load("zoo:digits-cnn")
    model = slimkit.apply(zm.model, ChannelPrune(ratio=0.25), Targets(types=("Conv2d", "Linear")),
                          Context(example_inputs=zm.example_inputs(1)))
    return slimkit.save(model, tmp_path_factory.mktemp("saved") / "digits")


@pytest.fixture
def art(saved: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(saved, tmp_path / "art"))


def edit_manifest(path: Path, **change: Any) -> dict[str, Any]:
    doc = json.loads((path / "manifest.json").read_text())
    doc.update(change)
    (path / "manifest.json").write_text(json.dumps(doc))
    return doc


def test_py_spec_in_a_manifest_runs_nothing_without_trust_code(art: Path, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # where mkdtemp would create its folder
    edit_manifest(art, model_spec="py:tempfile:mkdtemp")
    for argv in (["eval", str(art), "--task", "digits"], ["bench", str(art), "--rounds", "1"],
                 ["export", str(art)]):
        code, out, err = run(capsys, *argv)
        assert one_line_error(code, err) and out == "", (argv, err)
        assert "py:tempfile:mkdtemp" in err and "--trust-code" in err
        assert list(scratch.iterdir()) == []
    # the opt-in does what it says: the named function runs (and its result is no model)
    code, _, err = run(capsys, "eval", str(art), "--task", "digits", "--trust-code")
    assert one_line_error(code, err) and "not an nn.Module" in err
    assert len(list(scratch.iterdir())) == 1


def test_py_spec_refused_by_the_installed_command(art: Path, tmp_path: Path) -> None:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    edit_manifest(art, model_spec="py:tempfile:mkdtemp")
    env = {**os.environ, "TMPDIR": str(scratch)}
    proc = subprocess.run([sys.executable, "-m", "slimkit", "eval", str(art), "--task", "digits"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert one_line_error(proc.returncode, proc.stderr) and "--trust-code" in proc.stderr
    assert list(scratch.iterdir()) == []


def test_one_flipped_weight_byte_exits_2_naming_the_file(art: Path, capsys: pytest.CaptureFixture[str]) -> None:
    file = art / "model.safetensors"
    raw = bytearray(file.read_bytes())
    raw[8 + int.from_bytes(raw[:8], "little") + 11] ^= 0x10  # inside the tensor data, not the header
    file.write_bytes(bytes(raw))
    for argv in (["eval", str(art), "--task", "digits"], ["bench", str(art), "--rounds", "1"]):
        code, out, err = run(capsys, *argv)
        assert one_line_error(code, err) and out == ""
        assert "model.safetensors is corrupt or was modified" in err


@pytest.mark.parametrize("argv, fragment", [
    (["profile", "--model", "zoo:digits-cnn", "--batch-size", "-3"], "--batch-size: expected an integer >= 1, got -3"),
    (["profile", "--model", "zoo:digits-cnn", "--seq-len", "1"], "--seq-len: expected an integer >= 2"),
    (["bench", "ART", "--rounds", "0"], "--rounds: expected an integer >= 1, got 0"),
    (["bench", "ART", "--batch-size", "0"], "--batch-size: expected an integer >= 1, got 0"),
    (["bench", "ART", "--threads", "0"], "--threads: expected an integer >= 1"),
    (["bench", "ART", "--rounds", "two"], "--rounds: expected an integer >= 1, got 'two'"),
    (["bench", "ART", "--runtime", "tensorrt"], "--runtime: invalid choice"),
    (["export", "ART", "--format", "pt2e", "--int8", "none"], "--format pt2e writes an int8 program"),
    (["export", "ART", "--format", "pt2e"], "--int8 static needs --task"),
    (["compress", "--model", "zoo:digits-cnn", "--recipe", "digits-default", "--out", "OUT", "--runtime", "onnx"],
     "has no export.onnx step"),
])
def test_bad_option_values_exit_2_with_one_line(art: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                argv: list[str], fragment: str) -> None:
    argv = [str(art) if a == "ART" else str(tmp_path / "out") if a == "OUT" else a for a in argv]
    code, out, err = run(capsys, *argv)
    assert one_line_error(code, err) and out == "", err
    assert fragment in err
    assert not (tmp_path / "out").exists() and not (art / "model.pt2").exists()


def _first_kept(doc: dict[str, Any]) -> list[int]:
    """The kept-index list of the first parameter in the first record's plan."""
    dims = next(iter(doc["records"][0]["data"]["plan"].values()))
    return dims[next(iter(dims))]


@pytest.mark.parametrize("mutate, fragment", [
    (lambda d: _first_kept(d).__setitem__(0, -1), "kept index -1"),
    (lambda d: d["records"][0]["data"].update({"plan": "[[0, 1]]"}), "'plan' must map"),
    (lambda d: d.update({"format_version": 99}), "format_version 99"),
    (lambda d: d["records"][0].update({"kind": "prune.nope"}), "unknown kind"),
])
def test_malformed_manifests_exit_2_naming_the_problem(art: Path, capsys: pytest.CaptureFixture[str], mutate: Any,
                                                       fragment: str) -> None:
    doc = json.loads((art / "manifest.json").read_text())
    mutate(doc)
    (art / "manifest.json").write_text(json.dumps(doc))
    code, out, err = run(capsys, "eval", str(art), "--task", "digits")
    assert one_line_error(code, err) and out == ""
    assert fragment in err and "manifest.json" in err


@pytest.mark.slow
def test_sigterm_mid_compress_leaves_no_hidden_folder(tmp_path: Path) -> None:
    parent = tmp_path / "runs"
    parent.mkdir()
    out = parent / "digits"
    proc = subprocess.Popen([sys.executable, "-m", "slimkit", "compress", "--model", "zoo:digits-cnn", "--recipe",
                             "digits-default", "--out", str(out), "--task", "digits"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while not any(p.name.startswith(".digits.") for p in parent.iterdir()):  # the temporary output folder
            assert proc.poll() is None and time.monotonic() < deadline, "compress ended before its temp folder showed"
            time.sleep(0.05)
        time.sleep(0.5)  # into the recipe's work
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, err
    assert "terminated" in err and "Traceback" not in err
    assert list(parent.iterdir()) == []


@pytest.fixture(scope="module")
def exported(saved: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The saved folder with a float model.onnx written by ``slimkit export`` (and sealed)."""
    path = Path(shutil.copytree(saved, tmp_path_factory.mktemp("exported") / "digits"))
    assert main(["export", str(path), "--json"]) == 0
    return path


def test_bench_times_what_the_folder_ships(exported: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    files = json.loads((exported / "manifest.json").read_text())["files"]
    assert set(files) == {"model.safetensors", "model.onnx"}  # export sealed its file
    code, out, err = run(capsys, "bench", str(exported), "--rounds", "1", "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert (doc["runtime"], doc["file"], doc["baseline_runtime"]) == ("onnx", "model.onnx", "eager")
    assert doc["speedup"] > 0
    code, out, _ = run(capsys, "bench", str(exported), "--rounds", "1", "--runtime", "eager")
    assert code == 0 and "(eager) vs zoo:digits-cnn (eager)" in out
    code, _, err = run(capsys, "bench", str(exported), "--rounds", "1", "--runtime", "pt2e")
    assert one_line_error(code, err) and "no model.pt2" in err

    art = Path(shutil.copytree(exported, tmp_path / "art"))
    (art / "model.pt2").write_bytes(b"PK not really a program")
    code, _, err = run(capsys, "bench", str(art), "--rounds", "1")  # auto picks model.pt2: never loaded unlisted
    assert one_line_error(code, err) and "model.pt2 is not listed" in err
    seal(art)
    code, _, err = run(capsys, "bench", str(art), "--rounds", "1")  # listed, but .pt2 loading unpickles
    assert one_line_error(code, err) and "--trust-code" in err and "unpickles" in err
    (art / "model.pt2").unlink()
    seal(art)
    with open(art / "model.onnx", "ab") as f:
        f.write(b"\0")
    code, _, err = run(capsys, "bench", str(art), "--rounds", "1")
    assert one_line_error(code, err) and "model.onnx is corrupt or was modified" in err


@pytest.mark.slow
def test_compress_report_times_the_exported_onnx(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text("steps:\n  - {kind: prune.channel, targets: {types: [Conv2d, Linear]}, with: {ratio: 0.25}}\n"
                      "  - {kind: export.onnx}\n")
    out_dir = tmp_path / "out"
    code, out, err = run(capsys, "compress", "--model", "zoo:digits-cnn", "--recipe", str(recipe), "--out",
                         str(out_dir), "--json")
    assert code == 0, err
    lat = json.loads(out)["latency"]
    assert (lat["runtime"], lat["file"]) == ("onnx", "model.onnx") and lat["speedup"] > 0
    assert "after = onnx: model.onnx" in (out_dir / "report.md").read_text()
    files = json.loads((out_dir / "manifest.json").read_text())["files"]
    assert set(files) == {"model.safetensors", "model.onnx", "report.json", "report.md"}
    code, out, err = run(capsys, "bench", str(out_dir), "--rounds", "1", "--json")
    assert code == 0 and json.loads(out)["runtime"] == "onnx", err
