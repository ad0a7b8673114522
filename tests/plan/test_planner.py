"""``slimkit plan`` end to end on zoo:digits-cnn (eager), the back-off, and the CLI's error contract.

No test asserts a speed: timings depend on the machine and its load. The plan's choice is
pinned by a size budget (sizes and dev metrics are deterministic), not by a latency budget.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from slimkit.cli.main import main
from slimkit.core import Context, Recipe
from slimkit.plan.budget import Budgets
from slimkit.plan.lut import build_lut
from slimkit.plan.sensitivity import SensitivityRow, SensitivityTable, apply_action
from slimkit.plan.space import SpaceConfig, build_space
from slimkit.plan.verify import verify

SPACE = {"include": ["features.3", "features.7", "classifier.0"], "channel_ratios": [0.5], "svd_ratios": [0.5],
         "quantize_dynamic": False}


def _args(tmp_path: Path, *extra: str) -> list[str]:
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(SPACE))
    return ["plan", "--model", "zoo:digits-cnn", "--task", "digits", "--space", str(tmp_path / "space.yaml"),
            "--cache", str(tmp_path / "cache"), "--rounds", "1", "--threads", "1", *extra]


@pytest.mark.slow
def test_plan_end_to_end_writes_a_runnable_recipe(tmp_path: Path, data_dir: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    rc = main(_args(tmp_path, "--budget", "size<=100KB", "--budget", "max_drop<=100", "--out", str(out), "--json"))
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    report = json.loads(captured.out)  # exactly one JSON document on stdout; progress went to stderr
    for name in ("plan.yaml", "sensitivity.json", "lut.json", "report.json", "report.md"):
        assert (out / name).is_file(), name
    recipe = Recipe.from_yaml((out / "plan.yaml").read_text())
    assert {s.config.kind for s in recipe.steps} <= {"prune.channel", "lowrank.svd"}
    assert report["objective"] == "drop" and report["limits"]["size"] == 100_000 - report["base"]["size_bytes"]
    assert report["predicted"]["size_bytes"] <= 100_000  # the plan meets its own predicted budget
    assert report["final"] == report["chosen"]  # max_drop 100: nothing to back off
    assert [f"{c['unit']} / {c['action']}" for c in report["final"]] == report["rounds"][-1]["actions"]
    assert set(report["meets"]) == {"size", "max_drop_dev", "max_drop_test"}
    sens = json.loads((out / "sensitivity.json").read_text())
    assert sens["split"] == "dev" and len(sens["rows"]) == 4
    lut = json.loads((out / "lut.json").read_text())
    assert {(e["unit"], e["action"]) for e in lut["entries"]} == {(r["unit"], r["action"]) for r in sens["rows"]}
    assert report["sensitivity_evaluations"] == 5  # the dense model and four actions

    rc = main(_args(tmp_path, "--budget", "size<=120KB", "--solver", "greedy", "--out", str(tmp_path / "again"),
                    "--json"))
    again = json.loads(capsys.readouterr().out)
    assert rc == 0 and again["sensitivity_evaluations"] == 0  # another budget: sensitivity from the cache
    assert again["solver"] == "greedy" and again["predicted"]["size_bytes"] <= 120_000

    from slimkit import zoo

    x = torch.zeros(1, 1, 8, 8)
    model = recipe.run(zoo.load("zoo:digits-cnn").model, Context(example_inputs=x))  # an ordinary recipe runs
    assert model(x).shape == (1, 10)


@pytest.mark.parametrize("extra, needle", [
    (["--budget", "speed>=2"], "speed>=2"),
    (["--budget", "size<=1XB"], "XB"),
    (["--budget", "speedup>=2", "--budget", "speedup>=3"], "twice"),
])
def test_bad_budgets_exit_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str],
                                          needle: str) -> None:
    rc = main(_args(tmp_path, *extra, "--out", str(tmp_path / "o")))
    err = capsys.readouterr().err
    assert rc == 2 and needle in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()  # refused before any work


def test_bad_space_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = _args(tmp_path, "--budget", "speedup>=2", "--out", str(tmp_path / "o"))
    (tmp_path / "space.yaml").write_text("svd_ratio: [0.5]\n")
    args[args.index("--space") + 1] = str(tmp_path / "space.yaml")
    rc = main(args[:7] + ["--space", str(tmp_path / "space.yaml")] + args[9:])
    err = capsys.readouterr().err
    assert rc == 2 and "svd_ratio" in err and len(err.strip().splitlines()) == 1


def test_plan_without_budgets_or_with_a_bad_runtime_fails_before_any_work(tmp_path: Path) -> None:
    from slimkit.core import ConfigError
    from slimkit.plan import plan

    with pytest.raises(ConfigError, match="at least one budget"):
        plan("zoo:digits-cnn", "digits", [], out_dir=tmp_path / "o")
    with pytest.raises(ConfigError, match="runtime"):
        plan("zoo:digits-cnn", "digits", ["speedup>=2"], out_dir=tmp_path / "o", runtime="tvm")  # type: ignore[arg-type]
    assert not (tmp_path / "o").exists()


def test_backoff_reverts_the_most_sensitive_action_first() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4)).eval()
    x = torch.randn(2, 8)
    ctx = Context(example_inputs=x, calib_data=[x])
    units = build_space(model, SpaceConfig(include=("0", "2"), channel_ratios=(0.5,), svd_ratios=(),
                                           quantize_dynamic=False))
    chosen = [(u, u.actions[0]) for u in units]
    # predicted drops: unit "2" is the more sensitive one; measured: each pruned layer costs 3 points
    sens = SensitivityTable(100.0, 1000, [SensitivityRow("0", "channels 50%", 99.0, 1.0, 900, False),
                                          SensitivityRow("2", "channels 50%", 98.0, 2.0, 900, False)], 0)

    def dev_points(m: nn.Module) -> float:
        return 100.0 - 3.0 * sum(1 for layer in (m[0], m[2]) if layer.out_features < 32)

    lut = build_lut(model, [(u.name, a.label, apply_action(model, a, ctx)) for u, a in chosen], x, "eager",
                    batch_size=2, rounds=1, iters=1, threads=1)
    result = verify(model, chosen, ctx, lut=lut, sens=sens, budgets=Budgets(max_drop=4.0), dev_points=dev_points,
                    inputs=x, name="t", max_rounds=3, rounds=1, iters=1, threads=1)
    assert [r["dev_drop"] for r in result.rounds] == [6.0, 3.0]
    assert result.rounds[0]["reverted"] == "2 / channels 50%"
    assert [u.name for u, _ in result.chosen] == ["0"]
    assert result.recipe is not None and len(result.recipe["steps"]) == 1

    none = verify(model, chosen, ctx, lut=lut, sens=sens, budgets=Budgets(max_drop=1.0), dev_points=dev_points,
                  inputs=x, name="t", max_rounds=1, rounds=1, iters=1, threads=1)
    assert len(none.rounds) == 2 and none.chosen == [chosen[0]]  # bounded: one revert, then it stops
