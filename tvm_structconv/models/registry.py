"""A registry of model factories by name, in the manner of timm.

A factory is a small function that builds one architecture; ``@register_model`` records it
under its function name, and :func:`create_model` builds a model by that name.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, TypeVar

import torch.nn as nn

__all__ = ["register_model", "list_models", "create_model"]

Factory = TypeVar("Factory", bound=Callable[..., nn.Module])

_FACTORIES: Dict[str, Callable[..., nn.Module]] = {}


def register_model(factory: Factory) -> Factory:
    """Record ``factory`` under its function name; use as a decorator.

    Raises
    ------
    ValueError
        If a factory of the same name is already registered.
    """
    name = factory.__name__
    if name in _FACTORIES:
        raise ValueError(f"a model named {name!r} is already registered")
    _FACTORIES[name] = factory
    return factory


def list_models() -> List[str]:
    """Names of the registered models, sorted."""
    return sorted(_FACTORIES)


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build the registered model ``name``; ``kwargs`` go to its factory.

    Raises
    ------
    ValueError
        If no model of that name is registered; the message lists the known names.
    """
    factory = _FACTORIES.get(name)
    if factory is None:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(list_models())}")
    return factory(**kwargs)
