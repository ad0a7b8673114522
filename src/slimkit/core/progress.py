"""Progress of long work that reads well both on a terminal and in a log.

On a terminal a tqdm bar redraws in place. Written to a CI log or a file, the same bar is a
stream of carriage-return fragments nobody can read, so when the stream is not a TTY
:class:`Progress` prints plain lines instead: one each time the work crosses another
``pct_step`` percent, or ``interval_s`` seconds after the last line (whichever comes first),
and one when it closes (short work: at most one line per ``min_gap_s``)::

    distill.embedding: 300/1000 (30%) 12.3 it/s, ETA 57s, loss=0.0412
    distill.embedding: 1000/1000 (100%) 12.1 it/s, done in 1m23s

Progress always goes to stderr by default, so ``--json`` output on stdout stays clean. The
calls mirror tqdm's (``update``, ``set_postfix``, ``close``, a context manager), so a loop
switches from a bare tqdm bar by changing the constructor.
"""
from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TextIO, TypeVar

T = TypeVar("T")


def is_tty(stream: Any) -> bool:
    """Whether ``stream`` is an interactive terminal (a closed or odd stream counts as not)."""
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


def fmt_duration(seconds: float) -> str:
    """``57s``, ``4m05s``, ``1h02m``: short enough for a progress line."""
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def fmt_rate(per_second: float, unit: str) -> str:
    """``12.3 it/s``, or ``2.5 s/it`` when one unit takes longer than a second."""
    if per_second <= 0:
        return f"? {unit}/s"
    if per_second >= 1:
        return f"{per_second:.1f} {unit}/s"
    return f"{1 / per_second:.1f} s/{unit}"


class Progress:
    """Count work done towards ``total`` (None: unknown) and show it on ``stream`` (default stderr).

    ``enabled=False`` shows nothing (e.g. ``Context.progress`` off, ``--json`` quiet runs).
    ``tty`` overrides the terminal detection (tests, or a caller that knows better).
    ``eta=False`` omits the remaining-time estimate, for counts whose items differ too
    much in cost for one (the steps of a recipe); the line then shows the elapsed time.
    ``leave=True`` keeps the finished bar on a terminal (a log always keeps its lines).
    A log line needs ``min_gap_s`` since the previous one, so work done in seconds prints
    one or two lines instead of ten.
    """

    def __init__(self, total: int | None, desc: str, *, initial: int = 0, enabled: bool = True,
                 stream: TextIO | None = None, tty: bool | None = None, unit: str = "it", eta: bool = True,
                 leave: bool = False, pct_step: float = 10.0, interval_s: float = 30.0, min_gap_s: float = 2.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.total, self.desc, self.n, self.unit, self.eta = total, desc, initial, unit, eta
        self.enabled = enabled
        self.stream = sys.stderr if stream is None else stream
        self.pct_step, self.interval_s, self.min_gap_s, self.clock = pct_step, interval_s, min_gap_s, clock
        self.postfix: dict[str, Any] = {}
        self._initial = initial
        self._start = self._last_line = clock()
        self._last_bucket = self._bucket(initial)
        self._closed = False
        self._bar = None
        if enabled and (is_tty(self.stream) if tty is None else tty):
            from tqdm import tqdm  # type: ignore[import-untyped]

            self._bar = tqdm(total=total, initial=initial, desc=desc, file=self.stream, leave=leave,
                             unit=unit, dynamic_ncols=True)

    def _bucket(self, n: int) -> int:
        if not self.total or self.pct_step <= 0:
            return 0
        return int(100.0 * n / self.total // self.pct_step)

    def line(self, *, final: bool = False) -> str:
        """The plain progress line for the current count (what a log gets)."""
        elapsed = self.clock() - self._start
        rate = (self.n - self._initial) / elapsed if elapsed > 0 else 0.0
        if self.total:
            head = f"{self.desc}: {self.n}/{self.total} ({100.0 * self.n / self.total:.0f}%)"
        else:
            head = f"{self.desc}: {self.n}"
        parts = [f"{head} {fmt_rate(rate, self.unit)}"]
        if final:
            done = self.total is None or self.n >= self.total
            parts.append(f"{'done in' if done else 'stopped after'} {fmt_duration(elapsed)}")
        elif self.eta and self.total and rate > 0:
            parts.append(f"ETA {fmt_duration((self.total - self.n) / rate)}")
        else:
            parts.append(f"{fmt_duration(elapsed)} elapsed")
        parts += [f"{k}={v}" for k, v in self.postfix.items()]
        return ", ".join(parts)

    def _emit(self, *, final: bool = False) -> None:
        self.stream.write(self.line(final=final) + "\n")
        self.stream.flush()
        self._last_line = self.clock()

    def update(self, n: int = 1) -> None:
        """Record ``n`` more units done; prints a line when a step boundary or the interval is crossed."""
        self.n += n
        if not self.enabled or self._closed:
            return
        if self._bar is not None:
            self._bar.update(n)
            return
        bucket, since = self._bucket(self.n), self.clock() - self._last_line
        if (bucket > self._last_bucket and since >= self.min_gap_s) or since >= self.interval_s:
            self._last_bucket = bucket
            if self.total is None or self.n < self.total:  # the closing line reports completion
                self._emit()

    def set_postfix(self, **values: Any) -> None:
        """Values shown after the count (``loss=0.0412``); kept until replaced."""
        self.postfix = {k: v for k, v in values.items() if v is not None}
        if self._bar is not None and self.enabled and not self._closed:
            self._bar.set_postfix(**self.postfix)

    def close(self) -> None:
        """Finish: the bar disappears, a log gets the closing line (done, or stopped early)."""
        if self._closed:
            return
        self._closed = True
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.close()
        else:
            self._emit(final=True)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def track(items: Iterable[T], desc: str, *, total: int | None = None, **kwargs: Any) -> Iterator[T]:
    """Iterate ``items`` while showing progress (``total`` defaults to ``len(items)`` when it has one)."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with Progress(total, desc, **kwargs) as bar:
        for item in items:
            yield item
            bar.update(1)


__all__ = ["Progress", "fmt_duration", "fmt_rate", "is_tty", "track"]
