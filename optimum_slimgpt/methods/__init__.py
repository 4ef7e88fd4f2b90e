"""Pruning methods (SlimGPT, SlimLLM) behind one interface, registered by name."""

from .base import METHODS, AttentionTask, FFNTask, PruneResult, PruningMethod, get_method, register_method
from . import slimgpt  # noqa: F401  (registers "slimgpt")

__all__ = ["METHODS", "AttentionTask", "FFNTask", "PruneResult", "PruningMethod", "get_method", "register_method"]
