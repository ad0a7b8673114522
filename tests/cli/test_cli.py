"""The command line: output contracts, exit codes, atomic output folders."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from slimkit.cli.main import main


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_list_methods_json_is_one_document(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "list-methods", "--json")
    assert code == 0
    doc = json.loads(out)
    kinds = {m["kind"]: m for m in doc["methods"]}
    fields = {f["name"]: f for f in kinds["prune.magnitude"]["fields"]}
    assert fields["sparsity"]["type"] == "float" and fields["sparsity"]["default"] == 0.5
    assert "digits-default" in doc["presets"]


@pytest.mark.parametrize(
    "recipe, fragments",
    [
        ("steps: [{kind: prune.bogus}]", ["step 1 (prune.bogus)", "unknown kind"]),
        ("steps: [{kind: prune.magnitude, with: {sparsity: 0.5, speed: 2}}]", ["step 1 (prune.magnitude)", "key 'speed'"]),
        ("steps: [{kind: prune.magnitude, with: {sparsity: high}}]", ["key 'sparsity'", "expected a number"]),
        ("steps: [{kind: prune.magnitude, with: {sparsity: 0.2}}, {kind: prune.magnitude, with: {sparsity: 1.5}}]",
         ["step 2 (prune.magnitude)", "key 'sparsity'", "[0, 1)"]),
    ],
)
def test_bad_recipe_exits_2_before_any_work(tmp_path: Path, capsys: pytest.CaptureFixture[str], recipe: str,
                                            fragments: list[str]) -> None:
    file = tmp_path / "r.yaml"
    file.write_text(recipe)
    out_dir = tmp_path / "out"
    code, out, err = run(capsys, "compress", "--model", "zoo:digits-cnn", "--recipe", str(file), "--out", str(out_dir))
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    for fragment in fragments:
        assert fragment in err
    assert not out_dir.exists()


def test_unknown_spec_task_and_corrupt_artifacts_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "profile", "--model", "zoo:nope")
    assert code == 2 and "zoo:nope" in err and len(err.strip().splitlines()) == 1
    code, _, err = run(capsys, "profile", "--model", "zoo:digits-cnn", "--task", "no-task")
    assert code == 2 and "no-task" in err
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "manifest.json").write_text("{ truncated")
    code, _, err = run(capsys, "eval", str(tmp_path / "bad"), "--task", "digits")
    assert code == 2 and "corrupt" in err
    code, _, err = run(capsys, "bench", str(tmp_path / "missing"))
    assert code == 2 and "not a slimkit model folder" in err


def test_missing_data_folder_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("SLIMKIT_DATA", "/nonexistent/slimkit-data")
    code, _, err = run(capsys, "profile", "--model", "zoo:minilm-l6", "--task", "stsb")
    assert code == 2 and "SLIMKIT_DATA" in err and "Traceback" not in err


def test_compress_eval_bench_round_trip(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_dir = tmp_path / "digits"
    code, out, err = run(capsys, "compress", "--model", "zoo:digits-cnn", "--recipe", "digits-default",
                         "--out", str(out_dir), "--task", "digits", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert sorted(p.name for p in out_dir.iterdir()) == ["manifest.json", "model.safetensors", "report.json", "report.md"]
    before, after = report["before"], report["after"]
    assert after["profile"]["params_nonzero"] < 0.3 * before["profile"]["params_nonzero"]
    assert after["profile"]["file_bytes"] < before["profile"]["file_bytes"]
    assert after["profile"]["file_bytes"] == (out_dir / "model.safetensors").stat().st_size
    assert abs(after["metrics"]["accuracy"] - before["metrics"]["accuracy"]) < 0.05
    assert report["latency"]["speedup"] > 0
    assert "before" in (out_dir / "report.md").read_text()

    code, out, _ = run(capsys, "eval", str(out_dir), "--task", "digits", "--json")
    assert code == 0 and json.loads(out)["metrics"]["accuracy"] == pytest.approx(after["metrics"]["accuracy"])

    code, out, _ = run(capsys, "bench", str(out_dir), "--rounds", "2", "--json")
    assert code == 0 and json.loads(out)["speedup"] > 0

    # An existing non-empty --out is refused without --overwrite, and left as it was.
    code, _, err = run(capsys, "compress", "--model", "zoo:digits-cnn", "--recipe", "digits-default", "--out", str(out_dir))
    assert code == 2 and "--overwrite" in err
    assert (out_dir / "model.safetensors").exists()


def test_interrupted_compress_leaves_no_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    import slimkit.app.pipeline as pipeline

    def boom(*a: object, **k: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "render_markdown", boom)
    out_dir = tmp_path / "out"
    code, _, _ = run(capsys, "compress", "--model", "zoo:digits-cnn", "--recipe", "digits-default", "--out", str(out_dir),
                     "--task", "digits")
    assert code == 130
    assert not out_dir.exists() and list(tmp_path.iterdir()) == []


def test_entry_point_and_debug_flag(tmp_path: Path) -> None:
    env = dict(os.environ)
    proc = subprocess.run([sys.executable, "-m", "slimkit", "profile", "--model", "zoo:nope"], capture_output=True,
                          text=True, env=env)
    assert proc.returncode == 2 and proc.stdout == "" and "Traceback" not in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "slimkit", "--debug", "profile", "--model", "zoo:nope"],
                          capture_output=True, text=True, env=env)
    assert proc.returncode != 0 and "Traceback" in proc.stderr
