"""Models and tasks to compress and measure: ``load("zoo:digits-cnn")``, ``get_task("stsb")``.

Model specs: ``zoo:digits-cnn`` (trained here in seconds, cached), ``zoo:minilm-l6``
(all-MiniLM-L6-v2 sentence embeddings), ``zoo:efficientnet-lite0`` (ImageNet),
``hf:PATH`` (a local Hugging Face folder) and ``py:module:factory``.
Tasks: ``digits``, ``stsb``, ``sst2-probe``, ``imagenet-sample``; real data is read from
the folder named by the ``SLIMKIT_DATA`` environment variable.
"""
from .data import cache_dir, data_dir
from .specs import ZooModel, build, load, specs
from .task_base import Task
from .tasks import get_task, tasks

__all__ = ["Task", "ZooModel", "build", "cache_dir", "data_dir", "get_task", "load", "specs", "tasks"]
