"""Views of a module tree: shallow copies with some submodules swapped, sharing every tensor.

A view lets one forward of a transformers model return something else from one of its submodules
(the mask rows of a base model, the label-word rows of an output layer) without patching the shared
module: views are made per call, so any number of threads may use one model.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

__all__ = ["StandIn", "view", "module_path", "structural_copy", "gather_rows"]


def gather_rows(hidden: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """(B, L, H) hidden states, (B, M) positions -> (B, M, H)."""
    return hidden[torch.arange(hidden.shape[0], device=hidden.device)[:, None], positions]


class StandIn:
    """Takes a submodule's place in a view: calls ``call(module, *args, **kwargs)``; attributes fall through."""

    __slots__ = ("module", "call")

    def __init__(self, module: nn.Module, call: Callable[..., Any]) -> None:
        self.module = module
        self.call = call

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.call(self.module, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.module, name)


def view(module: nn.Module, replace: Mapping[str, Any]) -> nn.Module:
    """A shallow copy of ``module`` with the submodules at the dotted paths of ``replace`` swapped.

    Only the modules on those paths are copied, and only their child tables; parameters, buffers and
    every other module are shared. ``module`` itself is never changed, so views are thread-safe.
    """
    if not replace:
        return module
    copied = copy.copy(module)
    children = dict(module._modules)
    nested: dict[str, dict[str, Any]] = {}
    for path, new in replace.items():
        head, _, rest = path.partition(".")
        if rest:
            nested.setdefault(head, {})[rest] = new
        else:
            children[head] = new
    for head, sub in nested.items():
        children[head] = view(module._modules[head], sub)
    copied.__dict__["_modules"] = children
    return copied


def module_path(root: nn.Module, target: nn.Module | None) -> str | None:
    """The dotted name of ``target`` inside ``root`` (None if absent or ``root`` itself)."""
    if target is None or target is root:
        return None
    return next((name for name, m in root.named_modules() if m is target), None)


def structural_copy(module: nn.Module) -> nn.Module:
    """A copy of the module tree that shares every parameter and buffer (no tensor is copied).

    Its modes (``train()`` / ``eval()``) and child tables are its own: scoring switches it to eval
    mode without touching the caller's model.
    """
    memo: dict[int, nn.Module] = {}

    def walk(m: nn.Module) -> nn.Module:
        if id(m) in memo:
            return memo[id(m)]
        c = copy.copy(m)
        memo[id(m)] = c
        c.__dict__["_parameters"] = dict(m._parameters)
        c.__dict__["_buffers"] = dict(m._buffers)
        c.__dict__["_modules"] = {k: walk(v) if v is not None else None for k, v in m._modules.items()}
        return c

    return walk(module)
