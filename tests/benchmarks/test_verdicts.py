"""The comparison scripts' one verdict rule (``benchmarks/suite.verdicts``), on hand-made rows."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

SUITE = Path(__file__).resolve().parents[2] / "benchmarks" / "suite.py"


@pytest.fixture(scope="module")
def suite():
    spec = importlib.util.spec_from_file_location("bench_suite", SUITE)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def row(suite, name, rounds_ms, metric, size, who="baseline"):
    return suite.Row(name, model=None, file_bytes=size, who=who, metrics={"acc": metric},
                     latency={1: {"rounds_ms": rounds_ms, "ms": sorted(rounds_ms)[len(rounds_ms) // 2]}})


def test_same_speed_is_a_tie_not_a_win(suite):
    # per-round ratios 1.2, 0.8, 1.1, 0.9, 1.05: the median is above 1 but the p25 is not
    base = row(suite, "base", [12.0, 8.0, 11.0, 9.0, 10.5], 0.90, 100)
    mine = row(suite, "mine", [10.0] * 5, 0.90, 100, who="slimkit")
    [line] = suite.verdicts([base, mine], mine, "acc", [1])
    assert "does NOT beat it: neither faster nor smaller" in line
    assert "tie at b=1" in line and "not smaller" in line


def test_faster_in_every_round_wins_at_equal_metric(suite):
    base = row(suite, "base", [20.0, 21.0, 19.0, 22.0], 0.90, 100)
    mine = row(suite, "mine", [10.0] * 4, 0.90, 100, who="slimkit")
    [line] = suite.verdicts([base, mine], mine, "acc", [1])
    assert line.startswith("- mine vs base: beats it: faster at b=1")


def test_lower_metric_loses_unless_inside_the_floor_band(suite):
    ref = row(suite, "fp32", [20.0] * 4, 0.90, 1000, who="reference")
    mine = row(suite, "mine", [20.0] * 4, 0.895, 100, who="slimkit")
    [strict] = suite.verdicts([ref, mine], mine, "acc", [1])
    assert "does NOT beat it at equal metric" in strict and "WORSE" in strict
    assert suite.band_floor([mine, ref], "acc", 0.01) == pytest.approx(0.89)  # from the reference row
    [band] = suite.verdicts([ref, mine], mine, "acc", [1], floor=0.89)
    assert band.startswith("- mine vs fp32: beats it: smaller") and "at or above the floor" in band
    [below] = suite.verdicts([ref, mine], mine, "acc", [1], floor=0.899)
    assert "WORSE" in below


def test_slower_is_reported_as_slower(suite):
    base = row(suite, "base", [5.0] * 4, 0.5, 10)
    mine = row(suite, "mine", [10.0] * 4, 0.9, 100, who="slimkit")
    [line] = suite.verdicts([base, mine], mine, "acc", [1])
    assert "neither faster nor smaller" in line and "slower at b=1 (0.50x" in line
