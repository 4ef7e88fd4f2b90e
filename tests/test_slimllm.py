"""SlimLLM: moment-based scores and regression vs direct token computations, constructed cases with a
known answer, the GQA constraint, the layer-importance schedule, and stories260K end to end."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from optimum_slimgpt import PruningConfig, SlimGPTPruner, SlimLLMConfig, get_adapter
from tolerances import gamma, solve_tol
from optimum_slimgpt.solvers import HessianAccumulator
from optimum_slimgpt.solvers.schedule import default_importance_layers, layer_importance_shape, solve_schedule
from optimum_slimgpt.solvers.slimllm import (
    channel_scores,
    head_pair_moments,
    head_scores,
    moments_from_stats,
    moments_from_tokens,
    output_error,
    regression_recovery,
    select_channels,
    select_heads,
    set_correlations,
    set_objective,
)

D64 = torch.float64


def _pearson(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Column-wise Pearson correlation over tokens (rows), directly."""
    a = a - a.mean(0)
    b = b - b.mean(0)
    return (a * b).sum(0) / (a.norm(dim=0) * b.norm(dim=0))


def _tokens(n, d, seed=0, mean=0.5):
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(d, d, generator=g, dtype=D64) / math.sqrt(d)
    return torch.randn(n, d, generator=g, dtype=D64) @ mix + mean * torch.randn(d, generator=g, dtype=D64)


def _stats(X: torch.Tensor) -> HessianAccumulator:
    acc = HessianAccumulator(X.shape[1])
    acc.add(X.float())
    return acc


# ----------------------------------------------------------------------------- moments vs tokens
def test_accumulator_moments_match_tokens():
    # inputs on a grid of 1/4 (|x| < 16): every product is a multiple of 1/16 below 256 and the float32 sums of
    # 3,000 of them stay below 2^24 units, so the accumulator's float32 sums are exact; what is left is float64
    # rounding, bounded by γ_(n+4)(float64) times the magnitudes involved (tests/tolerances.py)
    X = (_tokens(3000, 24, mean=2.0) * 4).round().clamp(-63, 63) / 4
    a, b = moments_from_stats(_stats(X)), moments_from_tokens(X.float())
    n, Xa = X.shape[0], X.abs()
    g = gamma(n + 4, torch.float64)
    assert ((a.mean - b.mean).abs() <= 2 * g * Xa.mean(0)).all()
    mags = Xa.T @ Xa / n + (X - X.mean(0)).abs().T @ (X - X.mean(0)).abs() / n + torch.outer(Xa.mean(0), Xa.mean(0))
    assert ((a.cov - b.cov).abs() <= 4 * g * mags).all()


def test_head_pearson_from_moments_equals_token_computation():
    H, d, out, n = 6, 4, 10, 2000
    Z = _tokens(n, H * d, seed=1)
    W = torch.randn(out, H * d, generator=torch.Generator().manual_seed(2), dtype=D64)
    G = head_pair_moments(W, moments_from_tokens(Z).cov, H, d)
    C = torch.stack([Z[:, h * d : (h + 1) * d] @ W[:, h * d : (h + 1) * d].T for h in range(H)])  # H x n x out
    Y = C.sum(0)
    masks = torch.tensor([[1, 1, 0, 1, 0, 1], [0, 1, 1, 1, 1, 1], [1, 0, 0, 0, 0, 0]], dtype=D64)
    direct = torch.stack([_pearson((C * m[:, None, None]).sum(0), Y) for m in masks])
    assert torch.allclose(set_correlations(G, masks), direct, atol=1e-5)
    assert torch.allclose(set_objective(G, masks), direct.abs().sum(1), atol=1e-5)
    # holistic head score: Σ_i |corr(Y − C_h, Y)|
    scores = torch.stack([_pearson(Y - C[h], Y).abs().sum() for h in range(H)])
    assert torch.allclose(head_scores(G), scores, atol=1e-5)


