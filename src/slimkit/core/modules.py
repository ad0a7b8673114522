"""Module surgery by dotted name: the one place that replaces a submodule in a model.

Methods select layers by name (:class:`~slimkit.core.targets.Targets`) and replace them
by name, so every swap (a quantised layer, a trimmed embedding, a folded BN's
``nn.Identity``) and every replay of one goes through :func:`swap_module`; tensor
surgery that rebinds a parameter goes through :func:`owner_of`.
"""
from __future__ import annotations

from torch import nn

from .errors import MethodError


def owner_of(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    """``(module, attr)`` such that ``getattr(module, attr)`` is ``model``'s ``name``.

    ``name`` is a dotted submodule, parameter or buffer name (``"encoder.0.fc.weight"``
    -> ``(model.encoder[0].fc, "weight")``); a name without a dot is owned by ``model``.
    """
    parent_name, _, attr = name.rpartition(".")
    return (model.get_submodule(parent_name) if parent_name else model), attr


def swap_module(model: nn.Module, name: str, new: nn.Module) -> nn.Module:
    """Replace the submodule called ``name`` (dotted) by ``new``; returns the module it replaced.

    The root cannot be replaced in place (the caller holds it), so ``name=""`` is a
    :class:`MethodError` telling the user to target the layers instead.
    """
    if not name:
        raise MethodError("cannot replace the root module itself; target its layers instead")
    parent, attr = owner_of(model, name)
    old = getattr(parent, attr)
    setattr(parent, attr, new)
    return old


__all__ = ["owner_of", "swap_module"]
