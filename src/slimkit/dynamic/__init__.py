"""Dynamic computation: the work a model does depends on the input.

- ``dynamic.early_exit`` (:mod:`.early_exit`, :class:`EarlyExitDynamic`): exit classifiers
  after every block (DeeBERT / PABEE); an input stops at the first confident block. The
  runtime (skipping blocks, batch > 1, export) is :mod:`.exits`.
"""
from .early_exit import EarlyExitDynamic
from .exits import ExitSettings, ExitStats, collect_exits, replay_exits

__all__ = ["EarlyExitDynamic", "ExitSettings", "ExitStats", "collect_exits", "replay_exits"]
