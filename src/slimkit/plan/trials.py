"""Trial executors: run independent accuracy trials serially in-process or in parallel on Ray.

The planner's sensitivity sweep is a bag of independent trials (apply one action, score the
dev split). :class:`SerialExecutor` and :class:`RayExecutor` share one seam, ``map(fn, items,
names=, seeds=)``: ``fn`` is applied to every item, results come back **in input order**, and
every trial runs under its own seed (``random``, NumPy and torch are seeded with it just before
the trial), so a trial's result does not depend on which worker ran it or what ran before;
this is what makes a 2-worker run and the serial run give the same plan. The serial executor
restores the driver's RNG state after each trial, so the driver's later random draws do not
depend on how many trials ran in it either.

On Ray, ``fn`` and the items are pickled to the workers: pass a module-level function or a
small callable object (the planner sends a model *spec*, never a pickled module, and each
worker rebuilds the model once). Each worker runs torch with ``threads`` threads (1 by
default): N one-thread workers on N cores do not oversubscribe the machine. A trial that
raises (or a worker that dies) becomes a :class:`TrialError` naming the trial; the remaining
trials are cancelled. A Ray instance slimkit started is always shut down (``close``, the
``with`` block, also on errors, Ctrl-C and SIGTERM); from a cluster it connected to (``address``)
it only disconnects, and a Ray session the caller had already started is left as it was.

Timing trials never go through here: latency is measured serially in the driver (plan/lut.py),
because concurrent timings on one machine disturb each other.
"""
from __future__ import annotations

import hashlib
import logging
import os
import random
import signal
import socket
import threading
from collections.abc import Callable, Sequence
from types import ModuleType, TracebackType
from typing import Any, TypeVar

import numpy as np
import torch

from ..core import ConfigError, SlimkitError

T = TypeVar("T")
R = TypeVar("R")
OnResult = Callable[[int, Any], None]
RAY_EXTRA = "pip install 'slimkit[plan]'"


class TrialError(SlimkitError):
    """A trial raised, or its worker died; the message names the trial and the cause."""


def trial_seed(seed: int, name: str) -> int:
    """A per-trial seed from the run's seed and the trial's stable name (not its position or worker)."""
    return int.from_bytes(hashlib.sha256(f"{seed}|{name}".encode()).digest()[:4], "little") & 0x7FFF_FFFF


def run_trial(fn: Callable[[T], R], item: T, seed: int, threads: int | None) -> R:
    """Seed every RNG with ``seed``, optionally set torch's thread count, and run ``fn(item)``."""
    if threads is not None and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return fn(item)


def _failure(name: str, exc: BaseException) -> TrialError:
    first = (str(exc).strip().splitlines() or [""])[0]
    return TrialError(f"trial {name!r} failed: {type(exc).__name__}: {first}")


class _Executor:
    """The shared part: ``with`` support and the argument checks of :meth:`map`."""

    workers: int = 1

    def describe(self) -> str:  # pragma: no cover - overridden
        raise NotImplementedError

    def map(self, fn: Callable[[T], R], items: Sequence[T], *, names: Sequence[str], seeds: Sequence[int],
            on_result: OnResult | None = None) -> list[R]:  # pragma: no cover - overridden
        raise NotImplementedError

    def close(self) -> None:
        """Release what the executor holds (nothing for the serial one)."""

    def __enter__(self) -> _Executor:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    @staticmethod
    def _check(items: Sequence[Any], names: Sequence[str], seeds: Sequence[int]) -> None:
        if not len(items) == len(names) == len(seeds):
            raise ValueError("map: items, names and seeds differ in length")  # a caller bug, not user input


class SerialExecutor(_Executor):
    """Every trial in this process, one after another; the driver's RNG state is restored after each."""

    def describe(self) -> str:
        return "serial (in-process)"

    def map(self, fn: Callable[[T], R], items: Sequence[T], *, names: Sequence[str], seeds: Sequence[int],
            on_result: OnResult | None = None) -> list[R]:
        self._check(items, names, seeds)
        out: list[R] = []
        for i, (item, name, seed) in enumerate(zip(items, names, seeds)):
            state = (random.getstate(), np.random.get_state(), torch.random.get_rng_state())
            try:
                result = run_trial(fn, item, seed, None)
            except SlimkitError as exc:
                raise _failure(name, exc) from exc
            except Exception as exc:  # a bug in the trial: still a slimkit error naming it
                raise _failure(name, exc) from exc
            finally:
                random.setstate(state[0])
                np.random.set_state(state[1])
                torch.random.set_rng_state(state[2])
            out.append(result)
            if on_result is not None:
                on_result(i, result)
        return out


def import_ray() -> ModuleType:
    """``ray``, or a slimkit error saying which extra installs it."""
    try:
        import ray
    except ImportError as exc:
        raise ConfigError(f"parallel trials (--workers, --ray-address) need Ray, which is not installed "
                          f"({exc}); {RAY_EXTRA}") from None
    return ray


