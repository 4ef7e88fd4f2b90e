"""Structured Optimal Brain Surgeon: removing groups of input columns of a linear layer.

Notation: ``W`` is a layer weight (rows = outputs, columns = inputs), ``H`` the input Hessian
(``2 X Xᵀ / n``), ``Hinv = (H + λI)⁻¹``. Removing a set ``S`` of columns optimally (group OBS) gives

* weight change  ``ΔW = −W[:, S] · (Hinv[S, S])⁻¹ · Hinv[S, :]``
* exact error    ``E(S) = Σ_rows w_S (Hinv[S, S])⁻¹ w_Sᵀ``
* and the inverse Hessian of the surviving columns is the down-date
  ``Hinv ← Hinv − Hinv[:, S] (Hinv[S, S])⁻¹ Hinv[S, :]``.

Deviations from the official SlimGPT code, all exact rewrites or corrections (see also
``docs/algorithms.md``):

* The official code re-factorises the full ``H`` (Cholesky + ``cholesky_inverse`` + another Cholesky
  of the permuted ``Hinv``) after every removal. We apply the closed-form down-date above, which is the
  same matrix (the official notes prove the equivalence) at ``O(d²|S|)`` instead of ``O(d³)``.
* The official head score ``Σ_j Σ_r W[r, j]² / L_jj²`` (``L`` = Cholesky of the head's ``Hinv`` block)
  ignores the off-diagonal of ``L``; it is an estimate of ``E(S)``. We score heads by the *exact*
  ``E(S) = ||L⁻¹ W[:, S]ᵀ||²`` (one batched triangular solve); ``mode="obs_official"`` keeps the
  official estimate for comparison.
* Dead inputs (zero on every calibration token) cost nothing to remove: they score 0 instead of the
  official code's zeroing of their weights (which later made ``params_remove`` delete single columns
  inside heads).

Pure torch: nothing here knows about Hugging Face.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Sequence

import torch

from .hessian import affine_hessian, damped_inverse

__all__ = [
    "closed_form_group_obs",
    "group_obs_remove",
    "unit_scores",
    "dgs_group_sizes",
    "prune_heads",
    "prune_channels",
    "HeadPruneResult",
    "ChannelPruneResult",
    "reconstruction_error",
    "quadratic_form",
    "affine_least_squares",
]


def _chol_lower(A: torch.Tensor) -> torch.Tensor:
    """Cholesky of a (batch of) small SPD block(s), with a tiny jitter retry for round-off."""
    L, info = torch.linalg.cholesky_ex(A)
    if bool((info != 0).any()):
        scale = A.diagonal(dim1=-2, dim2=-1).abs().mean(-1, keepdim=True).clamp_min(1e-30)
        eye = torch.eye(A.shape[-1], dtype=A.dtype, device=A.device)
        for k in range(1, 8):
            L, info = torch.linalg.cholesky_ex(A + (10.0 ** (k - 8)) * scale.unsqueeze(-1) * eye)
            if not bool((info != 0).any()):
                break
        else:  # pragma: no cover - only with a broken inverse
            raise ValueError("a block of the inverse Hessian is not positive definite")
    return L


def closed_form_group_obs(W: torch.Tensor, Hinv: torch.Tensor, S: torch.Tensor) -> torch.Tensor:
    """Reference: ``ΔW = −W[:, S] · (Hinv[S, S])⁻¹ · Hinv[S, :]`` with an explicit inverse."""
    return -W[:, S] @ torch.linalg.inv(Hinv[S][:, S]) @ Hinv[S, :]


def group_obs_remove(
    W: torch.Tensor,
    Hinv: torch.Tensor,
    S: torch.Tensor,
    *,
    compensate: bool = True,
) -> float:
    """Remove columns ``S`` from ``W`` in place, with the OBS update of the others; down-date ``Hinv``.

    Returns the exact error ``E(S)`` of the removal under the damped Hessian (with compensation; the
    zeroing error ``Σ w_S H_SS w_Sᵀ`` is not computed here when ``compensate=False``, use
    :func:`reconstruction_error`). Afterwards ``W[:, S] == 0``, and ``Hinv`` is the inverse Hessian of
    the remaining columns with ``S`` decoupled (zero rows/columns, unit diagonal).
    """
    S = S.to(device=W.device, dtype=torch.long)
    C = _chol_lower(Hinv[S][:, S])  # Hinv_SS = C Cᵀ
    A = torch.linalg.solve_triangular(C, Hinv[S, :], upper=False)  # C⁻¹ Hinv[S, :]   (s x d)
    B = torch.linalg.solve_triangular(C, W[:, S].T, upper=False).T  # W_S C⁻ᵀ          (rows x s)
    err = float((B * B).sum())
    if compensate:
        W.sub_(B @ A)  # W_S Hinv_SS⁻¹ Hinv[S, :]
    W[:, S] = 0
    Hinv.addmm_(A.T, A, alpha=-1)  # Hinv -= Aᵀ A without a d x d temporary
    Hinv[S, :] = 0
    Hinv[:, S] = 0
    Hinv[S, S] = 1
    return err


def unit_scores(
    W: torch.Tensor,
    Hinv: torch.Tensor | None,
    units: torch.Tensor,
    mode: str = "obs",
    dead: torch.Tensor | None = None,
    col_extra: torch.Tensor | None = None,
) -> torch.Tensor:
    """Score candidate units (rows of ``units``: column indices of equal count) for removal.

    ``mode``: ``"obs"`` exact group OBS error ``||L⁻¹ W_Sᵀ||²`` (batched Cholesky of the diagonal
    blocks of ``Hinv``, the paper's *grouped Cholesky*); ``"obs_official"`` the official estimate
    ``Σ W² / diag(L)²``; ``"magnitude"`` the squared Frobenius norm ``||W_S||²`` (no Hessian) plus,
    when given, ``col_extra[S].sum()``: the squared norms of the coupled input weights of those columns
    (q rows of a head, gate/up rows of a channel), so the whole structure's L2 is ranked.
    """
    Ws = W[:, units]  # rows x U x s
    if dead is not None:
        Ws = Ws * (~dead[units]).to(Ws.dtype)
    if mode == "magnitude":
        score = (Ws * Ws).sum(dim=(0, 2))
        if col_extra is not None:
            score = score + col_extra.to(score)[units].sum(-1)
        return score
    assert Hinv is not None
    blocks = Hinv[units.unsqueeze(-1), units.unsqueeze(-2)]  # U x s x s
    L = _chol_lower(blocks)
    if mode == "obs_official":
        d = L.diagonal(dim1=-2, dim2=-1) ** 2  # U x s
        return ((Ws * Ws) / d.unsqueeze(0)).sum(dim=(0, 2))
    if mode != "obs":
        raise ValueError(f"unknown scoring mode {mode!r}")
    rhs = Ws.permute(1, 2, 0)  # U x s x rows
    Z = torch.linalg.solve_triangular(L, rhs, upper=False)
    return (Z * Z).sum(dim=(1, 2))


def reconstruction_error(W0: torch.Tensor, W: torch.Tensor, H: torch.Tensor) -> tuple[float, float]:
    """``(||(W0 − W) X||², ||W0 X||²)`` per token, i.e. ``tr(ΔW H ΔWᵀ)/2`` and ``tr(W0 H W0ᵀ)/2``.

    With ``W = [W | b]`` and ``H`` an :func:`~optimum_slimgpt.solvers.hessian.affine_hessian`, the error of the
    affine map ``W x + b`` (the bias is the weight of the constant input). Computed by row blocks, so there are
    no full-size temporaries (``W0`` may be in the model's dtype)."""
    dt = torch.promote_types(H.dtype, torch.float32)
    err = base = 0.0
    for i in range(0, W0.shape[0], 256):
        A = W0[i:i + 256].to(dt)
        D = A - W[i:i + 256].to(dt)
        err += float(((D @ H) * D).sum())
        base += float(((A @ H) * A).sum())
    return err / 2, base / 2


def quadratic_form(W: torch.Tensor, H: torch.Tensor, rows: int = 256) -> float:
    """``tr(W H Wᵀ)`` by row blocks (``W`` may be in the model's dtype; the sum in ``H``'s precision)."""
    dt = torch.promote_types(H.dtype, torch.float32)
    total = 0.0
    for i in range(0, W.shape[0], rows):
        A = W[i:i + rows].to(dt)
        total += float(((A @ H) * A).sum())
    return total


def _obs_identity_error(W0: torch.Tensor, W: torch.Tensor, group_errors: float, damp: float,
                        dead: torch.Tensor, rows: int = 256) -> float:
    """``||(W0 − W) X||²`` per token after sequential group OBS with compensation, without ``H``.

    Each compensated removal is the ``H_λ``-orthogonal projection of the weights onto a smaller subspace of a
    nested sequence, so the group errors add up (Pythagoras) to ``tr(ΔW H_λ ΔWᵀ)`` with ``ΔW = W0 − W`` and
    ``H_λ = H + λI`` with the dead diagonals (``H_jj = 0``) set to 1 first, as :func:`damped_inverse` does.
    Hence ``tr(ΔW H ΔWᵀ) = Σ E_k − λ||ΔW||² − Σ_dead ||ΔW_j||²``, halved as :func:`reconstruction_error`."""
    sq = torch.zeros(W0.shape[1], dtype=torch.float64, device=W0.device)
    for i in range(0, W0.shape[0], rows):
        D = W0[i:i + rows].to(W.dtype) - W[i:i + rows]
        sq += (D * D).sum(0, dtype=torch.float64)
    return (group_errors - damp * float(sq.sum()) - float(sq[dead.to(sq.device)].sum())) / 2


def affine_least_squares(W0: torch.Tensor, b0: torch.Tensor | None, H: torch.Tensor, mean: torch.Tensor,
                         kept: torch.Tensor, damp: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference: the best affine map from the ``kept`` inputs, ``argmin_{W_K, b} ||W0 X + b0 − W_K X_K − b||²``
    (plus ``damp/2 · n ||W_K − W0_K||²``), from the moments only: the normal equations of ``[X_K; 1]``.
    Returns ``(W, b)`` with ``W`` at full width (removed columns zero)."""
    d = W0.shape[1]
    b0 = torch.zeros(W0.shape[0], dtype=W0.dtype, device=W0.device) if b0 is None else b0.to(W0)
    Ha = affine_hessian(H.to(W0), mean.to(W0))
    idx = torch.cat([kept.to(torch.long), torch.tensor([d], device=kept.device)])
    A = Ha[idx][:, idx].clone()
    A.diagonal()[:-1] += damp
    rhs = torch.cat([W0, b0[:, None]], 1) @ Ha[:, idx]  # E[(W0 x + b0) [x_K; 1]ᵀ] · 2
    rhs[:, :-1] += damp * W0[:, kept]
    sol = torch.linalg.solve(A, rhs.T).T
    W = torch.zeros_like(W0)
    W[:, kept] = sol[:, :-1]
    return W, sol[:, -1]


class _Affine:
    """The augmented problem of affine compensation (``mean`` given): ``W = [W | b]`` and
    ``H = [[H, 2μ], [2μᵀ, 2]]``; the constant column (index ``d``) is never a candidate for removal.

    With ``compensate=True`` the OBS solvers run on the augmented matrices, so the update of the constant
    column is the optimal bias change. With ``compensate=False`` they run on the plain ones and only the
    bias is repaired afterwards, ``b ← b + (W0 − W) μ``: the mean shift of FLAP (the best bias for fixed
    weights). Without ``mean`` nothing changes (the plain path)."""

    def __init__(self, W0: torch.Tensor, H: torch.Tensor | None, mean: torch.Tensor | None,
                 bias: torch.Tensor | None, compensate: bool, name: str) -> None:
        self.on = mean is not None
        self.d = W0.shape[1]
        if not self.on:
            return
        if H is None:
            raise ValueError(f"{name}: affine compensation needs the input Hessian and mean")
        self.mean = mean.to(W0)
        self.b0 = torch.zeros(W0.shape[0], dtype=W0.dtype, device=W0.device) if bias is None else bias.detach().to(W0)
        self.Ha = affine_hessian(H.to(W0), self.mean)
        self.solve_augmented = compensate
        self.W0a = torch.cat([W0, self.b0[:, None]], 1)

    def inputs(self, W0: torch.Tensor, H: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None, bool]:
        """(weight, Hessian, constant_last) the OBS solver works on."""
        if self.on and self.solve_augmented:
            return self.W0a, self.Ha, True
        return W0, H, False

    def finish(self, W0: torch.Tensor, Wc: torch.Tensor, H: torch.Tensor | None):
        """(full-width W, bias or None, (error, base)) from the solver's weight ``Wc``."""
        if not self.on:
            return Wc, None, reconstruction_error(W0, Wc, H) if H is not None else (0.0, 0.0)
        if self.solve_augmented:
            Wa = Wc
        else:
            Wa = torch.cat([Wc, (self.b0 + (W0 - Wc) @ self.mean)[:, None]], 1)
        return Wa[:, : self.d].contiguous(), Wa[:, self.d].clone(), reconstruction_error(self.W0a, Wa, self.Ha)


def _guard_affine(aff: _Affine, W0: torch.Tensor, plain_W: torch.Tensor, plain_kept_cols: list[int],
                  damp_percent: float, name: str) -> list[tuple[float, float, torch.Tensor, torch.Tensor]]:
    """The candidates that make affine compensation never worse than plain OBS on the calibration inputs:
    plain OBS's own kept columns refitted with the affine OBS update (one group removal on the augmented
    problem), and plain OBS's weights with only the mean shift ``b0 + (W0 − W) μ`` (the best bias for those
    weights: its error is plain OBS's minus ``||(W0 − W) μ||²``, never more). Returns
    ``[(error, base, W, bias), ...]``."""
    out = []
    removed = torch.tensor(sorted(set(range(aff.d)) - set(plain_kept_cols)), dtype=torch.long, device=W0.device)
    if len(removed):
        Wa = aff.W0a.clone()
        Hinv, _ = damped_inverse(aff.Ha, damp_percent, name=name, constant_last=True)
        group_obs_remove(Wa, Hinv, removed, compensate=True)
        out.append((*reconstruction_error(aff.W0a, Wa, aff.Ha), Wa[:, : aff.d].contiguous(), Wa[:, aff.d].clone()))
    Wa = torch.cat([plain_W, (aff.b0 + (W0 - plain_W) @ aff.mean)[:, None]], 1)
    out.append((*reconstruction_error(aff.W0a, Wa, aff.Ha), Wa[:, : aff.d].contiguous(), Wa[:, aff.d].clone()))
    return out


# --------------------------------------------------------------------------------------- heads
@dataclass
class HeadPruneResult:
    """Outcome of :func:`prune_heads`.

    ``kept_heads`` are query-head indices in the new order (grouped by kept KV head, ascending), and
    ``kept_kv_heads`` the kept KV-head indices (ascending); ``W`` is the compensated ``o_proj`` weight
    at full width, with removed head columns exactly zero.
    """

    kept_heads: list[int]
    kept_kv_heads: list[int]
    W: torch.Tensor
    obs_error: float
    option: tuple[int, int]
    option_errors: dict[tuple[int, int], float] = field(default_factory=dict)
    base_error: float = 0.0  # ||W0 X||² per token (0 without a Hessian): obs_error / base_error is relative
    bias: torch.Tensor | None = None  # the compensated output bias (affine compensation only)

    @property
    def relative_error(self) -> float:
        return self.obs_error / max(self.base_error, 1e-30)


def _row_sq(weights: Sequence[torch.Tensor], rows: int, device, name: str) -> torch.Tensor | None:
    """Sum over ``weights`` of the squared L2 norm of each row (``None`` when there are none)."""
    if not weights:
        return None
    out = torch.zeros(rows, dtype=torch.float32, device=device)
    for w in weights:
        if w.shape[0] != rows:
            raise ValueError(f"{name}: coupled weight has {w.shape[0]} rows, expected {rows}")
        out += w.detach().to(device=device, dtype=torch.float32).pow(2).sum(1)
    return out


def _head_cols(h: int, head_dim: int) -> list[int]:
    return list(range(h * head_dim, (h + 1) * head_dim))


def _greedy_heads(
    W: torch.Tensor,
    Hinv: torch.Tensor | None,
    *,
    num_heads: int,
    num_kv_heads: int,
    head_dim: int,
    kv_keep: int,
    q_per_kv_keep: int,
    mode: str,
    compensate: bool,
    dead: torch.Tensor | None,
    col_extra: torch.Tensor | None = None,
    kv_extra: torch.Tensor | None = None,
) -> tuple[list[int], set[int], float]:
    """Batched greedy removal under the GQA constraint, one unit per iteration.

    First whole KV groups (a KV head with all its query heads) are removed until ``kv_keep`` remain,
    then single query heads, each from a group that still has to lose heads, until every group keeps
    ``q_per_kv_keep``. Each iteration scores all candidate units at once and removes the cheapest
    with the OBS update, so later choices see the compensated weights. Magnitude selection scores every
    candidate on the weights as they came in, so compensating does not change the selection.
    """
    n_rep = num_heads // num_kv_heads
    removed_groups: set[int] = set()
    removed_heads: set[int] = set()
    total = 0.0
    use_hinv = Hinv is not None  # magnitude selection has one only when it compensates
    scored = W.clone() if mode == "magnitude" else W  # W changes in place as heads go

    def remove(cols: list[int]) -> float:
        S = torch.tensor(cols, device=W.device)
        if use_hinv:
            return group_obs_remove(W, Hinv, S, compensate=compensate)
        W[:, S] = 0
        return 0.0

    for _ in range(num_kv_heads - kv_keep):
        cand = [g for g in range(num_kv_heads) if g not in removed_groups]
        units = torch.tensor(
            [sum((_head_cols(g * n_rep + j, head_dim) for j in range(n_rep)), []) for g in cand], device=W.device
        )
        s = unit_scores(scored, Hinv, units, mode, dead, col_extra=col_extra)
        if mode == "magnitude" and kv_extra is not None:
            s = s + kv_extra.to(s)[torch.tensor(cand, device=kv_extra.device)]
        g = cand[int(torch.argmin(s))]
        removed_groups.add(g)
        removed_heads.update(g * n_rep + j for j in range(n_rep))
        total += remove(units[cand.index(g)].tolist())

    quota = {g: n_rep - q_per_kv_keep for g in range(num_kv_heads) if g not in removed_groups}
    for _ in range(sum(quota.values())):
        cand = [h for h in range(num_heads) if h not in removed_heads and quota.get(h // n_rep, 0) > 0]
        units = torch.tensor([_head_cols(h, head_dim) for h in cand], device=W.device)
        s = unit_scores(scored, Hinv, units, mode, dead, col_extra=col_extra)
        h = cand[int(torch.argmin(s))]
        removed_heads.add(h)
        quota[h // n_rep] -= 1
        total += remove(_head_cols(h, head_dim))

    kept_kv = [g for g in range(num_kv_heads) if g not in removed_groups]
    return kept_kv, removed_heads, total


def prune_heads(
    W: torch.Tensor,
    H: torch.Tensor | None,
    *,
    num_heads: int,
    num_kv_heads: int,
    head_dim: int,
    options: list[tuple[int, int]],
    damp_percent: float = 0.01,
    mode: str = "obs",
    compensate: bool = True,
    name: str = "o_proj",
    q_weights: Sequence[torch.Tensor] = (),
    kv_weights: Sequence[torch.Tensor] = (),
    mean: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    _guard: bool = True,
) -> HeadPruneResult:
    """Remove whole attention heads from an ``o_proj`` weight (columns grouped by query head).

    Args:
        W: ``o_proj`` weight, ``hidden x num_heads·head_dim``.
        H: Hessian of ``o_proj``'s input (``None`` only for ``mode="magnitude"``).
        options: Allowed structures ``(kv_heads_kept, query_heads_kept_per_kv_head)``, all with the same
            parameter count (from the schedule). Under GQA a KV head goes only together with all its
            query heads, and every kept KV head keeps the same number of query heads, so the standard
            ``repeat_kv`` still works. When several structures tie, each is solved greedily and the
            one with the lowest OBS error wins.
        mode: ``"obs"``, ``"obs_official"`` or ``"magnitude"`` (see :func:`unit_scores`).
        compensate: Apply the OBS update to the kept columns.
        q_weights, kv_weights: Only for ``mode="magnitude"``: the weights whose rows belong to query
            heads (``q_proj``, ``num_heads·head_dim`` rows) and to KV heads (``k_proj``, ``v_proj``), so
            the baseline ranks a head by the L2 norm of all its weights (q rows + o columns, plus the k/v
            rows when a whole KV group goes), not of ``o_proj`` alone.
        mean, bias: Affine compensation: the mean ``μ`` of ``o_proj``'s input (with ``H``) and its current
            bias (``None``: zero). The input gets a constant 1 that is never removed (``H`` augmented with
            ``2μ`` and ``2``, ``W`` with ``b``), so selection and update are those of the best linear-plus-bias
            reconstruction and the result carries the new ``bias`` (see :class:`_Affine`). The greedy selection
            on the augmented problem is not guaranteed to beat plain OBS's, so plain OBS also runs and its kept
            heads get the affine update too (and its weights the mean shift): the lowest calibration error wins,
            which is never above plain OBS's (the solve takes about twice as long).
    """
    if _guard and mean is not None and compensate and H is not None:
        kw = dict(num_heads=num_heads, num_kv_heads=num_kv_heads, head_dim=head_dim, options=options,
                  damp_percent=damp_percent, mode=mode, compensate=compensate, name=name, q_weights=q_weights,
                  kv_weights=kv_weights)
        res = prune_heads(W, H, mean=mean, bias=bias, _guard=False, **kw)
        plain = prune_heads(W, H, **kw)
        W0 = W.detach().to(torch.promote_types(W.dtype, torch.float32))
        aff = _Affine(W0, H, mean, bias, compensate, name)
        cols = [c for h in plain.kept_heads for c in _head_cols(h, head_dim)]
        for err, base, Wn, bn in _guard_affine(aff, W0, plain.W, cols, damp_percent, name):
            if err < res.obs_error:
                res = HeadPruneResult(plain.kept_heads, plain.kept_kv_heads, Wn, err, plain.option,
                                      plain.option_errors, base_error=base, bias=bn)
        return res
    if num_heads % num_kv_heads:
        raise ValueError(f"{name}: {num_heads} query heads are not a multiple of {num_kv_heads} KV heads")
    if W.shape[1] != num_heads * head_dim:
        raise ValueError(f"{name}: expected {num_heads * head_dim} input columns, got {W.shape[1]}")
    W0 = W.detach().to(torch.promote_types(W.dtype, torch.float32))
    aff = _Affine(W0, H, mean, bias, compensate, name)
    Ws, Hs, const = aff.inputs(W0, H)  # what the solver works on (augmented with the constant input or not)
    Hinv0 = dead = col_extra = kv_extra = None
    if mode == "magnitude":
        col_extra = _row_sq(q_weights, num_heads * head_dim, W0.device, name)
        kv_sq = _row_sq(kv_weights, num_kv_heads * head_dim, W0.device, name)
        kv_extra = None if kv_sq is None else kv_sq.view(num_kv_heads, head_dim).sum(1)
        if compensate and H is not None:  # magnitude selection, OBS compensation (as prune_channels does)
            Hinv0, _ = damped_inverse(Hs, damp_percent, name=name, constant_last=const)
    else:
        if H is None:
            raise ValueError(f"{name}: mode {mode!r} needs a Hessian")
        Hinv0, _ = damped_inverse(Hs, damp_percent, name=name, constant_last=const)
        dead = Hs.diagonal() == 0
    best: HeadPruneResult | None = None
    errors = {}
    base = 0.0
    n_rep = num_heads // num_kv_heads
    for kv_keep, q_keep in options:
        if not (1 <= kv_keep <= num_kv_heads and 1 <= q_keep <= n_rep):
            raise ValueError(f"{name}: invalid head structure ({kv_keep} KV heads x {q_keep} query heads)")
        Wc = Ws.clone()
        Hinv = Hinv0.clone() if Hinv0 is not None else None
        kept_kv, removed, err = _greedy_heads(
            Wc, Hinv, num_heads=num_heads, num_kv_heads=num_kv_heads, head_dim=head_dim, kv_keep=kv_keep,
            q_per_kv_keep=q_keep, mode=mode, compensate=compensate, dead=dead, col_extra=col_extra,
            kv_extra=kv_extra,
        )
        Wc, b, errs = aff.finish(W0, Wc, H)
        if H is not None:
            err, base = errs
        errors[(kv_keep, q_keep)] = err
        if best is None or err < best.obs_error:
            kept = [h for g in kept_kv for h in range(g * n_rep, (g + 1) * n_rep) if h not in removed]
            best = HeadPruneResult(kept, kept_kv, Wc, err, (kv_keep, q_keep), base_error=base, bias=b)
    assert best is not None
    best.option_errors = errors
    return best


# --------------------------------------------------------------------------------------- channels
def dgs_group_sizes(target: int, max_group: int = 1024, min_group: int = 64) -> list[int]:
    """Dynamic Group Size: the official recurrence, generalised.

    ``b₀ = ⌊(T − max/2)/2⌋``; step ``k`` removes ``min(T − P, max(b_k, min), max)`` channels and
    ``b_{k+1} = ⌊(b_k − max/2)/2⌋``. With the defaults (1024, 64) this is exactly the official code's
    schedule (e.g. ``T = 2202`` gives ``845, 166, 64 × 18, 39``): large groups first, then small.
    """
    sizes: list[int] = []
    half = max_group // 2
    b = (target - half) // 2
    done = 0
    while done < target:
        cnt = min(target - done, max(b, min_group), max_group)
        sizes.append(cnt)
        done += cnt
        b = (b - half) // 2
    return sizes


@dataclass
class ChannelPruneResult:
    """Outcome of :func:`prune_channels`: ``kept`` column indices (ascending) and the compensated ``W``."""

    kept: list[int]
    W: torch.Tensor
    obs_error: float
    groups: list[int]
    base_error: float = 0.0  # ||W0 X||² per token (0 without a Hessian)
    bias: torch.Tensor | None = None  # the compensated output bias (affine compensation only)

    @property
    def relative_error(self) -> float:
        return self.obs_error / max(self.base_error, 1e-30)


def prune_channels(
    W: torch.Tensor,
    H: torch.Tensor | None,
    *,
    num_remove: int,
    max_group: int = 1024,
    min_group: int = 64,
    damp_percent: float = 0.01,
    mode: str = "obs",
    compensate: bool = True,
    name: str = "down_proj",
    in_weights: Sequence[torch.Tensor] = (),
    mean: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    spill_dir: str | os.PathLike | None = None,
    _guard: bool = True,
) -> ChannelPruneResult:
    """Remove ``num_remove`` FFN channels (input columns of ``down_proj``) by Dynamic Group Size OBS.

    Each step scores every remaining column by the OBS saliency ``Σ_r W[r, j]² / Hinv_jj`` of the
    current (already compensated) weights, removes the ``cnt`` cheapest as one group with the exact
    group OBS update, and down-dates ``Hinv``; group sizes follow :func:`dgs_group_sizes`.
    ``mode="magnitude"`` ranks channels once by the L2 norm of all their weights (a baseline, no Hessian
    needed): the ``down_proj`` column plus the channel's rows of ``in_weights`` (gate/up or fc1).
    ``mean``, ``bias``: affine compensation, as in :func:`prune_heads` (the result carries the new ``bias``;
    never a higher calibration error than plain OBS).
    ``spill_dir``: the low-memory solve (OBS selection with compensation, no ``mean``): ``H`` is consumed, its
    storage becomes the inverse (:func:`~optimum_slimgpt.solvers.hessian.damped_inverse` ``overwrite=True``, with
    its values spilled to a temporary file there for a retry), so one ``d x d`` matrix is held instead of two; the
    weights are bit-identical to the default solve, and the error comes from the OBS identity (see
    :func:`_obs_identity_error`) instead of from ``H``, equal up to rounding.
    """
    if _guard and mean is not None and compensate and H is not None and num_remove:
        kw = dict(num_remove=num_remove, max_group=max_group, min_group=min_group, damp_percent=damp_percent,
                  mode=mode, compensate=compensate, name=name, in_weights=in_weights)
        res = prune_channels(W, H, mean=mean, bias=bias, _guard=False, **kw)
        plain = prune_channels(W, H, **kw)
        W0 = W.detach().to(torch.promote_types(W.dtype, torch.float32))
        aff = _Affine(W0, H, mean, bias, compensate, name)
        for err, base, Wn, bn in _guard_affine(aff, W0, plain.W, plain.kept, damp_percent, name):
            if err < res.obs_error:
                res = ChannelPruneResult(plain.kept, Wn, err, plain.groups, base_error=base, bias=bn)
        return res
    cols = W.shape[1]
    if not 0 <= num_remove < cols:
        raise ValueError(f"{name}: cannot remove {num_remove} of {cols} channels")
    W0 = W.detach()  # the original, in its own dtype (no float32 copy on the plain path: only read for the error)
    work_dtype = torch.promote_types(W.dtype, torch.float32)  # float32 (float64 stays float64: tests)
    if mean is not None:
        W0 = W0.to(work_dtype)
    aff = _Affine(W0, H, mean, bias, compensate, name)
    Ws, Hs, const = aff.inputs(W0, H)  # what the solver works on (augmented with the constant input or not)
    Wc = Ws.to(work_dtype, copy=True)
    n = Ws.shape[1]  # cols, or cols + 1 with the constant input (never removed)
    removed = torch.zeros(n, dtype=torch.bool, device=W.device)
    groups = dgs_group_sizes(num_remove, max_group, min_group) if num_remove else []
    if mode == "magnitude":
        score = (Wc[:, :cols] * Wc[:, :cols]).sum(0)
        extra = _row_sq(in_weights, cols, Wc.device, name)
        if extra is not None:
            score = score + extra
        order = torch.argsort(score, stable=True)
        S = order[:num_remove]
        removed[S] = True
        Wc[:, S] = 0
        if compensate and H is not None and num_remove:
            Wc = Ws.to(work_dtype, copy=True)
            Hinv, _ = damped_inverse(Hs, damp_percent, name=name, constant_last=const)
            group_obs_remove(Wc, Hinv, S, compensate=True)
    else:
        if H is None:
            raise ValueError(f"{name}: mode {mode!r} needs a Hessian")
        if num_remove:
            lean = spill_dir is not None and compensate and not aff.on
            dead = Hs.diagonal() == 0
            if lean:  # H's storage becomes Hinv: what the error needs from H is taken first
                base = quadratic_form(W0, Hs) / 2
            Hinv, damp = damped_inverse(Hs, damp_percent, name=name, constant_last=const, overwrite=lean,
                                        spill_dir=spill_dir)
            if lean:
                H = Hs = None  # overwritten
            group_errors = 0.0
            for cnt in groups:
                score = (Wc * Wc).sum(0) / Hinv.diagonal().clamp_min(1e-30)
                score = torch.where(dead, torch.zeros_like(score), score)
                score[removed] = float("inf")
                if const:
                    score[cols] = float("inf")  # the constant input stays
                S = torch.argsort(score, stable=True)[:cnt]
                removed[S] = True
                group_errors += group_obs_remove(Wc, Hinv, S, compensate=compensate)
            if lean:
                del Hinv
                err = _obs_identity_error(W0, Wc, group_errors, damp, dead)
                kept = torch.nonzero(~removed[:cols]).flatten().tolist()
                return ChannelPruneResult(kept, Wc, err, groups, base_error=base)
    Wc, b, (err, base) = aff.finish(W0, Wc, H)
    kept = torch.nonzero(~removed[:cols]).flatten().tolist()
    return ChannelPruneResult(kept, Wc, err, groups, base_error=base, bias=b)
