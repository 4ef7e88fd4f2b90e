"""SlimLLM (Guo et al., ICML 2025): holistic head/channel importance and regression recovery, from moments.

The official code (``guojialong1/Slimllm``) records the token matrices of the ``o_proj``/``down_proj``
inputs and computes every quantity on them. Every one of those quantities is a first- or second-order
statistic of the inputs, so here they are computed *exactly* from the mean ``μ`` and covariance ``Σ``
of the input (what :class:`~optimum_slimgpt.solvers.HessianAccumulator` already holds), without storing
tokens. Notation: ``W`` is the layer weight (out x in), ``z`` one token's input, ``Y = W z``.

Heads (``o_proj``; input = ``H`` heads of ``d`` columns)
    Head ``h``'s contribution to output dim ``i`` is ``C_{h,i} = W[i, h]·z_h``. For a set ``K`` of kept
    heads, ``Ŷ_K = Σ_{h∈K} C_h``. With the per-output-dim head-pair moments
    ``G[i, h, g] = W[i, h] Σ[h, g] W[i, g]ᵀ`` (out x H x H):

    * ``var(Y_i) = Σ_{h,g} G[i,h,g]``, ``cov(Ŷ_K,i, Y_i) = Σ_{h∈K} Σ_g G[i,h,g]``,
      ``var(Ŷ_K,i) = Σ_{h,g∈K} G[i,h,g]``, so the Pearson correlation over tokens of ``Ŷ_K,i`` and ``Y_i``
      is exact, for any ``K``, at ``O(out·H²)`` per set after one ``O(out·D²)`` product.
    * Head score (the paper's holistic importance): ``score_h = Σ_i |corr(Y_{−h,i}, Y_i)|`` (high = the
      output barely changes without ``h``). The highest-scoring heads are pruned first, then the greedy
      swap search (the paper's Algorithm 1) tries, for each initially pruned head, every substitution
      with a kept head and keeps the one that maximises ``Σ_i |corr(Ŷ_K,i, Y_i)|`` (if it improves).

FFN channels (``down_proj``; input = the intermediate ``A``)
    ``‖A_{:,j}‖ = sqrt(Σ_tokens a_j²)`` is the diagonal of ``Σ x xᵀ``; ``cov(Y) = W cov(A) Wᵀ`` (symmetric,
    so ``eigh``, where the official code uses ``np.linalg.eig``); the MLP-input feature norms
    ``‖X_{:,k}‖`` come from per-feature sums of squares. ``score_j = Σ_lin ‖W_lin[j,:] ⊙ ‖X‖‖ +
    ‖A_j‖·‖ |W[:,j]ᵀ V| ⊙ sigmoid(|λ|/mean|λ|) ‖`` (``lin`` = gate and up, or fc1 alone).

Recovery by linear regression
    Per output dim ``i``, least squares over tokens ``Y_i ≈ a_i Ŷ_i + c_i``:
    ``a_i = cov(Y_i, Ŷ_i)/var(Ŷ_i)``, ``c_i = E[Y_i] − a_i E[Ŷ_i]`` (``Ŷ = Ŵ z``, ``Ŵ`` = ``W`` with the
    removed columns zero; all from ``μ``, ``Σ``). The layer becomes ``W'[i,:] = a_i Ŵ[i,:]`` and
    ``b'_i = b_i + c_i`` where ``b`` is the layer's existing bias (zero when it has none): the bias is
    added after the linear map, so it is neither scaled nor part of the fit, and ``W' z + b' =
    a Ŷ + c + b`` is the least-squares fit of the dense ``Y + b``. When ``var(Ŷ_i) ≈ 0`` (every kept
    input of that row is constant on the calibration tokens) the slope is undetermined: ``a_i = 1``
    and ``c_i = E[Y_i] − E[Ŷ_i]`` (the least-squares intercept for slope 1).

All the math runs in float64 (the moments are accumulated in float32; the covariance ``E[xxᵀ] − μμᵀ``
and the Pearson ratios lose digits in float32). Pure torch: nothing here knows about Hugging Face.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch

__all__ = [
    "Moments",
    "moments_from_stats",
    "moments_from_tokens",
    "head_pair_moments",
    "set_correlations",
    "set_objective",
    "head_scores",
    "select_heads",
    "HeadSelection",
    "channel_scores",
    "select_channels",
    "regression_recovery",
    "Recovery",
    "output_error",
]

_DT = torch.float64


# --------------------------------------------------------------------------------------- moments
@dataclass
class Moments:
    """First and second moments of a layer input over ``tokens`` calibration tokens (float64).

    ``mean``: ``E[z]``; ``cov``: ``E[z zᵀ] − μ μᵀ`` (population covariance); ``sq_sum``: per-feature
    ``Σ_tokens z_j²`` (the squared column norms of the token matrix).
    """

    mean: torch.Tensor
    cov: torch.Tensor
    tokens: int

    @property
    def second(self) -> torch.Tensor:
        """``E[z zᵀ]``."""
        return self.cov + torch.outer(self.mean, self.mean)

    @property
    def sq_sum(self) -> torch.Tensor:
        return (self.cov.diagonal() + self.mean * self.mean).clamp_min(0) * self.tokens


def moments_from_stats(stats) -> Moments:
    """:class:`Moments` of a :class:`~optimum_slimgpt.solvers.HessianAccumulator`."""
    if stats is None or stats.tokens == 0:
        raise ValueError("SlimLLM needs the input moments of the layer: no calibration tokens were seen")
    n = stats.tokens
    mean = stats.sum_x.to(_DT) / n
    cov = stats.sum.to(_DT) / n - torch.outer(mean, mean)
    cov = (cov + cov.T) / 2
    return Moments(mean, cov, n)


def moments_from_tokens(X: torch.Tensor) -> Moments:
    """:class:`Moments` of a token matrix ``X`` (tokens x features), directly (a reference for tests)."""
    X = X.reshape(-1, X.shape[-1]).to(_DT)
    mean = X.mean(0)
    Xc = X - mean
    return Moments(mean, Xc.T @ Xc / X.shape[0], X.shape[0])


# --------------------------------------------------------------------------------------- heads
def head_pair_moments(W: torch.Tensor, cov: torch.Tensor, num_heads: int, head_dim: int) -> torch.Tensor:
    """``G[i, h, g] = W[i, h·d:(h+1)·d] · Σ[h, g] · W[i, g·d:(g+1)·d]ᵀ`` (out x H x H, float64).

    ``G[i]`` is the covariance over tokens of the per-head contributions ``C_{h,i}`` to output dim ``i``.
    Cost ``O(out · D²)`` (one head block of ``Σ`` at a time).
    """
    W = W.to(_DT)
    cov = cov.to(device=W.device, dtype=_DT)
    out, D = W.shape
    if D != num_heads * head_dim:
        raise ValueError(f"expected {num_heads * head_dim} input columns, got {D}")
    G = torch.empty(out, num_heads, num_heads, dtype=_DT, device=W.device)
    for g in range(num_heads):
        cols = slice(g * head_dim, (g + 1) * head_dim)
        P = W[:, cols] @ cov[cols, :]  # out x D: Σ_b∈g W[i,b] Σ[b, :]
        G[:, :, g] = (P * W).view(out, num_heads, head_dim).sum(-1)
    return (G + G.transpose(1, 2)) / 2


def set_correlations(G: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Pearson correlation over tokens between ``Σ_{h∈K} C_h`` and ``Y``, per output dim.

    ``masks``: ``(C, H)`` 0/1 rows (kept heads). Returns ``(C, out)``. A constant series (zero
    variance) correlates 0.
    """
    M = masks.to(G.dtype)
    var_y = G.sum(dim=(1, 2))  # out
    cov = M @ G.sum(2).T  # C x out
    var_k = torch.einsum("ihg,ch,cg->ci", G, M, M)
    den = (var_k.clamp_min(0) * var_y.clamp_min(0)).sqrt()
    ok = den > 1e-300
    return torch.where(ok, cov / torch.where(ok, den, torch.ones_like(den)), torch.zeros_like(den))


