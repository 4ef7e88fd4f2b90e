"""Model-family adapters and their registry."""

from .base import FamilyAdapter, HeadLayout, get_submodule, slice_linear
from .registry import get_adapter, register_family, supported_model_types
from . import llama  # noqa: F401  (registers the built-in families)

__all__ = [
    "FamilyAdapter",
    "HeadLayout",
    "get_adapter",
    "get_submodule",
    "register_family",
    "slice_linear",
    "supported_model_types",
]
