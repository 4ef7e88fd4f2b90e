"""FLAP (An et al., AAAI 2024): fluctuation-based structured pruning with bias compensation.

From the paper's math (and its code, ``CASIA-IVA-Lab/FLAP``, ``lib/prune.py``, structure ``AL-AM``, metric
``WIFV``):

* **Fluctuation metric.** For an input channel ``j`` of ``o_proj`` / ``down_proj``, the variance of the
  input over the calibration tokens times the squared norm of its weight column,
  ``s_j = Var(x_j) · ||W[:, j]||²``: how much the output moves when the channel is replaced by its mean.
  The official code squares the attention scores once more (``W_metric ** 2`` for ``o_proj``); so do we.
* **Standardised, globally adaptive structure.** Each module's scores are standardised per layer
  (``(s − mean) / std``); a head's score is the mean of its channels' standardised scores; then *all* heads
  and channels of the model are ranked together against one threshold, each unit weighted by the parameters
  it carries, so the layers and modules with the least fluctuation lose the most.
* **Bias compensation.** A removed channel is replaced by its mean: ``b ← b + W[:, S] μ_S``, the kept
  weights unchanged.

Pure torch: nothing here knows about Hugging Face.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from .schedule import LayerGeometry, LayerPlan, PruningPlan, check_kv_head_multiple, plan_layer

__all__ = ["fluctuation_scores", "standardize", "head_scores", "global_allocation", "select_heads_by_score",
           "mean_shift_bias", "FlapLayerScores"]


def fluctuation_scores(W: torch.Tensor, variance: torch.Tensor, square: bool = False) -> torch.Tensor:
    """``Var(x_j) · ||W[:, j]||²`` per input column ``j`` (squared again with ``square``, as FLAP does for
    ``o_proj``)."""
    if variance.shape != (W.shape[1],):
        raise ValueError(f"variance has shape {tuple(variance.shape)}, expected ({W.shape[1]},)")
    s = variance.to(torch.float64).clamp_min(0) * W.detach().to(torch.float64).pow(2).sum(0)
    return s * s if square else s


def standardize(s: torch.Tensor) -> torch.Tensor:
    """``(s − mean) / std`` over one layer's module (the unbiased std, as ``torch.std``; a constant module gives 0)."""
    std = s.std()
    if not bool(std > 0):
        return torch.zeros_like(s)
    return (s - s.mean()) / std


def head_scores(channel_scores: torch.Tensor, head_dim: int) -> torch.Tensor:
    """A head's score: the mean of its channels' (standardised) scores."""
    return channel_scores.view(-1, head_dim).mean(1)


@dataclass
class FlapLayerScores:
    """Standardised scores of one layer: per query head and per FFN channel (``None``: that part is not pruned)."""

    heads: torch.Tensor | None
    channels: torch.Tensor | None


