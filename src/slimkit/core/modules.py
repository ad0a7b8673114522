"""Module surgery by dotted name: the one place that replaces a submodule in a model.

Methods select layers by name (:class:`~slimkit.core.targets.Targets`) and replace them
by name, so every swap (a quantised layer, a trimmed embedding, a folded BN's
``nn.Identity``) and every replay of one goes through :func:`swap_module`; tensor
surgery that rebinds a parameter goes through :func:`owner_of`. :func:`find_block_lists`
is the one definition of "a transformer's block list" (``prune.layers``, ``share.layers``,
``train.layerdrop`` and the distillation layer maps all act on it).
"""
from __future__ import annotations

from torch import nn

from .errors import MethodError
from .targets import Targets


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



def _is_block_list(m: nn.Module) -> bool:
    return (isinstance(m, nn.ModuleList) and len(m) >= 2 and len({type(b) for b in m}) == 1
            and any(True for _ in m[0].parameters()))


def find_block_lists(model: nn.Module, targets: Targets, kind: str = "prune.layers") -> list[str]:
    """Names of the block lists to act on (``kind`` names the method in errors).

    With the default targets the outermost candidate must be unique (a full T5 has
    ``encoder.block`` and ``decoder.block``; lists nested in blocks, e.g. MoE experts,
    are ignored); a non-default include pattern selects any matching lists.
    """
    auto = targets.include == ("*",)
    names = [name for name, m in targets.iter(model) if _is_block_list(m)]
    if not auto:
        if not names:
            raise MethodError(f"{kind}: targets {list(targets.include)} name no ModuleList of same-class blocks")
        return names
    outer = [n for n in names if not any(n != o and n.startswith(o + ".") for o in names)]
    if not outer:
        raise MethodError(f"{kind}: found no nn.ModuleList of same-class blocks in the model")
    if len(outer) > 1:
        raise MethodError(f"{kind}: several block lists {outer}; name one with Targets(include=(...,))")
    return outer


__all__ = ["find_block_lists", "owner_of", "swap_module"]