@pytest.mark.parametrize("with_bias", [False, True])
def test_regression_from_moments_equals_least_squares(with_bias):
    out, D, n = 7, 12, 1500
    Z = _tokens(n, D, seed=3, mean=1.0)
    W = torch.randn(out, D, generator=torch.Generator().manual_seed(4), dtype=D64)
    b = torch.randn(out, dtype=D64) if with_bias else None
    keep = torch.tensor([1, 0, 1, 1, 0, 1, 1, 0, 1, 1, 0, 1], dtype=torch.bool)
    rec = regression_recovery(W, keep, moments_from_tokens(Z), b)
    Y = Z @ W.T + (0 if b is None else b)
    Yh = Z[:, keep] @ W[:, keep].T + (0 if b is None else b)
    for i in range(out):  # polyfit(Ŷ_i, Y_i, 1) directly
        A = torch.stack([Yh[:, i], torch.ones(n, dtype=D64)], 1)
        sol = torch.linalg.lstsq(A, Y[:, i : i + 1]).solution.flatten()
        fit = Z @ rec.W.double()[i] + rec.bias.double()[i]
        assert torch.allclose(fit, A @ sol, atol=1e-4 * float(Y[:, i].abs().max()))
        assert rec.scale[i] == pytest.approx(float(sol[0]), rel=1e-6, abs=1e-9)
    assert bool((rec.W[:, ~keep] == 0).all())
    # the moment-based error equals the token error
    err, base = output_error(W.float(), None if b is None else b.float(), rec.W, rec.bias, moments_from_tokens(Z))
    fit = Z @ rec.W.double().T + rec.bias.double()
    assert err == pytest.approx(float(((Y - fit) ** 2).sum(1).mean()), rel=1e-4)
    assert base == pytest.approx(float((Y**2).sum(1).mean()), rel=1e-6)


def test_regression_recovers_exact_scaled_copy():
    """Removed columns = kept columns + a constant, same weights: Y = 2·Ŷ + 3 exactly."""
    # Dyadic data (inputs on a 1/4 grid, weights and shift on a 1/8 grid, all small): the accumulator's float32
    # sums are exact, so the moments are exact and what is left is the float64 regression's own rounding,
    # bounded by solve_tol (n·κ·u64 of the 2x2 normal equations of each output) times the values' scale
    n, k, out = 500, 4, 3
    Zk = (_tokens(n, k, seed=5) * 4).round().clamp(-31, 31) / 4
    Wk = (torch.randn(out, k, generator=torch.Generator().manual_seed(6), dtype=D64) * 8).round() / 8
    c = torch.tensor([0.5, -0.25, 1.0, 0.125], dtype=D64)
    shift = Wk @ c  # removed columns = kept columns + c, same weights: Y = 2·Ŷ + Wk c exactly
    Z = torch.cat([Zk, Zk + c], 1)
    W = torch.cat([Wk, Wk], 1)
    keep = torch.tensor([True] * k + [False] * k)
    mom = moments_from_stats(_stats(Z))
    rec = regression_recovery(W.float(), keep, mom)
    Yh = Zk @ Wk.T
    tol = max(solve_tol(torch.stack([torch.stack([Yh[:, i].var(), Yh[:, i].mean()]),
                                     torch.stack([Yh[:, i].mean(), torch.ones((), dtype=D64)])]), 1.0)
              for i in range(out)) * float(Yh.abs().max() + shift.abs().max() + 2)
    torch.testing.assert_close(rec.scale, torch.full((out,), 2.0, dtype=D64), rtol=0, atol=tol)
    torch.testing.assert_close(rec.shift, shift, rtol=0, atol=tol)
    err, base = output_error(W.float(), None, rec.W, rec.bias, mom)
    # exact fit: what is left is the rounding of the moment-based error formula (a quadratic form over the 2k
    # inputs and the constant, γ of its terms) plus the fit's own error, which enters quadratically
    assert err / base <= gamma(4 * (2 * k + 1), torch.float64) + 2 * tol ** 2 / float(Yh.var(0).min())


