"""What a planning trial needs, rebuilt from a spec: the model, the task, the context, the scorers.

A trial sent to a Ray worker carries a :class:`TrialSetup` (model spec, task name, seed, dev
limit and the driver's weights hash), never a pickled module: the worker loads the model from
the spec once (:func:`load_setup` keeps one per process), checks that the weights hash to what
the driver planned on (a spec that builds random weights, or another checkpoint on the worker's
disk, would silently plan on another model), and then runs any number of trials on it. The
serial path registers the driver's own loaded setup (:func:`register_setup`) and runs the same
trial object in-process, so both paths share one code path.
"""
from __future__ import annotations

import dataclasses
from typing import Any

from torch import nn

from .. import zoo
from ..core import Context, ModelSpecError, SlimkitError
from ..measure.profile import state_nbytes
from .sensitivity import apply_action, points, weights_hash
from .space import Action


@dataclasses.dataclass(frozen=True)
class TrialSetup:
    """Enough to rebuild the planner's model and data anywhere slimkit (and the data) is installed."""

    model_spec: str
    task: str
    seed: int
    dev_limit: int | None
    model_hash: str


def plan_context(zm: zoo.ZooModel, task: zoo.Task, *, seed: int, calib_batches: int = 8,
                 batch_size: int = 32) -> Context:
    """The data the candidate actions may need (calibration, training batches and loss); no test data."""
    ctx = Context(example_inputs=zm.example_inputs(1), seed=seed, progress=False)
    ctx.calib_data = task.calibration_batches(zm, calib_batches, batch_size)
    if task.has_training:
        ctx.train_data = task.train_batches(zm, batch_size, seed=seed)
        ctx.loss_fn = task.loss_fn
    ctx.eval_fn = lambda model: task.evaluate(model, zm, split="dev")
    ctx.teacher = zm.model
    return ctx


@dataclasses.dataclass
class LoadedSetup:
    """A setup made real in this process: ``base`` is the unchanged model (eval mode)."""

    setup: TrialSetup
    zm: zoo.ZooModel
    task: zoo.Task
    ctx: Context

    @property
    def base(self) -> nn.Module:
        return self.zm.model

    def dev_points(self, model: nn.Module) -> float:
        """The task's headline metric on the DEV split (first ``dev_limit`` samples), in points."""
        return points(self.task.evaluate(model, self.zm, split="dev", limit=self.setup.dev_limit), self.task.metric)

    @staticmethod
    def size_of(model: nn.Module) -> int:
        """What measure.profile reports as bytes on disk, without a trace."""
        return int(state_nbytes(model.state_dict()))


_LOADED: dict[TrialSetup, LoadedSetup] = {}


def open_setup(model_spec: str, task_name: str, *, seed: int, dev_limit: int | None) -> LoadedSetup:
    """Load the model and task in the driver, hash the weights, and register the result for trials."""
    task = zoo.get_task(task_name)
    zm = zoo.load(model_spec)
    task.check_model(zm)
    zm.model.eval()
    setup = TrialSetup(model_spec, task_name, seed, dev_limit, weights_hash(zm.model))
    return register_setup(LoadedSetup(setup, zm, task, plan_context(zm, task, seed=seed)))


def register_setup(loaded: LoadedSetup) -> LoadedSetup:
    _LOADED[loaded.setup] = loaded
    return loaded


def release_setup(setup: TrialSetup) -> None:
    """Forget ``setup`` in this process (the driver, once its trials are done)."""
    _LOADED.pop(setup, None)


def load_setup(setup: TrialSetup) -> LoadedSetup:
    """This process's copy of ``setup`` (built on first use, then kept); refuses other weights."""
    if setup in _LOADED:
        return _LOADED[setup]
    task = zoo.get_task(setup.task)
    zm = zoo.load(setup.model_spec)
    task.check_model(zm)
    zm.model.eval()
    got = weights_hash(zm.model)
    if got != setup.model_hash:
        raise ModelSpecError(f"{setup.model_spec!r} loads other weights on this worker ({got[:12]}) than in the "
                             f"driver ({setup.model_hash[:12]}); plan a saved folder every worker can read")
    _LOADED.clear()  # one setup per worker process: a long-lived worker does not pile up models
    return register_setup(LoadedSetup(setup, zm, task, plan_context(zm, task, seed=setup.seed)))


@dataclasses.dataclass(frozen=True)
class SensitivityTrial:
    """A picklable trial: ``trial(action)`` -> ``{"metric", "size_bytes"}`` of the model with ``action``
    applied, or ``{"error"}`` when the method refuses the action on this model."""

    setup: TrialSetup

    def __call__(self, action: Action) -> dict[str, Any]:
        loaded = load_setup(self.setup)
        try:
            model = apply_action(loaded.base, action, loaded.ctx) if action.steps else loaded.base
        except SlimkitError as exc:
            return {"error": str(exc).replace("\n", " ")}
        return {"metric": float(loaded.dev_points(model)), "size_bytes": int(loaded.size_of(model))}


__all__ = ["LoadedSetup", "SensitivityTrial", "TrialSetup", "load_setup", "open_setup", "plan_context",
           "register_setup", "release_setup"]
