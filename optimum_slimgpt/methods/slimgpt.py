"""SlimGPT: structured OBS (grouped Cholesky heads, Dynamic Group Size channels, OBS compensation)."""

from __future__ import annotations

from ..config import SlimGPTConfig
from ..solvers import prune_channels, prune_heads
from .base import HESSIAN, AttentionTask, FFNTask, PruneResult, PruningMethod, register_method


@register_method(SlimGPTConfig)
class SlimGPTMethod(PruningMethod):
    def output_bias(self, config: SlimGPTConfig) -> bool:
        return config.bias_compensation  # affine compensation moves an output bias

    def observers(self, part, config: SlimGPTConfig):
        selection = config.head_selection if part == "attention" else config.channel_selection
        if selection == "magnitude" and not config.compensate and not config.bias_compensation:
            return {}
        return {"hessian": HESSIAN}  # (the accumulator also holds the input mean that bias_compensation uses)

    @staticmethod
    def _affine(task) -> dict:
        c: SlimGPTConfig = task.config
        if not (c.bias_compensation and task.stats):
            return {}
        return {"mean": task.stats["hessian"].mean(), "bias": task.bias}

    def prune_attention(self, task: AttentionTask) -> PruneResult:
        c: SlimGPTConfig = task.config
        H = task.stats["hessian"].take_hessian() if task.stats else None
        q_w, kv_w = task.head_weights() if c.head_selection == "magnitude" else ([], [])
        res = prune_heads(
            task.W, H, num_heads=task.num_heads, num_kv_heads=task.num_kv_heads, head_dim=task.head_dim,
            options=task.options, damp_percent=c.damp_percent, mode=c.head_selection, compensate=c.compensate,
            name=task.name, q_weights=q_w, kv_weights=kv_w, **self._affine(task),
        )
        return PruneResult(res.kept_heads, res.W, kept_kv=res.kept_kv_heads, bias=res.bias, error=res.relative_error,
                           option=res.option)

    def prune_ffn(self, task: FFNTask) -> PruneResult:
        c: SlimGPTConfig = task.config
        H = task.stats["hessian"].take_hessian() if task.stats else None
        res = prune_channels(
            task.W, H, num_remove=task.num_remove, max_group=c.ffn_max_group, min_group=c.ffn_min_group,
            damp_percent=c.damp_percent, mode=c.channel_selection, compensate=c.compensate, name=task.name,
            in_weights=task.channel_weights() if c.channel_selection == "magnitude" else [], spill_dir=task.spill_dir,
            **self._affine(task),
        )
        return PruneResult(res.kept, res.W, bias=res.bias, error=res.relative_error)
