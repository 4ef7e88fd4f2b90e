"""Registry of family adapters, looked up by ``config.model_type``."""

from __future__ import annotations

from typing import Type, TypeVar, Union

from torch import nn

from .base import FamilyAdapter

_REGISTRY: dict[str, FamilyAdapter] = {}
A = TypeVar("A", bound=Union[FamilyAdapter, Type[FamilyAdapter]])


def register_family(adapter: A, *, override: bool = False) -> A:
    """Register an adapter (class or instance) for each of its ``model_types``. Usable as a decorator."""
    inst = adapter() if isinstance(adapter, type) else adapter
    if not inst.model_types:
        raise ValueError(f"{inst!r} declares no model_types")
    for mt in inst.model_types:
        if mt in _REGISTRY and not override:
            raise ValueError(f"model_type {mt!r} is already served by {_REGISTRY[mt]!r}; pass override=True")
        _REGISTRY[mt] = inst
    return adapter


def supported_model_types() -> list[str]:
    return sorted(_REGISTRY)


def get_adapter(model_or_config: Union[nn.Module, object, str]) -> FamilyAdapter:
    """The adapter for a model, a config or a ``model_type`` string; ``TypeError`` if unsupported."""
    if isinstance(model_or_config, str):
        mt = model_or_config
    else:
        config = getattr(model_or_config, "config", model_or_config)
        mt = getattr(config, "model_type", None)
        # a model pruned by this package keeps its base family
        base = (getattr(config, "pruning_config", None) or {}).get("base_model_type")
        if mt not in _REGISTRY and base:
            mt = base
    if mt not in _REGISTRY:
        name = type(model_or_config).__name__ if not isinstance(model_or_config, str) else mt
        raise TypeError(
            f"unsupported architecture: model_type={mt!r} ({name}). Supported model types: "
            f"{', '.join(supported_model_types())}. Register an adapter with "
            "optimum_slimgpt.families.register_family to add one."
        )
    return _REGISTRY[mt]
