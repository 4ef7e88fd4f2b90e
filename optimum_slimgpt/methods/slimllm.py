"""SlimLLM: holistic (Pearson / output-PCA) importance, greedy swap search, regression recovery.

The math is in :mod:`optimum_slimgpt.solvers.slimllm` (computed exactly from the input moments the
pruner accumulates, no token matrices). Differences from the official code (``guojialong1/Slimllm``):

* GQA: KV groups are chosen first (scored by removing the whole group), then query heads inside the
  kept groups, and the swap search only makes swaps that keep the structure (see
  :func:`~optimum_slimgpt.solvers.slimllm.select_heads`); the official code has no GQA support.
* ``eigh`` instead of ``np.linalg.eig`` on the symmetric output covariance.
* The official "always keep the lowest-scoring 1% of FFN channels" is an option,
  ``SlimLLMConfig.keep_lowest`` (default 0: off).
* The regression keeps an existing output bias (``b' = b + c``) and guards rows whose pruned output is
  constant (slope 1, mean-matching intercept).

:class:`~optimum_slimgpt.SlimLLMConfig` carries SlimLLM's own options (``recovery``, ``swap_search``,
``keep_lowest``); SlimGPT's (``compensate``, ``head_selection``, ``damp_percent``...) do not exist there.
"""

from __future__ import annotations

import dataclasses

import torch

from ..solvers.slimllm import (
    channel_scores,
    head_pair_moments,
    moments_from_stats,
    output_error,
    regression_recovery,
    select_channels,
    select_heads,
)
from ..config import SlimLLMConfig
from ..solvers import SquareSumAccumulator
from .base import HESSIAN, AttentionTask, FFNTask, Observer, PruneResult, PruningMethod, register_method


def _finish(W: torch.Tensor, bias, keep_cols: torch.Tensor, moments, recovery: bool) -> tuple[torch.Tensor, object, float]:
    """Apply the regression recovery (or plain removal) and return ``(W, new bias or None, rel. error)``."""
    if recovery:
        rec = regression_recovery(W, keep_cols, moments, bias)
        Wn, bn = rec.W.to(W.dtype), rec.bias
    else:
        Wn, bn = W * keep_cols.to(W.dtype), None
    err, base = output_error(W, bias, Wn, bn if bn is not None else bias, moments)
    return Wn, bn, err / max(base, 1e-30)


@register_method(SlimLLMConfig)
class SlimLLMMethod(PruningMethod):
    def output_bias(self, config) -> bool:
        return config.recovery  # the regression fits an output bias

    def observers(self, part, config):
        # the input moments of o_proj/down_proj; for channels also the per-feature sums of squares of the MLP input
        obs = {"moments": HESSIAN}
        return obs if part == "attention" else {**obs, "input_sq": Observer("input", SquareSumAccumulator)}

    def prune_attention(self, task: AttentionTask) -> PruneResult:
        task = dataclasses.replace(task, W=task.W.float())
        c = task.config
        mom = moments_from_stats(task.stats["moments"])
        G = head_pair_moments(task.W, mom.cov, task.num_heads, task.head_dim)
        sel = select_heads(
            G, num_heads=task.num_heads, num_kv_heads=task.num_kv_heads, options=task.options,
            swap=c.swap_search, name=task.name,
        )
        keep = torch.zeros(task.W.shape[1], dtype=torch.bool, device=task.W.device)
        for h in sel.kept_heads:
            keep[h * task.head_dim : (h + 1) * task.head_dim] = True
        W, bias, err = _finish(task.W, task.bias, keep, mom, c.recovery)
        return PruneResult(sel.kept_heads, W, kept_kv=sel.kept_kv_heads, bias=bias, error=err, option=sel.option)

    def prune_ffn(self, task: FFNTask) -> PruneResult:
        task = dataclasses.replace(task, W=task.W.float())
        c = task.config
        mom = moments_from_stats(task.stats["moments"])
        scores = channel_scores(task.W, mom, task.channel_weights(), task.stats["input_sq"].sum)
        kept = select_channels(scores, task.num_remove, c.keep_lowest)
        keep = torch.zeros(task.W.shape[1], dtype=torch.bool, device=task.W.device)
        keep[torch.tensor(kept, dtype=torch.long, device=task.W.device)] = True
        W, bias, err = _finish(task.W, task.bias, keep, mom, c.recovery)
        return PruneResult(kept, W, bias=bias, error=err)
