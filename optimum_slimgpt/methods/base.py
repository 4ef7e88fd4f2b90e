"""Pruning methods: how one block's heads and channels are chosen and the survivors repaired.

A method sees, for one decoder block, the ``o_proj`` (resp. ``down_proj``) weight and the first and
second moments of its input on the calibration tokens (:class:`~optimum_slimgpt.solvers.HessianAccumulator`),
and returns what to keep plus the repaired weight (and, optionally, a new output bias). The pruner
does the rest (hooks, forwards, surgery). Methods are registered by name, like families.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch

from ..config import SlimGPTConfig
from ..solvers import HessianAccumulator

__all__ = ["AttentionTask", "FFNTask", "PruneResult", "PruningMethod", "register_method", "get_method", "METHODS"]


@dataclass
class AttentionTask:
    """Prune heads of one block. ``W``: ``o_proj`` weight in float32 (hidden x heads·head_dim);
    ``bias``: its current bias or None; ``stats``: moments of the ``o_proj`` input; ``options``: the
    allowed ``(kv_heads, query_heads_per_kv)`` structures (equal parameter count); ``q_weights`` /
    ``kv_weights``: the weights whose rows are query-head / KV-head dimensions (``q_proj``; ``k_proj``,
    ``v_proj``), for methods that rank whole heads by their weights."""

    layer: int
    W: torch.Tensor
    bias: Optional[torch.Tensor]
    stats: Optional[HessianAccumulator]
    num_heads: int
    num_kv_heads: int
    head_dim: int
    options: list[tuple[int, int]]
    config: SlimGPTConfig
    name: str = "o_proj"
    q_weights: list[torch.Tensor] = field(default_factory=list)
    kv_weights: list[torch.Tensor] = field(default_factory=list)


@dataclass
class FFNTask:
    """Prune FFN channels of one block. ``W``: ``down_proj`` weight (hidden x channels) in float32;
    ``stats``: moments of the ``down_proj`` input; ``in_weights``: the gate/up (or fc1) weights whose
    rows are channels; ``mlp_input_sq``: per-feature sums of squares of the MLP input, when the method
    asks for them (:attr:`PruningMethod.needs_mlp_input_norms`)."""

    layer: int
    W: torch.Tensor
    bias: Optional[torch.Tensor]
    stats: Optional[HessianAccumulator]
    num_remove: int
    config: SlimGPTConfig
    in_weights: list[torch.Tensor] = field(default_factory=list)
    mlp_input_sq: Optional[torch.Tensor] = None
    name: str = "down_proj"


@dataclass
class PruneResult:
    """``kept``: query heads (new order) or channels; ``kept_kv``: KV heads (attention only); ``W``: the
    repaired full-width weight (removed columns zero); ``bias``: a new output bias or None (unchanged);
    ``error``: relative reconstruction error on the calibration inputs (0 when not computed)."""

    kept: list[int]
    W: torch.Tensor
    kept_kv: Optional[list[int]] = None
    bias: Optional[torch.Tensor] = None
    error: float = 0.0
    option: Optional[tuple[int, int]] = None


class PruningMethod:
    """Base class. Subclasses implement :meth:`prune_attention` and :meth:`prune_ffn`."""

    name: str = "base"
    #: the pruner also collects per-feature sums of squares of the MLP input for :class:`FFNTask`
    needs_mlp_input_norms: bool = False

    def needs_stats(self, config: SlimGPTConfig, part: str) -> bool:
        """Whether the pruner must run a calibration pass to collect input moments for ``part``."""
        return True

    def needs_head_weights(self, config: SlimGPTConfig) -> bool:
        """Whether :class:`AttentionTask` must carry ``q_weights``/``kv_weights`` (copies cost memory)."""
        return False

    def needs_channel_in_weights(self, config: SlimGPTConfig) -> bool:
        """Whether :class:`FFNTask` must carry ``in_weights`` (float32 copies of gate/up or fc1)."""
        return True

    def prune_attention(self, task: AttentionTask) -> PruneResult:  # pragma: no cover - abstract
        raise NotImplementedError

    def prune_ffn(self, task: FFNTask) -> PruneResult:  # pragma: no cover - abstract
        raise NotImplementedError


METHODS: dict[str, PruningMethod] = {}


def register_method(method):
    inst = method() if isinstance(method, type) else method
    METHODS[inst.name] = inst
    return method


def get_method(name: str) -> PruningMethod:
    if name not in METHODS:
        raise ValueError(f"unknown pruning method {name!r}; available: {sorted(METHODS)}")
    return METHODS[name]
