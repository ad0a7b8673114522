"""Compatibility path: data-parallel training lives in :mod:`slimkit.train.parallel` (one engine for every kind)."""
from __future__ import annotations

from ..train.parallel import barrier, init_from_env, mean_across, no_sync, shutdown, world, wrap

__all__ = ["barrier", "init_from_env", "mean_across", "no_sync", "shutdown", "world", "wrap"]
