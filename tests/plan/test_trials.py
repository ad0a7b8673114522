"""Trial executors: serial and Ray give the same results in input order, failures name the trial,
a missing Ray or a dead address is one slimkit error, and a 2-worker Ray plan equals the serial plan."""
from __future__ import annotations

import json
import math
import random
import signal
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from slimkit.cli.main import main
from slimkit.core import ConfigError, Context, ModelSpecError
from slimkit.plan.jobs import TrialSetup, load_setup
from slimkit.plan.sensitivity import SensitivityCache, measure_sensitivity, weights_hash
from slimkit.plan.space import SpaceConfig, build_space
from slimkit.plan.trials import RayExecutor, SerialExecutor, TrialError, import_ray, open_executor, trial_seed

SPACE = {"include": ["features.3", "features.7", "classifier.0"], "channel_ratios": [0.5], "svd_ratios": [0.5],
         "quantize_dynamic": False}


def _draw(tag: str) -> tuple[str, float, float]:
    """A trial whose result is its seed's first draws (module-level: Ray pickles it by reference)."""
    return tag, float(torch.rand(()).item()), random.random()


def _args(tmp_path: Path, out: str, *extra: str) -> list[str]:
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(SPACE))
    return ["plan", "--model", "zoo:digits-cnn", "--task", "digits", "--space", str(tmp_path / "space.yaml"),
            "--cache", str(tmp_path / f"cache-{out}"), "--rounds", "1", "--threads", "1",
            "--budget", "size<=100KB", "--budget", "max_drop<=100", "--out", str(tmp_path / out), "--json", *extra]


def test_serial_seeds_per_trial_not_per_position_and_restores_the_driver_rng() -> None:
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    names = ["a", "b", "c"]
    seeds = [trial_seed(7, n) for n in names]
    forward = SerialExecutor().map(_draw, names, names=names, seeds=seeds)
    assert torch.equal(torch.rand(3), before)  # the trials did not move the driver's RNG
    backward = SerialExecutor().map(_draw, names[::-1], names=names[::-1], seeds=seeds[::-1])
    assert forward == backward[::-1]  # same trial, same seed, same draws, whatever ran before it
    assert [r[0] for r in forward] == names  # input order
    assert len({r[1] for r in forward}) == 3  # distinct seeds per trial
    assert trial_seed(7, "a") != trial_seed(8, "a")


def test_serial_failure_names_the_trial() -> None:
    seen: list[int] = []
    with pytest.raises(TrialError, match=r"trial 'neg' failed: ValueError: math domain error"):
        SerialExecutor().map(math.sqrt, [4.0, -1.0], names=["ok", "neg"], seeds=[1, 2],
                             on_result=lambda i, r: seen.append(i))
    assert seen == [0]  # the finished trial was reported before the failure


def test_missing_ray_is_a_slimkit_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    with pytest.raises(ConfigError, match=r"slimkit\[plan\]"):
        import_ray()
    with pytest.raises(ConfigError, match=r"slimkit\[plan\]"):
        open_executor(2)
    assert isinstance(open_executor(), SerialExecutor)  # the serial path never needs Ray
    rc = main(_args(tmp_path, "o", "--workers", "2"))
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "slimkit[plan]" in err[0]
    assert not (tmp_path / "o").exists()  # refused before any work


@pytest.mark.parametrize("address, needle", [("127.0.0.1:1", "no Ray cluster answers"), ("nonsense", "HOST:PORT")])
def test_bad_ray_address_exits_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], address: str,
                                               needle: str) -> None:
    pytest.importorskip("ray")
    t0 = time.perf_counter()
    rc = main(_args(tmp_path, "o", "--ray-address", address))
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and needle in err[0] and address in err[0]
    assert not (tmp_path / "o").exists()
    assert time.perf_counter() - t0 < 30  # refused at once, not after Ray's minutes of retries