def set_objective(G: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """``Σ_i |corr(Σ_{h∈K} C_h,i, Y_i)|`` for each row ``K`` of ``masks`` (the swap search's objective)."""
    return set_correlations(G, masks).abs().sum(1)


def head_scores(G: torch.Tensor) -> torch.Tensor:
    """Holistic head importance: ``score_h = Σ_i |corr(Y_{−h,i}, Y_i)|`` (high = removable)."""
    H = G.shape[1]
    masks = 1 - torch.eye(H, dtype=G.dtype, device=G.device)
    return set_objective(G, masks)


def _choose_units(
    G: torch.Tensor,
    keep: torch.Tensor,
    units: list[list[int]],
    buckets: list[int],
    quota: dict[int, int],
    swap: bool,
) -> set[int]:
    """Choose which ``units`` (lists of heads, all currently in ``keep``) to remove: ``quota[b]`` of the
    units in bucket ``b``. Initial choice = highest holistic scores (objective with the unit removed),
    then the greedy swap search restricted to swaps inside a bucket (so every quota still holds)."""
    def mask_without(removed: set[int]) -> torch.Tensor:
        m = keep.clone()
        for u in removed:
            m[units[u]] = 0
        return m

    base = [mask_without({u}) for u in range(len(units))]
    scores = set_objective(G, torch.stack(base)) if units else torch.zeros(0)
    removed: set[int] = set()
    order: list[int] = []
    for b, q in quota.items():
        members = [u for u in range(len(units)) if buckets[u] == b]
        ranked = sorted(members, key=lambda u: (-float(scores[u]), u))
        removed.update(ranked[:q])
        order.extend(ranked[:q])
    if not swap:
        return removed
    order.sort(key=lambda u: (-float(scores[u]), u))
    cur_mask = mask_without(removed)
    cur = float(set_objective(G, cur_mask[None])[0])
    for p in order:
        if p not in removed:  # pragma: no cover - an initially pruned unit is only restored by its own turn
            continue
        cands = [k for k in range(len(units)) if k not in removed and buckets[k] == buckets[p]]
        if not cands:
            continue
        masks = []
        for k in cands:
            m = cur_mask.clone()
            m[units[p]] = 1
            m[units[k]] = 0
            masks.append(m)
        vals = set_objective(G, torch.stack(masks))
        j = int(torch.argmax(vals))
        if float(vals[j]) > cur + 1e-12 * max(1.0, abs(cur)):
            k = cands[j]
            removed.discard(p)
            removed.add(k)
            cur_mask, cur = masks[j], float(vals[j])
    return removed


@dataclass
class HeadSelection:
    """Outcome of :func:`select_heads`. ``kept_heads``: query heads in the new order (grouped by kept KV
    head, ascending); ``kept_kv_heads``: ascending; ``objective``: ``Σ_i |corr(Ŷ_i, Y_i)|`` of the kept set;
    ``option_objectives``: the same for each structure tried."""

    kept_heads: list[int]
    kept_kv_heads: list[int]
    option: tuple[int, int]
    objective: float
    head_scores: torch.Tensor
    option_objectives: dict[tuple[int, int], float] = field(default_factory=dict)


def select_heads(
    G: torch.Tensor,
    *,
    num_heads: int,
    num_kv_heads: int,
    options: Sequence[tuple[int, int]],
    swap: bool = True,
    name: str = "o_proj",
) -> HeadSelection:
    """SlimLLM head selection under the GQA constraint.

    For each allowed structure ``(g, m)`` (keep ``g`` KV heads, each with ``m`` query heads):

    1. *Group phase* (``g < num_kv_heads``): each KV group (a KV head with all its query heads) is scored
       holistically by removing all of its heads at once; the ``num_kv_heads − g`` highest-scoring
       groups are removed, then the swap search exchanges removed and kept groups.
    2. *Head phase* (``m < n_rep``): in the kept groups, each query head is scored by removing it from
       the kept set; every group removes its ``n_rep − m`` highest-scoring heads, then the swap search
       exchanges a removed head only with a kept head *of the same group* (the only single swaps that
       keep every group at ``m`` heads).

    Without GQA (``n_rep = 1``) the group phase is exactly the official per-head algorithm. When
    several structures tie in parameter count, the one with the highest final objective wins.
    """
    if num_heads % num_kv_heads:
        raise ValueError(f"{name}: {num_heads} query heads are not a multiple of {num_kv_heads} KV heads")
    n_rep = num_heads // num_kv_heads
    scores = head_scores(G)
    best: Optional[HeadSelection] = None
    objectives: dict[tuple[int, int], float] = {}
    for kv_keep, q_keep in options:
        if not (1 <= kv_keep <= num_kv_heads and 1 <= q_keep <= n_rep):
            raise ValueError(f"{name}: invalid head structure ({kv_keep} KV heads x {q_keep} query heads)")
        keep = torch.ones(num_heads, dtype=G.dtype, device=G.device)
        groups = [list(range(g * n_rep, (g + 1) * n_rep)) for g in range(num_kv_heads)]
        removed_groups: set[int] = set()
        if kv_keep < num_kv_heads:
            removed_groups = _choose_units(G, keep, groups, [0] * num_kv_heads, {0: num_kv_heads - kv_keep}, swap)
            for g in removed_groups:
                keep[groups[g]] = 0
        kept_kv = [g for g in range(num_kv_heads) if g not in removed_groups]
        removed_heads: set[int] = set()
        if q_keep < n_rep:
            units = [[h] for g in kept_kv for h in groups[g]]
            buckets = [g for g in kept_kv for _ in groups[g]]
            chosen = _choose_units(G, keep, units, buckets, {g: n_rep - q_keep for g in kept_kv}, swap)
            removed_heads = {units[u][0] for u in chosen}
        kept = [h for g in kept_kv for h in groups[g] if h not in removed_heads]
        m = torch.zeros(num_heads, dtype=G.dtype, device=G.device)
        m[kept] = 1
        obj = float(set_objective(G, m[None])[0])
        objectives[(kv_keep, q_keep)] = obj
        if best is None or obj > best.objective:
            best = HeadSelection(kept, kept_kv, (kv_keep, q_keep), obj, scores)
    if best is None:
        raise ValueError(f"{name}: no head structure to choose from")
    best.option_objectives = objectives
    return best


# --------------------------------------------------------------------------------------- channels
def channel_scores(
    W: torch.Tensor,
    moments: Moments,
    in_weights: Sequence[torch.Tensor] = (),
    input_sq: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """SlimLLM FFN channel importance (low = removable), one value per input column of ``W`` (down_proj).

    ``score_j = Σ_lin ‖W_lin[j, :] ⊙ ‖X‖‖₂ + ‖A_j‖ · ‖ |W[:, j]ᵀ V| ⊙ sigmoid(|λ|/mean|λ|) ‖₂`` with
    ``V Λ Vᵀ = cov(Y) = W cov(A) Wᵀ`` (``eigh``), ``‖A_j‖²`` = ``Σ_tokens a_j²`` and ``‖X_k‖² =
    input_sq[k]`` (per-feature sum of squares of the MLP input, over the same tokens). ``in_weights``:
    the channel-in weights (gate and up, or fc1 alone; rows = channels), any number. Without
    ``input_sq`` the input terms are left out.
    """
    W = W.to(_DT)
    cov_a = moments.cov.to(device=W.device, dtype=_DT)
    cov_y = W @ cov_a @ W.T
    cov_y = (cov_y + cov_y.T) / 2
    lam, V = torch.linalg.eigh(cov_y)
    mag = lam.abs()
    w = torch.sigmoid(mag / mag.mean().clamp_min(1e-300))
    proj = (V.T @ W).abs() * w[:, None]  # components x channels
    a_norm = moments.sq_sum.to(device=W.device, dtype=_DT).sqrt()
    score = a_norm * proj.norm(dim=0)
    if input_sq is not None and len(in_weights):
        x_norm = input_sq.to(device=W.device, dtype=_DT).clamp_min(0).sqrt()
        for lin in in_weights:
            lin = lin.to(device=W.device, dtype=_DT)
            if lin.shape[0] != W.shape[1] or lin.shape[1] != x_norm.numel():
                raise ValueError(
                    f"channel-in weight of shape {tuple(lin.shape)} does not match {W.shape[1]} channels x "
                    f"{x_norm.numel()} input features"
                )
            score = score + (lin * x_norm).norm(dim=1)
    return score


def select_channels(scores: torch.Tensor, num_remove: int, keep_lowest: float = 0.0) -> list[int]:
    """Kept channels (ascending): the ``num_remove`` lowest-scoring ones are removed, after skipping the
    lowest ``round(keep_lowest · m)`` (the official code's undocumented rule with ``keep_lowest=0.01``;
    reduced when fewer than that many channels would be left to remove)."""
    m = scores.numel()
    if not 0 <= num_remove < m:
        raise ValueError(f"cannot remove {num_remove} of {m} channels")
    skip = min(int(round(keep_lowest * m)), m - num_remove)
    order = torch.argsort(scores.cpu(), stable=True)
    removed = set(order[skip : skip + num_remove].tolist())
    return [j for j in range(m) if j not in removed]


# --------------------------------------------------------------------------------------- recovery
@dataclass
class Recovery:
    """Outcome of :func:`regression_recovery`: the new weight (float32, removed columns zero), the new
    bias, the per-row slope ``a`` and intercept ``c``, and the rows where the slope was undetermined."""

    W: torch.Tensor
    bias: torch.Tensor
    scale: torch.Tensor
    shift: torch.Tensor
    degenerate: torch.Tensor


def regression_recovery(
    W: torch.Tensor,
    keep_cols: torch.Tensor,
    moments: Moments,
    bias: Optional[torch.Tensor] = None,
    *,
    rel_eps: float = 1e-10,
) -> Recovery:
    """Least-squares ``Y_i ≈ a_i Ŷ_i + c_i`` per output dim, from the input moments (see the module doc).

    ``keep_cols``: boolean mask of the kept input columns. Returns ``W' = diag(a) Ŵ`` and
    ``b' = b + c``. A row whose ``var(Ŷ_i) <= rel_eps · var(Y_i)`` (or is zero) gets ``a_i = 1`` and
    ``c_i = E[Y_i] − E[Ŷ_i]``.
    """
    W64 = W.to(_DT)
    keep = keep_cols.to(device=W.device, dtype=torch.bool)
    What = W64 * keep.to(_DT)
    mu = moments.mean.to(device=W.device, dtype=_DT)
    cov = moments.cov.to(device=W.device, dtype=_DT)
    Wk = What[:, keep]
    Ck = cov[keep][:, keep]
    P = W64 @ cov  # row i: w_i Σ
    var_hat = ((Wk @ Ck) * Wk).sum(1)
    cov_yh = (P[:, keep] * Wk).sum(1)  # ŵ_i Σ w_iᵀ (Σ symmetric)
    var_y = (P * W64).sum(1)
    mu_y, mu_hat = W64 @ mu, What @ mu
    degenerate = var_hat <= torch.maximum(rel_eps * var_y.clamp_min(0), torch.full_like(var_hat, 1e-300))
    a = torch.where(degenerate, torch.ones_like(var_hat), cov_yh / torch.where(degenerate, torch.ones_like(var_hat), var_hat))
    c = mu_y - a * mu_hat
    b0 = torch.zeros_like(c) if bias is None else bias.to(device=W.device, dtype=_DT)
    Wn = a[:, None] * What
    return Recovery(Wn.to(torch.float32), (b0 + c).to(torch.float32), a, c, degenerate)


def output_error(
    W0: torch.Tensor,
    b0: Optional[torch.Tensor],
    W: torch.Tensor,
    b: Optional[torch.Tensor],
    moments: Moments,
) -> tuple[float, float]:
    """``(E‖(W0 z + b0) − (W z + b)‖², E‖W0 z + b0‖²)`` per token, exactly from the input moments."""
    dev = W0.device
    S = moments.second.to(device=dev, dtype=_DT)
    mu = moments.mean.to(device=dev, dtype=_DT)
    W0 = W0.to(_DT)
    zero = torch.zeros(W0.shape[0], dtype=_DT, device=dev)
    b0 = zero if b0 is None else b0.to(device=dev, dtype=_DT)
    b = zero if b is None else b.to(device=dev, dtype=_DT)

    def quad(D: torch.Tensor, d: torch.Tensor) -> float:
        return float(((D @ S) * D).sum() + 2 * (d @ (D @ mu)) + d @ d)

    return quad(W0 - W.to(_DT), b0 - b), quad(W0, b0)
