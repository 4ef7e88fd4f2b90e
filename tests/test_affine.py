"""Affine OBS compensation: the OBS update on inputs augmented with a constant 1 (a bias that is never pruned)."""

from __future__ import annotations

import pytest
import torch

from optimum_slimgpt.solvers import prune_channels, prune_heads
from optimum_slimgpt.solvers.hessian import affine_hessian, damped_inverse
from optimum_slimgpt.solvers.obs import affine_least_squares, group_obs_remove
from tolerances import gamma, matmul_bound, solve_tol


def _problem(rows=24, cols=40, tokens=600, seed=0, shift=1.0, dtype=torch.float64):
    """Correlated inputs with a non-zero mean (as real activations: the mean is what the bias can absorb)."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.eye(cols, dtype=dtype) + 0.3 * torch.randn(cols, cols, generator=g, dtype=dtype)
    X = torch.randn(tokens, cols, generator=g, dtype=dtype) @ mix + shift * torch.randn(cols, generator=g, dtype=dtype)
    W = torch.randn(rows, cols, generator=g, dtype=dtype)
    b = torch.randn(rows, generator=g, dtype=dtype)
    return W, b, X, 2 * X.T @ X / tokens, X.mean(0)


def _lstsq(W0, b0, X, kept):
    """Direct least squares on the tokens: [W_K | b] = argmin ||X W0ᵀ + b0 − [X_K 1] [W_K | b]ᵀ||²."""
    A = torch.cat([X[:, kept], torch.ones(len(X), 1, dtype=X.dtype)], 1)
    sol = torch.linalg.lstsq(A, X @ W0.T + b0).solution.T
    W = torch.zeros_like(W0)
    W[:, kept] = sol[:, :-1]
    return W, sol[:, -1]


def _close(got, ref, tol):
    torch.testing.assert_close(got, ref, rtol=0, atol=tol)
    return True


def _err(W0, b0, W, b, X):
    return float(((X @ (W0 - W).T + (b0 - b)) ** 2).sum())


def test_affine_hessian_is_the_moment_matrix_of_x_and_one():
    _, _, X, H, mu = _problem()
    Xa = torch.cat([X, torch.ones(len(X), 1, dtype=X.dtype)], 1)
    # both sides are float64 sums over the tokens: each within γ_n of the moments of |x| and 1 (tests/tolerances.py)
    bound = 2 * 2 * (matmul_bound(Xa.T, Xa, torch.float64) + gamma(2, torch.float64) * Xa.abs().T @ Xa.abs()) / len(X)
    assert ((affine_hessian(H, mu) - 2 * Xa.T @ Xa / len(X)).abs() <= bound).all()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_affine_group_update_equals_least_squares_with_bias(seed):
    """One group OBS step on the augmented [W | b], undamped, in float64 = the closed-form LS solution with a bias."""
    W0, b0, X, H, mu = _problem(seed=seed)
    Ha = affine_hessian(H, mu)
    Hinv, damp = damped_inverse(Ha, 0.0, constant_last=True)
    assert damp == 0 and Hinv.dtype == torch.float64
    S = torch.tensor([3, 7, 8, 20, 31, 39])
    Wa = torch.cat([W0, b0[:, None]], 1)
    group_obs_remove(Wa, Hinv, S)
    kept = torch.tensor([j for j in range(40) if j not in S.tolist()])
    W_ref, b_ref = _lstsq(W0, b0, X, kept)
    tol = solve_tol(Ha, torch.cat([W_ref.flatten(), b_ref]).abs().max())  # float64 solves: n·κ·u64·scale
    _close(Wa[:, :40], W_ref, tol) and _close(Wa[:, 40], b_ref, tol)
    # the moment-only reference agrees with the token-level one
    W_m, b_m = affine_least_squares(W0, b0, H, mu, kept)
    _close(W_m, W_ref, tol) and _close(b_m, b_ref, tol)


def test_solvers_end_to_end_equal_least_squares_with_bias():
    """prune_channels (Dynamic Group Size: several sequential group removals) and prune_heads (greedy, GQA) in
    float64 without damping return the LS-optimal weights and bias on the columns they keep; with damping, the
    ridge solution with the same λ."""
    W0, b0, X, H, mu = _problem(rows=16, cols=48, tokens=800, seed=3)
    res = prune_channels(W0, H, num_remove=30, max_group=16, min_group=4, damp_percent=0.0, mean=mu, bias=b0)
    assert len(res.groups) > 1 and res.W.dtype == torch.float64
    W_ref, b_ref = _lstsq(W0, b0, X, torch.tensor(res.kept))
    tol = solve_tol(affine_hessian(H, mu), torch.cat([W_ref.flatten(), b_ref]).abs().max())  # n·κ·u64·scale
    _close(res.W, W_ref, tol) and _close(res.bias, b_ref, tol)

    res = prune_heads(W0, H, num_heads=8, num_kv_heads=4, head_dim=6, options=[(3, 1)], damp_percent=0.0,
                      mean=mu, bias=b0)
    cols = torch.tensor([h * 6 + j for h in res.kept_heads for j in range(6)])
    W_ref, b_ref = _lstsq(W0, b0, X, cols)
    _close(res.W, W_ref, tol) and _close(res.bias, b_ref, tol)

    res = prune_channels(W0, H, num_remove=30, damp_percent=0.05, mean=mu, bias=b0)
    lam = 0.05 * float(H.diagonal().mean())
    W_ref, b_ref = affine_least_squares(W0, b0, H, mu, torch.tensor(res.kept), damp=lam)
    _close(res.W, W_ref, tol) and _close(res.bias, b_ref, tol)  # damping only lowers the conditioning


def test_no_mean_keeps_the_plain_path_bit_identical():
    W0, _, _, H, _ = _problem(dtype=torch.float32)
    a = prune_channels(W0, H, num_remove=17)
    b = prune_channels(W0, H, num_remove=17, mean=None, bias=None)
    assert a.bias is None and torch.equal(a.W, b.W) and a.kept == b.kept


@pytest.mark.parametrize("seed", range(3))
def test_affine_error_never_above_plain_on_random_problems(seed):
    """Reconstruction error of the affine map (selection and update on the augmented problem) <= plain OBS, for
    channels and for heads, at several ratios; and for the *same* kept columns it is never above either."""
    W0, _, X, H, mu = _problem(rows=20, cols=48, tokens=500, seed=seed, shift=0.2 * (seed + 1))
    zero = torch.zeros(20, dtype=W0.dtype)
    # float64: the token errors are sums of 500·20 squares (γ of their size) and the solutions are within
    # solve_tol (relative), which moves an error by at most twice that (tests/tolerances.py)
    slack = 2 * gamma(500 * 20 + 50, torch.float64) + 2 * solve_tol(affine_hessian(H, mu), 1.0)
    for remove in (8, 24, 40):
        plain = prune_channels(W0, H, num_remove=remove, max_group=16, min_group=4)
        aff = prune_channels(W0, H, num_remove=remove, max_group=16, min_group=4, mean=mu)
        e_plain, e_aff = _err(W0, zero, plain.W, zero, X), _err(W0, zero, aff.W, aff.bias, X)
        assert e_aff <= e_plain * (1 + slack), (remove, e_aff, e_plain)
        W_same, b_same = affine_least_squares(W0, None, H, mu, torch.tensor(plain.kept))
        assert _err(W0, zero, W_same, b_same, X) <= e_plain * (1 + slack)
    for opt in ([(4, 1)], [(2, 2)], [(1, 2)]):
        kw = dict(num_heads=8, num_kv_heads=4, head_dim=6, options=opt)
        plain = prune_heads(W0, H, **kw)
        aff = prune_heads(W0, H, mean=mu, **kw)
        e_plain, e_aff = _err(W0, zero, plain.W, zero, X), _err(W0, zero, aff.W, aff.bias, X)
        assert e_aff <= e_plain * (1 + slack), (opt, e_aff, e_plain)
        # the solver's own error is the error of the affine map on the calibration inputs (per token)
        assert aff.obs_error == pytest.approx(e_aff / len(X), rel=slack)


def test_mean_shift_only_is_flap_compensation():
    """compensate=False with a mean: the weights are only cut, the bias absorbs the removed mean W_S μ_S."""
    W0, b0, X, H, mu = _problem(seed=4)
    res = prune_channels(W0, H, num_remove=15, compensate=False, mean=mu, bias=b0)
    S = [j for j in range(40) if j not in res.kept]
    # the same float64 product, summed in another order at most: γ_|S| of |W_S| |μ_S| (tests/tolerances.py)
    bound = 2 * gamma(len(S) + 1, torch.float64) * (b0.abs() + W0[:, S].abs() @ mu[S].abs())
    assert ((res.bias - (b0 + W0[:, S] @ mu[S])).abs() <= bound).all()
    assert torch.equal(res.W[:, res.kept], W0[:, res.kept])
    plain = prune_channels(W0, H, num_remove=15, compensate=False, bias=b0)
    assert _err(W0, b0, res.W, res.bias, X) < _err(W0, b0, plain.W, b0, X)


def test_affine_error_never_above_plain_on_stories260k_activations(stories, stories_stream):
    """On inputs of o_proj / down_proj captured from blocks of stories260K (real activations; solved in float64)."""
    from test_pruner import _calib

    captured: dict = {}
    hooks = []
    for i, layer in enumerate(stories.model.layers):
        hooks.append(layer.self_attn.o_proj.register_forward_pre_hook(
            lambda m, a, i=i: captured.setdefault(("o", i), []).append(a[0])))
        hooks.append(layer.mlp.down_proj.register_forward_pre_hook(
            lambda m, a, i=i: captured.setdefault(("d", i), []).append(a[0])))
    with torch.no_grad():
        stories(_calib(stories_stream, n=8))
    for h in hooks:
        h.remove()
    gains = []
    for i, layer in enumerate(stories.model.layers):
        if i % 2:
            continue  # blocks 0, 2, 4 (time)
        for part, W in (("o", layer.self_attn.o_proj.weight), ("d", layer.mlp.down_proj.weight)):
            X = torch.cat(captured[(part, i)]).reshape(-1, W.shape[1])
            H, mu = 2 * X.T @ X / len(X), X.mean(0)
            W = W.detach()
            X64, W64, zero = X.double(), W.double(), torch.zeros(W.shape[0], dtype=torch.float64)
            # solved in float64 (the activations' moments are ill-conditioned: κ up to ~1e6, so a float32 solve's
            # rounding bound would be vacuous); each solution is within solve_tol, moving its error by at most 2x
            H, mu, W = H.double(), mu.double(), W.double()
            slack = 2 * solve_tol(affine_hessian(H, mu), 1.0)
            for amount in ((2, 1),) if part == "o" else (40, 100):
                if part == "o":
                    kw = dict(num_heads=8, num_kv_heads=4, head_dim=8, options=[amount])
                    plain, aff = prune_heads(W, H, **kw), prune_heads(W, H, mean=mu, **kw)
                else:
                    plain, aff = prune_channels(W, H, num_remove=amount), prune_channels(W, H, num_remove=amount, mean=mu)
                e_plain = _err(W64, zero, plain.W.double(), zero, X64)
                e_aff = _err(W64, zero, aff.W.double(), aff.bias.double(), X64)
                assert e_aff <= e_plain * (1 + slack), (part, i, amount, e_aff, e_plain, slack)
                gains.append(e_aff / e_plain)
    assert min(gains) < 0.97  # the bias does real work on some layer (not a vacuous inequality)