@pytest.mark.slow
def test_two_ray_workers_give_the_serial_plan(tmp_path: Path, data_dir: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    ray = pytest.importorskip("ray")
    assert main(_args(tmp_path, "serial")) == 0
    serial = json.loads(capsys.readouterr().out)
    assert main(_args(tmp_path, "ray", "--workers", "2")) == 0
    parallel = json.loads(capsys.readouterr().out)
    assert not ray.is_initialized()  # slimkit started the local instance, and shut it down
    assert serial["trials_on"].startswith("serial") and parallel["trials_on"].startswith("Ray local")
    assert parallel["sensitivity_evaluations"] == serial["sensitivity_evaluations"] == 5  # both computed afresh
    assert (tmp_path / "ray" / "plan.yaml").read_text() == (tmp_path / "serial" / "plan.yaml").read_text()
    rows = [json.loads((tmp_path / d / "sensitivity.json").read_text()) for d in ("serial", "ray")]
    keys = ("unit", "action", "metric", "drop", "size_bytes", "error")
    assert rows[0]["base_metric"] == rows[1]["base_metric"]
    assert [[r[k] for k in keys] for r in rows[0]["rows"]] == [[r[k] for k in keys] for r in rows[1]["rows"]]
    assert serial["chosen"] == parallel["chosen"] and serial["final"] == parallel["final"]


@pytest.mark.slow
def test_ray_results_in_input_order_and_failures_named() -> None:
    ray = pytest.importorskip("ray")
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import the tests
    names = ["a", "b", "c", "d"]
    seeds = [trial_seed(3, n) for n in names]
    sigterm = signal.getsignal(signal.SIGTERM)
    with pytest.raises(TrialError, match=r"trial 'neg' failed: ValueError: math domain error"):
        with RayExecutor(2) as ex:
            assert ray.is_initialized() and ex.started
            assert signal.getsignal(signal.SIGTERM) is sigterm  # ray.init's own handler did not stay
            remote = ex.map(_draw, names, names=names, seeds=seeds)
            ex.map(math.sqrt, [4.0, -1.0, 9.0], names=["ok", "neg", "ok2"], seeds=[1, 2, 3])
    assert not ray.is_initialized()  # shut down on the way out of the error, too
    assert [r[0] for r in remote] == names  # input order
    assert remote == SerialExecutor().map(_draw, names, names=names, seeds=seeds)  # same draws on workers


class _Recording(SerialExecutor):
    """The serial executor, remembering which trials it was given."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def map(self, fn, items, *, names, seeds, on_result=None):  # type: ignore[no-untyped-def, override]
        self.names += list(names)
        return super().map(fn, items, names=names, seeds=seeds, on_result=on_result)


def test_cached_trials_are_not_dispatched(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4)).eval()
    x = torch.randn(8, 8, generator=torch.Generator().manual_seed(1))
    units = build_space(model, SpaceConfig(quantize_dynamic=False))
    ctx = Context(example_inputs=x[:1], calib_data=[x])

    def run(executor: SerialExecutor) -> object:
        cache = SensitivityCache(tmp_path, weights_hash(model))
        return measure_sensitivity(model, units, ctx, evaluate=lambda m: float(m(x).detach().sum()), data_key="t",
                                   size_of=lambda m: sum(p.numel() for p in m.parameters()), cache=cache,
                                   executor=executor)

    first, second = _Recording(), _Recording()
    a, b = run(first), run(second)
    assert first.names[0] == "(dense model)" and "0 / channels 50%" in first.names
    assert len(first.names) == 1 + sum(len(u.actions) for u in units)
    assert second.names == []  # everything came from the cache
    assert [(r.unit, r.action, r.drop) for r in a.rows] == [(r.unit, r.action, r.drop) for r in b.rows]


def test_a_worker_refuses_a_model_with_other_weights() -> None:
    setup = TrialSetup("zoo:digits-cnn", "digits", 0, None, "0" * 64)
    with pytest.raises(ModelSpecError, match="other weights"):
        load_setup(setup)
