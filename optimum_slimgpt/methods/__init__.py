"""Pruning methods (SlimGPT, SlimLLM) behind one interface, registered by name."""

from .base import METHODS, AttentionTask, FFNTask, PruneResult, PruningMethod, get_method, register_method
from . import slimgpt  # noqa: F401  (registers "slimgpt")
from . import slimllm  # noqa: F401  (registers "slimllm")

__all__ = ["METHODS", "AttentionTask", "FFNTask", "PruneResult", "PruningMethod", "get_method", "register_method"]
