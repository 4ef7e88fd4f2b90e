"""The OBS math: closed forms, down-dates, head/channel selection, damping, schedules."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from tolerances import gamma, matmul_bound, solve_tol, unit_roundoff

from optimum_slimgpt.solvers import (
    reconstruction_error,
    HessianAccumulator,
    LayerGeometry,
    NotPositiveDefiniteError,
    auto_channel_multiple,
    closed_form_group_obs,
    damped_inverse,
    dgs_group_sizes,
    group_obs_remove,
    plan_layer,
    prune_channels,
    prune_heads,
    schedule_shape,
    solve_schedule,
    unit_scores,
)


def _problem(rows=24, cols=40, tokens=600, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(tokens, cols, generator=g, dtype=dtype) @ (torch.eye(cols, dtype=dtype) + 0.3 * torch.randn(cols, cols, generator=g, dtype=dtype))
    H = 2 * X.T @ X / tokens
    W = torch.randn(rows, cols, generator=g, dtype=dtype)
    return W, H, X


@pytest.fixture(params=[1, 2, 4], ids=lambda n: f"{n}threads")
def threads(request):
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_group_update_equals_closed_form(seed, threads):
    """Compared in float64 (bound 1e-10); the float32 run is held to its conditioning: cond(H) · eps32 · 10
    (the bound the rounding of one solve gives, whatever the BLAS blocking of the thread count)."""
    S = torch.tensor([1, 5, 6, 7, 20, 33])
    W, H, _ = _problem(seed=seed)
    Hinv = torch.linalg.inv(H)
    expected = W + closed_form_group_obs(W, Hinv, S)
    for dtype, bound in ((torch.float64, 1e-10), (torch.float32, 10 * float(torch.linalg.cond(H)) * 2.0 ** -23)):
        Wc, Hc = W.to(dtype), Hinv.to(dtype)
        err = group_obs_remove(Wc, Hc, S)
        rel = float((Wc.double() - expected).norm() / expected.norm())
        assert rel < bound, (dtype, rel, bound)
        assert torch.all(Wc[:, S] == 0)
    # the reported error is the exact error E(S) = sum_rows w_S (Hinv_SS)^-1 w_S^T
    wS = W[:, S]
    exact = float(torch.einsum("ri,ij,rj->", wS, torch.linalg.inv(Hinv[S][:, S]), wS))
    Wc = W.clone()
    err = group_obs_remove(Wc, Hinv.clone(), S)
    assert err == pytest.approx(exact, rel=1e-10)
    # and equals the increase of the quadratic reconstruction error tr(ΔW H ΔW^T)
    D = W - Wc
    assert err == pytest.approx(float(((D @ H) * D).sum()), rel=1e-10)


def test_downdate_is_inverse_of_restricted_hessian():
    W, H, _ = _problem(cols=32)
    Hinv = torch.linalg.inv(H)
    removed: list[int] = []
    for S in ([3, 4], [10], [0, 1, 2, 30]):
        group_obs_remove(W, Hinv, torch.tensor(S))
        removed += S
        R = torch.tensor([i for i in range(32) if i not in removed])
        assert torch.allclose(Hinv[R][:, R], torch.linalg.inv(H[R][:, R]), rtol=1e-8, atol=1e-10)


def test_exact_head_score_is_true_error_and_picks_best_head():
    W, H, _ = _problem(rows=16, cols=8 * 6, seed=3)
    Hinv = torch.linalg.inv(H)
    units = torch.arange(48).view(8, 6)
    exact = unit_scores(W, Hinv, units, "obs")
    official = unit_scores(W, Hinv, units, "obs_official")
    true = []
    for u in units:
        Wc, Hc = W.clone(), Hinv.clone()
        true.append(group_obs_remove(Wc, Hc, u))
    true = torch.tensor(true, dtype=exact.dtype)
    assert torch.allclose(exact, true, rtol=1e-8)
    assert int(torch.argmin(exact)) == int(torch.argmin(true))
    assert not torch.allclose(official, true, rtol=1e-3)  # the official score is only an estimate


def _reference_heads(W, H, num_heads, num_kv, head_dim, kv_keep, q_keep, damp):
    """Straightforward reference: re-invert the damped, masked H at every step (as the official code)."""
    W = W.clone().double()
    H = H.clone().double()
    d = H.shape[0]
    H = H + damp * H.diagonal().mean() * torch.eye(d, dtype=H.dtype)
    removed_cols: list[int] = []
    n_rep = num_heads // num_kv

    def hinv():
        Hm = H.clone()
        if removed_cols:
            idx = torch.tensor(removed_cols)
            Hm[idx, :] = 0
            Hm[:, idx] = 0
            Hm[idx, idx] = 1
        return torch.linalg.inv(Hm)

    def remove(cols):
        Hi = hinv()
        S = torch.tensor(cols)
        W.add_(closed_form_group_obs(W, Hi, S))
        W[:, S] = 0
        removed_cols.extend(cols)

    def exact(cols):
        Hi = hinv()
        S = torch.tensor(cols)
        return float(torch.einsum("ri,ij,rj->", W[:, S], torch.linalg.inv(Hi[S][:, S]), W[:, S]))

    groups_removed, heads_removed = [], set()
    cols_of = lambda h: list(range(h * head_dim, (h + 1) * head_dim))  # noqa: E731
    for _ in range(num_kv - kv_keep):
        cands = [g for g in range(num_kv) if g not in groups_removed]
        g = min(cands, key=lambda g: exact(sum((cols_of(g * n_rep + j) for j in range(n_rep)), [])))
        groups_removed.append(g)
        heads_removed.update(g * n_rep + j for j in range(n_rep))
        remove(sum((cols_of(g * n_rep + j) for j in range(n_rep)), []))
    quota = {g: n_rep - q_keep for g in range(num_kv) if g not in groups_removed}
    for _ in range(sum(quota.values())):
        cands = [h for h in range(num_heads) if h not in heads_removed and quota.get(h // n_rep, 0) > 0]
        h = min(cands, key=lambda h: exact(cols_of(h)))
        heads_removed.add(h)
        quota[h // n_rep] -= 1
        remove(cols_of(h))
    return heads_removed, W


def _reference_channels(W, H, n_remove, damp, max_group, min_group):
    W = W.clone().double()
    H = H.clone().double()
    d = H.shape[0]
    H = H + damp * H.diagonal().mean() * torch.eye(d, dtype=H.dtype)
    removed = torch.zeros(d, dtype=torch.bool)
    for cnt in dgs_group_sizes(n_remove, max_group, min_group):
        Hm = H.clone()
        Hm[removed, :] = 0
        Hm[:, removed] = 0
        Hm[removed, removed] = 1
        Hi = torch.linalg.inv(Hm)
        score = (W * W).sum(0) / Hi.diagonal()
        score[removed] = float("inf")
        S = torch.argsort(score, stable=True)[:cnt]
        W.add_(closed_form_group_obs(W, Hi, S))
        W[:, S] = 0
        removed[S] = True
    return removed, W


@pytest.mark.parametrize("kv_keep,q_keep", [(4, 1), (3, 2), (2, 2), (1, 2)])
def test_head_solver_matches_reference(kv_keep, q_keep):
    W, H, _ = _problem(rows=20, cols=8 * 5, seed=7)
    res = prune_heads(W.float(), H.float(), num_heads=8, num_kv_heads=4, head_dim=5, options=[(kv_keep, q_keep)], damp_percent=0.01)
    ref_removed, ref_W = _reference_heads(W, H, 8, 4, 5, kv_keep, q_keep, 0.01)
    assert sorted(set(range(8)) - ref_removed) == sorted(res.kept_heads)
    # float32 solves against the float64 reference: within the solve's rounding bound n·κ(H_λ)·u32·|W|
    H_damped = H + 0.01 * H.diagonal().mean() * torch.eye(H.shape[0], dtype=H.dtype)
    torch.testing.assert_close(res.W.double(), ref_W, rtol=0, atol=solve_tol(H_damped, ref_W.abs().max(), torch.float32))
    # GQA structure: every kept KV head keeps the same number of query heads, all of its own group
    assert len(res.kept_kv_heads) == kv_keep and len(res.kept_heads) == kv_keep * q_keep
    assert [h // 2 for h in res.kept_heads] == sorted(h // 2 for h in res.kept_heads)
    assert {h // 2 for h in res.kept_heads} == set(res.kept_kv_heads)


def test_channel_solver_matches_reference():
    W, H, _ = _problem(rows=16, cols=300, tokens=1200, seed=11)
    res = prune_channels(W.float(), H.float(), num_remove=170, max_group=64, min_group=8, damp_percent=0.01)
    assert res.groups == dgs_group_sizes(170, 64, 8)
    ref_removed, ref_W = _reference_channels(W, H, 170, 0.01, 64, 8)
    assert res.kept == torch.nonzero(~ref_removed).flatten().tolist()
    H_damped = H + 0.01 * H.diagonal().mean() * torch.eye(H.shape[0], dtype=H.dtype)
    torch.testing.assert_close(res.W.double(), ref_W, rtol=0, atol=solve_tol(H_damped, ref_W.abs().max(), torch.float32))


def test_tied_structures_choose_lowest_error():
    W, H, _ = _problem(rows=20, cols=6 * 4, seed=5)
    # 6 heads / 3 KV: (2 KV x 2 q) and (3 KV x 1 q)... both keep params differently; force both as options
    res = prune_heads(W.float(), H.float(), num_heads=6, num_kv_heads=3, head_dim=4, options=[(2, 2), (3, 1)])
    assert set(res.option_errors) == {(2, 2), (3, 1)}
    assert res.obs_error == min(res.option_errors.values())
    assert res.option == min(res.option_errors, key=res.option_errors.get)


def test_magnitude_baseline_ranks_the_whole_structure():
    """The magnitude baseline ranks heads/channels by the L2 norm of all their weights, not the output
    projection alone: a head/channel with tiny o/down weights but large q or gate/up rows is kept."""
    g = torch.Generator().manual_seed(0)
    W = torch.randn(6, 4 * 2, generator=g)
    W[:, 0:2] *= 1e-3  # head 0: smallest o_proj columns
    q = torch.randn(4 * 2, 5, generator=g)
    q[0:2] *= 100.0  # ... but by far the largest q rows
    kw = dict(num_heads=4, num_kv_heads=4, head_dim=2, options=[(3, 1)], mode="magnitude", compensate=False)
    assert 0 not in prune_heads(W, None, **kw).kept_kv_heads
    res = prune_heads(W, None, q_weights=[q], **kw)
    assert 0 in res.kept_kv_heads
    o_only = (W * W).view(6, 4, 2).sum((0, 2))
    total = o_only + (q * q).sum(1).view(4, 2).sum(1)
    assert sorted(res.kept_kv_heads) == sorted(torch.argsort(total)[1:].tolist())
    # a KV group's score includes its k/v rows: make group 1 (heads 2, 3) the cheapest by o and q, then
    # give it huge k/v rows so group 0 (heads 0, 1) goes instead
    W2 = torch.randn(6, 4 * 2, generator=g)
    W2[:, 4:] *= 1e-3
    q2 = torch.ones(8, 5)
    kv = torch.ones(2 * 2, 5)
    kw2 = dict(num_heads=4, num_kv_heads=2, head_dim=2, options=[(1, 2)], mode="magnitude", compensate=False)
    assert prune_heads(W2, None, q_weights=[q2], kv_weights=[kv, kv], **kw2).kept_kv_heads == [0]
    kv[2:] *= 1e3
    assert prune_heads(W2, None, q_weights=[q2], kv_weights=[kv, kv], **kw2).kept_kv_heads == [1]
    # channels: the down column plus the gate/up rows
    D = torch.randn(6, 10, generator=g)
    D[:, 3] *= 1e-3
    gate = torch.randn(10, 5, generator=g)
    gate[3] *= 100.0
    assert 3 not in prune_channels(D, None, num_remove=2, mode="magnitude", compensate=False).kept
    assert 3 in prune_channels(D, None, num_remove=2, mode="magnitude", compensate=False, in_weights=[gate]).kept
    with pytest.raises(ValueError, match="rows"):
        prune_channels(D, None, num_remove=2, mode="magnitude", in_weights=[gate[:5]])


def test_dgs_matches_official_recurrence():
    # worked examples of the official schedule for LLaMA-7B (docs/algorithms.md)
    assert dgs_group_sizes(688) == [88] + [64] * 9 + [24]
    assert dgs_group_sizes(2202) == [845, 166] + [64] * 18 + [39]
    assert dgs_group_sizes(2752) == [1024, 304] + [64] * 22 + [16]
    assert dgs_group_sizes(5504)[:3] == [1024, 992, 240] and sum(dgs_group_sizes(5504)) == 5504
    assert dgs_group_sizes(0) == []


def test_hessian_accumulator_normalisation():
    x = torch.randn(3, 7, 5, generator=torch.Generator().manual_seed(0))
    acc = HessianAccumulator(5)
    acc.add(x[:2])
    acc.add(x[2:])
    flat = x.reshape(-1, 5).double()
    # float32 sums of 21 products in any order (two batches): within γ_21 of |x|ᵀ|x| (tests/tolerances.py)
    bound = 2 * (matmul_bound(flat.T, flat) + unit_roundoff() * flat.abs().T @ flat.abs()) / 21
    assert ((acc.hessian().double() - 2 * flat.T @ flat / 21).abs() <= bound).all()
    with pytest.raises(ValueError, match="features"):
        acc.add(torch.randn(4, 6))
    with pytest.raises(ValueError, match="no calibration tokens"):
        HessianAccumulator(3).hessian()


def test_take_hessian_hands_over_the_sum_with_the_same_values():
    g = torch.Generator().manual_seed(3)
    acc = HessianAccumulator(6)
    acc.add(torch.randn(40, 6, generator=g))
    ref = acc.hessian()
    mean = acc.mean().clone()
    H = acc.take_hessian()
    assert torch.equal(H, ref)  # the same bits: sum * (2/n) in place
    assert torch.equal(acc.mean(), mean)  # the mean stays available
    for use in (acc.hessian, acc.take_hessian, acc.covariance, lambda: acc.add(torch.zeros(1, 6))):
        with pytest.raises(RuntimeError, match="take_hessian"):
            use()


def test_damped_inverse_in_place_equals_the_textbook_computation():
    # the memory-lean path (one d x d copy, factorised and inverted in place) gives the bits of
    # cholesky_inverse(cholesky(H' + damp I)), H' = H with dead diagonals set to 1; the input is untouched
    g = torch.Generator().manual_seed(4)
    x = torch.randn(64, 12, generator=g)
    x[:, 5] = 0  # a dead input
    H = 2 * x.T @ x / 64
    H0 = H.clone()
    Hinv, damp = damped_inverse(H, 0.01)
    assert torch.equal(H, H0)
    Hd = H0.clone()
    Hd[5, 5] = 1.0
    assert damp == 0.01 * float(Hd.diagonal().mean())
    ref = torch.cholesky_inverse(torch.linalg.cholesky(Hd + damp * torch.eye(12)))
    assert torch.equal(Hinv, ref)
    assert torch.equal(Hinv, Hinv.T)


def test_damped_inverse_overwrite_solves_in_the_hessians_storage(tmp_path):
    # overwrite=True: the inverse takes H's own storage, the bits of overwrite=False, and the spill file is gone
    g = torch.Generator().manual_seed(4)
    x = torch.randn(64, 300, generator=g)  # 300 rows: more than one spill block of 256
    x[:, 5] = 0
    H = 2 * x.T @ x / 64
    ref, ref_damp = damped_inverse(H, 0.01)
    ptr = H.data_ptr()
    Hinv, damp = damped_inverse(H, 0.01, overwrite=True, spill_dir=tmp_path)
    assert Hinv.data_ptr() == ptr and torch.equal(Hinv, ref) and damp == ref_damp
    assert list(tmp_path.iterdir()) == []
    # a retry reads the spilled values back: rank-deficient H, no damping first (as the test below)
    x = torch.randn(3, 300, generator=g)
    H = 2 * x.T @ x
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref, ref_damp = damped_inverse(H, 0.0)
        Hinv, damp = damped_inverse(H, 0.0, overwrite=True, spill_dir=tmp_path)
    assert ref_damp > 0 and damp == ref_damp and torch.equal(Hinv, ref)
    assert list(tmp_path.iterdir()) == []
    # a dtype that cannot hold the inverse is copied, and left alone
    Hb = (2 * x.T @ x).to(torch.bfloat16)
    Hb0 = Hb.clone()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        damped_inverse(Hb, 0.01, overwrite=True, spill_dir=tmp_path)
    assert torch.equal(Hb, Hb0)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_low_memory_channel_solve_equals_the_default(tmp_path, dtype):
    # spill_dir: same kept channels and bit-identical weights; the error from the OBS identity equals the error
    # computed from H (to rounding), and the base error is the same
    W, H, _ = _problem(rows=40, cols=300, tokens=1200, seed=12)
    H[7, :] = 0  # a dead input
    H[:, 7] = 0
    W, H = W.to(dtype), H.to(dtype)
    ref = prune_channels(W, H.clone(), num_remove=170, max_group=64, min_group=8, damp_percent=0.01)
    lean = prune_channels(W, H.clone(), num_remove=170, max_group=64, min_group=8, damp_percent=0.01,
                          spill_dir=tmp_path)
    assert lean.kept == ref.kept and torch.equal(lean.W, ref.W)
    # both errors are quadratic forms over n = 300 inputs evaluated in `dtype`: each within γ_n of the form of the
    # absolute values (tests/tolerances.py), so they agree to twice that, relative to the error itself
    H_l = (H + 0.01 * H.diagonal().mean() * torch.eye(300, dtype=dtype)).double().abs()
    D, W_abs = (W - ref.W).double().abs(), W.double().abs()
    tol = 2 * gamma(300, dtype) * float(((D @ H_l) * D).sum()) / 2 / ref.obs_error
    assert lean.obs_error == pytest.approx(ref.obs_error, rel=tol)
    tol = 2 * gamma(300, dtype) * float(((W_abs @ H.double().abs()) * W_abs).sum()) / 2 / ref.base_error
    assert lean.base_error == pytest.approx(ref.base_error, rel=tol)
    assert 0 < lean.relative_error < 1
    assert list(tmp_path.iterdir()) == []
    # without compensation (no identity) or with affine compensation (needs H) the default solve runs
    nocomp = prune_channels(W, H.clone(), num_remove=10, max_group=64, min_group=8, compensate=False,
                            spill_dir=tmp_path)
    assert nocomp.obs_error == pytest.approx(
        prune_channels(W, H.clone(), num_remove=10, max_group=64, min_group=8, compensate=False).obs_error)


def test_all_finite_by_row_blocks():
    from optimum_slimgpt.solvers.hessian import all_finite

    A = torch.zeros(3000, 4)
    assert all_finite(A) and all_finite(torch.tensor(1.0)) and all_finite(torch.zeros(0, 3))
    A[2500, 3] = float("nan")
    assert not all_finite(A)
    assert not all_finite(torch.tensor(float("inf")))


def test_reconstruction_error_in_row_blocks_and_mixed_dtypes():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(100, 24, generator=g, dtype=torch.float64)
    H = 2 * x.T @ x / 100
    W0 = torch.randn(600, 24, generator=g).to(torch.bfloat16)  # more rows than one block of 256
    W = W0.float() + 0.1 * torch.randn(600, 24, generator=g)
    err, base = reconstruction_error(W0, W, H.float())
    D = W0.double() - W.double()
    # float32: H rounded once (u32 per entry) and blocks of 256 rows x 24 columns summed (γ_(24+256·24)), in any
    # order; the bound is that relative error of the quadratic form of the absolute values (tests/tolerances.py)
    rel = gamma(24 + 256 * 24) + unit_roundoff()
    for got, M in ((err, D), (base, W0.double())):
        ref = float(((x @ M.T) ** 2).sum()) / 100
        bound = rel * float(((M.abs() @ H.abs()) * M.abs()).sum()) / 2
        assert abs(got - ref) <= bound, (got, ref, bound)


def test_damping_retries_then_fails_clearly():
    # rank-deficient Hessian (2 tokens, 6 features) and no damping: retried with growing damping
    x = torch.randn(2, 6)
    H = 2 * x.T @ x
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        Hinv, damp = damped_inverse(H, 0.0)
    assert damp > 0 and any("not positive definite" in str(m.message) for m in w)
    assert torch.isfinite(Hinv).all()
    with pytest.raises(NotPositiveDefiniteError, match="NaN or Inf"):
        damped_inverse(torch.full((3, 3), float("nan")))
    with pytest.raises(NotPositiveDefiniteError, match="every input feature is zero"):
        damped_inverse(torch.zeros(4, 4))
    # an indefinite matrix that damping within max_tries cannot fix
    bad = -1e12 * torch.eye(3)
    bad[0, 0] = 1.0
    with pytest.raises(NotPositiveDefiniteError, match="not positive definite"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        damped_inverse(bad, 0.01, max_tries=3)


def test_dead_inputs_are_pruned_first():
    W, H, _ = _problem(rows=10, cols=20, seed=2)
    H[4, :] = 0
    H[:, 4] = 0
    res = prune_channels(W.float(), H.float(), num_remove=1, min_group=1)
    assert 4 not in res.kept


@pytest.mark.parametrize("kind", ["log_increase", "linear_increase", "uniform"])
def test_schedule_shapes(kind):
    for L in (1, 5, 30, 32, 80):
        s = schedule_shape(kind, L, 4.0)
        assert len(s) == L and max(s) == pytest.approx(1.0)
        assert all(b >= a for a, b in zip(s, s[1:]))
        if kind != "uniform" and L > 1:
            assert s[0] == pytest.approx(0.25)
    # log_increase uses ln(L), not a hard-coded ln(32)
    s = schedule_shape("log_increase", 30, 4.0)
    assert s[1] == pytest.approx(0.25 + 0.75 * math.log(2) / math.log(30))


def _smollm2_geoms():
    hd, hidden = 64, 576
    g = LayerGeometry(9, 3, hd, 1536, params_per_head=2 * hidden * hd, params_per_kv_head=2 * hidden * hd,
                      params_per_channel=3 * hidden)
    return [g] * 30


@pytest.mark.parametrize("ratio", [0.1, 0.2, 0.35, 0.5])
@pytest.mark.parametrize("schedule", ["log_increase", "uniform", "linear_increase"])
def test_schedule_solver_hits_ratio(ratio, schedule):
    plan = solve_schedule(_smollm2_geoms(), ratio, schedule)
    assert abs(plan.achieved_ratio - ratio) < 0.005
    ratios = [lp.ratio for lp in plan.layers]
    assert all(b >= a - 1e-12 for a, b in zip(ratios, ratios[1:]))
    for lp in plan.layers:  # GQA-valid
        assert lp.heads % lp.kv_heads == 0


def test_schedule_solver_errors_and_explicit_list():
    geoms = _smollm2_geoms()
    with pytest.raises(ValueError, match="cannot be reached"):
        solve_schedule(geoms, 0.7, "uniform", prune_heads=False)  # FFN is 75% of the block, at most 0.9 of it
    with pytest.raises(ValueError, match="30 decoder layers"):
        solve_schedule(geoms, 0.2, [0.1, 0.2])
    plan = solve_schedule(geoms, 0.2, [0.25] * 30)
    assert all(lp.channels == 1536 - round(0.25 * 1536) for lp in plan.layers)


def test_plan_layer_rounding_and_floors():
    g = LayerGeometry(8, 4, 8, 172, 2 * 64 * 8, 2 * 64 * 8, 3 * 64)
    p = plan_layer(g, 0.5, channel_multiple=16)
    assert p.channels % 16 == 0 and p.heads % p.kv_heads == 0
    p = plan_layer(g, 0.89, min_heads=4, min_channels=100)
    assert p.heads >= 4 and p.channels >= 100
    p = plan_layer(g, 0.89, min_channels=100, channel_multiple=16)  # the floor is rounded up to a multiple
    assert p.channels == 112
    p = plan_layer(g, 0.3, prune_heads=False)
    assert (p.heads, p.kv_heads) == (8, 4) and p.channels == 172 - round(0.3 * 172)


# ------------------------------------------------------------------ hardware-friendly sizes
def _geoms(layers, heads, kv, head_dim, hidden, ffn):
    """Llama-shaped layers (no biases): per query head its q rows and o columns, per KV head its k and v rows."""
    g = LayerGeometry(heads, kv, head_dim, ffn, params_per_head=2 * hidden * head_dim,
                      params_per_kv_head=2 * hidden * head_dim, params_per_channel=3 * hidden)
    return [g] * layers


#: (layers, heads, KV heads, head_dim, hidden, FFN) of real models (Qwen2-72B with 16 of its 80 layers: the
#: planner's time grows with layers x head structures)
SHAPES = {"smollm2-135m": (30, 9, 3, 64, 576, 1536), "llama-2-7b": (32, 32, 32, 128, 4096, 11008),
          "llama-3-8b": (32, 32, 8, 128, 4096, 14336), "qwen2-7b": (28, 28, 4, 128, 3584, 18944),
          "qwen2-72b-16l": (16, 64, 8, 128, 8192, 29568)}


@pytest.mark.parametrize("width, expected", [
    (1536, 256), (11008, 256), (14336, 256), (18944, 256), (4864, 256), (8960, 256), (29568, 128), (512, 128),
    (256, 64), (172, 4), (344, 8), (128, 32), (64, 16), (37, 1), (3, 1), (1, 1)])
def test_auto_channel_multiple_examples(width, expected):
    assert auto_channel_multiple(width) == expected


def test_auto_channel_multiple_rule_on_every_width():
    """The rule, checked on every width up to 4096: the largest power of two that divides the width, at most 256
    and at most a quarter of the width (so a layer keeps at least 4 sizes to choose from, pruning never becomes
    impossible), and every 32/64/128/256 block that fits the dense width fits every pruned width too."""
    for w in range(1, 4097):
        m = auto_channel_multiple(w)
        assert m & (m - 1) == 0 and w % m == 0 and m <= 256 and (m == 1 or w // m >= 4), (w, m)
        assert 2 * m > 256 or w % (2 * m) or w // (2 * m) < 4, (w, m)  # maximal
        for block in (32, 64, 128, 256):
            if w % block == 0 and w // block >= 4:
                assert m % block == 0, (w, m, block)


@pytest.mark.parametrize("shape, ratio, kv_multiple", [
    ("smollm2-135m", 0.2, 1), ("smollm2-135m", 0.5, 1), ("smollm2-135m", 0.5, 3), ("llama-2-7b", 0.5, 8),
    ("llama-3-8b", 0.2, 4), ("llama-3-8b", 0.5, 4), ("llama-3-8b", 0.5, 2), ("qwen2-7b", 0.5, 2),
    ("qwen2-72b-16l", 0.5, 4)])
def test_planner_meets_size_multiples_on_every_layer_and_hits_the_ratio(shape, ratio, kv_multiple):
    """channel_multiple="auto" and kv_head_multiple=N: every layer keeps a multiple of its auto multiple of FFN
    channels and a multiple of N KV heads (so of N query heads), and the removed fraction is within one rounding
    step of the request: the largest single step, one layer's ``m`` channels, since with the heads fixed the
    channel scale moves one layer by one multiple at a time (the log_increase layers have distinct ratios)."""
    geoms = _geoms(*SHAPES[shape])
    plan = solve_schedule(geoms, ratio, "log_increase", channel_multiple="auto", kv_head_multiple=kv_multiple)
    m = auto_channel_multiple(geoms[0].channels)
    assert m in (128, 256)
    for lp in plan.layers:
        assert lp.channel_multiple == m and lp.channels % m == 0
        assert lp.kv_heads % kv_multiple == 0 and lp.heads % kv_multiple == 0 and lp.heads % lp.kv_heads == 0
        assert all(g % kv_multiple == 0 for g, _ in lp.head_options)
    assert any(lp.channels < geoms[0].channels for lp in plan.layers)
    step = m * geoms[0].params_per_channel / plan.params_before
    assert abs(plan.achieved_ratio - ratio) <= step, (plan.achieved_ratio, step)
    if ratio == 0.5 and kv_multiple < geoms[0].num_kv_heads:  # some layer lost KV heads, in whole multiples
        assert any(lp.kv_heads < geoms[0].num_kv_heads for lp in plan.layers)


def test_kv_head_multiple_restricts_the_structures_of_a_layer():
    """8 query heads on 4 KV heads at 50%: whole-structure choices are 2 KV x 4 or 4 KV x 2 (equal parameters
    only for MHA; here KV heads cost parameters too, so one wins); with kv_head_multiple=4 every KV head stays
    and half the query heads of each group go."""
    g = LayerGeometry(8, 4, 8, 172, 2 * 64 * 8, 2 * 64 * 8, 3 * 64)
    assert plan_layer(g, 0.5).kv_heads < 4
    p = plan_layer(g, 0.5, kv_head_multiple=4)
    assert (p.kv_heads, p.heads, p.head_options) == (4, 4, [(4, 1)])
    p = plan_layer(g, 0.5, kv_head_multiple=2)
    assert p.kv_heads in (2, 4) and all(o[0] % 2 == 0 for o in p.head_options)


def test_impossible_size_multiples_are_clear_errors():
    geoms = _geoms(*SHAPES["smollm2-135m"])  # 3 KV heads
    for bad in (2, 6):
        with pytest.raises(ValueError, match=f"kv_head_multiple={bad} does not divide .*layer 0 has 3"):
            solve_schedule(geoms, 0.2, "log_increase", kv_head_multiple=bad)
        with pytest.raises(ValueError, match=f"kv_head_multiple={bad} does not divide"):
            plan_layer(geoms[0], 0.2, kv_head_multiple=bad)
    with pytest.raises(ValueError, match="kv_head_multiple must be a positive integer"):
        solve_schedule(geoms, 0.2, "log_increase", kv_head_multiple=0)
    with pytest.raises(ValueError, match="channel_multiple must be a positive integer or 'auto'"):
        plan_layer(geoms[0], 0.2, channel_multiple="big")
    # a multiple wider than the FFN leaves only the heads, which cannot carry 50% alone
    with pytest.raises(ValueError, match="cannot be reached.*channel_multiple=2048"):
        solve_schedule(geoms, 0.5, "log_increase", channel_multiple=2048)


def test_auto_multiple_never_makes_small_models_unprunable():
    """Tiny test shapes (FFN 172 like stories260K, 128, 64, 37) still reach 20% and 50% under "auto"."""
    for ffn in (172, 128, 64, 37, 16):
        geoms = _geoms(5, 8, 4, 8, 64, ffn)
        for ratio in (0.2, 0.5):
            plan = solve_schedule(geoms, ratio, "log_increase", channel_multiple="auto")
            m = auto_channel_multiple(ffn)
            assert all(lp.channels % m == 0 for lp in plan.layers)
            # the coarsest step here is one KV group of one layer (2 query heads and 1 KV head)
            group = 2 * geoms[0].params_per_head + geoms[0].params_per_kv_head
            assert abs(plan.achieved_ratio - ratio) <= group / plan.params_before, (ffn, ratio, plan.achieved_ratio)


def test_full_precision_matmul_turns_tf32_off_and_restores():
    from optimum_slimgpt.solvers import full_precision_matmul

    before = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("high")
        with full_precision_matmul():
            assert torch.get_float32_matmul_precision() == "highest"
        assert torch.get_float32_matmul_precision() == "high"
        with pytest.raises(RuntimeError):
            with full_precision_matmul():
                raise RuntimeError
        assert torch.get_float32_matmul_precision() == "high"
    finally:
        torch.set_float32_matmul_precision(before)


def test_magnitude_selection_with_compensation_compensates_heads_too():
    g = torch.Generator().manual_seed(3)
    X = torch.randn(400, 32, generator=g) @ torch.randn(32, 32, generator=g)
    H = 2 * X.T @ X / len(X)
    W = torch.randn(12, 32, generator=g)
    kw = dict(num_heads=8, num_kv_heads=4, head_dim=4, options=[(4, 1)], mode="magnitude")
    plain = prune_heads(W, H, compensate=False, **kw)
    comp = prune_heads(W, H, compensate=True, **kw)
    assert plain.kept_heads == comp.kept_heads  # same selection
    assert comp.obs_error < 0.9 * plain.obs_error
