"""Progress lines for non-interactive logs (a fake stream and a fake clock: no sleeping, no terminal)."""
from __future__ import annotations

import io

from slimkit.core.progress import Progress, fmt_duration, fmt_rate, track


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_a_log_gets_a_line_every_ten_percent_and_a_closing_line():
    out, clock = io.StringIO(), Clock()
    with Progress(1000, "distill", stream=out, tty=False, clock=clock) as bar:
        for _ in range(1000):
            clock.t += 0.1  # 10 it/s
            bar.update(1)
            if bar.n == 250:
                bar.set_postfix(loss="0.0412")
    lines = out.getvalue().splitlines()
    assert len(lines) == 10  # 10 %, 20 %, ..., 90 %, then the closing line
    assert lines[0] == "distill: 100/1000 (10%) 10.0 it/s, ETA 1m30s"
    assert lines[2] == "distill: 300/1000 (30%) 10.0 it/s, ETA 1m10s, loss=0.0412"
    assert lines[-1] == "distill: 1000/1000 (100%) 10.0 it/s, done in 1m40s, loss=0.0412"
    assert "\r" not in out.getvalue()


def test_slow_work_prints_on_the_interval_between_percent_steps():
    out, clock = io.StringIO(), Clock()
    bar = Progress(10_000, "cache", stream=out, tty=False, clock=clock, interval_s=30.0)
    for _ in range(50):  # 50 items at 2 s each: 100 s, under 1 %
        clock.t += 2.0
        bar.update(1)
    lines = out.getvalue().splitlines()
    assert len(lines) == 3  # after 30, 60 and 90 s
    assert lines[0] == "cache: 15/10000 (0%) 2.0 s/it, ETA 5h32m"


def test_stopped_early_unknown_total_and_no_eta():
    out, clock = io.StringIO(), Clock()
    bar = Progress(100, "train", stream=out, tty=False, clock=clock, pct_step=50)
    clock.t += 4.0
    bar.update(40)
    bar.close()
    bar.close()  # idempotent
    assert out.getvalue().splitlines() == ["train: 40/100 (40%) 10.0 it/s, stopped after 4s"]

    out = io.StringIO()
    steps = Progress(4, "slimkit minilm-fast", stream=out, tty=False, clock=clock, unit="step", eta=False)
    clock.t += 90.0
    steps.update(1)
    assert out.getvalue() == "slimkit minilm-fast: 1/4 (25%) 90.0 s/step, 1m30s elapsed\n"

    out = io.StringIO()
    items = list(track(iter(range(3)), "read", stream=out, tty=False, clock=clock))
    assert items == [0, 1, 2] and out.getvalue().startswith("read: 3 ") and "done in" in out.getvalue()


def test_disabled_prints_nothing_and_a_terminal_gets_a_bar():
    out = io.StringIO()
    with Progress(10, "quiet", stream=out, enabled=False) as bar:
        bar.update(10)
    assert out.getvalue() == "" and bar.n == 10

    tty = io.StringIO()
    with Progress(10, "bar", stream=tty, tty=True, clock=Clock()) as bar:
        bar.update(5)
    assert "\r" in tty.getvalue() and "bar" in tty.getvalue()  # tqdm redraws in place
    assert "ETA" not in tty.getvalue()


def test_formats():
    assert [fmt_duration(s) for s in (0.4, 57, 245, 3720)] == ["0s", "57s", "4m05s", "1h02m"]
    assert fmt_rate(12.34, "it") == "12.3 it/s" and fmt_rate(0.4, "step") == "2.5 s/step"
    assert fmt_rate(0.0, "it") == "? it/s"


def test_fast_work_does_not_flood_the_log():
    out, clock = io.StringIO(), Clock()
    with Progress(10, "timing", stream=out, tty=False, clock=clock, min_gap_s=2.0) as bar:
        for _ in range(10):  # 0.5 s each: one percent line at most every 2 s
            clock.t += 0.5
            bar.update(1)
    lines = out.getvalue().splitlines()
    assert lines == ["timing: 4/10 (40%) 2.0 it/s, ETA 3s", "timing: 8/10 (80%) 2.0 it/s, ETA 1s",
                     "timing: 10/10 (100%) 2.0 it/s, done in 5s"]
