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
    "layer_importance_shape", "default_importance_layers", "auto_channel_multiple", "resolve_channel_multiple",
    "check_kv_head_multiple", "AUTO", "MAX_CHANNEL_MULTIPLE", "MIN_CHANNEL_STEPS",
]

#: the ``channel_multiple`` value resolved per layer by :func:`auto_channel_multiple`
AUTO = "auto"
#: llama.cpp's K-quant super-block (Q2_K..Q6_K quantise rows of whole 256-value blocks); it is a multiple of the
#: 32-value blocks of Q4_0..Q8_0 and of the 64/128 tiles of GPU kernels (tensor cores, Marlin/Machete int4)
MAX_CHANNEL_MULTIPLE = 256
#: the automatic multiple leaves every layer at least this many widths to choose from (m, 2m, ..., dense)
MIN_CHANNEL_STEPS = 4


def auto_channel_multiple(width: int) -> int:
    """The FFN multiple that ``channel_multiple="auto"`` gives a layer of ``width`` (dense) channels.

    The largest power of two that divides ``width``, at most :data:`MAX_CHANNEL_MULTIPLE` (256) and at most
    ``width / MIN_CHANNEL_STEPS`` (a quarter of the width). So every block size (32, 64, 128, 256) that the
    dense width takes whole, every pruned width takes whole too: pruning never sends a tensor to a coarser
    quantisation type than the dense model's (llama.cpp falls back from a K-quant to Q5_0/Q8_0 when a row is
    not a multiple of 256, and to F16 when it is not a multiple of 32), and never makes pruning impossible
    (a layer can always lose a quarter, a half, three quarters of its channels).

    Examples: 1536 (SmolLM2, 6·256), 11008 (Llama-2-7B, 43·256), 14336 (Llama-3-8B, Mistral-7B), 4864
    (Qwen2-0.5B) and 18944 (Qwen2-7B) give 256; 29568 (Qwen2-72B, 2⁷·231) gives 128; 512 gives 128 (256
    would leave only 256 and 512); 172 (stories260K, 4·43) gives 4; an odd width gives 1.
    """
    if not isinstance(width, int) or isinstance(width, bool) or width < 1:
        raise ValueError(f"an FFN width must be a positive integer, got {width!r}")
    m = width & -width  # the largest power of two dividing width
    m = min(m, MAX_CHANNEL_MULTIPLE)
    while m > 1 and width // m < MIN_CHANNEL_STEPS:
        m //= 2
    return m


def resolve_channel_multiple(channel_multiple: int | str, width: int) -> int:
    """``channel_multiple`` for a layer of ``width`` channels: an int as given, ``"auto"`` by
    :func:`auto_channel_multiple`."""
    if channel_multiple == AUTO:
        return auto_channel_multiple(width)
    if not isinstance(channel_multiple, int) or isinstance(channel_multiple, bool) or channel_multiple < 1:
        raise ValueError(f"channel_multiple must be a positive integer or {AUTO!r}, got {channel_multiple!r}")
    return channel_multiple


def check_kv_head_multiple(geoms: Sequence["LayerGeometry"], kv_head_multiple: int) -> None:
    """Raise ``ValueError`` unless every layer's KV heads (hence its query heads) can be kept in multiples of
    ``kv_head_multiple``: it must divide each layer's number of KV heads (``num_key_value_heads``), since a layer
    that is not pruned keeps them all."""
    if not isinstance(kv_head_multiple, int) or isinstance(kv_head_multiple, bool) or kv_head_multiple < 1:
        raise ValueError(f"kv_head_multiple must be a positive integer, got {kv_head_multiple!r}")
    if kv_head_multiple == 1:
        return
    bad = [(i, g.num_kv_heads) for i, g in enumerate(geoms) if g.num_kv_heads % kv_head_multiple]
    if bad:
        i, n = bad[0]
        raise ValueError(
            f"kv_head_multiple={kv_head_multiple} does not divide the number of KV heads of {len(bad)} layer(s) "
            f"(layer {i} has {n}; num_key_value_heads must be a multiple of kv_head_multiple, since a layer keeps "
            f"its KV heads in multiples of it): use a divisor of {n}, e.g. for tensor parallelism a "
            f"--tensor-parallel-size that divides {n}")


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
    #: the multiple the kept channels were rounded to (``channel_multiple`` resolved for this layer)
    channel_multiple: int = 1

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
    channel_multiple: int | str = 1,
    kv_head_multiple: int = 1,
    ffn_ratio: float | None = None,
) -> LayerPlan:
    """Round a layer ratio to whole structures (``ffn_ratio``, when given, is used for the channels).

    Attention: among the structures allowed under GQA (``g`` KV heads kept, ``g`` a multiple of
    ``kv_head_multiple``, each with ``m`` query heads, ``g·m >= min_heads``), the ones whose removed
    parameters are closest to ``ratio · attention_params``; ties are all returned as options. FFN:
    ``round(ratio · channels)`` removed, then the kept count rounded to the nearest multiple of
    ``channel_multiple`` (``"auto"``: :func:`auto_channel_multiple` of the layer's width), at least one
    multiple; the floor ``min_channels`` is rounded up to a multiple; the dense width is always allowed.
    """
    check_kv_head_multiple([geom], kv_head_multiple)
    multiple = resolve_channel_multiple(channel_multiple, geom.channels)
    n_rep = geom.num_heads // geom.num_kv_heads
    options = [(geom.num_kv_heads, n_rep)]
    if prune_heads and ratio > 0:
        target = ratio * geom.attention_params
        cands = []
        for g in range(kv_head_multiple, geom.num_kv_heads + 1, kv_head_multiple):
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
        floor = min(min_channels, geom.channels)
        if multiple > 1:
            kept = max(multiple, int(round(kept / multiple)) * multiple)
            floor = -(-floor // multiple) * multiple
        channels = min(geom.channels, max(kept, floor))
    return LayerPlan(ratio=ratio, heads=kv * m, kv_heads=kv, channels=channels, head_options=options,
                     ffn_ratio=fr, channel_multiple=multiple)


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
    channel_multiple: int | str = 1,
    kv_head_multiple: int = 1,
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

    ``channel_multiple`` (an int or ``"auto"``) and ``kv_head_multiple`` are constraints of the rounding
    (:func:`plan_layer`): the scale is solved with them, so the removed fraction stays as close to the target
    as the coarser steps allow. A ``kv_head_multiple`` that does not divide every layer's KV heads raises
    ``ValueError`` (:func:`check_kv_head_multiple`).
    """
    L = len(geoms)
    total = sum(g.total_params for g in geoms)
    check_kv_head_multiple(geoms, kv_head_multiple)
    kw = dict(prune_heads=prune_heads, prune_ffn=prune_ffn, min_heads=min_heads, min_channels=min_channels,
              channel_multiple=channel_multiple, kv_head_multiple=kv_head_multiple)
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
            f"prune_ffn={prune_ffn}, channel_multiple={channel_multiple!r}, kv_head_multiple={kv_head_multiple}) "
            f"at most {1 - after_hi / total:.3f} of the block parameters can be removed"
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
