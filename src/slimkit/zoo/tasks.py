"""The task registry: ``get_task(name)`` and ``tasks()``.

Tasks are stateless, so one instance per name is shared.
"""
from __future__ import annotations

from ..core.errors import DataError
from .image_tasks import DigitsTask, ImageNetSampleTask
from .sst2_task import Sst2Task
from .task_base import Task
from .text_tasks import Sst2ProbeTask, StsbTask

_TASKS: dict[str, Task] = {t.name: t for t in (DigitsTask(), StsbTask(), Sst2ProbeTask(), ImageNetSampleTask(),
                                               Sst2Task())}


def tasks() -> list[str]:
    """Names of the known tasks."""
    return list(_TASKS)


def get_task(name: str) -> Task:
    """The task called ``name`` (raises :class:`DataError` listing the known ones)."""
    try:
        return _TASKS[name]
    except (KeyError, TypeError):
        raise DataError(f"unknown task {name!r}; known tasks: {', '.join(_TASKS)}") from None