def test_regression_guard_constant_pruned_output():
    Z = _tokens(300, 4, seed=7)
    Z[:, :2] = 1.5  # the kept inputs are constant: the slope is undetermined
    W = torch.randn(3, 4, dtype=D64)
    rec = regression_recovery(W, torch.tensor([True, True, False, False]), moments_from_tokens(Z))
    assert bool(rec.degenerate.all())
    assert torch.allclose(rec.scale, torch.ones(3, dtype=D64))
    assert torch.allclose(Z.mean(0) @ rec.W.double().T + rec.bias.double(), (Z @ W.T).mean(0), atol=1e-5)  # mean matched


# ----------------------------------------------------------------------------- heads
@pytest.mark.parametrize("how", ["weights", "inputs"])
def test_silent_head_is_pruned_first(how):
    H, d, out = 6, 4, 16
    Z = _tokens(1000, H * d, seed=8)
    W = torch.randn(out, H * d, generator=torch.Generator().manual_seed(9), dtype=D64)
    dead = 3
    if how == "weights":
        W[:, dead * d : (dead + 1) * d] = 0
    else:
        Z[:, dead * d : (dead + 1) * d] = 0
    G = head_pair_moments(W, moments_from_stats(_stats(Z)).cov, H, d)
    assert int(torch.argmax(head_scores(G))) == dead
    sel = select_heads(G, num_heads=H, num_kv_heads=H, options=[(H - 1, 1)])
    assert dead not in sel.kept_heads and dead not in sel.kept_kv_heads and len(sel.kept_heads) == H - 1
    # under GQA (3 KV heads of 2 query heads): the dead head goes when each group drops one head
    sel = select_heads(G, num_heads=H, num_kv_heads=3, options=[(3, 1)])
    assert dead not in sel.kept_heads


def test_silent_kv_group_is_pruned_first():
    H, KV, d, out = 8, 4, 4, 16
    Z = _tokens(1000, H * d, seed=10)
    W = torch.randn(out, H * d, generator=torch.Generator().manual_seed(11), dtype=D64)
    W[:, 4 * d : 6 * d] = 0  # both query heads of KV head 2
    G = head_pair_moments(W, moments_from_tokens(Z).cov, H, d)
    sel = select_heads(G, num_heads=H, num_kv_heads=KV, options=[(3, 2)])
    assert sel.kept_kv_heads == [0, 1, 3] and sel.kept_heads == [0, 1, 2, 3, 6, 7]


