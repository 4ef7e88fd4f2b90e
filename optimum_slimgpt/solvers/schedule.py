"""Per-layer pruning ratios (SlimGPT's *Incremental Pruning Ratio*) and the plan that realises them.

The official code computes ``r_i = r_min + (r_max − r_min) · ln(1+i) / ln(32)`` with ``ln 32``
hard-coded (wrong for models that do not have 32 layers) and leaves ``r_min, r_max`` to the user, so
the parameters actually removed differ from the nominal ratio. Here the *shape* of the schedule is
fixed (``r_i = s · shape_i``, ``shape`` normalised to a maximum of 1, using ``ln(L)``) and its scale
``s`` is solved by bisection so that the parameters removed after rounding to whole heads, KV groups
and channels match the requested fraction of the decoder-block parameters.

Pure python/torch: nothing here knows about Hugging Face.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Sequence

__all__ = [
    "LayerGeometry", "LayerPlan", "schedule_shape", "plan_layer", "solve_schedule", "PruningPlan",
    "layer_importance_shape", "default_importance_layers",
]


@dataclass(frozen=True)
class LayerGeometry:
    """Parameter counts of one decoder block, as the pruning sees it.

    ``params_per_head``: parameters that go with one query head (its ``q`` rows and biases, its ``o``
    columns); ``params_per_kv_head``: one KV head's ``k``/``v`` rows and biases; ``params_per_channel``:
    one FFN channel (gate/up rows and biases, down column); ``fixed_params``: the rest of the block's
    linear layers (output biases). Norms and embeddings are not counted.
    """

    num_heads: int
    num_kv_heads: int
    head_dim: int
    channels: int
    params_per_head: int
    params_per_kv_head: int
    params_per_channel: int
    fixed_params: int = 0

    @property
    def attention_params(self) -> int:
        return self.num_heads * self.params_per_head + self.num_kv_heads * self.params_per_kv_head

    @property
    def mlp_params(self) -> int:
        return self.channels * self.params_per_channel

    @property
    def total_params(self) -> int:
        return self.attention_params + self.mlp_params + self.fixed_params

    def params(self, heads: int, kv_heads: int, channels: int) -> int:
        return heads * self.params_per_head + kv_heads * self.params_per_kv_head + channels * self.params_per_channel + self.fixed_params


@dataclass
class LayerPlan:
    """What one layer keeps. ``head_options``: the ``(kv_heads, query_heads_per_kv)`` structures of
    equal size the head solver may choose from (by OBS error)."""

    ratio: float
    heads: int
    kv_heads: int
    channels: int
    head_options: list[tuple[int, int]] = field(default_factory=list)
    ffn_ratio: float | None = None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["head_options"] = [list(o) for o in self.head_options]
        return d


def schedule_shape(kind: str, num_layers: int, spread: float = 4.0) -> list[float]:
    """Relative per-layer ratios, maximum 1.

    ``log_increase``: ``1/k + (1 − 1/k) · ln(1+i)/ln(L)``; ``linear_increase``: same with ``i/(L−1)``;
    ``uniform``: all 1. ``k = spread`` is the last-to-first ratio (4 in the official settings).
    """
    L = num_layers
    if L < 1:
        raise ValueError("the model has no decoder layers")
    lo = 1.0 / spread
    if kind == "uniform" or L == 1:
        return [1.0] * L
    if kind == "log_increase":
        return [lo + (1 - lo) * math.log(1 + i) / math.log(L) for i in range(L)]
    if kind == "linear_increase":
        return [lo + (1 - lo) * i / (L - 1) for i in range(L)]
    raise ValueError(f"unknown schedule {kind!r}")


def default_importance_layers(num_layers: int, pruning_ratio: float) -> int:
    """Default number of pruned layers for ``layer_importance``: ``round(L · (35 + 20 r)/48)`` in
    ``[1, L]``, the line through the official SlimLLM settings (K = 26 of 32 at r = 0.2, 30 of 32 at 0.5)."""
    return max(1, min(num_layers, int(round(num_layers * (35 + 20 * pruning_ratio) / 48))))


def layer_importance_shape(
    scores: Sequence[float],
    num_pruned: int | None = None,
    alpha: float = 10.0,
    *,
    pruning_ratio: float = 0.2,
) -> list[float]:
    """SlimLLM's layer-based ratio shape from per-layer redundancy scores (maximum 1).

    ``scores[l]``: mean cosine similarity between block ``l``'s input and output hidden states on the
    dense model (high = the block changes the residual stream little = redundant). The ``num_pruned``
    highest-scoring layers (``None``: :func:`default_importance_layers`) get ``softmax(α·s)`` over
    that set, normalised to a maximum of 1, i.e. ``exp(α (s_l − max s))``; the other layers get 0 (not
    pruned). The official code uses ``r_l = ratio · K · softmax_l`` unclamped; here the scale is solved
    by :func:`solve_schedule` (capped at ``max_layer_ratio``) so that the removed parameters hit the
    requested ratio. Ties are broken by the lower layer index.
    """
    s = [float(x) for x in scores]
    L = len(s)
    if L < 1:
        raise ValueError("the model has no decoder layers")
    if not all(math.isfinite(x) for x in s):
        raise ValueError(f"layer importance scores must be finite, got {s}")
    k = default_importance_layers(L, pruning_ratio) if num_pruned is None else int(num_pruned)
    if not 1 <= k <= L:
        raise ValueError(f"importance_layers={k} must be between 1 and the number of decoder layers ({L})")
    top = sorted(range(L), key=lambda i: (-s[i], i))[:k]
    smax = max(s[i] for i in top)
    shape = [0.0] * L
    for i in top:
        shape[i] = math.exp(alpha * (s[i] - smax))
    return shape


def plan_layer(
    geom: LayerGeometry,
    ratio: float,
    *,
    prune_heads: bool = True,
    prune_ffn: bool = True,
    min_heads: int = 1,
    min_channels: int = 1,
    channel_multiple: int = 1,
    ffn_ratio: float | None = None,
) -> LayerPlan:
    """Round a layer ratio to whole structures (``ffn_ratio``, when given, is used for the channels).

    Attention: among the structures allowed under GQA (``g`` KV heads kept, each with ``m`` query
    heads, ``g·m >= min_heads``), the ones whose removed parameters are closest to
    ``ratio · attention_params``; ties are all returned as options. FFN: ``round(ratio · channels)``
    removed, then the kept count rounded to ``channel_multiple``.
    """
    n_rep = geom.num_heads // geom.num_kv_heads
    options = [(geom.num_kv_heads, n_rep)]
    if prune_heads and ratio > 0:
        target = ratio * geom.attention_params
        cands = []
        for g in range(1, geom.num_kv_heads + 1):
            for m in range(1, n_rep + 1):
                if g * m < min(min_heads, geom.num_heads):
                    continue
                removed = (geom.num_heads - g * m) * geom.params_per_head + (geom.num_kv_heads - g) * geom.params_per_kv_head
                cands.append((abs(removed - target), removed, g, m))
        best = min(c[0] for c in cands)
        tied = sorted({(c[1], c[2], c[3]) for c in cands if c[0] <= best + 1e-9}, key=lambda c: (c[0], -c[1]))
        keep_removed = tied[0][0]  # equal distance above and below: prefer removing less
        options = [(g, m) for r, g, m in tied if r == keep_removed]
    kv, m = options[0]
    channels = geom.channels
    fr = ratio if ffn_ratio is None else ffn_ratio
    if prune_ffn and fr > 0:
        kept = geom.channels - int(round(fr * geom.channels))
        if channel_multiple > 1:
            kept = max(channel_multiple, int(round(kept / channel_multiple)) * channel_multiple)
        channels = min(geom.channels, max(kept, min(min_channels, geom.channels)))
    return LayerPlan(ratio=ratio, heads=kv * m, kv_heads=kv, channels=channels, head_options=options,
                     ffn_ratio=fr)


@dataclass
class PruningPlan:
    """Per-layer plans plus the bookkeeping of the solve."""

    layers: list[LayerPlan]
    scale: float
    target_ratio: float
    achieved_ratio: float
    params_before: int
    params_after: int


def _evaluate(geoms, ratios, kw):
    plans = [plan_layer(g, r[0], ffn_ratio=r[1], **kw) if isinstance(r, tuple) else plan_layer(g, r, **kw)
             for g, r in zip(geoms, ratios)]
    after = sum(g.params(p.heads, p.kv_heads, p.channels) for g, p in zip(geoms, plans))
    return plans, after


def solve_schedule(
    geoms: Sequence[LayerGeometry],
    pruning_ratio: float,
    schedule: str | Sequence[float] | Sequence[Sequence[float]] = "log_increase",
    *,
    spread: float = 4.0,
    max_layer_ratio: float = 0.9,
    prune_heads: bool = True,
    prune_ffn: bool = True,
    min_heads: int = 1,
    min_channels: int = 1,
    channel_multiple: int = 1,
    iterations: int = 60,
    shape: Sequence[float] | None = None,
) -> PruningPlan:
    """Find the per-layer ratios and whole-structure plan that remove ``pruning_ratio`` of the block
    parameters as closely as the rounding allows.

    With a named schedule, ``r_i = min(s · shape_i, max_layer_ratio)`` and ``s`` is found by bisection
    on the (monotone, stepwise) count of parameters actually removed; the closest step to the target
    is returned. With an explicit list, the ratios are used as given: one ratio per layer, or one
    ``[attention_ratio, ffn_ratio]`` pair per layer (the profile a ``schedule="search"`` run found). ``shape``: an explicit shape
    (non-negative, maximum > 0; layers at 0 are not pruned) used instead of the named one, e.g.
    :func:`layer_importance_shape` for ``schedule="layer_importance"``.
    """
    L = len(geoms)
    total = sum(g.total_params for g in geoms)
    kw = dict(prune_heads=prune_heads, prune_ffn=prune_ffn, min_heads=min_heads, min_channels=min_channels,
              channel_multiple=channel_multiple)
    if not isinstance(schedule, str):
        ratios = [(float(r[0]), float(r[1])) if isinstance(r, (list, tuple)) else float(r) for r in schedule]
        if len(ratios) != L:
            raise ValueError(f"explicit schedule has {len(ratios)} ratios but the model has {L} decoder layers")
        plans, after = _evaluate(geoms, ratios, kw)
        return PruningPlan(plans, 1.0, pruning_ratio, 1 - after / total, total, after)

    if shape is not None:
        shape = [float(x) for x in shape]
        if len(shape) != L:
            raise ValueError(f"the schedule shape has {len(shape)} values but the model has {L} decoder layers")
        if not all(math.isfinite(x) and x >= 0 for x in shape) or max(shape) <= 0:
            raise ValueError(f"a schedule shape must be finite, non-negative and not all zero, got {shape}")
    elif schedule == "search":
        raise ValueError(
            "schedule='search' finds the per-layer sizes by an evolutionary search on calibration data (the pruner "
            "runs it in prune_model); pass its profile, a list of [attention_ratio, ffn_ratio] pairs, to reuse it"
        )
    elif schedule == "layer_importance":
        raise ValueError(
            "schedule='layer_importance' needs per-layer scores from a dense calibration pass: pass "
            "shape=layer_importance_shape(scores, ...) (the pruner does this in prune_model)"
        )
    else:
        shape = schedule_shape(schedule, L, spread)
    target_after = total * (1 - pruning_ratio)

    def at(s, s_ffn=None):
        ratios = [min(s * x, max_layer_ratio) for x in shape]
        ffn = None if s_ffn is None else [min(s_ffn * x, max_layer_ratio) for x in shape]
        plans = [plan_layer(g, r, ffn_ratio=None if ffn is None else ffn[i], **kw) for i, (g, r) in enumerate(zip(geoms, ratios))]
        after = sum(g.params(p.heads, p.kv_heads, p.channels) for g, p in zip(geoms, plans))
        return plans, after

    if pruning_ratio == 0:
        plans, after = at(0.0)
        return PruningPlan(plans, 0.0, 0.0, 1 - after / total, total, after)
    hi0 = max_layer_ratio / min(x for x in shape if x > 0)
    plans_hi, after_hi = at(hi0)
    if after_hi > target_after:
        raise ValueError(
            f"pruning_ratio={pruning_ratio} cannot be reached: with every layer at max_layer_ratio="
            f"{max_layer_ratio} (and the floors on kept heads/channels, prune_heads={prune_heads}, "
            f"prune_ffn={prune_ffn}) at most {1 - after_hi / total:.3f} of the block parameters can be removed"
        )

    def bisect(fn):
        lo, hi = 0.0, hi0
        best = None
        for _ in range(iterations):
            mid = (lo + hi) / 2
            plans, after = fn(mid)
            cand = (abs(after - target_after), mid, plans, after)
            if best is None or cand[0] < best[0]:
                best = cand
            if after > target_after:
                lo = mid
            else:
                hi = mid
        return best

    # 1) one scale for heads and channels; 2) heads fixed, re-solve the (fine-grained) channel scale, so
    # that coarse head steps (all layers switching at once in a uniform schedule) do not decide the budget
    _, s, plans, after = bisect(lambda x: at(x))
    if prune_ffn:
        best2 = bisect(lambda x: at(s, x))
        if best2[0] < abs(after - target_after):
            _, _, plans, after = best2
    return PruningPlan(plans, s, pruning_ratio, 1 - after / total, total, after)
