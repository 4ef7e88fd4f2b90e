"""Registry of family adapters, looked up by ``config.model_type``."""

from __future__ import annotations

import dataclasses
from typing import Type, TypeVar, Union

from torch import nn

from ..modeling import PruningRecord, register_pruned_family
from .base import FamilyAdapter

_REGISTRY: dict[str, FamilyAdapter] = {}
A = TypeVar("A", bound=Union[FamilyAdapter, Type[FamilyAdapter]])


def register_family(adapter: A, *, override: bool = False) -> A:
    """Register an adapter (class or instance) for each of its ``model_types``, and the per-layer pruned model
    classes of each (see :mod:`optimum_slimgpt.modeling`). Usable as a decorator."""
    inst = adapter() if isinstance(adapter, type) else adapter
    if not inst.model_types:
        raise ValueError(f"{inst!r} declares no model_types")
    for mt in inst.model_types:
        if mt in _REGISTRY and not override:
            raise ValueError(f"model_type {mt!r} is already served by {_REGISTRY[mt]!r}; pass override=True")
    for mt in inst.model_types:
        _REGISTRY[mt] = inst
        if not inst.layout.text_config:  # (multimodal models keep their class: uniform/padded exports)
            register_pruned_family(mt, inst.layout)
    return adapter


def unregister_family(model_type: str) -> None:
    """Forget the adapter of ``model_type`` (e.g. a test's temporary registration)."""
    _REGISTRY.pop(model_type, None)


def supported_model_types() -> list[str]:
    return sorted(_REGISTRY)


def get_adapter(model_or_config: Union[nn.Module, object, str]) -> FamilyAdapter:
    """The adapter for a model, a config or a ``model_type`` string; ``TypeError`` if unsupported."""
    if isinstance(model_or_config, str):
        mt = model_or_config
    else:
        config = getattr(model_or_config, "config", model_or_config)
        mt = getattr(config, "model_type", None)
        record = PruningRecord.of(config) if mt not in _REGISTRY else None
        if record is not None:  # a model pruned by this package keeps its base family
            mt = record.base_model_type
    if mt not in _REGISTRY:
        name = type(model_or_config).__name__ if not isinstance(model_or_config, str) else mt
        raise TypeError(
            f"unsupported architecture: model_type={mt!r} ({name}). Supported model types: "
            f"{', '.join(supported_model_types())}. Register an adapter with "
            "optimum_slimgpt.families.register_family to add one."
        )
    return _REGISTRY[mt]


def record_layout(adapter: FamilyAdapter, block: nn.Module) -> dict:
    """The adapter's layout as written into a pruning record (with the model's decoder-layer class)."""
    return dataclasses.replace(adapter.layout, decoder_layer=type(block).__name__).to_dict()