@pytest.mark.parametrize("swap", [False, True])
def test_gqa_constraint_holds(swap):
    H, KV, d, out = 12, 4, 3, 20
    n_rep = H // KV
    Z = _tokens(800, H * d, seed=12)
    W = torch.randn(out, H * d, generator=torch.Generator().manual_seed(13), dtype=D64)
    G = head_pair_moments(W, moments_from_tokens(Z).cov, H, d)
    for options in ([(3, 2)], [(2, 3), (3, 2)], [(4, 1)], [(1, 3)], [(2, 1)]):
        sel = select_heads(G, num_heads=H, num_kv_heads=KV, options=options, swap=swap)
        g, m = sel.option
        assert sel.option in options and len(sel.kept_kv_heads) == g and len(sel.kept_heads) == g * m
        assert sel.kept_kv_heads == sorted(sel.kept_kv_heads)
        # grouped by kept KV head (ascending), every kept KV head with exactly m of its own query heads
        groups = [h // n_rep for h in sel.kept_heads]
        assert groups == sorted(groups) and set(groups) == set(sel.kept_kv_heads)
        assert all(groups.count(kv) == m for kv in sel.kept_kv_heads)
        assert len(set(sel.kept_heads)) == len(sel.kept_heads)


def test_swap_search_never_lowers_the_objective():
    H, d, out = 10, 3, 12
    for seed in range(5):
        Z = _tokens(600, H * d, seed=20 + seed)
        W = torch.randn(out, H * d, generator=torch.Generator().manual_seed(40 + seed), dtype=D64)
        G = head_pair_moments(W, moments_from_tokens(Z).cov, H, d)
        a = select_heads(G, num_heads=H, num_kv_heads=H, options=[(6, 1)], swap=False)
        b = select_heads(G, num_heads=H, num_kv_heads=H, options=[(6, 1)], swap=True)
        assert b.objective >= a.objective - 1e-12


# ----------------------------------------------------------------------------- FFN channels
def _mlp_tokens(n=1500, h=10, m=24, dead=None, seed=14):
    g = torch.Generator().manual_seed(seed)
    X = _tokens(n, h, seed=seed)
    Wg, Wu = torch.randn(m, h, generator=g, dtype=D64), torch.randn(m, h, generator=g, dtype=D64)
    Wd = torch.randn(h, m, generator=g, dtype=D64)
    if dead is not None:  # never activates: zero gate and up rows
        Wg[dead], Wu[dead] = 0, 0
    A = torch.nn.functional.silu(X @ Wg.T) * (X @ Wu.T)
    return X, A, Wg, Wu, Wd


def test_channel_scores_from_moments_equal_token_computation():
    X, A, Wg, Wu, Wd = _mlp_tokens()
    score = channel_scores(Wd, moments_from_tokens(A), [Wg, Wu], (X * X).sum(0))
    Y = A @ Wd.T
    Yc = Y - Y.mean(0)
    lam, V = torch.linalg.eigh(Yc.T @ Yc / (Y.shape[0] - 1))  # scale-free: the eigen-weights are ratios
    w = torch.sigmoid(lam.abs() / lam.abs().mean())
    xn = X.norm(dim=0)
    i_gate = (Wg * xn).norm(dim=1)
    i_up = (Wu * xn).norm(dim=1)
    i_down = A.norm(dim=0) * ((Wd.T @ V).abs() * w).norm(dim=1)
    assert torch.allclose(score, i_gate + i_up + i_down, rtol=1e-5)
    # fc1-only families: one channel-in weight
    score1 = channel_scores(Wd, moments_from_tokens(A), [Wg], (X * X).sum(0))
    assert torch.allclose(score1, i_gate + i_down, rtol=1e-5)


def test_dead_channel_is_pruned_first_and_keep_lowest_keeps_it():
    X, A, Wg, Wu, Wd = _mlp_tokens(dead=5)
    acc = _stats(A)
    score = channel_scores(Wd.float(), moments_from_stats(acc), [Wg.float(), Wu.float()], (X * X).sum(0).float())
    assert int(torch.argmin(score)) == 5 and float(score[5]) == 0.0  # zero rows: every term is an exact zero
    assert 5 not in select_channels(score, 1)
    kept = select_channels(score, 3, keep_lowest=1 / 24)  # the lowest channel is always kept
    assert 5 in kept and len(kept) == 21
    assert select_channels(score, 23, keep_lowest=0.5) == [int(torch.argmin(score))]  # skip shrinks to fit


# ----------------------------------------------------------------------------- layer-importance shape
def test_layer_importance_shape_and_schedule():
    scores = [0.5, 0.9, 0.8, 0.95, 0.7]
    shape = layer_importance_shape(scores, 3, alpha=10.0)
    assert shape[0] == 0 and shape[4] == 0 and shape[3] == 1.0
    assert shape[1] == pytest.approx(math.exp(-0.5)) and shape[2] == pytest.approx(math.exp(-1.5))
    assert default_importance_layers(32, 0.2) == 26 and default_importance_layers(32, 0.5) == 30
    with pytest.raises(ValueError, match="importance_layers"):
        layer_importance_shape(scores, 6)
    from optimum_slimgpt.solvers.schedule import LayerGeometry

    geoms = [LayerGeometry(8, 4, 8, 172, 64 * 8 * 2, 64 * 8 * 2, 64 * 3)] * 5
    plan = solve_schedule(geoms, 0.3, "layer_importance", shape=shape, max_layer_ratio=0.9)
    assert [lp.ratio for lp in plan.layers][0] == 0 and plan.layers[4].ratio == 0
    assert abs(plan.achieved_ratio - 0.3) < 0.01
    with pytest.raises(ValueError, match="layer_importance"):
        solve_schedule(geoms, 0.3, "layer_importance")


def test_config_fields():
    c = SlimLLMConfig(schedule="layer_importance", importance_layers=4, importance_alpha=7, keep_lowest=0.01,
                      recovery=False)
    back = PruningConfig.from_dict(c.to_dict())
    assert type(back) is SlimLLMConfig and back == c and back.importance_layers == 4 and back.recovery is False
    for bad in (dict(importance_layers=0), dict(importance_alpha=-1.0), dict(keep_lowest=1.0),
                dict(importance_alpha=float("nan"))):
        with pytest.raises(ValueError, match=next(iter(bad))):
            SlimLLMConfig(**bad)
    with pytest.raises(TypeError, match="recovery"):
        SlimLLMConfig(recovery="yes")
    with pytest.raises(TypeError):  # SlimGPT's knobs are not SlimLLM's: no silent ignoring
        SlimLLMConfig(compensate=False)


# ----------------------------------------------------------------------------- stories260K end to end
def _calib(stream, n=16, seqlen=128, offset=20_000):
    return torch.stack([stream[offset + i * seqlen : offset + (i + 1) * seqlen] for i in range(n)])


def _ppl(model, stream, n=8, seqlen=256):
    x = stream[: n * seqlen].view(n, seqlen)
    with torch.no_grad():
        logits = model(x).logits
    nll = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1))
    return math.exp(float(nll))


