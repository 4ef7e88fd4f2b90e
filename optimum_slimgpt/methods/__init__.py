"""Pruning methods (SlimGPT, SlimLLM, FLAP) behind one interface, registered for their config classes."""

from .base import (
    HESSIAN,
    AttentionTask,
    FFNTask,
    Observer,
    PruneResult,
    PruningMethod,
    get_method,
    register_method,
    registered_configs,
    unregister_method,
)
from . import slimgpt  # noqa: F401  (registers SlimGPTConfig)
from . import slimllm  # noqa: F401  (registers SlimLLMConfig)
from . import flap  # noqa: F401  (registers FLAPConfig)

__all__ = ["HESSIAN", "AttentionTask", "FFNTask", "Observer", "PruneResult", "PruningMethod", "get_method",
           "register_method", "registered_configs", "unregister_method"]
