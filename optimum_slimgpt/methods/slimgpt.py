"""SlimGPT: structured OBS (grouped Cholesky heads, Dynamic Group Size channels, OBS compensation)."""

from __future__ import annotations

from ..solvers import prune_channels, prune_heads
from .base import AttentionTask, FFNTask, PruneResult, PruningMethod, register_method


@register_method
class SlimGPTMethod(PruningMethod):
    name = "slimgpt"

    def needs_stats(self, config, part):
        sel = config.head_selection if part == "attention" else config.channel_selection
        return not (sel == "magnitude" and not config.compensate)

    def needs_head_weights(self, config):
        return config.head_selection == "magnitude"

    def needs_channel_in_weights(self, config):
        return config.channel_selection == "magnitude"

    def prune_attention(self, task: AttentionTask) -> PruneResult:
        c = task.config
        H = task.stats.hessian() if task.stats is not None else None
        res = prune_heads(
            task.W, H, num_heads=task.num_heads, num_kv_heads=task.num_kv_heads, head_dim=task.head_dim,
            options=task.options, damp_percent=c.damp_percent, mode=c.head_selection, compensate=c.compensate,
            name=task.name, q_weights=task.q_weights, kv_weights=task.kv_weights,
        )
        return PruneResult(res.kept_heads, res.W, kept_kv=res.kept_kv_heads, error=res.relative_error, option=res.option)

    def prune_ffn(self, task: FFNTask) -> PruneResult:
        c = task.config
        H = task.stats.hessian() if task.stats is not None else None
        res = prune_channels(
            task.W, H, num_remove=task.num_remove, max_group=c.ffn_max_group, min_group=c.ffn_min_group,
            damp_percent=c.damp_percent, mode=c.channel_selection, compensate=c.compensate, name=task.name,
            in_weights=task.in_weights,
        )
        return PruneResult(res.kept, res.W, error=res.relative_error)