def check_address(address: str, timeout: float = 5.0) -> None:
    """Fail fast on a cluster address nothing answers at: ``ray.init`` retries such an address for
    minutes. ``auto`` (find the running cluster) is left to Ray, which refuses it at once."""
    if address == "auto":
        return
    hostport = address.split("://", 1)[1] if "://" in address else address
    host, sep, port = hostport.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ConfigError(f"--ray-address {address!r} is not HOST:PORT, ray://HOST:PORT or auto")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        raise ConfigError(f"no Ray cluster answers at --ray-address {address!r} ({exc.strerror or exc})") from None


class RayExecutor(_Executor):
    """Trials as Ray tasks (one CPU each): on a local instance with ``workers`` CPUs that slimkit
    starts and shuts down, or on the existing cluster at ``address`` (at most ``workers`` trials in
    flight when given, else as many as the cluster schedules)."""

    def __init__(self, workers: int | None = 2, *, address: str | None = None, threads: int = 1) -> None:
        if workers is not None and workers < 1:
            raise ConfigError(f"workers must be at least 1, got {workers}", key="workers")
        if address is None and workers is None:
            raise ConfigError("a local Ray instance needs a worker count", key="workers")
        self.ray = import_ray()
        self.address, self.threads, self.started = address, threads, False
        self.workers = workers or 0
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no phoning home from a planner run
        quiet: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.ERROR}
        if self.ray.is_initialized():
            return  # the caller's own Ray session: use it as it is, leave it running
        if address is not None:
            check_address(address)
        main = threading.current_thread() is threading.main_thread()
        sigterm = signal.getsignal(signal.SIGTERM) if main else None
        try:
            self.started = True  # from here on close() shuts Ray down (a cluster: this driver disconnects)
            if address is None:  # "local": a new instance even when RAY_ADDRESS points at a cluster
                self.ray.init(address="local", num_cpus=workers, include_dashboard=False, **quiet)
            else:
                self.ray.init(address=address, **quiet)
        except Exception as exc:
            self.close()
            where = "start a local Ray instance" if address is None else f"connect to the Ray cluster at {address!r}"
            first = (str(exc).strip().splitlines() or [""])[0][:200]
            hint = "" if address is None else ("; a cluster with token authentication also needs RAY_AUTH_MODE=token "
                                               "and its token (RAY_AUTH_TOKEN or ~/.ray/auth_token) here")
            raise ConfigError(f"could not {where}: {type(exc).__name__}: {first}{hint}") from None
        finally:
            if sigterm is not None:  # ray.init installs its own SIGTERM handler: keep the caller's (the CLI's)
                signal.signal(signal.SIGTERM, sigterm)

    def describe(self) -> str:
        where = f"cluster {self.address}" if self.address else "local instance" if self.started else "(caller's session)"
        return f"Ray {where}, {self.workers or 'all'} worker(s), {self.threads} torch thread(s) each"

    def map(self, fn: Callable[[T], R], items: Sequence[T], *, names: Sequence[str], seeds: Sequence[int],
            on_result: OnResult | None = None) -> list[R]:
        self._check(items, names, seeds)
        ray = self.ray
        task = ray.remote(num_cpus=1, max_retries=0)(run_trial)
        fn_ref = ray.put(fn)  # shipped once, not once per trial
        limit = self.workers or len(items)
        out: list[Any] = [None] * len(items)
        index: dict[Any, int] = {}
        queue = list(range(len(items)))
        try:
            while queue or index:
                while queue and len(index) < limit:
                    i = queue.pop(0)
                    index[task.remote(fn_ref, items[i], seeds[i], self.threads)] = i
                done, _ = ray.wait(list(index), num_returns=1)
                for ref in done:
                    i = index.pop(ref)
                    try:
                        out[i] = ray.get(ref)
                    except ray.exceptions.RayTaskError as exc:  # the trial raised: report its own exception
                        raise _failure(names[i], getattr(exc, "cause", None) or exc) from None
                    except ray.exceptions.RayError as exc:  # the worker died, was killed, ran out of memory
                        raise _failure(names[i], exc) from None
                    if on_result is not None:
                        on_result(i, out[i])
        finally:
            for ref in index:  # on an error or Ctrl-C: nothing keeps running behind the caller's back
                try:
                    ray.cancel(ref, force=True)
                except Exception:  # pragma: no cover - already finished or gone
                    pass
        return out

    def close(self) -> None:
        if self.started:
            self.started = False
            self.ray.shutdown()


def check_parallel(workers: int | None, address: str | None) -> None:
    """Refuse a parallel request that cannot work (no Ray, a dead address) before any work is done."""
    if workers is not None and workers < 1:
        raise ConfigError(f"workers must be at least 1, got {workers}", key="workers")
    if workers is not None or address is not None:
        import_ray()
    if address is not None:
        check_address(address)


def open_executor(workers: int | None = None, address: str | None = None, *, threads: int = 1) -> _Executor:
    """Serial when neither is given; else Ray (local with ``workers`` CPUs, or the cluster at ``address``)."""
    if workers is None and address is None:
        return SerialExecutor()
    return RayExecutor(workers, address=address, threads=threads)


Executor = _Executor

__all__ = ["Executor", "RayExecutor", "SerialExecutor", "TrialError", "check_address", "check_parallel", "import_ray", "open_executor", "run_trial",
           "trial_seed"]