def _cfg(method="slimllm", **kw):
    base = dict(dataset=None, num_samples=16, seqlen=128, batch_size=8, pruning_ratio=0.3)
    base.update(kw)
    return PruningConfig.for_method(method, **base)


def test_stories_slimllm_end_to_end(stories, stories_stream):
    calib = _calib(stories_stream)
    dense = _ppl(stories, stories_stream)
    no_rec = copy.deepcopy(stories)
    pruner = SlimGPTPruner(_cfg())
    model = pruner.prune_model(stories, calibration=calib)
    assert abs(pruner.summary.achieved_ratio - 0.3) < 0.03
    adapter = get_adapter(model)
    for block, lp, rep in zip(adapter.get_blocks(model), pruner.plan.layers, pruner.summary.layers):
        lay = adapter.head_layout(block, model.config)
        kv, m = rep.head_option or (lp.kv_heads, lp.heads // lp.kv_heads)  # tied structures: the method chooses
        assert (kv, m) in lp.head_options
        assert (lay.num_heads, lay.num_kv_heads, adapter.num_channels(block)) == (kv * m, kv, lp.channels)
        assert adapter.attn_out_proj(block).bias is not None and adapter.mlp_out_proj(block).bias is not None
    pruned = _ppl(model, stories_stream)
    assert math.isfinite(pruned) and dense < pruned < 10 * dense, (dense, pruned)
    # the regression recovery helps
    SlimGPTPruner(_cfg(recovery=False)).prune_model(no_rec, calibration=calib)
    assert pruned < _ppl(no_rec, stories_stream)
    assert all(adapter.mlp_out_proj(b).bias is None for b in adapter.get_blocks(no_rec))


@pytest.mark.parametrize("method", ["slimllm", "slimgpt"])
def test_stories_layer_importance_schedule(stories, stories_stream, method):
    pruner = SlimGPTPruner(_cfg(method=method, schedule="layer_importance"))
    with pytest.raises(ValueError, match="layer_importance"):
        pruner.plan_model(stories)
    dense = copy.deepcopy(stories)
    model = pruner.prune_model(stories, calibration=_calib(stories_stream))
    scores = pruner.layer_scores
    L = len(scores)
    K = default_importance_layers(L, 0.3)
    assert K < L
    least = sorted(range(L), key=lambda i: scores[i])[: L - K]
    adapter = get_adapter(model)
    for i, (block, lp) in enumerate(zip(adapter.get_blocks(model), pruner.plan.layers)):
        lay = adapter.head_layout(block, model.config)
        sizes = (lay.num_heads, lay.num_kv_heads, adapter.num_channels(block))
        if i in least:
            assert lp.ratio == 0 and sizes == (8, 4, 172)
            assert torch.equal(block.mlp.down_proj.weight, adapter.get_blocks(dense)[i].mlp.down_proj.weight)
        else:
            assert lp.ratio > 0 and sizes != (8, 4, 172)
    assert abs(pruner.summary.achieved_ratio - 0.3) < 0.01
    assert all(-1 <= s <= 1 for s in scores)
    assert math.isfinite(_ppl(model, stories_stream))