def global_allocation(
    scores: Sequence[FlapLayerScores],
    geoms: Sequence[LayerGeometry],
    pruning_ratio: float,
    *,
    min_heads: int = 1,
    min_channels: int = 1,
    channel_multiple: int | str = 1,
    kv_head_multiple: int = 1,
) -> PruningPlan:
    """The per-layer sizes of FLAP's adaptive structure: every unit (query head or FFN channel) of every layer
    whose standardised score is above one global threshold is kept; the threshold is set so that the parameters
    kept are ``(1 − pruning_ratio)`` of the block parameters.

    FLAP weights a head against a channel by their parameter counts (``512/3`` for LLaMA-7B). Here the head count
    of a layer is rounded to the nearest structure its GQA layout allows (whole KV groups, the same number of
    query heads per kept group; :func:`~optimum_slimgpt.solvers.schedule.plan_layer`), and the threshold is found
    by bisection over the sorted scores so that the parameters actually kept after that rounding are closest to
    the target (the official code takes the threshold from the unrounded cumulative sum). The floors
    ``min_heads`` / ``min_channels`` and the multiples ``channel_multiple`` / ``kv_head_multiple`` apply as for
    every method.
    """
    if len(scores) != len(geoms):
        raise ValueError(f"{len(scores)} layers of scores for {len(geoms)} layers")
    check_kv_head_multiple(geoms, kv_head_multiple)
    total = sum(g.total_params for g in geoms)
    target = total * (1 - pruning_ratio)
    pool = torch.cat([t for s in scores for t in (s.heads, s.channels) if t is not None]).to(torch.float64)
    levels = torch.unique(pool)  # ascending; keeping the units with score > levels[k] for some k (or all)
    kw = dict(min_heads=min_heads, min_channels=min_channels, channel_multiple=channel_multiple,
              kv_head_multiple=kv_head_multiple)

    def at(t: float | None) -> tuple[list[LayerPlan], int]:
        plans = []
        for s, g in zip(scores, geoms):
            h = g.num_heads if s.heads is None or t is None else int((s.heads > t).sum())
            c = g.channels if s.channels is None or t is None else int((s.channels > t).sum())
            plans.append(plan_layer(g, 1 - h / g.num_heads, ffn_ratio=1 - c / g.channels,
                                    prune_heads=s.heads is not None, prune_ffn=s.channels is not None, **kw))
        return plans, sum(g.params(p.heads, p.kv_heads, p.channels) for g, p in zip(geoms, plans))

    if pruning_ratio == 0:
        plans, after = at(None)
        return PruningPlan(plans, 0.0, 0.0, 1 - after / total, total, after)
    lo, hi = -1, len(levels) - 1  # index -1: keep everything; kept params fall as the index grows
    best = None
    while lo <= hi:
        mid = (lo + hi) // 2
        t = None if mid < 0 else float(levels[mid])
        plans, after = at(t)
        cand = (abs(after - target), mid, plans, after)
        if best is None or cand[0] < best[0]:
            best = cand
        if after > target:
            lo = mid + 1
        else:
            hi = mid - 1
    _, k, plans, after = best
    for p, g in zip(plans, geoms):  # report each layer's removed fraction of its parameters
        p.ratio = 1 - g.params(p.heads, p.kv_heads, p.channels) / g.total_params
    return PruningPlan(plans, float(levels[k]) if k >= 0 else float("-inf"), pruning_ratio, 1 - after / total,
                       total, after)


def select_heads_by_score(head_score: torch.Tensor, num_kv_heads: int,
                          options: Sequence[tuple[int, int]]) -> tuple[list[int], list[int], tuple[int, int]]:
    """Keep the heads with the largest total score under a GQA structure ``(g, m)`` of ``options``: the ``g`` KV
    groups whose ``m`` best query heads score highest, and in each those ``m`` heads (optimal for the sum).
    Among tied structures the one with the largest kept score wins. Returns ``(kept heads grouped by kept KV head,
    kept KV heads, option)``."""
    n = head_score.numel()
    n_rep = n // num_kv_heads
    grouped = head_score.view(num_kv_heads, n_rep).to(torch.float64)
    order = torch.argsort(grouped, dim=1, descending=True, stable=True)
    best = None
    for g, m in options:
        top = torch.gather(grouped, 1, order[:, :m]).sum(1)  # each group's m best heads
        groups = sorted(torch.argsort(top, descending=True, stable=True)[:g].tolist())
        total = float(top[groups].sum())
        if best is None or total > best[0]:
            kept = [k * n_rep + int(j) for k in groups for j in sorted(order[k, :m].tolist())]
            best = (total, kept, groups, (g, m))
    assert best is not None
    return best[1], best[2], best[3]


def mean_shift_bias(W: torch.Tensor, bias: torch.Tensor | None, mean: torch.Tensor,
                    removed: torch.Tensor) -> torch.Tensor:
    """FLAP's bias compensation ``b + W[:, S] μ_S`` (``removed``: a boolean mask or index of ``S``)."""
    W = W.detach()
    b = torch.zeros(W.shape[0], dtype=W.dtype, device=W.device) if bias is None else bias.detach().to(W)
    return b + W[:, removed] @ mean.to(W)[removed]
